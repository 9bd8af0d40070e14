"""Divergences between distributions: Kullback–Leibler and Jensen–Shannon.

Discrete distributions (probability vectors, or their logarithms) get exact
sums; Gaussians get the closed form; any two density models (the
:class:`densax.density.Density` contract: ``.log_prob(x)`` and
``.sample(key, n)``) get a Monte Carlo estimate with its standard error.

Conventions: ``0 log 0 = 0``; ``KL(p || q) = +inf`` where ``q = 0 < p`` (such
a term gets a zero derivative, so that gradients elsewhere in a batch stay
finite rather than NaN); ``0 <= JS <= log 2``; natural logarithms unless
``base`` is given. NaN inputs give NaN results, batch element by batch element.

References:
  Cover, T. M. and Thomas, J. A. (2006). Elements of Information Theory, 2nd
  ed., §2.3.
  Lin, J. (1991). Divergence measures based on the Shannon entropy. IEEE
  Trans. Inf. Theory 37(1), 145–151.
"""

import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from densax import _validate
from densax.density import Density, check_density

__all__ = [
    "MonteCarloEstimate",
    "js_divergence",
    "js_divergence_from_log",
    "js_monte_carlo",
    "kl_divergence",
    "kl_divergence_from_log",
    "kl_gaussian",
    "kl_monte_carlo",
]

_LOG2 = math.log(2.0)


class MonteCarloEstimate(NamedTuple):
    """A Monte Carlo estimate and its standard error."""

    value: jax.Array  # [] float, the estimate
    std_error: jax.Array  # [] float, its standard error (inf if value is inf)


# ---------------------------------------------------------------------------
# Input checks.


def _check_axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for inputs of rank {ndim}")
    return int(axis) % ndim


def _log_base(base: Any) -> float | None:
    """``log(base)``, or ``None`` for natural logarithms."""
    if base is None:
        return None
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a positive number or None, got {base!r}")
    if not (math.isfinite(base) and base > 0 and base != 1):
        raise ValueError(f"base must be positive, finite and not 1, got {base}")
    return math.log(base)


def _pair(p: Any, q: Any, names: tuple[str, str], axis: Any):
    """Floating arrays of one dtype whose shapes broadcast, same length on ``axis``."""
    for x, name in zip((p, q), names, strict=True):
        _validate.as_float(x, name)
    dtype = _validate.common_float_dtype(p, q)
    p, q = (
        _validate.as_float(x, n, dtype=dtype)
        for x, n in zip((p, q), names, strict=True)
    )
    if p.ndim == 0 or q.ndim == 0:
        raise ValueError(
            f"{names[0]} and {names[1]} must have at least one axis, got shapes "
            f"{p.shape} and {q.shape}"
        )
    ndim = max(p.ndim, q.ndim)
    axis = _check_axis(axis, ndim)
    p = p.reshape((1,) * (ndim - p.ndim) + p.shape)
    q = q.reshape((1,) * (ndim - q.ndim) + q.shape)
    if p.shape[axis] != q.shape[axis]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same length along axis "
            f"{axis} (the support), got {p.shape[axis]} and {q.shape[axis]}"
        )
    try:
        jnp.broadcast_shapes(p.shape, q.shape)
    except ValueError as err:
        raise ValueError(
            f"the shapes of {names[0]} {p.shape} and {names[1]} {q.shape} do not "
            "broadcast"
        ) from err
    return p, q, axis


