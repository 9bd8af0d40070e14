"""The multivariate Gaussian: maximum-likelihood fit, log-density, sampling.

A Gaussian is the pytree ``Gaussian(mean, cov)``, a density model of the
contract of :mod:`densax.density` (``g.log_prob(x)``, ``g.sample(key, n)``).
:func:`fit` returns the maximum-likelihood estimate (optionally weighted,
optionally over data shards); :func:`log_prob` evaluates the log-density
through the Cholesky factor of the
covariance (a triangular solve, never an inverse); :func:`sample` draws from it.

Example:
  >>> import jax
  >>> from densax import gaussian
  >>> x = jax.random.normal(jax.random.key(0), (500, 2)) * 2.0 + 1.0
  >>> g = gaussian.fit(x)
  >>> g.mean.shape, g.cov.shape
  ((2,), (2, 2))
  >>> gaussian.log_prob(g, x).shape
  (500,)
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from densax import _validate

__all__ = ["Gaussian", "fit", "log_prob", "sample"]

_HIGHEST = jax.lax.Precision.HIGHEST


class Gaussian(NamedTuple):
    """A multivariate normal distribution (a density model, see :mod:`densax.density`).

    ``g.log_prob(x)`` and ``g.sample(key, n)`` are :func:`log_prob` and
    :func:`sample`.
    """

    mean: jax.Array  # [d] float
    cov: jax.Array  # [d, d] float, symmetric positive definite

    def log_prob(self, x: jax.Array, *, validate: bool = True) -> jax.Array:
        """[...] log-densities of ``x`` [..., d]: :func:`log_prob`."""
        return log_prob(self, x, validate=validate)

    def sample(self, key: jax.Array, n: int, *, validate: bool = True) -> jax.Array:
        """[n, d] samples: :func:`sample`."""
        return sample(key, self, n, validate=validate)


@_validate.public
def fit(
    x: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    reg_covar: float = 0.0,
    axis_name: str | None = None,
    validate: bool = True,
) -> Gaussian:
    r"""Maximum-likelihood Gaussian: the (weighted) mean and covariance of ``x``.

    .. math::
       \mu = \frac{\sum_i w_i x_i}{\sum_i w_i}, \qquad
       \Sigma = \frac{\sum_i w_i (x_i - \mu)(x_i - \mu)^\top}{\sum_i w_i}
       + \text{reg\_covar}\, I.

    The covariance divides by the total weight (the MLE, ``np.cov(...,
    bias=True)``), and is computed in two passes (about the mean), so it is
    positive semi-definite up to rounding. It is singular when the data lie in
    a subspace (fewer than ``d + 1`` distinct points, a constant feature);
    ``reg_covar > 0`` makes it definite.

    Args:
      x: [n, d] samples.
      sample_weight: [n] non-negative weights (default: all ones); they need
        not be normalised: only their ratios matter (any scale gives the same
        fit).
      reg_covar: non-negative value added to the diagonal of the covariance
        (may be traced).
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x`` (and
        ``sample_weight``), the mapped axis name; the sums are ``psum``-ed so
        every shard gets the fit of the whole data.
      validate: check on the eager path that ``x`` is finite and the weights
        are valid.

    Returns:
      The fitted ``Gaussian``, in the dtype of ``x`` (half precision is
      computed in float32).

    Raises:
      ValueError: ``x`` is not rank 2, has no sample (n = 0, unsharded) or no
        feature, ``sample_weight`` has the wrong shape, ``reg_covar`` is
        negative or not finite; eagerly, non-finite ``x`` or invalid weights.

    Example:
      >>> import jax.numpy as jnp
      >>> g = fit(jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
      >>> g.mean.tolist(), g.cov.tolist()
      ([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
    """
    x = _validate.as_float(x, "x", ndim=2)
    if axis_name is None:
        _validate.check_nonempty(x, "x")
    _validate.check_nonempty(x, "x", axis=1)
    _validate.check_finite(x, "x", validate)
    w = _weights(sample_weight, x, validate)
    reg_covar = _validate.check_scalar(reg_covar, "reg_covar", x.dtype, minimum=0)
    return _fit(x, w, reg_covar, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _fit(x, w, reg_covar, *, axis_name):
    w = _validate.normalize_weights(w, axis_name)  # only the ratios matter
    total = _psum(jnp.sum(w), axis_name)
    mean = _psum(jnp.matmul(w, x, precision=_HIGHEST), axis_name) / total
    diff = x - mean
    cov = _psum(jnp.matmul((w[:, None] * diff).T, diff, precision=_HIGHEST), axis_name)
    cov = cov / total + reg_covar * jnp.eye(x.shape[1], dtype=x.dtype)
    return Gaussian(mean, cov)


@_validate.public
def log_prob(model: Gaussian, x: jax.Array, *, validate: bool = True) -> jax.Array:
    r"""Log-density of ``x`` under the Gaussian, through the Cholesky factor.

    With :math:`\Sigma = L L^\top` and :math:`z = L^{-1}(x - \mu)` (a
    triangular solve), :math:`\log p(x) = -\tfrac12 \|z\|^2 - \sum_j \log L_{jj}
    - \tfrac d2 \log 2\pi`. Matches ``scipy.stats.multivariate_normal.logpdf``.

    Args:
      model: the ``Gaussian`` (mean [d], cov [d, d]).
      x: [..., d] points.
      validate: check on the eager path that ``x`` and ``mean`` are finite
        and that ``cov`` is symmetric positive definite. Under a
        transformation the checks are skipped: a non-finite point gives NaN
        for that point only, a covariance that is not positive definite gives
        NaN everywhere, and a non-symmetric one is used through its lower
        triangle.

    Returns:
      [...] log-densities, in the common dtype of ``model`` and ``x``.

    Raises:
      ValueError: shapes do not match; eagerly, non-finite ``x`` or a
        covariance that is not symmetric positive definite.

    Example:
      >>> import jax.numpy as jnp
      >>> g = Gaussian(jnp.zeros(2), jnp.eye(2))
      >>> round(float(log_prob(g, jnp.zeros(2))), 4)  # -log(2 pi)
      -1.8379
    """
    mean, cov, x = _check_model(model, x)
    _validate.check_finite(x, "x", validate)
    _validate.check_finite(mean, "model.mean", validate)
    _validate.check_symmetric(cov, "model.cov", validate)
    chol = jnp.linalg.cholesky(cov)
    _validate.value_check(
        validate,
        jnp.all(jnp.isfinite(chol)),
        "model.cov is not positive definite (its Cholesky factorisation failed); "
        "fit with reg_covar > 0",
    )
    return _log_prob(mean, chol, x)


@jax.jit
def _log_prob(mean, chol, x):
    d = mean.shape[-1]
    diff = (x - mean).reshape(-1, d)
    z = solve_triangular(chol, diff.T, lower=True)
    half_log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    out = -0.5 * jnp.sum(z * z, axis=0) - half_log_det - 0.5 * d * math.log(2 * math.pi)
    return out.reshape(x.shape[:-1])


@_validate.public
def sample(
    key: jax.Array, model: Gaussian, n: int, *, validate: bool = True
) -> jax.Array:
    """Draws ``n`` samples ``mean + L z`` with ``z`` standard normal, ``L L^T = cov``.

    Args:
      key: a PRNG key.
      model: the ``Gaussian`` (mean [d], cov [d, d], positive definite).
      n: number of samples (a Python int).
      validate: check on the eager path that ``mean`` is finite and ``cov``
        symmetric positive definite. Under a transformation a covariance that
        is not positive definite gives NaN samples.

    Returns:
      [n, d] samples in the dtype of ``model``.

    Raises:
      TypeError: ``n`` is not an int, ``model`` not a ``Gaussian``.
      ValueError: ``n < 0``; eagerly, a non-finite mean or a covariance that
        is not symmetric positive definite (e.g. singular).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> g = Gaussian(jnp.ones(3), 4.0 * jnp.eye(3))
      >>> sample(jax.random.key(0), g, 5).shape
      (5, 3)
    """
    n = _validate.check_int(n, "n", minimum=0)
    mean, cov, _ = _check_model(model, None)
    _validate.check_finite(mean, "model.mean", validate)
    _validate.check_positive_definite(cov, "model.cov", validate)
    return _sample(key, mean, cov, n=n)


@functools.partial(jax.jit, static_argnames=("n",))
def _sample(key, mean, cov, *, n):
    z = jax.random.normal(key, (n, mean.shape[-1]), mean.dtype)
    return mean + z @ jnp.linalg.cholesky(cov).T


def _check_model(model, x):
    if not isinstance(model, Gaussian):
        raise TypeError(f"model must be a Gaussian, got {type(model).__name__}")
    mean = _validate.as_float(model.mean, "model.mean", ndim=1)
    dtype = _validate.common_float_dtype(mean, model.cov, x)
    mean = mean.astype(dtype)
    cov = _validate.as_float(model.cov, "model.cov", ndim=2, dtype=dtype)
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"model.cov must have shape ({d}, {d}), got {cov.shape}")
    if x is not None:
        x = _validate.as_float(x, "x", dtype=dtype)
        if x.ndim == 0 or x.shape[-1] != d:
            raise ValueError(f"x must have shape [..., {d}], got {x.shape}")
    return mean, cov, x


def _weights(sample_weight, x, validate):
    if sample_weight is None:
        return jnp.ones(x.shape[0], x.dtype)
    return _validate.check_weights(
        sample_weight, "sample_weight", x.shape[:1], dtype=x.dtype, validate=validate
    )


def _psum(value, axis_name):
    return value if axis_name is None else jax.lax.psum(value, axis_name)
