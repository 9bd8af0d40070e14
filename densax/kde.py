"""Kernel density estimation: exact log-densities, bandwidth rules and fitting.

The kernel density estimate (KDE) of points ``x_1..x_n`` in ``R^d`` with
non-negative weights ``w_j`` is::

    p(x) = sum_j w_j q_H(x - x_j) / sum_j w_j,    q_H(u) = |H|^{-1/2} q(H^{-1/2} u),

for a kernel ``q`` that integrates to one. The bandwidth is either a scalar
``h`` (``H = h^2 I``, so ``q_h(u) = h^-d q(u / h)``: scikit-learn's meaning) or
a ``[d, d]`` positive-definite kernel covariance ``H`` (SciPy's
``gaussian_kde.covariance``); ``|H^{-1/2} u|`` is evaluated as ``|L^{-1} u|``
through the Cholesky factor ``H = L L^T``. The kernels are radial,
``q(u) = k(|u|) / Z_d`` with ``k(0) = 1``:

============  ================  ========
kernel        k(r)              support
============  ================  ========
gaussian      exp(-r^2 / 2)     R^d
tophat        1                 r < 1
epanechnikov  1 - r^2           r < 1
exponential   exp(-r)           R^d
linear        1 - r             r < 1
cosine        cos(pi r / 2)     r < 1
============  ================  ========

``Z_d`` is the exact integral of ``k`` over ``R^d``, so every kernel integrates
to one in every dimension. This is scikit-learn's ``KernelDensity``
normalisation, except for the cosine kernel in even dimensions, where
scikit-learn's closed form is wrong (its 2D cosine KDE integrates to 0.363,
its 4D one is NaN); densax integrates ``r^(d-1) cos(pi r / 2)`` exactly.
Compact kernels give ``-inf`` outside their support (the open unit ball).

The exact path (``log_prob(..., method="exact")``, :func:`loo_log_likelihood`,
:func:`sample`) has no tree, grid or cut-off and works in log space: a query
1000 bandwidths away from every point has a finite log-density for the
gaussian and exponential kernels, in float32 and float64. In ``d <= 3`` the
binned path (:func:`grid_log_prob`, :func:`interpolate`, ``method="binned"``;
:mod:`densax._kde_grid` over the engine :mod:`densax._binned`) bins the data
linearly onto a regular grid and convolves by one FFT, with a documented error
bound; :func:`log_prob`'s default ``method="auto"`` takes it on concrete
inputs where that bound is small and the grid is cheaper, and the exact sums
for every query the grid does not resolve.

On the exact path, queries are processed in blocks of
``block_size`` rows (``lax.map``), so memory is ``O(block_size * n)``, never
``O(m * n)``; derivatives w.r.t. queries, data, bandwidth and weights come from
a custom JVP whose per-block work is rematerialised (``jax.checkpoint``), so
forward and reverse mode are memory-bounded too. Squared distances are direct
differences (exact, and as fast as a matmul while the exponential dominates
the cost), except for the gaussian kernel in more than 8 dimensions, where they
are the matrix product ``z.y - |z|^2/2 - |y|^2/2`` on data centred at their
mean (absolute error ``~ eps |x - mean|^2 / h^2``, about 1e-5 in float32 at
Scott's bandwidth).

References:
  Rosenblatt, "Remarks on some nonparametric estimates of a density function",
  Ann. Math. Statist. 27 (1956). Parzen, "On estimation of a probability
  density function and mode", Ann. Math. Statist. 33 (1962). Scott,
  *Multivariate Density Estimation*, Wiley (1992). Silverman, *Density
  Estimation for Statistics and Data Analysis*, Chapman & Hall (1986).
  Duin, "On the choice of smoothing parameters for Parzen estimators of
  probability density functions", IEEE Trans. Computers 25 (1976).
  Wand, "Fast computation of multivariate kernel estimators", J. Comput.
  Graph. Statist. 3 (1994).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from densax import _kde_grid
from densax._kde_core import (
    KERNELS,
    _combine_shards,
    _kernel_logsumexp,
    _kernel_variance,
    _log_kernel_integral,
    _radius,
)
from densax._validate import (
    as_float,
    check_choice,
    check_finite,
    check_int,
    check_same_last_dim,
    check_weights,
    common_float_dtype,
    is_concrete,
    normalize_weights,
    public,
    value_check,
)

__all__ = [
    "DEFAULT_GRID_SIZE",
    "KDE",
    "KERNELS",
    "METHODS",
    "FitResult",
    "Grid",
    "fit",
    "grid_log_prob",
    "interpolate",
    "log_prob",
    "loo_log_likelihood",
    "sample",
    "scott",
    "silverman",
]

_RULES = ("scott", "silverman")
# How log_prob evaluates: the grid where it is accurate and cheaper, exact
# sums, or the binned grid (d <= 3).
METHODS = ("auto", "exact", "binned")
Grid = _kde_grid.Grid
grid_log_prob = _kde_grid.grid_log_prob
interpolate = _kde_grid.interpolate
DEFAULT_GRID_SIZE = _kde_grid.DEFAULT_GRID_SIZE
_HIGHEST = lax.Precision.HIGHEST
# Bytes of one [block, n] score block: a few MB, the fastest size on CPU in
# float32 and float64 (the measurement is in docs/benchmarks_notes.md).
_BLOCK_BYTES = 4 << 20


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["data", "sample_weight", "bandwidth", "chol", "log_normalizer"],
    meta_fields=["kernel"],
)
@dataclasses.dataclass(frozen=True)
class KDE:
    """A kernel density estimate (a density model, see :mod:`densax.density`).

    Built by :func:`fit`, which does the set-up once: the bandwidth, its
    Cholesky factor and the normaliser. ``kernel`` is static (pytree
    metadata, not a leaf); ``kde.log_prob(x)`` and ``kde.sample(key, n)`` are
    :func:`log_prob` and :func:`sample`.
    """

    data: jax.Array  # [n, d] float: the points
    # [n] float: non-negative weights, rescaled to mean one (ones by default)
    sample_weight: jax.Array
    bandwidth: jax.Array  # [] float scalar h, or [d, d] kernel covariance H
    chol: jax.Array  # [] float h, or [d, d] lower Cholesky factor L of H
    # [] float: log sum w + log |det L| (d log h) + log Z_d, over all shards.
    log_normalizer: jax.Array
    kernel: str = "gaussian"  # static: one of KERNELS

    def log_prob(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        """[m] log-densities of the queries ``x`` [m, d]: :func:`log_prob`."""
        return log_prob(self, x, **kwargs)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """[n, d] exact samples: :func:`sample`."""
        return sample(key, self, n)


class FitResult(NamedTuple):
    """The output of :func:`fit` with ``bandwidth="loo"``."""

    model: KDE  # the KDE at the fitted bandwidth
    log_likelihood: jax.Array  # [] mean leave-one-out log-likelihood there; float
    grad_norm: jax.Array  # [] gradient norm w.r.t. the log-parameters; float
    n_iter: jax.Array  # [] optimiser iterations run; int32
    converged: jax.Array  # [] grad_norm <= tol; bool
    trace: jax.Array  # [max_iter] log-likelihood per iteration, NaN after n_iter


def _whiten(x, data, bandwidth):
    """Centred queries and data, a scalar scale and log |det L|.

    For a scalar h the points stay in data units and the scale is h (the core
    divides, so d/dh needs no matmul); for a matrix H = L L^T they come
    whitened by L and the scale is 1.
    """
    centre = lax.stop_gradient(jnp.mean(data, axis=0))
    xc, yc = x - centre, data - centre
    if bandwidth.ndim == 0:
        return xc, yc, bandwidth, data.shape[1] * jnp.log(bandwidth)
    chol = jnp.linalg.cholesky(0.5 * (bandwidth + bandwidth.T))
    one = jnp.ones((), data.dtype)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    return _solve_rows(chol, xc), _solve_rows(chol, yc), one, log_det


def _bandwidth_ok(bandwidth):
    """False where a (traced) scalar bandwidth is not positive."""
    return bandwidth > 0 if bandwidth.ndim == 0 else True


@functools.partial(jax.jit, static_argnames=("block_size", "axis_name"))
def _log_prob(x, model, *, block_size, axis_name):
    data, bandwidth = model.data, model.bandwidth
    centre = lax.stop_gradient(jnp.mean(data, axis=0))
    xc, yc = x - centre, data - centre
    if bandwidth.ndim == 0:
        z, y, scale = xc, yc, model.chol
    else:
        z, y = _solve_rows(model.chol, xc), _solve_rows(model.chol, yc)
        scale = jnp.ones((), data.dtype)
    lse = _kernel_logsumexp(
        z, y, model.sample_weight, scale, jnp.int32(0), model.kernel, block_size, False
    )
    if axis_name is not None:
        lse = _combine_shards(lse, axis_name)
    out = lse - model.log_normalizer
    return jnp.where(_bandwidth_ok(bandwidth), out, jnp.nan)


def _solve_rows(chol, a):
    """``L^-1`` applied to every row of ``a`` [m, d], by one [d, d] solve and a matmul.

    XLA's CPU triangular solve with [m, d] right-hand sides is 10 to 100x
    slower, for the same accuracy at a well-conditioned H.
    """
    eye = jnp.eye(chol.shape[0], dtype=chol.dtype)
    chol_inv = lax.linalg.triangular_solve(chol, eye, left_side=True, lower=True)
    return jnp.matmul(a, chol_inv.T, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("kernel", "axis_name"))
def _make_model(data, w, bandwidth, *, kernel, axis_name):
    """The set-up of a KDE: the Cholesky factor and the normaliser, once.

    The weights are stored rescaled to mean one (only their ratios matter).
    """
    d = data.shape[1]
    w = normalize_weights(w, axis_name)
    if bandwidth.ndim == 0:
        chol, log_det = bandwidth, d * jnp.log(bandwidth)
    else:
        chol = jnp.linalg.cholesky(0.5 * (bandwidth + bandwidth.T))
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    total = jnp.sum(w)
    if axis_name is not None:
        total = lax.psum(total, axis_name)
    log_norm = jnp.log(total) + log_det + _log_kernel_integral(kernel, d)
    return KDE(data, w, bandwidth, chol, log_norm.astype(data.dtype), kernel)


@functools.partial(jax.jit, static_argnames=("kernel", "block_size", "axis_name"))
def _loo_log_likelihood(data, bandwidth, weights, *, kernel, block_size, axis_name):
    n, d = data.shape
    w = jnp.ones(n, data.dtype) if weights is None else weights
    w = normalize_weights(w, axis_name)  # only the ratios matter
    if axis_name is None:
        queries, w_queries, offset = data, w, jnp.int32(0)
    else:
        queries = lax.all_gather(data, axis_name, tiled=True, to="invarying")
        w_queries = lax.all_gather(w, axis_name, tiled=True, to="invarying")
        offset = lax.axis_index(axis_name).astype(jnp.int32) * n
    z, y, scale, log_det = _whiten(queries, data, bandwidth)
    lse = _kernel_logsumexp(z, y, w, scale, offset, kernel, block_size, True)
    total = jnp.sum(w)
    if axis_name is not None:
        lse = _combine_shards(lse, axis_name)
        total = lax.psum(total, axis_name)
    loo = lse - jnp.log(total - w_queries) - log_det - _log_kernel_integral(kernel, d)
    mean = jnp.sum(jnp.where(w_queries > 0, w_queries * loo, 0)) / total
    return jnp.where(_bandwidth_ok(bandwidth), mean, jnp.nan)


# --------------------------------------------------------------------------
# Bandwidth rules.


@functools.partial(jax.jit, static_argnames=("rule", "axis_name"))
def _rule_covariance(data, weights, *, rule, axis_name):
    n, d = data.shape
    w = jnp.ones(n, data.dtype) if weights is None else weights
    w = normalize_weights(w, axis_name)  # only the ratios matter
    total, total_sq, weighted_sum = jnp.sum(w), jnp.sum(w * w), w @ data
    if axis_name is not None:
        total, total_sq, weighted_sum = lax.psum(
            (total, total_sq, weighted_sum), axis_name
        )
    centred = data - weighted_sum / total
    scatter = jnp.matmul(centred.T * w, centred, precision=_HIGHEST)
    if axis_name is not None:
        scatter = lax.psum(scatter, axis_name)
    # np.cov(aweights=w, bias=False) divides by sum w - sum w^2 / sum w.
    cov = scatter / (total - total_sq / total)
    neff = total**2 / total_sq
    if rule == "silverman":
        neff = neff * (d + 2) / 4
    return neff ** (-2.0 / (d + 4)) * cov


def _rule(data, weights, rule, validate, axis_name=None):
    dtype = common_float_dtype(data)
    data = as_float(data, "data", ndim=2, dtype=dtype)
    n = data.shape[0]
    if data.shape[1] < 1:
        raise ValueError(f"data must have at least one feature, got {data.shape}")
    if n < 2 and axis_name is None:
        raise ValueError(f"data must have at least 2 points, got shape {data.shape}")
    if weights is not None:
        weights = check_weights(
            weights, "sample_weight", (n,), dtype=dtype, validate=validate
        )
    check_finite(data, "data", validate)
    return _checked_rule(data, weights, rule, validate, axis_name)


def _checked_rule(data, weights, rule, validate, axis_name):
    """The rule's covariance for validated inputs, checked non-singular."""
    cov = _rule_covariance(data, weights, rule=rule, axis_name=axis_name)
    value_check(
        validate,
        jnp.all(jnp.isfinite(jnp.linalg.cholesky(cov))),
        "data covariance is singular: the points lie in a lower-dimensional "
        "subspace (or fewer than d + 1 carry weight)",
    )
    return cov