def _prepare(p, q, axis, normalize, base, validate, log_space):
    """Checked (and normalised) ``p``, ``q``, the support axis and ``log(base)``.

    Eager value checks: probabilities finite and non-negative (with a positive
    sum to normalise), log-probabilities neither NaN nor +inf.
    """
    names = ("log_p", "log_q") if log_space else ("p", "q")
    p, q, axis = _pair(p, q, names, axis)
    log_base = _log_base(base)
    if validate and _validate.is_concrete(p, q):
        for x, name in zip((p, q), names, strict=True):
            if log_space:
                bad = jnp.any(jnp.isnan(x) | (x == jnp.inf))
                _validate.value_check(True, ~bad, f"{name} contains NaN or +inf")
                continue
            _validate.check_finite(x, name, True)
            _validate.value_check(True, jnp.all(x >= 0), f"{name} must be non-negative")
            total = jnp.sum(x, axis=axis)
            if normalize:
                _validate.value_check(
                    True,
                    jnp.all(total > 0),
                    f"{name} must have a positive sum along axis {axis}",
                )
            else:
                _check_normalised(total, name, axis)
    if validate and log_space and not normalize and _validate.is_concrete(p, q):
        for x, name in zip((p, q), names, strict=True):
            _check_normalised(jnp.exp(logsumexp(x, axis=axis)), name, axis)
    if normalize and log_space:
        p = p - logsumexp(p, axis=axis, keepdims=True)
        q = q - logsumexp(q, axis=axis, keepdims=True)
    elif normalize:
        p = p / jnp.sum(p, axis=axis, keepdims=True)
        q = q / jnp.sum(q, axis=axis, keepdims=True)
    return p, q, axis, log_base


def _check_normalised(total: jax.Array, name: str, axis: int) -> None:
    """Eager check: sums (of probabilities) equal one (see ``check_sums_to_one``)."""
    _validate.check_sums_to_one(
        total,
        name,
        f" along axis {axis} with normalize=False (pass normalize=True to "
        "normalise it)",
    )


# ---------------------------------------------------------------------------
# Elementwise terms with safe derivatives (the "double where").


def _relative_terms(x: jax.Array, m: jax.Array) -> jax.Array:
    """``t log t - t + 1`` at ``t = x / m`` (``x, m > 0``), accurate near ``t = 1``.

    The direct form cancels to about ``eps / |t - 1|`` relative error; below
    ``|t - 1| = 0.1`` the alternating series ``sum_k (-r)^k / (k (k - 1))`` in
    ``r = (x - m) / m`` (k >= 2, 16 terms: truncation below 1e-19 relative)
    is used instead (``x - m`` is exact there).
    """
    small = jnp.abs(x - m) < 0.1 * m
    rs = jnp.where(small, (x - m) / m, 0)
    series = jnp.zeros_like(rs)
    for k in range(17, 1, -1):  # Horner, from the highest power
        series = (series + (-1) ** k / (k * (k - 1))) * rs
    series = series * rs
    t = jnp.where(small, 1, x / m)
    direct = jax.scipy.special.xlogy(t, t) - t + 1
    return jnp.where(small, series, direct)


