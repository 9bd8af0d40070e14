"""Bijectors of :mod:`densax.generative.flows`: invertible maps, log-determinants.

Flax ``nnx`` modules acting on a batch ``[n, d]``; each returns the
transformed batch and the ``[n]`` log-determinant of the map it applied, in
one pass, in both directions (``forward``: base side to data side;
``inverse``: data side to base side, the direction of ``log_prob``):

* :class:`AffineCoupling` (RealNVP): ``y_b = x_b exp(s(x_a)) + t(x_a)``.
* :class:`SplineCoupling` (neural spline flow): a monotone rational-quadratic
  spline of ``x_b`` on ``[-bound, bound]`` (identity outside) whose knots are
  functions of ``x_a`` (:func:`rational_quadratic_spline`).
* :class:`LogisticMixtureCoupling` (Flow++): the logit of a logistic-mixture
  CDF of ``x_b`` whose components are functions of ``x_a``; smooth, closed
  form towards the base, safeguarded Newton towards the data.
* :class:`LULinear`: ``y = x W^T`` with ``W = P L U`` (``P`` the reversal,
  ``L`` unit lower, ``U`` upper triangular): ``log |det W| = sum log |diag
  U|``, the inverse by two triangular solves.
* :class:`ActNorm`: elementwise ``y = x exp(log_scale) + loc``, initialised
  from the data's mean and scale (Kingma & Dhariwal's data-dependent
  initialisation) by :func:`densax.generative.train`.
* :class:`Logit` maps the uniform base to the real line.

In a coupling, ``x_a`` is the first ``d // 2`` coordinates (left unchanged)
and ``x_b`` the rest; the conditioner's last layer starts at zero.

References:
  Dinh, Sohl-Dickstein and Bengio, *Density Estimation Using Real NVP*, ICLR
  2017. Durkan, Bekasov, Murray and Papamakarios, *Neural Spline Flows*,
  NeurIPS 2019. Ho, Chen, Srinivas, Duan and Abbeel, *Flow++*, ICML 2019.
  Kingma and Dhariwal, *Glow: Generative Flow with Invertible 1x1
  Convolutions*, NeurIPS 2018.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from densax.generative.models import MLP

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "LULinear",
    "LogisticMixtureCoupling",
    "Logit",
    "SplineCoupling",
    "rational_quadratic_spline",
]


def _conditioner(
    features: int, outputs: int, *, hidden, activation, param_dtype, rngs
) -> MLP:
    """A coupling's MLP: ``x_a`` to ``outputs`` parameters per coordinate of ``x_b``.

    Its last layer's kernel starts at zero, so that the parameters start the
    same for every ``x_a`` (the bias sets where: the identity for the affine
    and spline couplings).
    """
    k = features // 2
    net = MLP(
        k,
        (features - k) * outputs,
        hidden=hidden,
        activation=activation,
        param_dtype=param_dtype,
        rngs=rngs,
    )
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
        self.net = _conditioner(
            features,
            2,
            hidden=hidden,
            activation=activation,
            param_dtype=param_dtype,
            rngs=rngs,
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
        self.knots = knots
        self.bound = float(bound)
        self.net = _conditioner(
            features,
            3 * knots - 1,
            hidden=hidden,
            activation=activation,
            param_dtype=param_dtype,
            rngs=rngs,
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


def _logistic_mixture_logit(
    x: jax.Array, log_weights: jax.Array, means: jax.Array, log_scales: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``h = logit(F(x))`` of the mixture CDF ``F`` and ``log dh/dx``, in log space.

    ``F(x) = sum_k w_k sigmoid((x - mu_k) / s_k)``; elementwise over ``x: [...]``
    with ``[..., K]`` mixture parameters (``log_weights`` normalised).
    """
    z = (x[..., None] - means) * jnp.exp(-log_scales)
    # Two softplus: log sigmoid(-z) as log sigmoid(z) - z saves one, but its
    # derivative sigmoid(-z) - 1 cancels for z << 0, and training on tight
    # clusters (8 Gaussians) came out worse with it.
    up, down = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    log_f = jax.nn.logsumexp(log_weights + up, axis=-1)  # log F
    log_g = jax.nn.logsumexp(log_weights + down, axis=-1)  # log (1 - F)
    log_pdf = jax.nn.logsumexp(log_weights + up + down - log_scales, axis=-1)
    return log_f - log_g, log_pdf - log_f - log_g


def _invert_logistic_mixture_logit(
    target: jax.Array, log_weights: jax.Array, means: jax.Array, log_scales: jax.Array
) -> jax.Array:
    """``x`` with ``h(x) = target`` (:func:`_logistic_mixture_logit`), no gradient.

    Newton's method safeguarded by bisection: the bracket ``[min_k(mu_k + s_k
    t), max_k(mu_k + s_k t)]`` holds the root (every component's CDF crosses
    ``sigmoid(t)`` inside it) and shrinks at every iteration; a Newton step
    that would leave it is replaced by the midpoint. Elements stop once their
    step is below the dtype's resolution; at most ``nmant + 16`` iterations,
    enough for bisection alone to reach it.
    """
    ends = means + jnp.exp(log_scales) * target[..., None]
    lo, hi = jnp.min(ends, axis=-1), jnp.max(ends, axis=-1)
    # Start from the weighted mean of the components' own inverses.
    x = jnp.sum(jnp.exp(log_weights) * ends, axis=-1)
    eps = jnp.finfo(target.dtype).eps
    max_iter = jnp.finfo(target.dtype).nmant + 16

    def body(state):
        i, lo, hi, x, done = state
        h, log_dh = _logistic_mixture_logit(x, log_weights, means, log_scales)
        below = h < target
        lo, hi = jnp.where(below, x, lo), jnp.where(below, hi, x)
        step = (h - target) * jnp.exp(-log_dh)
        newton = x - step
        inside = (newton > lo) & (newton < hi)
        small = jnp.abs(step) <= 4 * eps * (1 + jnp.abs(x))
        new = jnp.where(inside | small, newton, 0.5 * (lo + hi))
        return i + 1, lo, hi, jnp.where(done, x, new), done | small

    def cond(state):
        i, _, _, _, done = state
        return (i < max_iter) & ~jnp.all(done)

    start = (0, lo, hi, x, jnp.zeros(x.shape, bool))
    return jax.lax.while_loop(cond, body, start)[3]


