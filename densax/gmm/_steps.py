"""The textbook EM steps: the direct E-step, the closed-form M-step, one iteration.

These are the forms of the course (Bishop 2006, section 9.2.2): cheap, pure,
every intermediate a plain array ([n, K] responsibilities, [n, K, d]
differences). :func:`densax.gmm.fit` runs the same iteration with its fast
engine (:mod:`densax.gmm._engine`), and differentiates its result through
these steps (:mod:`densax.gmm._implicit`).

References:
  Bishop (2006), Pattern Recognition and Machine Learning, section 9.2.
"""

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from densax import _validate
from densax.gmm._model import (
    COVARIANCE_TYPES,
    GaussianMixture,
    _check_data,
    _check_nonnegative,
    _check_params_data,
    _component_log_prob,
    _inverse_transpose,
    _psum,
    from_covariances,  # noqa: F401 (the examples use it)
)

__all__ = ["e_step", "em_step", "m_step"]

_HIGHEST = jax.lax.Precision.HIGHEST


@_validate.public
def e_step(
    params: GaussianMixture,
    x: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """The E-step: log-responsibilities and the mean log-likelihood.

    ``log r_ik = log w_k + log N(x_i | mu_k, Sigma_k) - log p(x_i)``, with the
    Mahalanobis distances in the direct form ``|U_k^T (x_i - mu_k)|^2``.

    Args:
      params: the current :class:`GaussianMixture`.
      x: [n, d] samples.
      sample_weight: optional [n] non-negative weights of the mean.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x``, the mapped
        axis; the mean log-likelihood is then over all shards.
      validate: eager check that ``x`` is finite.

    Returns:
      ``(log_resp, log_likelihood)``: [n, K] log posterior probabilities of the
      components, and the (weighted) mean log-likelihood of ``x`` (a scalar).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (50, 2))
      >>> p = from_covariances(jnp.ones(3) / 3, x[:3], jnp.ones(3), "spherical")
      >>> log_resp, ll = e_step(p, x)
      >>> log_resp.shape, bool(jnp.allclose(jnp.exp(log_resp).sum(1), 1))
      ((50, 3), True)
    """
    params, x, w = _check_params_data(params, x, sample_weight, validate)
    return _e_step(params, x, w, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _e_step(params, x, w, *, axis_name):
    log_prob = _component_log_prob(params, x)
    log_norm = logsumexp(log_prob, axis=1)
    total, mass = _psum((jnp.sum(w * log_norm), jnp.sum(w)), axis_name)
    return log_prob - log_norm[:, None], total / mass


@_validate.public
def m_step(
    x: jax.Array,
    log_resp: jax.Array,
    *,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> GaussianMixture:
    """The M-step: the closed-form parameters given log-responsibilities.

    ``nk = sum_i w_i r_ik + 10 eps`` (the weights rescaled to mean one
    first: the floor is relative), ``mean_k = sum_i w_i r_ik x_i / nk``,
    covariances are the responsibility-weighted second moments about the new
    means plus ``reg_covar`` on the diagonal (tied: pooled over components;
    diag: per feature; spherical: averaged over features), weights
    ``nk / sum nk``: scikit-learn's ``_estimate_gaussian_parameters``, in the
    direct form (two passes: the means, then the scatter about them).

    Degenerate cases as in :func:`densax.gmm.fit`: an empty component gets
    mean 0 and covariance ``reg_covar I``; diag/spherical variances are clipped
    at 0; a full/tied covariance whose Cholesky factorisation fails gets
    ``d eps`` times its scatter's trace more on the diagonal.

    Args:
      x: [n, d] samples.
      log_resp: [n, K] log-responsibilities (rows need not be normalised).
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      reg_covar: non-negative value added to the covariances' diagonal.
      sample_weight: optional [n] non-negative sample weights.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x`` and
        ``log_resp``, the mapped axis; the statistics are ``psum``-ed.
      validate: eager check that ``x`` is finite.

    Returns:
      The new :class:`GaussianMixture`.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0], [2.0], [10.0], [12.0]])
      >>> resp = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> p = m_step(x, jnp.log(resp), covariance_type="diag", reg_covar=0.0)
      >>> p.means[:, 0].round(4).tolist(), p.covariances[:, 0].round(4).tolist()
      ([1.0, 11.0], [1.0, 1.0])
    """
    x, w, _ = _check_data(x, 1, sample_weight, validate, min_samples=1)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    log_resp = _validate.as_float(log_resp, "log_resp", ndim=2, dtype=x.dtype)
    if log_resp.shape[0] != x.shape[0]:
        raise ValueError(
            f"log_resp must have {x.shape[0]} rows (one per sample), "
            f"got shape {log_resp.shape}"
        )
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    return _m_step(
        x,
        jnp.exp(log_resp),
        w,
        reg_covar,
        covariance_type=covariance_type,
        axis_name=axis_name,
    )


@functools.partial(jax.jit, static_argnames=("covariance_type", "axis_name"))
def _m_step(x, resp, w, reg_covar, *, covariance_type, axis_name):
    """The direct M-step from responsibilities [n, K].

    The weights are rescaled to mean one first, so that the ``10 eps`` floor
    of the counts is relative to their scale (only their ratios matter).
    """
    d = x.shape[1]
    eps = jnp.finfo(x.dtype).eps
    w = _validate.normalize_weights(w, axis_name)
    rw = resp * w[:, None]  # [n, K]
    nk = _psum(jnp.sum(rw, axis=0), axis_name) + 10 * eps
    sums = _psum(jnp.matmul(rw.T, x, precision=_HIGHEST), axis_name)
    means = sums / nk[:, None]
    diff = x[:, None, :] - means  # [n, K, d]
    eye = jnp.eye(d, dtype=x.dtype)
    if covariance_type in ("full", "tied"):
        scatter = jnp.einsum("nk,nki,nkj->kij", rw, diff, diff, precision=_HIGHEST)
        scatter = _psum(scatter, axis_name)
        if covariance_type == "tied":
            scatter, total = jnp.sum(scatter, axis=0), jnp.sum(nk)
        else:
            total = nk[:, None, None]
        cov = scatter / total + reg_covar * eye
        size = jnp.trace(scatter, axis1=-2, axis2=-1)[..., None, None]
        cov, prec_chol = _rescued_cholesky(cov, d * eps * size / total)
    else:
        var = _psum(jnp.einsum("nk,nkd->kd", rw, diff**2), axis_name) / nk[:, None]
        if covariance_type == "spherical":
            var = jnp.mean(var, axis=1)
        cov = jnp.maximum(var, 0) + reg_covar
        prec_chol = jax.lax.rsqrt(cov)
    weights = nk / jnp.sum(nk)
    return GaussianMixture(weights, means, cov, prec_chol, covariance_type)


def _rescued_cholesky(cov, jitter):
    """Precision Cholesky factors, ``jitter`` added where the factorisation fails.

    ``jitter`` is the rounding level of the statistics the covariance is made of.
    """
    failed = ~jnp.all(
        jnp.isfinite(jnp.linalg.cholesky(jax.lax.stop_gradient(cov))),
        axis=(-2, -1),
        keepdims=True,
    )
    eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)
    cov = cov + jnp.where(failed, jax.lax.stop_gradient(jitter), 0) * eye
    return cov, _inverse_transpose(jnp.linalg.cholesky(cov))


@_validate.public
def em_step(
    params: GaussianMixture,
    x: jax.Array,
    *,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> tuple[GaussianMixture, jax.Array]:
    """One EM iteration: :func:`e_step` on ``params``, then :func:`m_step`.

    Every operation is differentiable (forward and reverse mode), e.g. a fixed
    number of steps under ``lax.scan``. :func:`densax.gmm.fit` iterates the
    same map with a faster engine and differentiates its fixed point.

    Args:
      params: the current :class:`GaussianMixture`.
      x: [n, d] samples.
      reg_covar: non-negative value added to the covariances' diagonal.
      sample_weight: optional [n] non-negative sample weights.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x``, the
        mapped axis; the statistics are ``psum``-ed so every shard gets the
        parameters of the unsharded step.
      validate: eager check that ``x`` is finite.

    Returns:
      ``(new_params, log_likelihood)``: the updated parameters, and the mean
      log-likelihood of ``x`` under the *input* ``params`` (the value
      scikit-learn's ``lower_bound_`` takes at this iteration).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (50, 2))
      >>> p0 = from_covariances(jnp.ones(3) / 3, x[:3], jnp.ones(3), "spherical")
      >>> p1, ll0 = em_step(p0, x)
      >>> bool(e_step(p1, x)[1] > ll0)  # EM increases the log-likelihood
      True
    """
    params, x, w = _check_params_data(params, x, sample_weight, validate)
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    return _em_step(params, x, w, reg_covar, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _em_step(params, x, w, reg_covar, *, axis_name):
    log_resp, ll = _e_step(params, x, w, axis_name=axis_name)
    new = _m_step(
        x,
        jnp.exp(log_resp),
        w,
        reg_covar,
        covariance_type=params.covariance_type,
        axis_name=axis_name,
    )
    return new, ll