def _x_log_ratio(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x log(x / y)``, elementwise (SciPy's ``rel_entr``).

    Where ``x`` and ``y`` nearly agree it is ``x log1p((x - y) / y)``: ``x -
    y`` is exact there, so the term keeps full relative precision (``log(x /
    y)`` would round ``x / y`` first and lose ``log10(1 / |x/y - 1|)``
    digits). 0 where ``x = 0``; +inf where ``y = 0 < x``, with a zero
    derivative so that a zero cotangent never meets an infinite one (which
    would give NaN); NaN and negative inputs give NaN.
    """
    zero, infinite = x == 0, (y == 0) & (x > 0)
    safe = zero | infinite
    xs, ys = jnp.where(safe, 1, x), jnp.where(safe, 1, y)
    near = jnp.abs(xs - ys) <= 0.5 * ys
    rel = jnp.where(near, (xs - ys) / ys, 0)
    ratio = jnp.where(near, 1, xs / ys)
    term = xs * jnp.where(near, jnp.log1p(rel), jnp.log(ratio))
    term = jnp.where((x < 0) | (y < 0), jnp.nan, term)
    return jnp.where(zero, 0, jnp.where(infinite, jnp.inf, term))


def _js_terms(x: jax.Array, m: jax.Array) -> jax.Array:
    """``x log(x / m) - x + m`` (``>= 0``), ``m = (x + x') / 2``, elementwise.

    The Jensen–Shannon sum of the two sides' terms equals the sum of their
    ``x log(x / m)`` (the ``- x + m`` cancel between the sides), and every
    term is non-negative, so nearly equal inputs lose no digits.
    """
    zero = x == 0
    xs, ms = jnp.where(zero, 1, x), jnp.where(zero, 1, m)
    return jnp.where(zero, m, ms * _relative_terms(xs, ms))


def _exp_log_ratio(lx: jax.Array, ly: jax.Array) -> jax.Array:
    """``exp(lx) (lx - ly)``, elementwise: ``_x_log_ratio`` in log space."""
    zero, infinite = lx == -jnp.inf, (ly == -jnp.inf) & (lx > -jnp.inf)
    safe = zero | infinite
    lxs, lys = jnp.where(safe, 0, lx), jnp.where(safe, 0, ly)
    term = jnp.exp(lxs) * (lxs - lys)
    return jnp.where(zero, 0, jnp.where(infinite, jnp.inf, term))


def _finish(value: jax.Array, log_base: float | None) -> jax.Array:
    return value if log_base is None else value / log_base


def _js_finish(value: jax.Array, log_base: float | None) -> jax.Array:
    # 0 <= JS <= log 2 holds exactly; the clip absorbs rounding.
    return _finish(jnp.clip(value, 0, _LOG2), log_base)


# ---------------------------------------------------------------------------
# Discrete distributions.


@_validate.public
def kl_divergence(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    normalize: bool = False,
    base: float | None = None,
    validate: bool = True,
) -> jax.Array:
    """Kullback–Leibler divergence ``KL(p || q) = Σ p log(p / q)``.

    Args:
      p: [..., k, ...] probabilities (non-negative, summing to one along
        ``axis``, or any positive total with ``normalize=True``).
      q: [..., k, ...] probabilities on the same support; shapes broadcast.
      axis: the support axis.
      normalize: divide ``p`` and ``q`` by their sums along ``axis`` first.
      base: logarithm base (``2`` for bits); natural log when ``None``.
      validate: on an eager call, check that the entries are finite and
        non-negative (and have a positive sum when normalising). Under
        ``jit`` a NaN propagates to its own result.

    Returns:
      [...] the divergences (``axis`` removed), ``+inf`` where ``q = 0 < p``.

    Raises:
      TypeError: non-numeric inputs or options of the wrong type.
      ValueError: supports of different lengths, shapes that do not broadcast,
        a bad ``axis`` or ``base``, or (eagerly) invalid probabilities.

    Example:
      >>> round(float(kl_divergence([0.5, 0.5], [0.9, 0.1])), 4)
      0.5108
      >>> float(kl_divergence([0.5, 0.5], [1.0, 0.0]))
      inf
    """
    p, q, axis, log_base = _prepare(p, q, axis, normalize, base, validate, False)
    return _finish(jnp.sum(_x_log_ratio(p, q), axis=axis), log_base)


@_validate.public
def js_divergence(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    normalize: bool = False,
    base: float | None = None,
    validate: bool = True,
) -> jax.Array:
    """Jensen–Shannon divergence ``½ KL(p || m) + ½ KL(q || m)``, ``m = (p + q) / 2``.

    Symmetric, finite and at most ``log 2`` (1 bit), which it reaches for
    disjoint supports. Its square root is a metric (SciPy's
    ``jensenshannon``).

    Args:
      p: [..., k, ...] probabilities along ``axis`` (see
        :func:`kl_divergence`).
      q: [..., k, ...] probabilities on the same support; shapes broadcast.
      axis: the support axis.
      normalize: divide ``p`` and ``q`` by their sums along ``axis`` first.
      base: logarithm base; natural log when ``None``.
      validate: eager value checks, as in :func:`kl_divergence`.

    Returns:
      [...] the divergences: in ``[0, log 2]`` in nats, ``[0, 1]`` in bits.

    Raises:
      TypeError: non-numeric inputs or options of the wrong type.
      ValueError: as in :func:`kl_divergence`.

    References:
      Lin (1991), Divergence measures based on the Shannon entropy.

    Example:
      >>> round(float(js_divergence([1.0, 0.0], [0.0, 1.0], base=2)), 4)
      1.0
    """
    p, q, axis, log_base = _prepare(p, q, axis, normalize, base, validate, False)
    m = (p + q) / 2
    terms = _js_terms(p, m) + _js_terms(q, m)
    return _js_finish(jnp.sum(terms, axis=axis) / 2, log_base)


@_validate.public
def kl_divergence_from_log(
    log_p: Any,
    log_q: Any,
    *,
    axis: int = -1,
    normalize: bool = False,
    base: float | None = None,
    validate: bool = True,
) -> jax.Array:
    """``KL(p || q)`` from log-probabilities, without leaving log space.

    Computes ``Σ exp(log_p) (log_p - log_q)``: no logarithm of a probability
    is taken, so probabilities far below the smallest float are handled.

    Args:
      log_p: [..., k, ...] log-probabilities (``-inf`` for zero).
      log_q: [..., k, ...] log-probabilities on the same support.
      axis: the support axis.
      normalize: subtract the ``logsumexp`` along ``axis`` first.
      base: logarithm base; natural log when ``None``.
      validate: on an eager call, check for NaN and ``+inf``.

    Returns:
      [...] the divergences, ``+inf`` where ``log_q = -inf < log_p``.

    Raises:
      TypeError: non-numeric inputs or options of the wrong type.
      ValueError: as in :func:`kl_divergence`.

    Example:
      >>> import jax.numpy as jnp
      >>> log_p = jnp.log(jnp.array([0.5, 0.5]))
      >>> log_q = jnp.log(jnp.array([0.9, 0.1]))
      >>> round(float(kl_divergence_from_log(log_p, log_q)), 4)
      0.5108
    """
    log_p, log_q, axis, log_base = _prepare(
        log_p, log_q, axis, normalize, base, validate, True
    )
    return _finish(jnp.sum(_exp_log_ratio(log_p, log_q), axis=axis), log_base)


@_validate.public
def js_divergence_from_log(
    log_p: Any,
    log_q: Any,
    *,
    axis: int = -1,
    normalize: bool = False,
    base: float | None = None,
    validate: bool = True,
) -> jax.Array:
    """Jensen–Shannon divergence from log-probabilities, in log space.

    The mixture is ``log m = logaddexp(log_p, log_q) - log 2``.

    Args:
      log_p: [..., k, ...] log-probabilities (``-inf`` for zero).
      log_q: [..., k, ...] log-probabilities on the same support.
      axis: the support axis.
      normalize: subtract the ``logsumexp`` along ``axis`` first.
      base: logarithm base; natural log when ``None``.
      validate: on an eager call, check for NaN and ``+inf``.

    Returns:
      [...] the divergences, in ``[0, log 2]`` (natural log).

    Raises:
      TypeError: non-numeric inputs or options of the wrong type.
      ValueError: as in :func:`kl_divergence`.

    Example:
      >>> import jax.numpy as jnp
      >>> log_p = jnp.array([0.0, -jnp.inf])
      >>> log_q = jnp.array([-jnp.inf, 0.0])
      >>> round(float(js_divergence_from_log(log_p, log_q)), 4)
      0.6931
    """
    log_p, log_q, axis, log_base = _prepare(
        log_p, log_q, axis, normalize, base, validate, True
    )
    # Where both are -inf, logaddexp's derivative is NaN: evaluate it elsewhere.
    both = (log_p == -jnp.inf) & (log_q == -jnp.inf)
    log_sum = jnp.logaddexp(jnp.where(both, 0, log_p), jnp.where(both, 0, log_q))
    log_m = jnp.where(both, -jnp.inf, log_sum) - _LOG2
    terms = _exp_log_ratio(log_p, log_m) + _exp_log_ratio(log_q, log_m)
    return _js_finish(jnp.sum(terms, axis=axis) / 2, log_base)


# ---------------------------------------------------------------------------
# Gaussians.


@jax.jit
def _kl_gaussian(mean_p, cov_p, mean_q, cov_q):
    d = mean_p.shape[-1]
    chol_p = jnp.linalg.cholesky(cov_p)
    chol_q = jnp.linalg.cholesky(cov_q)
    solve = functools.partial(jax.scipy.linalg.solve_triangular, lower=True)
    # tr(Σq⁻¹ Σp) = ‖Lq⁻¹ Lp‖²_F; the Mahalanobis term is ‖Lq⁻¹ (μq - μp)‖².
    trace = jnp.sum(solve(chol_q, chol_p) ** 2, axis=(-2, -1))
    z = solve(chol_q, (mean_q - mean_p)[..., None])[..., 0]
    log_det_p = 2 * jnp.sum(jnp.log(jnp.diagonal(chol_p, axis1=-2, axis2=-1)), -1)
    log_det_q = 2 * jnp.sum(jnp.log(jnp.diagonal(chol_q, axis1=-2, axis2=-1)), -1)
    return (trace + jnp.sum(z**2, axis=-1) - d + log_det_q - log_det_p) / 2


@_validate.public
def kl_gaussian(
    mean_p: Any, cov_p: Any, mean_q: Any, cov_q: Any, *, validate: bool = True
) -> jax.Array:
    """Closed-form ``KL(N(μp, Σp) || N(μq, Σq))``, through Cholesky factors.

    ``½ [tr(Σq⁻¹ Σp) + (μq - μp)ᵀ Σq⁻¹ (μq - μp) - d + log|Σq| - log|Σp|]``,
    with triangular solves instead of inverses.

    Args:
      mean_p: [..., d] mean of ``p``.
      cov_p: [..., d, d] covariance of ``p`` (symmetric positive definite).
      mean_q: [..., d] mean of ``q``.
      cov_q: [..., d, d] covariance of ``q``. Leading axes broadcast.
      validate: on an eager call, check that both covariances are symmetric
        positive definite. Under ``jit`` a covariance that is not positive
        definite gives NaN, and a non-symmetric one is used through its lower
        triangle.

    Returns:
      [...] the divergences.

    Raises:
      TypeError: non-numeric inputs.
      ValueError: mismatched dimensions, non-square covariances, or
        (eagerly) a covariance that is not symmetric positive definite.

    Example:
      >>> import jax.numpy as jnp
      >>> kl = kl_gaussian(jnp.zeros(2), jnp.eye(2), jnp.ones(2), 2 * jnp.eye(2))
      >>> round(float(kl), 4)
      0.6931
    """
    names = ("mean_p", "cov_p", "mean_q", "cov_q")
    args = (mean_p, cov_p, mean_q, cov_q)
    for x, name in zip(args, names, strict=True):
        _validate.as_float(x, name)
    dtype = _validate.common_float_dtype(*args)
    mean_p, cov_p, mean_q, cov_q = (
        _validate.as_float(x, name, dtype=dtype)
        for x, name in zip(args, names, strict=True)
    )
    shapes = f"{mean_p.shape}, {cov_p.shape}, {mean_q.shape}, {cov_q.shape}"
    arrays = (mean_p, cov_p, mean_q, cov_q)
    for x, name, rank in zip(arrays, names, (1, 2, 1, 2), strict=True):
        if x.ndim < rank or (rank == 2 and x.shape[-1] != x.shape[-2]):
            want = "[..., d]" if rank == 1 else "[..., d, d]"
            raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    d = mean_p.shape[-1]
    if {mean_q.shape[-1], cov_p.shape[-1], cov_q.shape[-1]} != {d}:
        raise ValueError(
            f"means and covariances must share the dimension d, got {shapes}"
        )
    try:
        batch = jnp.broadcast_shapes(
            mean_p.shape[:-1], cov_p.shape[:-2], mean_q.shape[:-1], cov_q.shape[:-2]
        )
    except ValueError as err:
        raise ValueError(f"the batch shapes do not broadcast: {shapes}") from err
    if validate and _validate.is_concrete(*args):
        for cov, name in ((cov_p, "cov_p"), (cov_q, "cov_q")):
            _validate.check_positive_definite(cov, name, True)
    mean_p, mean_q = (jnp.broadcast_to(m, (*batch, d)) for m in (mean_p, mean_q))
    cov_p, cov_q = (jnp.broadcast_to(c, (*batch, d, d)) for c in (cov_p, cov_q))
    return _kl_gaussian(mean_p, cov_p, mean_q, cov_q)


# ---------------------------------------------------------------------------
# Monte Carlo estimators between densities.


def _log_density(model: Any, x: jax.Array, name: str, n: int) -> jax.Array:
    out = jnp.asarray(model.log_prob(x))
    if out.shape != (n,):
        raise ValueError(
            f"{name}.log_prob must return one log-density per sample, shape ({n},), "
            f"got {out.shape}"
        )
    return out


def _mean_and_variance(r: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(r)
    var = jnp.sum((r - mean) ** 2) / (r.shape[0] - 1)
    return mean, var


def _estimate(value: jax.Array, var_of_mean: jax.Array) -> MonteCarloEstimate:
    # With an infinite term the estimate is +inf and its spread is not defined.
    std_error = jnp.where(jnp.isinf(value), jnp.inf, jnp.sqrt(var_of_mean))
    return MonteCarloEstimate(value, std_error)


@_validate.public
def kl_monte_carlo(
    key: jax.Array, p: Density, q: Density, n: int
) -> MonteCarloEstimate:
    """Monte Carlo estimate of ``KL(p || q) = E_p[log p(X) - log q(X)]``.

    ``p`` and ``q`` are density models (:class:`densax.density.Density`:
    anything with ``.log_prob(x) -> [n]`` and ``.sample(key, n)``): a
    ``gaussian.Gaussian``, a ``gmm.GaussianMixture``, a ``kde.KDE``, a flow,
    or a user's own class. Jit the call (or a function around it) to compile
    the densities together; the models may be arguments of the jitted
    function (they are pytrees) with ``n`` static.

    Args:
      key: PRNG key.
      p: the density the samples come from (``p.sample(key, n)``).
      q: the other density.
      n: number of samples (static), at least 2.

    Returns:
      A :class:`MonteCarloEstimate`: the unbiased estimate and its standard
      error ``std / sqrt(n)`` (``inf`` when the estimate is ``inf``, i.e.
      ``q`` vanishes at a sample of ``p``).

    Raises:
      TypeError: ``p`` or ``q`` is not a density model, a non-int ``n``.
      ValueError: ``n < 2``, or a ``log_prob`` not of shape ``[n]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from densax import gaussian
      >>> p = gaussian.Gaussian(jnp.zeros(1), jnp.eye(1))
      >>> q = gaussian.Gaussian(jnp.ones(1), jnp.eye(1))
      >>> est = kl_monte_carlo(jax.random.key(0), p, q, 10_000)
      >>> bool(abs(est.value - 0.5) < 4 * est.std_error)
      True
    """
    check_density(p, "p")
    check_density(q, "q")
    n = _validate.check_int(n, "n", minimum=2)
    x = p.sample(key, n)
    r = _log_density(p, x, "p", n) - _log_density(q, x, "q", n)
    mean, var = _mean_and_variance(r)
    return _estimate(mean, var / n)


@_validate.public
def js_monte_carlo(
    key: jax.Array, p: Density, q: Density, n: int
) -> MonteCarloEstimate:
    """Monte Carlo estimate of the Jensen–Shannon divergence between densities.

    ``JS = ½ E_p[log p/m] + ½ E_q[log q/m]`` with ``m = (p + q) / 2``, from
    ``n`` samples of each; every term is at most ``log 2``, so the estimator
    has finite variance even for disjoint supports.

    Args:
      key: PRNG key.
      p: a density model (:class:`densax.density.Density`).
      q: another density model.
      n: number of samples from each (static), at least 2.

    Returns:
      A :class:`MonteCarloEstimate` (natural log) with its standard error.

    Raises:
      TypeError: ``p`` or ``q`` is not a density model, a non-int ``n``.
      ValueError: ``n < 2``, or a ``log_prob`` not of shape ``[n]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from densax import gaussian
      >>> p = gaussian.Gaussian(jnp.zeros(1), jnp.eye(1))
      >>> q = gaussian.Gaussian(jnp.full(1, 50.0), jnp.eye(1))
      >>> round(float(js_monte_carlo(jax.random.key(0), p, q, 1000).value), 4)
      0.6931
    """
    check_density(p, "p")
    check_density(q, "q")
    n = _validate.check_int(n, "n", minimum=2)
    key_p, key_q = jax.random.split(key)

    def log_ratio_to_mixture(x, own, own_name, other, other_name):
        # log own(x) - log m(x) = log 2 - log(1 + other(x) / own(x)) <= log 2.
        own_lp = _log_density(own, x, own_name, n)
        other_lp = _log_density(other, x, other_name, n)
        return _LOG2 - jax.nn.softplus(other_lp - own_lp)

    r_p = log_ratio_to_mixture(p.sample(key_p, n), p, "p", q, "q")
    r_q = log_ratio_to_mixture(q.sample(key_q, n), q, "q", p, "p")
    mean_p, var_p = _mean_and_variance(r_p)
    mean_q, var_q = _mean_and_variance(r_q)
    return _estimate((mean_p + mean_q) / 2, (var_p + var_q) / (4 * n))