class LogisticMixtureCoupling(nnx.Module):
    """Coupling with a logistic-mixture CDF of ``x_b`` given ``x_a`` (Flow++).

    Read from the data (the direction of ``log_prob``), each coordinate of
    ``x_b`` is mapped by

        ``h(x) = logit(sum_k w_k sigmoid((x - mu_k) / s_k))``, then
        ``h exp(a) + b``,

    with the ``3K + 2`` parameters ``(w, mu, log s, a, b)`` computed from
    ``x_a`` by the conditioner MLP. Unlike the spline (whose density has a
    kink at every knot), the map is infinitely differentiable, and it is
    linear in both tails (slope ``exp(a) / max_k s_k``: the widest component
    decays last), so no interval has to be chosen. Bounds keep every layer
    tame: ``|log s_k| < 3`` and ``|a| < 1``.

    The other direction (from the base: sampling) has no closed form: it is
    found by Newton's method safeguarded by bisection on ``[min_k(mu_k + s_k
    h), max_k(mu_k + s_k h)]``, which brackets the root because each
    component's CDF crosses ``sigmoid(h)`` inside it, then refined by one
    Newton step through which gradients flow as those of the implicit
    function, so samples are differentiable in the parameters and in the
    base draw.

    At initialisation (last conditioner layer zero) the components have unit
    scale, equal weights and means spread over ``[-1.5, 1.5]``, the same for
    every ``x_a``: a smooth increasing map close to a shift and scaling.

    Args:
      features: data dimension ``d >= 2``.
      components: number of logistic components ``K``.
      hidden: hidden widths of the conditioner MLP.
      activation: its activation (``"tanh"`` keeps the whole map smooth).
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs``.

    References:
      Ho, Chen, Srinivas, Duan and Abbeel, *Flow++: Improving Flow-Based
      Generative Models with Variational Dequantization and Architecture
      Design*, ICML 2019, §3.2.

    Example:
      >>> b = LogisticMixtureCoupling(2, components=3, hidden=(8,),
      ...                             rngs=nnx.Rngs(0))
      >>> z = jnp.array([[0.5, -1.0], [2.0, 3.0]])
      >>> x, ld = b.forward(z)  # base to data: root finding
      >>> z_back, ld_back = b.inverse(x)  # data to base: closed form
      >>> bool(jnp.allclose(z_back, z, atol=1e-5))
      True
      >>> bool(jnp.allclose(ld + ld_back, 0.0, atol=1e-5))
      True
    """

    def __init__(
        self,
        features: int,
        *,
        components: int = 4,
        hidden=(64, 64),
        activation="relu",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the conditioner; see the class docstring."""
        k = features // 2
        self.components = components
        self.net = _conditioner(
            features,
            3 * components + 2,
            hidden=hidden,
            activation=activation,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        # The means start spread out: with equal means every component would
        # get the same gradient and the mixture would stay one logistic.
        spread = jnp.linspace(-1.5, 1.5, components, dtype=param_dtype)
        bias = jnp.zeros((features - k, 3 * components + 2), param_dtype)
        bias = bias.at[:, components : 2 * components].set(spread)
        self.net.layers[-1].bias[...] = bias.reshape(-1)

    def _params(self, xa: jax.Array, shape: tuple[int, ...]):
        k = self.components
        raw = self.net(xa).reshape(*shape, 3 * k + 2)
        log_weights = jax.nn.log_softmax(raw[..., :k], axis=-1)
        means = raw[..., k : 2 * k]
        log_scales = 3.0 * jnp.tanh(raw[..., 2 * k : 3 * k] / 3.0)
        return log_weights, means, log_scales, jnp.tanh(raw[..., -2]), raw[..., -1]

    def inverse(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x [n, d], log|det dx/dy| [n])``: data to base, in closed form."""
        ya, yb = _split(y)
        log_w, means, log_s, a, b = self._params(ya, yb.shape)
        h, log_dh = _logistic_mixture_logit(yb, log_w, means, log_s)
        xb = h * jnp.exp(a) + b
        return jnp.concatenate([ya, xb], axis=-1), jnp.sum(log_dh + a, axis=-1)

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(y [n, d], log|det dy/dx| [n])``: base to data, by root finding."""
        xa, xb = _split(x)
        log_w, means, log_s, a, b = self._params(xa, xb.shape)
        target = (xb - b) * jnp.exp(-a)  # h(y_b) = target
        fixed = jax.lax.stop_gradient((target, log_w, means, log_s))
        root = _invert_logistic_mixture_logit(*fixed)
        # One Newton step from the (constant) root: it polishes the value,
        # and its derivative is the implicit function's, d root = -dF / F'.
        h, log_dh = _logistic_mixture_logit(root, log_w, means, log_s)
        yb = root - (h - target) * jax.lax.stop_gradient(jnp.exp(-log_dh))
        log_dh = _logistic_mixture_logit(yb, log_w, means, log_s)[1]
        return jnp.concatenate([xa, yb], axis=-1), -jnp.sum(log_dh + a, axis=-1)


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