@public
def scott(
    data: Any,
    sample_weight: Any = None,
    *,
    axis_name: str | None = None,
    validate: bool = True,
) -> jax.Array:
    """Scott's rule: the kernel covariance ``H = neff^(-2/(d+4)) Cov(data)``.

    Equal to ``scipy.stats.gaussian_kde(data.T, weights=sample_weight).covariance``:
    ``Cov`` is the (weighted, unbiased) data covariance and
    ``neff = (sum w)^2 / sum w^2`` the effective sample size.

    Args:
      data: [n, d] points, n >= 2.
      sample_weight: optional [n] non-negative weights (need not be normalised).
      axis_name: with ``data`` and ``sample_weight`` sharded over this mapped axis,
        the moments are summed over the shards (``psum``).
      validate: run the eager value checks (finite data, valid weights,
        non-singular covariance).

    Returns:
      [d, d] kernel covariance, to pass as ``bandwidth`` to :func:`fit`.

    Raises:
      ValueError: bad shapes; with ``validate``, bad values.

    References:
      Scott, *Multivariate Density Estimation*, Wiley (1992).

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (1000, 2))
      >>> scott(x).shape
      (2, 2)
    """
    return _rule(data, sample_weight, "scott", validate, axis_name)


@public
def silverman(
    data: Any,
    sample_weight: Any = None,
    *,
    axis_name: str | None = None,
    validate: bool = True,
) -> jax.Array:
    """Silverman's rule: ``H = (neff (d+2) / 4)^(-2/(d+4)) Cov(data)``.

    Equal to ``gaussian_kde(data.T, bw_method="silverman").covariance``; see
    :func:`scott` for ``Cov`` and ``neff``.

    Args:
      data: [n, d] points, n >= 2.
      sample_weight: optional [n] non-negative weights.
      axis_name: sharded data, as in :func:`scott`.
      validate: run the eager value checks.

    Returns:
      [d, d] kernel covariance, to pass as ``bandwidth`` to :func:`fit`.

    Raises:
      ValueError: bad shapes; with ``validate``, bad values.

    References:
      Silverman, *Density Estimation for Statistics and Data Analysis*,
      Chapman & Hall (1986).

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (1000, 1))
      >>> print(jnp.round(silverman(x), 2))
      [[0.07]]
    """
    return _rule(data, sample_weight, "silverman", validate, axis_name)


