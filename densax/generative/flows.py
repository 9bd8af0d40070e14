"""Normalizing flows: densities by the change of variables, trained by likelihood.

A flow is an invertible map ``x = f(z)`` from a base variable ``z`` (standard
normal, or uniform on ``[0, 1]^d``) to data space, built from bijectors whose
inverse and log-Jacobian determinant are cheap. Its density is given by the
change-of-variable formula

    ``log p(x) = log p_Z(f^{-1}(x)) + log |det d f^{-1}(x) / dx|``,

the second term being the sum of the bijectors' log-determinants.

Bijectors (Flax ``nnx`` modules acting on a batch ``[n, d]``; each returns the
transformed batch and the ``[n]`` log-determinant of the map it applied, in
one pass, in both directions):

* :class:`AffineCoupling` (RealNVP): ``y_b = x_b exp(s(x_a)) + t(x_a)``.
* :class:`SplineCoupling` (neural spline flow): a monotone rational-quadratic
  spline of ``x_b`` on ``[-bound, bound]`` (identity outside) whose knots are
  functions of ``x_a`` (:func:`rational_quadratic_spline`).
* :class:`LULinear`: ``y = x W^T`` with ``W = P L U`` (``P`` the reversal,
  ``L`` unit lower, ``U`` upper triangular): ``log |det W| = sum log |diag
  U|``, the inverse by two triangular solves.
* :class:`ActNorm`: elementwise ``y = x exp(log_scale) + loc``, initialised
  from the data's mean and scale (Kingma & Dhariwal's data-dependent
  initialisation) by :func:`densax.generative.train`.
* :class:`Logit` maps the uniform base to the real line.

:class:`Flow` composes them (base side first); ``train(key, x,
method="flow")`` fits it by maximum likelihood (the loss is the mean negative
log-likelihood of a batch, in nats) in the shared training loop, and
:func:`density` turns the result into a :class:`FlowDensity`: a registered
pytree ``(graphdef, params)`` (the graph definition is static pytree metadata)
with ``log_prob(x)`` and ``sample(key, n)``, so generic consumers of the
density contract accept it and it passes through ``jax.jit``.

Example:
  >>> from densax import datasets, generative
  >>> x = datasets.two_moons(jax.random.key(0), 512)
  >>> res = generative.train(jax.random.key(1), x, method="flow", num_steps=20,
  ...                        chunk_size=10, eval_size=0, layers=2, hidden=(16,))
  >>> model = generative.density(res)
  >>> model.log_prob(x[:3]).shape, model.sample(jax.random.key(2), 4).shape
  ((3,), (4, 2))

References:
  Dinh, Sohl-Dickstein and Bengio, *Density Estimation Using Real NVP*, ICLR
  2017. Durkan, Bekasov, Murray and Papamakarios, *Neural Spline Flows*,
  NeurIPS 2019. Kingma and Dhariwal, *Glow: Generative Flow with Invertible
  1x1 Convolutions*, NeurIPS 2018. Papamakarios et al., *Normalizing Flows for
  Probabilistic Modeling and Inference*, JMLR 2021.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from densax import _validate
from densax.generative.losses import batch_mean
from densax.generative.method import LATENTS, Method, StepContext, adam, draw_latent
from densax.generative.models import MLP, check_widths, get_activation

__all__ = [
    "METHODS",
    "ActNorm",
    "AffineCoupling",
    "Flow",
    "FlowDensity",
    "FlowOptions",
    "LULinear",
    "Logit",
    "SplineCoupling",
    "base_log_prob",
    "density",
    "log_prob",
    "rational_quadratic_spline",
    "sample",
]

BASES = LATENTS


def base_log_prob(z: jax.Array, base: str) -> jax.Array:
    """[n] log-density of ``z: [n, d]`` under the base ``"normal"`` or ``"uniform"``."""
    if base == "normal":
        d = z.shape[-1]
        return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
    inside = jnp.all((z >= 0) & (z <= 1), axis=-1)
    return jnp.where(inside, 0.0, -jnp.inf).astype(z.dtype)


def _zero_last(net: MLP) -> MLP:
    """The conditioner's last layer starts at zero: each coupling starts at ``id``."""
    last = net.layers[-1]
    last.kernel[...] = jnp.zeros_like(last.kernel[...])
    return net


