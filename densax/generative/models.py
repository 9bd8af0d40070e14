"""Flax ``nnx`` networks for low-dimensional generative models.

* :class:`MLP`: the generator ``z -> x`` and the critic/discriminator
  ``x -> score`` of the GAN family (widths, depth and activation configurable).
* :class:`Denoiser`: the time-conditioned noise predictor ``(x_t, t) -> eps``
  of diffusion models, an MLP fed with ``x_t`` and a sinusoidal embedding of
  the timestep (:func:`sinusoidal_embedding`).

Networks act on a batch ``[n, features]`` row by row (no batch statistics), as
the gradient penalty and per-sample likelihoods require. Parameters take
``param_dtype`` (float32 by default; float64 for x64 training).
"""

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "ACTIVATIONS",
    "Denoiser",
    "MLP",
    "get_activation",
    "sinusoidal_embedding",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}


def get_activation(activation: str | Callable) -> Callable[[jax.Array], jax.Array]:
    """An activation function from its name in :data:`ACTIVATIONS` (or as is).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        names = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(
            f"activation must be one of {names} or a callable; got {activation!r}"
        )
    return ACTIVATIONS[activation]


def check_widths(hidden: Sequence[int]) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive ints, or ``ValueError``."""
    widths = tuple(hidden)
    if not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
        raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}")
    return tuple(int(w) for w in widths)


class MLP(nnx.Module):
    """A multilayer perceptron: ``Linear -> act -> ... -> Linear``.

    Args:
      in_features: input dimension.
      out_features: output dimension.
      hidden: widths of the hidden layers (their number is the depth).
      activation: a name from :data:`ACTIVATIONS` or a callable.
      param_dtype: dtype of the weights (and of the computation).
      rngs: ``nnx.Rngs`` for the initialisation (LeCun normal weights, zero
        biases).

    Example:
      >>> from flax import nnx
      >>> g = MLP(2, 2, hidden=(64, 64), rngs=nnx.Rngs(0))
      >>> g(jnp.ones((5, 2))).shape
      (5, 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str | Callable = "relu",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the layers; see the class docstring."""
        widths = (in_features, *check_widths(hidden), out_features)
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, dtype=param_dtype, param_dtype=param_dtype, rngs=rngs)
                for a, b in itertools.pairwise(widths)
            ]
        )
        self.activation = get_activation(activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``x: [..., in_features]`` to ``[..., out_features]``."""
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def sinusoidal_embedding(
    t: jax.Array, features: int, *, max_period: float = 10_000.0
) -> jax.Array:
    """Transformer-style sinusoidal features of a (time) index.

    ``[sin(t w_k), cos(t w_k)]`` with frequencies ``w_k = max_period^(-k/h)``,
    ``k = 0..h-1``, ``h = features // 2``.

    Args:
      t: [...] timesteps (int or float).
      features: the embedding size, even.
      max_period: the longest period.

    Returns:
      [..., features] embedding, in ``t``'s float dtype (default float for
      integer ``t``).

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, §3.5; Ho et al.,
      *Denoising Diffusion Probabilistic Models*, 2020, Appendix B.

    Example:
      >>> sinusoidal_embedding(jnp.arange(3), 8).shape
      (3, 8)
    """
    if features % 2 or features < 2:
        raise ValueError(f"features must be a positive even int, got {features}")
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    half = features // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=dtype) / half)
    angles = t.astype(dtype)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Denoiser(nnx.Module):
    """Time-conditioned noise predictor ``(x_t, t) -> eps`` for diffusion.

    The timestep's sinusoidal embedding goes through a small MLP and is added
    to every hidden layer's pre-activation, so that each layer sees the noise
    level (the conditioning of Ho et al.'s U-Net, in an MLP).

    Args:
      features: data dimension ``d``.
      hidden: widths of the hidden layers (all equal, at least one).
      time_features: size of the sinusoidal embedding.
      activation: a name from :data:`ACTIVATIONS` or a callable.
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> from flax import nnx
      >>> net = Denoiser(2, hidden=(64, 64), rngs=nnx.Rngs(0))
      >>> net(jnp.ones((5, 2)), jnp.arange(5)).shape
      (5, 2)
    """

    def __init__(
        self,
        features: int,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        time_features: int = 32,
        activation: str | Callable = "silu",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the layers; see the class docstring."""
        widths = check_widths(hidden)
        if not widths or len(set(widths)) != 1:
            raise ValueError(f"hidden must hold equal widths, got {hidden!r}")
        width = widths[0]
        kw = dict(dtype=param_dtype, param_dtype=param_dtype, rngs=rngs)
        self.time_features = time_features
        self.activation = get_activation(activation)
        self.time_mlp = MLP(
            time_features,
            width,
            hidden=(width,),
            activation=activation,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.time_proj = nnx.List([nnx.Linear(width, width, **kw) for _ in widths])
        self.layers = nnx.List(
            [nnx.Linear(features, width, **kw)]
            + [nnx.Linear(width, width, **kw) for _ in widths[1:]]
        )
        self.out = nnx.Linear(width, features, **kw)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Predicts the noise of ``x: [n, d]`` at timesteps ``t: [n]``."""
        emb = self.activation(
            self.time_mlp(sinusoidal_embedding(t, self.time_features).astype(x.dtype))
        )
        h = x
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = self.activation(layer(h) + proj(emb))
        return self.out(h)