# --------------------------------------------------------------------------
# Public entry points.


def _prepare(x, data, bandwidth, weights, kernel, validate, axis_name=None):
    # ``weights`` is the public ``sample_weight``.
    """Static and eager checks shared by the public functions."""
    check_choice(kernel, "kernel", KERNELS)
    dtype = common_float_dtype(data) if x is None else common_float_dtype(x, data)
    data = as_float(data, "data", ndim=2, dtype=dtype)
    n, d = data.shape
    if n < 1:
        raise ValueError(f"data must have at least one point, got shape {data.shape}")
    if d < 1:
        raise ValueError(f"data must have at least one feature, got {data.shape}")
    if x is not None:
        x = as_float(x, "x", ndim=(1, 2), dtype=dtype)
        check_same_last_dim(x, data, "x", "data")
    if weights is not None:
        weights = check_weights(
            weights, "sample_weight", (n,), dtype=dtype, validate=validate
        )
    check_finite(data, "data", validate)
    if isinstance(bandwidth, str):
        check_choice(bandwidth, "bandwidth", _RULES)
        bandwidth = _checked_rule(data, weights, bandwidth, validate, axis_name)
    else:
        bandwidth = _check_bandwidth(bandwidth, d, dtype, validate)
    return x, data, bandwidth, weights


