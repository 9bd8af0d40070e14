"""Convolutional Flax ``nnx`` networks for generative models of small images.

The training loop of :func:`densax.generative.train` works on flat data ``[n,
d]``; these networks take and return such rows and reshape them to images
``[n, H, W, C]`` inside (row-major ``(H, W, C)`` order, the order of
``images.reshape(n, -1)``), so image data trains through the same chunks,
checkpoints, NaN guard and mesh as point clouds. Every layer acts on each
image on its own (group norm, never batch statistics), as the gradient
penalty and the sharded batch require.

* :class:`UNet`: a time-conditioned noise predictor ``(x_t, t) -> eps`` for
  DDPM/DDIM (``method="ddpm", network="unet"``): residual blocks with group
  norm and the timestep's sinusoidal embedding added inside every block, one
  resolution per entry of ``channels`` (stride-2 convolutions down,
  nearest-neighbour upsampling and convolutions up, skip connections by
  concatenation), the output convolution initialised at zero.
* :class:`DCGANGenerator` and :class:`DCGANCritic`: the DCGAN layout (Radford
  et al.), a linear map of the latent to a small feature map doubled in size
  by each stride-2 transposed convolution up to a ``tanh`` image, and its
  mirror of stride-2 convolutions with leaky ReLUs down to one score
  (``network="dcgan"`` of the GAN-family methods). The generator uses group
  norm instead of DCGAN's batch norm; the critic has no normalisation, as
  WGAN-GP prescribes (Gulrajani et al., §4). The generator upsamples by
  nearest-neighbour doubling and a 3 x 3 convolution rather than DCGAN's
  stride-2 transposed convolution (the "resize-convolution" of Odena et al.,
  free of checkerboard artefacts).
* :class:`Conv`: the convolution all of them use, written as shifted slices
  and a matmul (see its docstring for why).

Data of ``d = H W C`` features with ``image_shape=None`` is read as square
greyscale images (``H = W = sqrt(d)``, ``C = 1``).

References:
  Ho, Jain and Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS
  2020, Appendix B (the U-Net). Ronneberger, Fischer and Brox, *U-Net*, MICCAI
  2015. Radford, Metz and Chintala, *Unsupervised Representation Learning
  with Deep Convolutional GANs*, ICLR 2016. Gulrajani et al., *Improved
  Training of Wasserstein GANs*, NeurIPS 2017. Wu and He, *Group
  Normalization*, ECCV 2018. Odena, Dumoulin and Olah, *Deconvolution and
  Checkerboard Artifacts*, Distill 2016.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from densax.generative.models import check_widths, sinusoidal_embedding

__all__ = [
    "Conv",
    "DCGANCritic",
    "DCGANGenerator",
    "UNet",
    "image_shape_of",
]


def image_shape_of(
    features: int, image_shape: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """The ``(H, W, C)`` image shape of ``features``-dimensional rows.

    Args:
      features: the row length ``d``.
      image_shape: ``(H, W, C)`` or ``(H, W)`` (one channel); default: a
        square greyscale image, ``H = W = sqrt(d)``.

    Returns:
      ``(H, W, C)`` with ``H W C = d``.

    Raises:
      ValueError: ``d`` is not ``H W C``, or not a square without
        ``image_shape``.

    Example:
      >>> image_shape_of(64), image_shape_of(48, (4, 4, 3))
      ((8, 8, 1), (4, 4, 3))
    """
    if image_shape is None:
        side = math.isqrt(features)
        if side * side != features:
            raise ValueError(
                f"{features} features are not a square image: pass image_shape"
            )
        return side, side, 1
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1 or math.prod(shape) != features:
        raise ValueError(
            f"image_shape must be (H, W[, C]) of positive ints with H*W*C = "
            f"{features} (the data dimension), got {image_shape!r}"
        )
    return shape


def _check_divisible(shape: tuple[int, int, int], factor: int, what: str) -> None:
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(
            f"image_shape {shape}: height and width must be divisible by {factor} "
            f"for {what}"
        )


class Conv(nnx.Module):
    """A 2D convolution (``"SAME"`` padding) as shifted slices and one matmul.

    The ``k^2`` shifted (and strided) views of the padded input are
    concatenated along the channels and multiplied by the ``[k, k, C_in,
    C_out]`` kernel reshaped to ``[k^2 C_in, C_out]``: the same numbers as
    ``lax.conv_general_dilated`` (``nnx.Conv``) with ``"SAME"`` padding. The
    training loop runs its steps inside ``lax.scan``, and there XLA:CPU
    executes the gradient of a native convolution about 15 times slower than
    at the top level of a program; slices, pads and matmuls keep their
    speed. On 8 x 8 to 32 x 32 images the ``k^2``-fold patch array is small.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: ``k`` (square kernels).
      strides: the stride ``s`` (output side ``ceil(side / s)``).
      zero_init: start with a zero kernel (else LeCun normal); zero biases.
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> conv = Conv(1, 4, 3, strides=2, rngs=nnx.Rngs(0))
      >>> conv(jnp.ones((2, 8, 8, 1))).shape
      (2, 4, 4, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        strides: int = 1,
        zero_init: bool = False,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Creates the kernel and bias; see the class docstring."""
        shape = (kernel_size, kernel_size, in_features, out_features)
        init = (
            nnx.initializers.zeros_init()
            if zero_init
            else nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3)
        )
        self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
        self.kernel_size = kernel_size
        self.strides = strides

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``x: [n, H, W, C_in]`` to ``[n, ceil(H/s), ceil(W/s), C_out]``."""
        n, height, width, c = x.shape
        k, s = self.kernel_size, self.strides
        out_h, out_w = -(-height // s), -(-width // s)
        pad_h = max((out_h - 1) * s + k - height, 0)
        pad_w = max((out_w - 1) * s + k - width, 0)
        xp = jnp.pad(
            x,
            (
                (0, 0),
                (pad_h // 2, pad_h - pad_h // 2),
                (pad_w // 2, pad_w - pad_w // 2),
                (0, 0),
            ),
        )
        views = [
            lax.slice(
                xp,
                (0, di, dj, 0),
                (n, di + (out_h - 1) * s + 1, dj + (out_w - 1) * s + 1, c),
                (1, s, s, 1),
            )
            for di in range(k)
            for dj in range(k)
        ]
        kernel = self.kernel[...].reshape(k * k * c, -1)
        return jnp.concatenate(views, axis=-1) @ kernel + self.bias[...]


def _groups(channels: int, groups: int) -> int:
    # The largest divisor of the channel count up to `groups`.
    return math.gcd(channels, groups)


def _upsample(h: jax.Array) -> jax.Array:
    """Nearest-neighbour doubling of ``[n, H, W, C]``."""
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


class _ResBlock(nnx.Module):
    """``GN -> silu -> conv -> + time -> GN -> silu -> conv``, plus the skip."""

    def __init__(self, c_in, c_out, time_dim, groups, kw, rngs):
        self.norm1 = nnx.GroupNorm(c_in, _groups(c_in, groups), **kw, rngs=rngs)
        self.conv1 = Conv(c_in, c_out, 3, param_dtype=kw["param_dtype"], rngs=rngs)
        self.time = nnx.Linear(time_dim, c_out, **kw, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, _groups(c_out, groups), **kw, rngs=rngs)
        self.conv2 = Conv(c_out, c_out, 3, param_dtype=kw["param_dtype"], rngs=rngs)
        self.skip = (
            Conv(c_in, c_out, 1, param_dtype=kw["param_dtype"], rngs=rngs)
            if c_in != c_out
            else None
        )

    def __call__(self, x, emb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time(emb)[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class UNet(nnx.Module):
    """Time-conditioned U-Net noise predictor ``(x_t [n, d], t [n]) -> [n, d]``.

    ``channels[i]`` is the width at resolution ``H / 2^i``: one residual
    block per resolution on the way down (its output kept as a skip), one in
    the middle, one per resolution on the way up (fed with the skip
    concatenated). The timestep's sinusoidal embedding goes through a
    two-layer MLP of width ``4 channels[0]`` and is added (per channel)
    inside every block.

    Args:
      features: data dimension ``d = H W C``.
      channels: widths per resolution (their number is the number of
        resolutions; ``H`` and ``W`` divisible by ``2^(len - 1)``).
      image_shape: ``(H, W[, C])``; default square greyscale.
      time_features: size of the sinusoidal embedding (even).
      groups: group-norm groups (at most; the largest divisor of the width).
      param_dtype: dtype of the weights (and of the computation).
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> unet = UNet(64, channels=(4,), rngs=nnx.Rngs(0))
      >>> unet(jnp.zeros((3, 64)), jnp.arange(3)).shape
      (3, 64)
    """

    def __init__(
        self,
        features: int,
        *,
        channels: Sequence[int] = (32, 64),
        image_shape: Sequence[int] | None = None,
        time_features: int = 32,
        groups: int = 8,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the layers; see the class docstring."""
        widths = check_widths(channels)
        if not widths:
            raise ValueError("channels must hold at least one width")
        shape = image_shape_of(features, image_shape)
        _check_divisible(shape, 2 ** (len(widths) - 1), f"channels={widths}")
        if time_features < 2 or time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        kw = dict(dtype=param_dtype, param_dtype=param_dtype)
        self.features = features
        self.image_shape = shape
        self.time_features = time_features
        time_dim = 4 * widths[0]
        self.time_in = nnx.Linear(time_features, time_dim, **kw, rngs=rngs)
        self.time_out = nnx.Linear(time_dim, time_dim, **kw, rngs=rngs)
        self.conv_in = Conv(shape[2], widths[0], 3, param_dtype=param_dtype, rngs=rngs)
        down, downsample, prev = [], [], widths[0]
        for i, c in enumerate(widths):
            down.append(_ResBlock(prev, c, time_dim, groups, kw, rngs))
            if i < len(widths) - 1:
                downsample.append(
                    Conv(c, c, 3, strides=2, param_dtype=param_dtype, rngs=rngs)
                )
            prev = c
        self.down = nnx.List(down)
        self.downsample = nnx.List(downsample)
        self.middle = _ResBlock(prev, prev, time_dim, groups, kw, rngs)
        up, upsample = [], []
        for i in reversed(range(len(widths))):
            up.append(
                _ResBlock(prev + widths[i], widths[i], time_dim, groups, kw, rngs)
            )
            prev = widths[i]
            if i > 0:
                upsample.append(Conv(prev, prev, 3, param_dtype=param_dtype, rngs=rngs))
        self.up = nnx.List(up)
        self.upsample = nnx.List(upsample)
        self.norm_out = nnx.GroupNorm(
            widths[0], _groups(widths[0], groups), **kw, rngs=rngs
        )
        self.conv_out = Conv(
            widths[0], shape[2], 3, zero_init=True, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Predicts the noise of ``x: [n, d]`` at timesteps ``t: [n]``."""
        n = x.shape[0]
        emb = sinusoidal_embedding(t, self.time_features).astype(x.dtype)
        emb = self.time_out(jax.nn.silu(self.time_in(emb)))
        h = self.conv_in(x.reshape(n, *self.image_shape))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.middle(h, emb)
        for j, block in enumerate(self.up):
            h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](_upsample(h))
        h = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return h.reshape(n, self.features)


class DCGANGenerator(nnx.Module):
    """DCGAN generator ``z [n, latent_dim] -> x [n, d]``, pixels in ``(-1, 1)``.

    A linear map to a ``[H / 2^L, W / 2^L, channels[0]]`` feature map, then
    ``L = len(channels)`` upsampling layers (group norm, ReLU, nearest-
    neighbour doubling, 3 x 3 convolution), ``channels[i] -> channels[i +
    1]`` and the last to the image's channels, and ``tanh`` at the end.

    Args:
      latent_dim: dimension of ``z``.
      features: data dimension ``d = H W C``.
      channels: widths from the smallest feature map up (``H`` and ``W``
        divisible by ``2^len(channels)``).
      image_shape: ``(H, W[, C])``; default square greyscale.
      groups: group-norm groups (at most).
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> g = DCGANGenerator(4, 64, channels=(4,), rngs=nnx.Rngs(0))
      >>> g(jnp.zeros((3, 4))).shape
      (3, 64)
    """

    def __init__(
        self,
        latent_dim: int,
        features: int,
        *,
        channels: Sequence[int] = (64, 32),
        image_shape: Sequence[int] | None = None,
        groups: int = 8,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the layers; see the class docstring."""
        widths = check_widths(channels)
        if not widths:
            raise ValueError("channels must hold at least one width")
        shape = image_shape_of(features, image_shape)
        _check_divisible(shape, 2 ** len(widths), f"channels={widths}")
        kw = dict(dtype=param_dtype, param_dtype=param_dtype)
        self.features = features
        self.start = (shape[0] >> len(widths), shape[1] >> len(widths), widths[0])
        self.project = nnx.Linear(latent_dim, math.prod(self.start), **kw, rngs=rngs)
        outs = (*widths[1:], shape[2])
        self.norms = nnx.List(
            [nnx.GroupNorm(c, _groups(c, groups), **kw, rngs=rngs) for c in widths]
        )
        self.convs = nnx.List(
            [
                Conv(a, b, 3, param_dtype=param_dtype, rngs=rngs)
                for a, b in zip(widths, outs, strict=True)
            ]
        )

    def __call__(self, z: jax.Array) -> jax.Array:
        """Maps ``z: [n, latent_dim]`` to images ``[n, d]``."""
        n = z.shape[0]
        h = self.project(z).reshape(n, *self.start)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            h = conv(_upsample(jax.nn.relu(norm(h))))
        return jnp.tanh(h).reshape(n, self.features)


class DCGANCritic(nnx.Module):
    """DCGAN critic ``x [n, d] -> score [n, 1]``, without normalisation.

    ``len(channels)`` stride-2 convolutions (4 x 4 kernels) with leaky ReLUs
    (slope 0.2), then a linear map of the flattened features to one score.

    Args:
      features: data dimension ``d = H W C``.
      channels: widths from the full resolution down (``H`` and ``W``
        divisible by ``2^len(channels)``).
      image_shape: ``(H, W[, C])``; default square greyscale.
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> c = DCGANCritic(64, channels=(4,), rngs=nnx.Rngs(0))
      >>> c(jnp.zeros((3, 64))).shape
      (3, 1)
    """

    def __init__(
        self,
        features: int,
        *,
        channels: Sequence[int] = (32, 64),
        image_shape: Sequence[int] | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the layers; see the class docstring."""
        widths = check_widths(channels)
        if not widths:
            raise ValueError("critic channels must hold at least one width")
        shape = image_shape_of(features, image_shape)
        _check_divisible(shape, 2 ** len(widths), f"critic channels={widths}")
        kw = dict(dtype=param_dtype, param_dtype=param_dtype)
        self.image_shape = shape
        ins = (shape[2], *widths[:-1])
        self.convs = nnx.List(
            [
                Conv(a, b, 4, strides=2, param_dtype=param_dtype, rngs=rngs)
                for a, b in zip(ins, widths, strict=True)
            ]
        )
        cells = (shape[0] >> len(widths)) * (shape[1] >> len(widths))
        self.out = nnx.Linear(cells * widths[-1], 1, **kw, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Scores images ``x: [n, d]``; returns ``[n, 1]``."""
        n = x.shape[0]
        h = x.reshape(n, *self.image_shape)
        for conv in self.convs:
            h = jax.nn.leaky_relu(conv(h), 0.2)
        return self.out(h.reshape(n, -1))