def _split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = x.shape[-1] // 2
    return x[..., :k], x[..., k:]


class AffineCoupling(nnx.Module):
    """RealNVP coupling ``y_b = x_b exp(s(x_a)) + t(x_a)``, ``y_a = x_a``.

    ``x_a`` is the first ``d // 2`` coordinates. The log-scale is squashed by
    ``tanh`` (each layer scales by at most ``e``), which keeps training stable.

    Args:
      features: data dimension ``d >= 2``.
      hidden: hidden widths of the conditioner MLP.
      activation: its activation.
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs``.

    Example:
      >>> b = AffineCoupling(2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> y, ld = b.forward(jnp.ones((3, 2)))
      >>> y.shape, ld.shape
      ((3, 2), (3,))
    """

    def __init__(
        self,
        features: int,
        *,
        hidden=(64, 64),
        activation="relu",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the conditioner; see the class docstring."""
        k = features // 2
        self.net = _zero_last(
            MLP(
                k,
                2 * (features - k),
                hidden=hidden,
                activation=activation,
                param_dtype=param_dtype,
                rngs=rngs,
            )
        )

    def _params(self, xa):
        shift, raw = jnp.split(self.net(xa), 2, axis=-1)
        return shift, jnp.tanh(raw)

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(y [n, d], log|det dy/dx| [n])``."""
        xa, xb = _split(x)
        shift, log_scale = self._params(xa)
        y = jnp.concatenate([xa, xb * jnp.exp(log_scale) + shift], axis=-1)
        return y, jnp.sum(log_scale, axis=-1)

    def inverse(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [n, d], log|det dx/dy| [n])``."""
        ya, yb = _split(y)
        shift, log_scale = self._params(ya)
        x = jnp.concatenate([ya, (yb - shift) * jnp.exp(-log_scale)], axis=-1)
        return x, -jnp.sum(log_scale, axis=-1)


def _knots(raw: jax.Array, bound: float, min_size: float) -> jax.Array:
    """Knots ``[..., K+1]`` from ``-bound`` to ``bound`` (bins: ``softmax(raw)``)."""
    k = raw.shape[-1]
    sizes = min_size + (1 - min_size * k) * jax.nn.softmax(raw, axis=-1)
    inner = (2 * jnp.cumsum(sizes[..., :-1], axis=-1) - 1) * bound
    # The end knots are exactly -+bound (a cumulative sum may round).
    lo = jnp.full_like(sizes[..., :1], -bound)
    return jnp.concatenate([lo, inner, -lo], axis=-1)


def rational_quadratic_spline(
    x: jax.Array,
    widths: jax.Array,
    heights: jax.Array,
    derivatives: jax.Array,
    *,
    bound: float,
    inverse: bool = False,
    min_size: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[jax.Array, jax.Array]:
    """Monotone rational-quadratic spline on ``[-bound, bound]``, identity outside.

    ``K`` bins; their widths and heights are ``softmax`` of the unconstrained
    ``widths``/``heights`` (at least ``min_size`` of the interval each), the
    ``K - 1`` interior knot derivatives ``softplus(derivatives + c) +
    min_derivative`` (``c`` such that zero parameters give the identity), the
    two boundary derivatives 1 (so the map and its
    derivative are continuous at ``+-bound``). Elementwise: every array has
    the leading shape of ``x``.

    Args:
      x: [...] inputs (outputs of the spline when ``inverse``).
      widths: [..., K] unconstrained bin widths.
      heights: [..., K] unconstrained bin heights.
      derivatives: [..., K - 1] unconstrained interior derivatives.
      bound: half-width of the interval.
      inverse: apply the inverse spline.
      min_size: smallest bin size, as a fraction of the interval.
      min_derivative: smallest derivative.

    Returns:
      ``(y [...], log |dy/dx| [...])`` of the map applied.

    References:
      Durkan et al., *Neural Spline Flows*, 2019, §3.1 and Appendix A.

    Example:
      >>> z = jnp.zeros((3, 4))
      >>> y, ld = rational_quadratic_spline(jnp.array([-5.0, 0.3, 1.0]), z, z,
      ...                                   z[:, :3], bound=3.0)
      >>> [round(float(v), 4) for v in y], bool(jnp.all(jnp.abs(ld) < 0.5))
      ([-5.0, 0.3, 1.0], True)
    """
    dtype = x.dtype
    k = widths.shape[-1]
    xk = _knots(widths.astype(dtype), bound, min_size)
    yk = _knots(heights.astype(dtype), bound, min_size)
    inside = (x > -bound) & (x < bound)
    xc = jnp.clip(x, -bound, bound)
    knots_in = yk if inverse else xk
    idx = jnp.sum(xc[..., None] >= knots_in[..., 1:-1], axis=-1)[..., None]

    def pick(a):
        return jnp.take_along_axis(a, idx, axis=-1)[..., 0]

    x0, y0 = pick(xk[..., :-1]), pick(yk[..., :-1])
    wk, hk = pick(xk[..., 1:]) - x0, pick(yk[..., 1:]) - y0
    # Only the two derivatives of each point's bin are computed (after the
    # gather); zero parameters give unit derivatives, i.e. with equal bins
    # the identity. The derivatives at -+bound are exactly 1.
    shift = np.log(np.expm1(1.0 - min_derivative))
    zero = jnp.zeros_like(derivatives[..., :1], dtype)
    raw = jnp.concatenate([zero, derivatives.astype(dtype), zero], axis=-1)
    i = idx[..., 0]
    d0 = jax.nn.softplus(pick(raw[..., :-1]) + shift) + min_derivative
    d1 = jax.nn.softplus(pick(raw[..., 1:]) + shift) + min_derivative
    d0 = jnp.where(i == 0, 1.0, d0).astype(dtype)
    d1 = jnp.where(i == k - 1, 1.0, d1).astype(dtype)
    s = hk / wk
    c = d1 + d0 - 2 * s
    if inverse:
        dy = xc - y0
        a = hk * (s - d0) + dy * c
        b = hk * d0 - dy * c
        cc = -s * dy
        disc = jnp.maximum(b**2 - 4 * a * cc, 0.0)
        xi = 2 * cc / (-b - jnp.sqrt(disc))
        out = x0 + xi * wk
    else:
        xi = (xc - x0) / wk
        out = y0 + hk * (s * xi**2 + d0 * xi * (1 - xi)) / (s + c * xi * (1 - xi))
    xi = jnp.clip(xi, 0.0, 1.0)
    t = xi * (1 - xi)
    log_deriv = (
        2 * jnp.log(s)
        + jnp.log(d1 * xi**2 + 2 * s * t + d0 * (1 - xi) ** 2)
        - 2 * jnp.log(s + c * t)
    )
    if inverse:
        log_deriv = -log_deriv
    return jnp.where(inside, out, x), jnp.where(inside, log_deriv, 0.0)


class SplineCoupling(nnx.Module):
    """Coupling with a rational-quadratic spline of ``x_b`` given ``x_a``.

    ``x_a`` is the first ``d // 2`` coordinates; each coordinate of ``x_b`` is
    mapped by its own spline (:func:`rational_quadratic_spline`) whose ``3K -
    1`` parameters the conditioner MLP computes from ``x_a``. The last layer
    starts at zero: uniform bins and unit derivatives, the identity.

    Args:
      features: data dimension ``d >= 2``.
      knots: number of bins ``K``.
      bound: the spline acts on ``[-bound, bound]``.
      hidden: hidden widths of the conditioner MLP.
      activation: its activation.
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs``.

    Example:
      >>> b = SplineCoupling(2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> x = jnp.array([[0.5, -1.0]])
      >>> y, ld = b.forward(x)
      >>> bool(jnp.allclose(b.inverse(y)[0], x, atol=1e-6))
      True
    """

    def __init__(
        self,
        features: int,
        *,
        knots: int = 8,
        bound: float = 2.5,
        hidden=(64, 64),
        activation="relu",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the conditioner; see the class docstring."""
        k = features // 2
        self.knots = knots
        self.bound = float(bound)
        self.net = _zero_last(
            MLP(
                k,
                (features - k) * (3 * knots - 1),
                hidden=hidden,
                activation=activation,
                param_dtype=param_dtype,
                rngs=rngs,
            )
        )

    def _apply(self, x: jax.Array, inverse: bool) -> tuple[jax.Array, jax.Array]:
        xa, xb = _split(x)
        raw = self.net(xa).reshape(*xb.shape, 3 * self.knots - 1)
        k = self.knots
        yb, ld = rational_quadratic_spline(
            xb,
            raw[..., :k],
            raw[..., k : 2 * k],
            raw[..., 2 * k :],
            bound=self.bound,
            inverse=inverse,
        )
        return jnp.concatenate([xa, yb], axis=-1), jnp.sum(ld, axis=-1)

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(y [n, d], log|det dy/dx| [n])``."""
        return self._apply(x, inverse=False)

    def inverse(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [n, d], log|det dx/dy| [n])``."""
        return self._apply(y, inverse=True)


class LULinear(nnx.Module):
    """Invertible linear map ``y = x W^T``, ``W = P L U``.

    ``P`` reverses the coordinates (so that successive couplings condition on
    different halves), ``L`` is unit lower triangular and ``U`` upper
    triangular with diagonal ``exp(log_diag)``; both start at the identity.
    ``log |det W| = sum(log_diag)``; the inverse is two triangular solves.

    Args:
      features: data dimension ``d``.
      param_dtype: dtype of the weights.
      rngs: unused (deterministic initialisation), for a uniform signature.

    Example:
      >>> b = LULinear(3, rngs=nnx.Rngs(0))
      >>> b.forward(jnp.array([[1.0, 2.0, 3.0]]))[0].tolist()
      [[3.0, 2.0, 1.0]]
    """

    def __init__(self, features: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Starts at the reversal ``P``; see the class docstring."""
        del rngs
        zeros = jnp.zeros((features, features), param_dtype)
        self.lower = nnx.Param(zeros)
        self.upper = nnx.Param(zeros)
        self.log_diag = nnx.Param(jnp.zeros((features,), param_dtype))

    def _factors(self):
        d = self.log_diag.shape[0]
        lower = jnp.tril(self.lower[...], -1) + jnp.eye(d, dtype=self.lower.dtype)
        upper = jnp.triu(self.upper[...], 1) + jnp.diag(jnp.exp(self.log_diag[...]))
        return lower, upper

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(y [n, d], log|det dy/dx| [n])``."""
        lower, upper = self._factors()
        y = (x @ upper.T @ lower.T)[..., ::-1]
        return y, jnp.broadcast_to(jnp.sum(self.log_diag[...]), x.shape[:-1])

    def inverse(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [n, d], log|det dx/dy| [n])``."""
        lower, upper = self._factors()
        # Right-side solves on the [n, d] batch (x U^T L^T = y): no transposes
        # of the batch, and fast on CPU where a left-side solve with n
        # right-hand sides is not.
        solve = functools.partial(
            jax.lax.linalg.triangular_solve, left_side=False, transpose_a=True
        )
        u = solve(lower, y[..., ::-1], lower=True, unit_diagonal=True)
        x = solve(upper, u, lower=False)
        return x, jnp.broadcast_to(-jnp.sum(self.log_diag[...]), y.shape[:-1])


class ActNorm(nnx.Module):
    """Elementwise affine ``y = x exp(log_scale) + loc`` (Glow's actnorm).

    Args:
      features: data dimension ``d``.
      param_dtype: dtype of the weights.
      rngs: unused, for a uniform signature.

    Example:
      >>> b = ActNorm(2, rngs=nnx.Rngs(0))
      >>> b.initialize(jnp.array([[0.0, 1.0], [2.0, 5.0]]))
      >>> b.inverse(jnp.array([[1.0, 3.0]]))[0].tolist()
      [[0.0, 0.0]]
    """

    def __init__(self, features: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Starts at the identity; see the class docstring."""
        del rngs
        self.loc = nnx.Param(jnp.zeros((features,), param_dtype))
        self.log_scale = nnx.Param(jnp.zeros((features,), param_dtype))

    def initialize(self, x: jax.Array) -> None:
        """Sets ``loc`` and ``log_scale`` to the mean and std of ``x: [n, d]``."""
        x = jnp.asarray(x, self.loc.dtype)
        std = jnp.std(x, axis=0)
        self.loc[...] = jnp.mean(x, axis=0)
        self.log_scale[...] = jnp.log(jnp.where(std > 0, std, 1.0))

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(y [n, d], log|det dy/dx| [n])``."""
        y = x * jnp.exp(self.log_scale[...]) + self.loc[...]
        return y, jnp.broadcast_to(jnp.sum(self.log_scale[...]), x.shape[:-1])

    def inverse(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [n, d], log|det dx/dy| [n])``."""
        x = (y - self.loc[...]) * jnp.exp(-self.log_scale[...])
        return x, jnp.broadcast_to(-jnp.sum(self.log_scale[...]), y.shape[:-1])


class Logit(nnx.Module):
    """``y = log(x / (1 - x))``: maps the uniform base ``(0, 1)^d`` onto ``R^d``.

    Example:
      >>> Logit().forward(jnp.array([[0.5]]))[0].tolist()
      [[0.0]]
    """

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(y [n, d], log|det dy/dx| [n])``."""
        y = jnp.log(x) - jnp.log1p(-x)
        return y, -jnp.sum(jnp.log(x) + jnp.log1p(-x), axis=-1)

    def inverse(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [n, d], log|det dx/dy| [n])``."""
        ld = -jax.nn.softplus(y) - jax.nn.softplus(-y)
        return jax.nn.sigmoid(y), jnp.sum(ld, axis=-1)


class _Block(nnx.Module):
    """One layer of a :class:`Flow`: a coupling, then a linear mixing."""

    def __init__(self, features, *, transform, linear, knots, bound, kw, rngs):
        if transform == "spline":
            self.coupling = SplineCoupling(
                features, knots=knots, bound=bound, rngs=rngs, **kw
            )
        else:
            self.coupling = AffineCoupling(features, rngs=rngs, **kw)
        if linear == "lu":
            self.linear = LULinear(features, param_dtype=kw["param_dtype"], rngs=rngs)
        else:
            self.linear = _Reverse()

    def forward(self, x):
        y, ld1 = self.coupling.forward(x)
        y, ld2 = self.linear.forward(y)
        return y, ld1 + ld2

    def inverse(self, y):
        x, ld2 = self.linear.inverse(y)
        x, ld1 = self.coupling.inverse(x)
        return x, ld1 + ld2


class _Reverse(nnx.Module):
    """Reverses the coordinates (volume-preserving)."""

    def forward(self, x):
        return x[..., ::-1], jnp.zeros(x.shape[:-1], x.dtype)

    def inverse(self, y):
        return self.forward(y)


class Flow(nnx.Module):
    """A normalizing flow ``x = f(z)``: bijectors over a base distribution.

    Base side first: [:class:`Logit` for the uniform base], then ``layers``
    times (:class:`SplineCoupling` or :class:`AffineCoupling`, then
    :class:`LULinear` or a plain reversal), then :class:`ActNorm` (data side).
    Reading from the data: standardise, then alternate linear mixing and
    coupling. The ``layers`` blocks share one structure: their parameters are
    stacked along a leading axis (``nnx.vmap`` at construction) and applied by
    one unrolled ``lax.scan``.

    Args:
      features: data dimension ``d >= 2``.
      layers: number of coupling layers.
      transform: ``"spline"`` or ``"affine"``.
      linear: ``"lu"`` (:class:`LULinear`) or ``"reverse"`` (a fixed
        permutation) between couplings.
      knots: bins of each spline.
      bound: the splines act on ``[-bound, bound]`` (in standardised units:
        the data-side ActNorm starts at the data's mean and scale). Tight
        enough that the bins spend their resolution on the data, not on
        empty space; the tails map by the identity.
      hidden: hidden widths of every conditioner.
      activation: their activation.
      base: ``"normal"`` (``N(0, I)``) or ``"uniform"`` (``U(0, 1)^d``).
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs``.

    Example:
      >>> flow = Flow(2, layers=2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> flow(jnp.zeros((3, 2))).shape  # log-densities
      (3,)
    """

    def __init__(
        self,
        features: int,
        *,
        layers: int = 8,
        transform: str = "spline",
        linear: str = "lu",
        knots: int = 8,
        bound: float = 2.5,
        hidden=(64, 64),
        activation="relu",
        base: str = "normal",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the bijectors; see the class docstring."""
        if features < 2:
            raise ValueError(f"a coupling flow needs features >= 2, got {features}")
        _validate.check_choice(transform, "transform", ("spline", "affine"))
        _validate.check_choice(linear, "linear", ("lu", "reverse"))
        _validate.check_choice(base, "base", BASES)
        _validate.check_int(layers, "layers", minimum=1)
        kw = dict(hidden=hidden, activation=activation, param_dtype=param_dtype)

        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def blocks(rngs):
            return _Block(
                features,
                transform=transform,
                linear=linear,
                knots=knots,
                bound=bound,
                kw=kw,
                rngs=rngs,
            )

        self.blocks = blocks(rngs)
        self.norm = ActNorm(features, param_dtype=param_dtype, rngs=rngs)
        self.base = base
        self.features = features

    def _scan(self, x: jax.Array, inverse: bool) -> tuple[jax.Array, jax.Array]:
        graphdef, state = nnx.split(self.blocks)

        def body(carry, layer_state):
            x, total = carry
            block = nnx.merge(graphdef, layer_state)
            x, ld = block.inverse(x) if inverse else block.forward(x)
            return (x, total + ld), None

        # zeros_like(x): the carry is device-varying like x under shard_map.
        start = (x, jnp.zeros_like(x[..., 0]))
        # Unrolled: XLA then fuses across the small per-layer operations (a
        # third more training steps per second on CPU than a rolled loop).
        (x, total), _ = jax.lax.scan(body, start, state, reverse=inverse, unroll=True)
        return x, total

    def forward(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Base to data: ``(x [n, d], log|det dx/dz| [n])``."""
        total = jnp.zeros(z.shape[:-1], z.dtype)
        if self.base == "uniform":
            z, total = Logit().forward(z)
        z, ld = self._scan(z, inverse=False)
        x, ld_norm = self.norm.forward(z)
        return x, total + ld + ld_norm

    def inverse(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Data to base: ``(z [n, d], log|det dz/dx| [n])``."""
        z, total = self.norm.inverse(x)
        z, ld = self._scan(z, inverse=True)
        total = total + ld
        if self.base == "uniform":
            z, ld = Logit().inverse(z)
            total = total + ld
        return z, total

    def __call__(self, x: jax.Array) -> jax.Array:
        """[n] log-density of ``x: [n, d]`` (change of variables)."""
        z, ld = self.inverse(x)
        return base_log_prob(z, self.base) + ld

    def generate(self, key: jax.Array, n: int, dtype: Any = None) -> jax.Array:
        """[n, d] samples ``f(z)``, ``z`` drawn from the base."""
        dtype = self.norm.loc.dtype if dtype is None else dtype
        z = draw_latent(key, self.base, (n, self.features), dtype)
        return self.forward(z)[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlowDensity:
    """A trained flow as a density model: ``(graphdef, params)``, a pytree.

    ``graphdef`` (the :class:`Flow`'s ``nnx.GraphDef``) is static pytree
    metadata, ``params`` (its ``nnx.Param`` state as a pure dict) the leaves:
    the model passes through ``jax.jit`` and ``jax.vmap``, and
    ``nnx.merge(graphdef, params)`` rebuilds the module.
    """

    graphdef: Any = dataclasses.field(metadata=dict(static=True))  # nnx.GraphDef
    params: Any  # pure dict of parameter arrays (nested by module path)

    @classmethod
    def from_module(cls, flow: Flow) -> "FlowDensity":
        """The density model of a :class:`Flow` module (its parameters copied)."""
        graphdef, state = nnx.split(flow, nnx.Param)
        return cls(graphdef, nnx.to_pure_dict(state))

    def module(self) -> Flow:
        """The :class:`Flow` module."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def features(self) -> int:
        """Data dimension ``d``."""
        return self.params["norm"]["loc"].shape[-1]

    def log_prob(self, x: Any) -> jax.Array:
        """[n] log-density of ``x: [n, d]``; see :func:`log_prob`."""
        return log_prob(self, x)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """[n, d] samples; see :func:`sample`."""
        return sample(key, self, n)


def _merge(model: FlowDensity) -> Flow:
    return nnx.merge(model.graphdef, model.params)


@jax.jit
def _log_prob(model: FlowDensity, x: jax.Array) -> jax.Array:
    return _merge(model)(x)


@functools.partial(jax.jit, static_argnames="n")
def _sample(key: jax.Array, model: FlowDensity, n: int) -> jax.Array:
    flow = _merge(model)
    dtype = jax.tree.leaves(model.params)[0].dtype
    return flow.generate(key, n, dtype)


def _check_model(model: Any) -> FlowDensity:
    if not isinstance(model, FlowDensity):
        raise TypeError(
            f"model must be a FlowDensity (generative.density(result)), got "
            f"{type(model).__name__}"
        )
    return model


def log_prob(model: FlowDensity, x: Any, *, validate: bool = True) -> jax.Array:
    """Log-density of a flow by the change of variables.

    ``log p(x) = log p_Z(z) + log |det dz/dx|`` with ``z = f^{-1}(x)``, the
    log-determinant summed over the bijectors in the same pass. Jitted.

    Args:
      model: a :class:`FlowDensity`.
      x: [n, d] points.
      validate: check eagerly that ``x`` is finite.

    Returns:
      [n] log-densities in nats, in the parameters' dtype (``-inf`` outside
      the support of a uniform base).

    Example:
      >>> flow = Flow(2, layers=1, hidden=(8,), rngs=nnx.Rngs(0))
      >>> model = FlowDensity.from_module(flow)  # at init: N(0, I)
      >>> round(float(log_prob(model, jnp.zeros((1, 2)))[0]), 4)
      -1.8379
    """
    model = _check_model(model)
    dtype = jax.tree.leaves(model.params)[0].dtype
    x = _validate.as_float(x, "x", ndim=2, dtype=dtype)
    _validate.check_finite(x, "x", validate)
    if x.shape[1] != model.features:
        raise ValueError(
            f"x has {x.shape[1]} features but the flow models {model.features}"
        )
    return _log_prob(model, x)


def sample(key: jax.Array, model: FlowDensity, n: int) -> jax.Array:
    """Draws ``n`` samples ``f(z)``, ``z`` from the base. Jitted per ``n``.

    Args:
      key: PRNG key.
      model: a :class:`FlowDensity`.
      n: number of samples.

    Returns:
      [n, d] samples in the parameters' dtype.

    Example:
      >>> flow = Flow(2, layers=1, hidden=(8,), rngs=nnx.Rngs(0))
      >>> sample(jax.random.key(0), FlowDensity.from_module(flow), 5).shape
      (5, 2)
    """
    model = _check_model(model)
    n = _validate.check_int(n, "n", minimum=0)
    return _sample(key, model, n)


def density(result: Any) -> FlowDensity:
    """The density model of a ``method="flow"`` :class:`~densax.generative.TrainResult`.

    Args:
      result: the output of ``densax.generative.train(..., method="flow")``.

    Returns:
      A :class:`FlowDensity`.

    Raises:
      ValueError: ``result`` is not a flow's (GANs have no density; for a
        DDPM use :func:`densax.generative.diffusion.ode_log_prob`).
    """
    if getattr(result, "method", None) != "flow":
        raise ValueError(
            f"result must come from train(..., method='flow'), got method "
            f"{getattr(result, 'method', None)!r}; GANs have no density and a "
            f"DDPM's is diffusion.ode_log_prob"
        )
    return FlowDensity.from_module(result.generator)


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """Options of flow training (``method="flow"``; static, hashable).

    Attributes:
      layers: number of coupling layers.
      transform: ``"spline"`` (rational-quadratic) or ``"affine"`` (RealNVP).
        Affine couplings are smooth but train less reliably at the default
        step size: with wide conditioners (``hidden=(256, 256)``, 16 layers)
        Adam's first steps can throw the flow far from the data, and the run
        may settle on a likelihood worse than its start. Clipping the
        gradients (``optimizer=optax.chain(optax.clip_by_global_norm(1.0),
        optax.adam(...))``) helps. :func:`~densax.generative.train` reports
        a run that ends worse on its training data than it started
        (``result.diverged``, with a ``RuntimeWarning``); a partial failure
        shows in ``result.history.losses["nll"]``.
      linear: ``"lu"`` or ``"reverse"`` between couplings.
      knots: bins of each spline. Fewer bins make each layer a smoother
        map, which overfits a sample of a few tens of thousands of points
        less; more ``layers`` give the expressiveness back (the trade is
        measured in ``benchmarks/bench_flows_smooth.py``).
      bound: spline interval ``[-bound, bound]`` in standardised units (see
        :class:`Flow`).
      hidden: hidden widths of the conditioners.
      activation: activation name or callable.
      base: ``"normal"`` or ``"uniform"``.
      learning_rate: Adam's (initial) step size.
      lr_schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      optimizer: an Optax optimiser replacing Adam.
      noise: standard deviation of Gaussian noise added to every training
        batch, in units of each feature's standard deviation in the training
        data (noise regularisation; 0 turns it off). The flow then fits the
        data convolved with that noise: a small bias (structure of width
        ``w`` is widened to ``sqrt(w^2 + (noise * std)^2)``) traded for less
        overfitting of the training points: it helps where the data's
        finest structure is wide compared with the noise and costs much
        where it is not (tight clusters). The batches drawn are those of a
        run without noise (the noise has its own random stream).

    References:
      Rothfuss et al., *Noise Regularization for Conditional Density
      Estimation*, 2019 (adding noise to the training data as a smoothness
      penalty on the fitted density).

    Example:
      >>> FlowOptions(noise=0.02, activation="tanh").noise
      0.02
    """

    layers: int = 8
    transform: str = "spline"
    linear: str = "lu"
    knots: int = 8
    bound: float = 2.5
    hidden: tuple[int, ...] = (64, 64)
    activation: str | Callable = "relu"
    base: str = "normal"
    learning_rate: float = 3e-3
    lr_schedule: str = "cosine"
    b1: float = 0.9
    b2: float = 0.999
    optimizer: optax.GradientTransformation | None = None
    noise: float = 0.0

    def __post_init__(self):
        """Normalises ``hidden`` and checks the values."""
        object.__setattr__(self, "hidden", check_widths(self.hidden))
        get_activation(self.activation)
        _validate.check_int(self.layers, "layers", minimum=1)
        _validate.check_int(self.knots, "knots", minimum=2)
        _validate.check_choice(self.transform, "transform", ("spline", "affine"))
        _validate.check_choice(self.linear, "linear", ("lu", "reverse"))
        _validate.check_choice(self.base, "base", BASES)
        _validate.check_choice(self.lr_schedule, "lr_schedule", ("cosine", "constant"))
        if not self.bound > 0:
            raise ValueError(f"bound must be positive, got {self.bound}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}"
            )
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {self.noise}")


def _networks(options: FlowOptions, features, dtype, rngs):
    flow = Flow(
        features,
        layers=options.layers,
        transform=options.transform,
        linear=options.linear,
        knots=options.knots,
        bound=options.bound,
        hidden=options.hidden,
        activation=options.activation,
        base=options.base,
        param_dtype=dtype,
        rngs=rngs,
    )
    return {"flow": flow}


def _prepare(networks: dict[str, nnx.Module], data: jax.Array) -> None:
    networks["flow"].norm.initialize(data)


def _step(ctx: StepContext, params, opt_state, key):
    x = ctx.real_batch(key)
    if ctx.options.noise:  # static: without noise, the step is unchanged
        scale = ctx.options.noise * jnp.std(ctx.data, axis=0)
        x = x + scale * ctx.normal(jax.random.fold_in(key, 1), x.shape[-1])

    def loss(p):
        return -batch_mean(ctx.apply("flow", p, x), ctx.axis_name)

    p, s, value = ctx.update("flow", loss, params["flow"], opt_state["flow"])
    return {"flow": p}, {"flow": s}, {"nll": value}


def _score(networks: dict[str, nnx.Module], options, x: jax.Array) -> jax.Array:
    """[] the training objective on ``x: [k, d]``: the mean negative log-likelihood.

    With noise regularisation, of ``x`` plus one fixed draw of that noise (the
    objective the steps lower is that of the noisy data).
    """
    if options.noise:
        eps = jax.random.normal(jax.random.key(0), x.shape, x.dtype)
        x = x + options.noise * jnp.std(x, axis=0) * eps
    return -jnp.mean(networks["flow"](x))


def _method_sample(model: Flow, options, key, n, dtype):
    del options
    return model.generate(key, n, dtype)


METHODS: dict[str, Method] = {
    "flow": Method(
        FlowOptions,
        _networks,
        lambda o, n: {"flow": adam(o, n)},
        _step,
        _method_sample,
        batch_size=256,
        prepare=_prepare,
        score=_score,
    ),
}