def _check_bandwidth(bandwidth, d, dtype, validate, name="bandwidth"):
    bandwidth = as_float(bandwidth, name, ndim=(0, 2), dtype=dtype)
    if bandwidth.ndim == 2 and bandwidth.shape != (d, d):
        raise ValueError(
            f"{name} must be a scalar or a [{d}, {d}] matrix for data of "
            f"dimension {d}, got shape {bandwidth.shape}"
        )
    if validate and is_concrete(bandwidth):
        value_check(True, jnp.all(jnp.isfinite(bandwidth)), f"{name} is not finite")
        if bandwidth.ndim == 0:
            value_check(True, bandwidth > 0, f"{name} must be > 0, got {bandwidth}")
        else:
            scale = jnp.max(jnp.abs(bandwidth))
            tol = 100 * jnp.finfo(dtype).eps * scale
            value_check(
                True,
                jnp.all(jnp.abs(bandwidth - bandwidth.T) <= tol),
                f"{name} must be a symmetric matrix",
            )
            value_check(
                True,
                jnp.all(jnp.isfinite(jnp.linalg.cholesky(bandwidth))),
                f"{name} must be positive-definite",
            )
    return bandwidth


def _block_size(block_size, m, n, itemsize):
    """The query block: ``block_size`` or ~_BLOCK_BYTES, balanced over m."""
    if block_size is None:
        block_size = max(8, _BLOCK_BYTES // (itemsize * max(n, 1)))
    else:
        block_size = check_int(block_size, "block_size", minimum=1)
    block_size = max(1, min(block_size, m))
    n_blocks = max(1, -(-m // block_size))
    return max(1, -(-m // n_blocks))


@public
def loo_log_likelihood(
    data: Any,
    bandwidth: Any,
    *,
    kernel: str = "gaussian",
    sample_weight: Any = None,
    block_size: int | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> jax.Array:
    """Mean leave-one-out log-likelihood of the KDE of ``data``.

    ``sum_i w_i log p_{-i}(x_i) / sum_i w_i``, where ``p_{-i}`` is the KDE of
    all points but ``x_i`` (normalised by ``sum_{j != i} w_j``). Its maximiser
    over the bandwidth is the likelihood cross-validation choice (Duin 1976);
    it equals the mean test score of scikit-learn's ``GridSearchCV`` with
    ``cv=LeaveOneOut()`` on ``KernelDensity``. Compact kernels give ``-inf``
    when some point has no neighbour within one bandwidth.

    Args:
      data: [n, d] points, n >= 2 (the local shard with ``axis_name``).
      bandwidth: scalar ``h``, [d, d] kernel covariance ``H``, or ``"scott"``
        / ``"silverman"``.
      kernel: one of :data:`KERNELS`.
      sample_weight: optional [n] non-negative weights; the mean is weighted too.
      block_size: points per block (peak memory ~ ``block_size * n``).
      axis_name: data sharded over this mapped axis: every device evaluates
        its shard's kernel sums for all points, then the shards combine.
      validate: run the eager value checks.

    Returns:
      [] mean leave-one-out log-likelihood, dtype of ``data``.

    Raises:
      TypeError: non-numeric inputs.
      ValueError: bad shapes or options; with ``validate``, bad values.

    References:
      Duin, "On the choice of smoothing parameters for Parzen estimators of
      probability density functions", IEEE Trans. Computers 25 (1976).

    Example:
      >>> data = jax.random.normal(jax.random.key(0), (500, 1))
      >>> print(f"{loo_log_likelihood(data, 0.3):.2f}")
      -1.40
    """
    _, data, bandwidth, weights = _prepare(
        None, data, bandwidth, sample_weight, kernel, validate, axis_name
    )
    n = data.shape[0]
    if n < 2 and axis_name is None:
        raise ValueError(f"data must have at least 2 points, got shape {data.shape}")
    n_queries = n if axis_name is None else n * lax.axis_size(axis_name)
    block = _block_size(block_size, n_queries, n, data.dtype.itemsize)
    return _loo_log_likelihood(
        data,
        bandwidth,
        weights,
        kernel=kernel,
        block_size=block,
        axis_name=axis_name,
    )


def _tril_to_bandwidth(theta: jax.Array) -> jax.Array:
    """H = L L^T with L = tril(theta, -1) + diag(exp(diag(theta)))."""
    chol = jnp.tril(theta, -1) + jnp.diag(jnp.exp(jnp.diagonal(theta)))
    return chol @ chol.T


def _loo_objective(theta, data, weights, *, kernel, block_size, axis_name, full):
    """The negative LOO log-likelihood at the log-parameters ``theta``."""
    bandwidth = _tril_to_bandwidth(theta) if full else jnp.exp(theta)
    return -_loo_log_likelihood(
        data,
        bandwidth,
        weights,
        kernel=kernel,
        block_size=block_size,
        axis_name=axis_name,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _at_minimum(objective, theta, data, weights):
    """``theta``, a minimiser of ``objective(., data, weights)``, for derivatives.

    Its derivatives w.r.t. ``data`` and ``weights`` are those of the implicit
    function ``theta*(data, weights)`` defined by ``grad_theta objective = 0``
    (implicit function theorem): ``dtheta = -H^-1 d(grad_theta)``, with the
    Hessian ``H`` formed explicitly (theta has 1 or d^2 entries) and solved
    inside ``lax.custom_linear_solve``, so that reverse mode transposes it.
    The derivative w.r.t. ``theta`` (the start of the optimiser) is zero.
    """
    del objective, data, weights
    return theta


@_at_minimum.defjvp
def _at_minimum_jvp(objective, primals, tangents):
    theta, data, weights = primals
    _, d_data, d_weights = tangents
    grad = jax.grad(objective)

    def mixed(data, weights):  # d(grad_theta) along the data's tangent
        return grad(theta, data, weights)

    _, rhs = jax.jvp(mixed, (data, weights), (d_data, d_weights))

    def hvp(v):
        return jax.jvp(lambda t: grad(t, data, weights), (theta,), (v,))[1]

    def solve(matvec, b):
        size = b.size
        basis = jnp.eye(size, dtype=b.dtype).reshape(size, *b.shape)
        hess = jax.vmap(matvec)(basis).reshape(size, size)
        # Entries of theta the objective ignores (the upper triangle of a full
        # bandwidth's factor) have zero rows: they stay 0.
        unused = jnp.all(hess == 0, axis=1)
        hess = hess + jnp.diag(unused.astype(hess.dtype))
        return jnp.linalg.solve(hess, b.reshape(size)).reshape(b.shape)

    d_theta = lax.custom_linear_solve(hvp, -rhs, solve, symmetric=True)
    return theta, d_theta


@functools.partial(
    jax.jit,
    static_argnames=(
        "kernel",
        "block_size",
        "axis_name",
        "full",
        "optimizer",
        "max_iter",
        "tol",
    ),
)
def _fit_loo(
    data,
    weights,
    init,
    *,
    kernel,
    block_size,
    axis_name,
    full,
    optimizer,
    max_iter,
    tol,
):
    if full:
        chol = jnp.linalg.cholesky(init)
        theta0 = jnp.tril(chol, -1) + jnp.diag(jnp.log(jnp.diagonal(chol)))
        to_bandwidth = _tril_to_bandwidth
    else:
        theta0, to_bandwidth = jnp.log(init), jnp.exp
    loss = functools.partial(
        _loo_objective,
        kernel=kernel,
        block_size=block_size,
        axis_name=axis_name,
        full=full,
    )
    # The optimiser runs on constants; derivatives come from _at_minimum.
    data_c, weights_c, theta0 = lax.stop_gradient((data, weights, theta0))
    objective = lambda theta: loss(theta, data_c, weights_c)

    tx = optax.with_extra_args_support(
        optax.lbfgs() if optimizer is None else optimizer
    )
    state0 = tx.init(theta0)
    if optax.tree.get(state0, "value") is not None:
        value_and_grad = optax.value_and_grad_from_state(objective)
    else:
        value_and_grad = lambda theta, state: jax.value_and_grad(objective)(theta)
    value0, grad0 = jax.value_and_grad(objective)(theta0)
    trace0 = jnp.full(max_iter, jnp.nan, value0.dtype)

    def not_done(carry):
        _, _, it, value, grad, _ = carry
        return (it < max_iter) & (optax.tree.norm(grad) > tol) & jnp.isfinite(value)

    def step(carry):
        theta, state, it, value, grad, trace = carry
        updates, state = tx.update(
            grad, state, theta, value=value, grad=grad, value_fn=objective
        )
        theta = optax.apply_updates(theta, updates)
        value, grad = value_and_grad(theta, state=state)
        return theta, state, it + 1, value, grad, trace.at[it].set(-value)

    carry = (theta0, state0, jnp.int32(0), value0, grad0, trace0)
    theta, _, n_iter, value, grad, trace = lax.while_loop(not_done, step, carry)
    theta = _at_minimum(loss, theta, data, weights)
    grad_norm = optax.tree.norm(grad)
    w = jnp.ones(data.shape[0], data.dtype) if weights is None else weights
    model = _make_model(
        data, w, to_bandwidth(theta), kernel=kernel, axis_name=axis_name
    )
    return FitResult(
        model=model,
        log_likelihood=-value,
        grad_norm=grad_norm,
        n_iter=n_iter,
        converged=(grad_norm <= tol) & jnp.isfinite(value),
        trace=trace,
    )


@public
def fit(
    data: Any,
    *,
    bandwidth: Any = "scott",
    kernel: str = "gaussian",
    sample_weight: Any = None,
    full: bool = False,
    init: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    max_iter: int = 50,
    tol: float | None = None,
    block_size: int | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> KDE | FitResult:
    """The KDE of ``data``: the bandwidth, its Cholesky factor and normaliser, once.

    ``bandwidth`` is a scalar ``h`` (kernel ``h^-d q(u / h)``), a [d, d]
    kernel covariance ``H``, ``"scott"`` / ``"silverman"`` (:func:`scott` /
    :func:`silverman` of ``data`` and ``sample_weight``), or ``"loo"``: the
    bandwidth maximising the leave-one-out log-likelihood
    (:func:`loo_log_likelihood`, Duin 1976). For ``"loo"``, Optax (L-BFGS
    with a zoom line search by default) optimises ``log h`` or, with
    ``full``, the Cholesky factor of ``H = L L^T`` with a log-parameterised
    diagonal, inside one ``lax.while_loop``; it stops when the gradient norm
    w.r.t. these parameters is at most ``tol`` (``converged=True``), after
    ``max_iter`` iterations, or at a non-finite likelihood (a compact kernel
    leaving a point without neighbours at ``init``: pass a larger one;
    ``converged=False``).

    Derivatives: the model is a differentiable function of ``data`` and
    ``sample_weight`` (and of a numeric ``bandwidth``). With ``"loo"`` the
    fitted bandwidth is differentiated by the implicit function theorem at
    the optimum (``grad_theta LOO = 0``), in forward and reverse mode; its
    derivative w.r.t. ``init`` is zero, and it is exact only as far as the
    optimiser converged (tighten ``tol`` for precise derivatives).

    scikit-learn's ``GridSearchCV(KernelDensity(), {"bandwidth": grid})``
    maximises the LOO criterion on a grid when ``cv=LeaveOneOut()``; with its
    default 5-fold split each fold's KDE has ``4n/5`` points, so it picks a
    bandwidth about ``(5/4)^(1/(d+4))`` times larger.

    Args:
      data: [n, d] points (the local shard with ``axis_name``).
      bandwidth: ``h``, ``H``, ``"scott"``, ``"silverman"`` or ``"loo"``.
      kernel: one of :data:`KERNELS` (static metadata of the model).
      sample_weight: optional [n] non-negative weights with a positive sum.
      full: ``"loo"`` only: fit a full [d, d] ``H`` instead of a scalar ``h``.
      init: ``"loo"`` only: starting ``h`` or ``H``; default :func:`scott`
        divided by the kernel's variance, ``h = sqrt(trace(H) / d)`` for a
        scalar.
      optimizer: ``"loo"`` only: an Optax transformation minimising the
        negative LOO log-likelihood; default ``optax.lbfgs()``. Static.
      max_iter: ``"loo"`` only: maximum optimiser iterations.
      tol: ``"loo"`` only: gradient-norm tolerance; default ``sqrt(eps)``.
      block_size: ``"loo"`` only: points per block of the LOO sums.
      axis_name: with ``data`` and ``sample_weight`` sharded over this mapped
        axis (``shard_map``/``pmap``): rules, normaliser and LOO sums combine
        the shards; pass it to :func:`log_prob` too.
      validate: run the eager value checks (finite data, valid weights,
        positive or positive-definite bandwidth).

    Returns:
      A :class:`KDE`; for ``"loo"`` a :class:`FitResult` whose ``.model`` is
      the KDE, with the LOO log-likelihood, gradient norm, ``n_iter``,
      ``converged`` and the NaN-padded ``trace``.

    Raises:
      TypeError: non-numeric inputs.
      ValueError: bad shapes or options; with ``validate``, bad values.

    References:
      Parzen, "On estimation of a probability density function and mode",
      Ann. Math. Statist. 33 (1962). Duin, "On the choice of smoothing
      parameters for Parzen estimators of probability density functions",
      IEEE Trans. Computers 25 (1976).

    Example:
      >>> data = jax.random.normal(jax.random.key(0), (400, 1))
      >>> model = fit(data, bandwidth=0.5)
      >>> model.kernel, model.bandwidth.shape
      ('gaussian', ())
      >>> res = fit(data, bandwidth="loo")
      >>> print(bool(res.converged), f"{res.model.bandwidth:.2f}")
      True 0.28
    """
    check_choice(kernel, "kernel", KERNELS)
    loo = isinstance(bandwidth, str) and bandwidth == "loo"
    if isinstance(bandwidth, str) and not loo:
        check_choice(bandwidth, "bandwidth", (*_RULES, "loo"))
    _, data, bandwidth, weights = _prepare(
        None,
        data,
        1.0 if loo else bandwidth,
        sample_weight,
        kernel,
        validate,
        axis_name,
    )
    w = jnp.ones(data.shape[0], data.dtype) if weights is None else weights
    if not loo:
        return _make_model(data, w, bandwidth, kernel=kernel, axis_name=axis_name)
    n, d = data.shape
    if n < 2 and axis_name is None:
        raise ValueError(f"data must have at least 2 points, got shape {data.shape}")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if not isinstance(full, bool):
        raise TypeError(f"full must be a bool, got {type(full).__name__}")
    if init is None:
        init = _checked_rule(data, weights, "scott", validate, axis_name)
        init = init / _kernel_variance(kernel, d)
        if not full:
            init = jnp.sqrt(jnp.trace(init) / d)
    else:
        init = _check_bandwidth(init, d, data.dtype, validate, name="init")
        if init.ndim != (2 if full else 0):
            want = f"a [{d}, {d}] matrix" if full else "a scalar"
            raise ValueError(f"init must be {want} with full={full}")
    if tol is None:
        tol = float(np.sqrt(np.finfo(data.dtype).eps))
    n_queries = n if axis_name is None else n * lax.axis_size(axis_name)
    return _fit_loo(
        data,
        w,
        init,
        kernel=kernel,
        block_size=_block_size(block_size, n_queries, n, data.dtype.itemsize),
        axis_name=axis_name,
        full=full,
        optimizer=optimizer,
        max_iter=max_iter,
        tol=float(tol),
    )


@public
def log_prob(
    model: KDE,
    x: Any,
    *,
    method: str = "auto",
    grid_size: Any = None,
    rtol: float = 1e-3,
    block_size: int | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> jax.Array:
    """Log-density of the queries ``x`` under the KDE ``model``.

    ``method="exact"``: exact and in log space (a logsumexp over all data
    points, blocked over queries). Compact kernels give ``-inf`` where no
    point is within one bandwidth; a NaN query gives NaN for that query only.
    Under a transformation (no eager value checks), a non-positive scalar
    bandwidth or a non-positive-definite ``H`` gives NaN everywhere.
    Differentiable w.r.t. ``x`` and every leaf of ``model`` (data, weights,
    bandwidth).

    ``method="binned"`` (``d <= 3``): :func:`grid_log_prob` on a grid of
    ``grid_size`` nodes per axis, then :func:`interpolate` at ``x``
    (``O(n 2^d + P log P + m 2^d)`` instead of ``O(n m)``); absolute density
    error at most the grid's ``interp_error_bound``, ``-inf`` outside the
    grid or below the FFT's round-off. Differentiable w.r.t. the bandwidth,
    the weights, and (piecewise linearly) the data and queries; ``jit``- and
    ``vmap``-able. To evaluate one grid many times, call those two yourself.

    ``method="auto"`` (default): the binned path where
    :mod:`densax._binned`'s rule accepts the grid of ``grid_size`` (``d <=
    3``, interpolation error bound at most ``rtol`` times the kernel's peak
    height, and less work than the exact sums: large ``n m``), with the exact
    sums for every query where the grid's density is 0 (outside the grid, far
    tails); the exact path otherwise. The rule needs the bandwidth's value: on
    traced inputs (under ``jit``, ``vmap``, ``grad``, ``shard_map``) ``"auto"``
    is ``"exact"``; pass ``method="binned"`` to trace the grid path.

    Args:
      model: a :class:`KDE` from :func:`fit`.
      x: [m, d] queries, or one [d] query.
      method: one of :data:`METHODS`: ``"auto"``, ``"exact"`` or
        ``"binned"``.
      grid_size: ``"binned"``/``"auto"``: nodes per axis (an int or d
        ints); default :data:`DEFAULT_GRID_SIZE`.
      rtol: ``"auto"``: the largest accepted error bound of the grid,
        relative to the kernel's peak height ``q_H(0)``.
      block_size: queries per block (peak memory ~ ``block_size * n``
        elements); by default a block is about 4 MB.
      axis_name: with the model's data sharded over this mapped axis
        (``jax.shard_map``/``pmap``; fitted with the same ``axis_name``), the
        shards combine exactly and every device returns the full result.
      validate: accepted for the uniform signature; the queries are not
        value-checked (a NaN query gets NaN, the others are unaffected).

    Returns:
      [m] log-densities (``[]`` for a single [d] query), dtype of ``x``/data.

    Raises:
      TypeError: ``model`` is not a KDE, non-numeric ``x``.
      ValueError: bad shapes.

    Example:
      >>> data = jax.random.normal(jax.random.key(0), (500, 2))
      >>> q = jnp.array([[0.0, 0.0], [1000.0, 0.0]])
      >>> logp = log_prob(fit(data, bandwidth=0.5), q)
      >>> print(f"{logp[0]:.2f}", bool(jnp.isfinite(logp[1])))
      -2.03 True
      >>> log_prob(fit(data, kernel="epanechnikov"), q).shape
      (2,)
    """
    model = _check_model(model)
    check_choice(method, "method", METHODS)
    dtype = common_float_dtype(x, model.data)
    x = as_float(x, "x", ndim=(1, 2), dtype=dtype)
    check_same_last_dim(x, model.data, "x", "model.data")
    del validate  # a NaN query is not an error: it gets NaN (documented)
    model = jax.tree.map(lambda a: a.astype(dtype), model)
    single = x.ndim == 1
    queries = x[None] if single else x
    n, m = model.data.shape[0], queries.shape[0]
    if method == "binned":
        out = _kde_grid.binned_log_prob(model, queries, grid_size, axis_name)
        return out[0] if single else out
    if method == "auto" and _kde_grid.auto_uses_grid(model, m, grid_size, rtol):
        out = _kde_grid.binned_log_prob(model, queries, grid_size, axis_name)
        # The exact sums where the grid resolves nothing (outside it, far tails).
        missing = np.flatnonzero(~np.isfinite(np.asarray(out)))
        if missing.size:
            # Padded to a power of two (repeating queries): few compilations.
            rest = queries[np.resize(missing, 1 << (missing.size - 1).bit_length())]
            block = _block_size(block_size, rest.shape[0], n, dtype.itemsize)
            exact = _log_prob(rest, model, block_size=block, axis_name=None)
            out = out.at[missing].set(exact[: missing.size])
        return out[0] if single else out
    block = _block_size(block_size, m, n, dtype.itemsize)
    out = _log_prob(queries, model, block_size=block, axis_name=axis_name)
    return out[0] if single else out


def _check_model(model):
    if not isinstance(model, KDE):
        raise TypeError(
            f"model must be a KDE (from kde.fit), got {type(model).__name__}"
        )
    return model


# --------------------------------------------------------------------------
# Sampling.


@functools.partial(jax.jit, static_argnames=("n",))
def _sample(key, model, *, n):
    data, kernel = model.data, model.kernel
    d = data.shape[1]
    key_index, key_dir, key_rad = jax.random.split(key, 3)
    index = jax.random.categorical(key_index, jnp.log(model.sample_weight), shape=(n,))
    u = jax.random.normal(key_dir, (n, d), data.dtype)
    if kernel != "gaussian":
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
        u = u * _radius(key_rad, kernel, n, d, data.dtype)[:, None]
    if model.bandwidth.ndim == 0:
        offsets = model.chol * u
    else:
        offsets = jnp.matmul(u, model.chol.T, precision=_HIGHEST)
    return data[index] + offsets


@public
def sample(key: jax.Array, model: KDE, n: int) -> jax.Array:
    """Draws ``n`` exact samples from the KDE ``model``.

    A point ``x_j`` is drawn with probability ``w_j / sum w``, then a kernel
    offset ``L u`` (``h u`` for a scalar bandwidth) is added. ``u`` is a
    standard normal for the gaussian kernel; for the others a uniform
    direction times a radius with density ``~ r^(d-1) k(r)``: ``U^(1/d)``
    (tophat), ``sqrt(Beta(d/2, 2))`` (epanechnikov), ``Beta(d, 2)`` (linear),
    ``Gamma(d)`` (exponential), and rejection from ``U^(1/d)`` with acceptance
    ``cos(pi r / 2)`` (cosine).

    Args:
      key: a PRNG key.
      model: a :class:`KDE` from :func:`fit`.
      n: number of samples (a Python int).

    Returns:
      [n, d] samples, dtype of the model's data.

    Raises:
      TypeError: ``model`` is not a KDE, a non-int ``n``.

    Example:
      >>> data = jax.random.normal(jax.random.key(0), (100, 2))
      >>> model = fit(data, bandwidth=0.3, kernel="tophat")
      >>> sample(jax.random.key(1), model, 5).shape
      (5, 2)
    """
    model = _check_model(model)
    n = check_int(n, "n", minimum=0)
    return _sample(key, model, n=n)
