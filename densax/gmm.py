"""Gaussian mixture models fitted by Expectation-Maximisation.

Everything a scikit-learn ``GaussianMixture`` user reaches for, as pure
functions over a :class:`GMMParams` pytree: the four covariance types
(``full``, ``tied``, ``diag``, ``spherical``), four initialisations,
:func:`e_step` / :func:`m_step` / :func:`em_step`, :func:`fit` (the whole loop
in one ``lax.while_loop``, ``n_init`` restarts in parallel under ``vmap``),
:func:`log_prob` (scikit-learn's ``score_samples``), :func:`predict_proba`,
:func:`predict`, :func:`sample`, :func:`bic`, :func:`aic`. Per-sample weights
and data-parallel EM (``axis_name``) come with every estimation step.

How the EM iteration is computed. A component's weighted log-density is a
quadratic polynomial in ``x``::

  log w_k + log N(x | mu_k, P_k^-1)
      = c_k + x^T (P_k mu_k) - 1/2 sum_{i<=j} (2 - [i=j]) P_k,ij x_i x_j,

so with the feature block ``phi(x) = [1, x, (x_i x_j)_{i<=j}]`` (``[n, F]``,
``F = 1 + d + d(d+1)/2``; ``[1, x, x**2]`` for ``diag``, ``[1, x, |x|^2]`` for
``spherical``), built once per fit, the E-step is one ``[n, F] @ [F, K]``
matmul followed by a ``logsumexp`` and the M-step's sufficient statistics
(counts, first and second moments of every component) are one ``[K, n] @ [n,
F]`` matmul. No ``[n, K, d]`` or ``[n, K, d, d]`` array is ever formed, and the
flops are about half of the direct ``(x - mu_k) U_k`` form. The data are
centred at their (weighted) mean first: the expanded form cancels terms of
size ``kappa_k = (mu_k - xbar)^T P_k (mu_k - xbar) + tr(P_k Cov(x))`` down to
the size of the result, so it keeps about ``-log10(eps * kappa_k)`` digits.
In float64 that is ample; in float32 the E-step log-densities are accurate to
about ``1e-6 * kappa`` (see the tests for measured agreement with
scikit-learn), which matters only for components that are very narrow
relative to their distance from the data mean: fit those in float64.
:func:`log_prob`, :func:`predict_proba` and :func:`predict`, which users call
on new points, use the direct form ``|U_k^T (x - mu_k)|^2`` instead and are
accurate to rounding in either dtype.

Degenerate cases. ``reg_covar`` is added to every covariance's diagonal, as in
scikit-learn. A component that loses all its points keeps a weight of about
``10 eps / n``, mean at the data mean, covariance ``reg_covar I``, and stays
finite. Variances of ``diag``/``spherical`` components are clipped at zero
before ``reg_covar`` is added (rounding can make ``E[x^2] - mu^2`` slightly
negative). A ``full``/``tied`` covariance whose Cholesky factorisation fails
after ``reg_covar`` (only through rounding, e.g. a float32 component collapsed
on duplicate points) gets ``d * eps * trace(E[x x^T])`` more on its diagonal.
When the log-likelihood becomes non-finite anyway (NaN or inf in ``x`` under a
transformation, ``reg_covar=0`` with a collapsed component) :func:`fit` stops
and reports ``converged=False``.

References:
  Dempster, Laird and Rubin (1977), Maximum likelihood from incomplete data
  via the EM algorithm, JRSS B 39(1).
  Bishop (2006), Pattern Recognition and Machine Learning, section 9.2.
  Arthur and Vassilvitskii (2007), k-means++: the advantages of careful
  seeding, SODA.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from densax import gmm
  >>> k1, k2 = jax.random.split(jax.random.key(0))
  >>> x = jnp.concatenate([jax.random.normal(k1, (200, 2)) - 3.0,
  ...                      jax.random.normal(k2, (200, 2)) + 3.0])
  >>> result = gmm.fit(jax.random.key(1), x, 2)
  >>> bool(result.converged), jnp.sort(result.params.means[:, 0]).round(0).tolist()
  (True, [-3.0, 3.0])
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from densax import _validate

__all__ = [
    "COVARIANCE_TYPES",
    "INIT_METHODS",
    "FitResult",
    "GMMParams",
    "aic",
    "bic",
    "e_step",
    "em_step",
    "fit",
    "from_covariances",
    "from_precisions",
    "init",
    "log_prob",
    "m_step",
    "predict",
    "predict_proba",
    "sample",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "kmeans++", "random", "random_from_data")

_HIGHEST = jax.lax.Precision.HIGHEST
_LLOYD_ITERATIONS = 10  # Lloyd iterations of the "kmeans" initialisation
_LOG_2PI = math.log(2 * math.pi)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["weights", "means", "covariances", "precisions_cholesky"],
    meta_fields=["covariance_type"],
)
@dataclasses.dataclass(frozen=True)
class GMMParams:
    """The parameters of a Gaussian mixture (a pytree).

    ``covariance_type`` is static metadata, not an array: the shapes of
    ``tied`` ([d, d]) and ``diag`` ([K, d]) covariances coincide when K = d.
    The density is defined by ``weights``, ``means`` and
    ``precisions_cholesky``; ``covariances`` is kept for inspection and
    agrees with them. Build one from covariances or precisions with
    :func:`from_covariances` / :func:`from_precisions`.
    """

    weights: jax.Array  # [K] float, non-negative, summing to one
    means: jax.Array  # [K, d] float
    # full [K, d, d] | tied [d, d] | diag [K, d] | spherical [K], float
    covariances: jax.Array
    # Same shape as covariances. full/tied: upper-triangular U with precision
    # U U^T (scikit-learn's precisions_cholesky_); diag/spherical: 1/sqrt(var).
    precisions_cholesky: jax.Array
    covariance_type: str = "full"


class FitResult(NamedTuple):
    """The output of :func:`fit`."""

    params: GMMParams  # the fitted mixture (after the last M-step)
    # [] float: mean log-likelihood at the last E-step, i.e. of the parameters
    # before the last M-step (scikit-learn's lower_bound_); -inf if max_iter=0.
    log_likelihood: jax.Array
    n_iter: jax.Array  # [] int32: EM iterations run
    converged: jax.Array  # [] bool: the change of log_likelihood fell below tol
    # [max_iter] float: log_likelihood after each iteration (scikit-learn's
    # lower_bounds_); NaN from index n_iter on.
    log_likelihood_trace: jax.Array


# ---------------------------------------------------------------- constructors


def from_covariances(
    weights: jax.Array,
    means: jax.Array,
    covariances: jax.Array,
    covariance_type: str = "full",
    *,
    validate: bool = True,
) -> GMMParams:
    """Builds :class:`GMMParams` from weights, means and covariances.

    Args:
      weights: [K] mixture weights (non-negative, summing to one).
      means: [K, d] component means.
      covariances: full [K, d, d], tied [d, d], diag [K, d] or spherical [K];
        positive definite.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      validate: eagerly check that the covariances are positive definite.

    Returns:
      The parameters, with ``precisions_cholesky`` computed by Cholesky
      factorisation and a triangular solve.

    Raises:
      ValueError: unknown ``covariance_type``, inconsistent shapes; eagerly, a
        covariance that is not positive definite.

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.5, 0.5]), jnp.zeros((2, 3)),
      ...                      jnp.array([1.0, 4.0]), "spherical")
      >>> p.precisions_cholesky.tolist()
      [1.0, 0.5]
    """
    weights, means, covariances = _check_parts(
        weights, means, covariances, covariance_type, "covariances"
    )
    prec_chol = _precision_cholesky(covariances, covariance_type)
    _validate.value_check(
        validate,
        jnp.all(jnp.isfinite(prec_chol)),
        "covariances must be positive definite",
    )
    return GMMParams(weights, means, covariances, prec_chol, covariance_type)


def from_precisions(
    weights: jax.Array,
    means: jax.Array,
    precisions: jax.Array,
    covariance_type: str = "full",
    *,
    validate: bool = True,
) -> GMMParams:
    """Builds :class:`GMMParams` from precisions (scikit-learn's ``precisions_init``).

    Args:
      weights: [K] mixture weights (non-negative, summing to one).
      means: [K, d] component means.
      precisions: inverse covariances, full [K, d, d], tied [d, d], diag [K, d]
        or spherical [K]; positive definite.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      validate: eagerly check that the precisions are positive definite.

    Returns:
      The parameters. ``precisions_cholesky`` is the upper-triangular ``U``
      with ``U U^T = precision`` (a Cholesky factorisation of the reversed
      matrix, as scikit-learn does), the covariances ``U^-T U^-1``.

    Raises:
      ValueError: unknown ``covariance_type``, inconsistent shapes; eagerly, a
        precision that is not positive definite.

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_precisions(jnp.ones(1), jnp.zeros((1, 2)),
      ...                     jnp.array([[[4.0, 0.0], [0.0, 1.0]]]))
      >>> p.covariances[0].tolist()
      [[0.25, 0.0], [0.0, 1.0]]
    """
    weights, means, precisions = _check_parts(
        weights, means, precisions, covariance_type, "precisions"
    )
    prec_chol, covariances = _from_precisions(precisions, covariance_type)
    _validate.value_check(
        validate,
        jnp.all(jnp.isfinite(prec_chol)),
        "precisions must be positive definite",
    )
    return GMMParams(weights, means, covariances, prec_chol, covariance_type)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _precision_cholesky(covariances, covariance_type):
    if covariance_type in ("diag", "spherical"):
        return jax.lax.rsqrt(covariances)
    return _inverse_transpose(jnp.linalg.cholesky(covariances))


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _from_precisions(precisions, covariance_type):
    if covariance_type in ("diag", "spherical"):
        return jnp.sqrt(precisions), 1.0 / precisions
    # precision = U U^T with U upper triangular: reverse rows and columns,
    # factor (lower), reverse back.
    flip = lambda a: jnp.flip(a, axis=(-2, -1))
    prec_chol = flip(jnp.linalg.cholesky(flip(precisions)))
    eye = jnp.broadcast_to(
        jnp.eye(precisions.shape[-1], dtype=precisions.dtype), precisions.shape
    )
    inv = solve_triangular(prec_chol, eye, lower=False)  # U^-1
    covariances = jnp.matmul(inv.swapaxes(-1, -2), inv, precision=_HIGHEST)
    return prec_chol, covariances


def _inverse_transpose(chol):
    """``L^-T`` for a lower-triangular ``L`` (batched): an upper-triangular matrix."""
    eye = jnp.broadcast_to(jnp.eye(chol.shape[-1], dtype=chol.dtype), chol.shape)
    return solve_triangular(chol, eye, lower=True).swapaxes(-1, -2)


# ----------------------------------------------------------- initialisation


def init(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    method: str = "kmeans++",
    weights: jax.Array | None = None,
    means: jax.Array | None = None,
    precisions: jax.Array | None = None,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> GMMParams:
    """Initial mixture parameters for EM.

    The method assigns every sample to components (responsibilities) and the
    parameters are the M-step of that assignment:

    * ``"kmeans++"``: k-means++ seeding (D² sampling with
      ``2 + log K`` greedy trials per centre, as scikit-learn), each sample
      assigned to its nearest seed;
    * ``"kmeans"``: the same seeds refined by 10 weighted Lloyd iterations;
    * ``"random_from_data"``: ``K`` distinct samples drawn with probability
      proportional to ``sample_weight``, nearest-seed assignment;
    * ``"random"``: uniform random responsibilities (all means start near
      the data mean).

    For the seeding methods scikit-learn instead starts from the seeds alone
    (covariances ``reg_covar I``), which makes its first E-step a
    nearest-seed assignment anyway. Any of ``weights``, ``means``,
    ``precisions`` given replaces the computed one (scikit-learn's
    ``weights_init`` / ``means_init`` / ``precisions_init``); with all three
    given the data are not used.

    Args:
      key: a PRNG key.
      x: [n, d] samples, n >= n_components.
      n_components: the number of components K.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      method: one of :data:`INIT_METHODS`.
      weights: optional [K] initial weights (normalised to sum to one).
      means: optional [K, d] initial means.
      precisions: optional initial precision matrices, shaped as the
        covariances of ``covariance_type``.
      reg_covar: non-negative value added to the covariances' diagonal.
      sample_weight: optional [n] non-negative sample weights.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x``, the
        mapped axis: the shards are gathered (``all_gather``, memory n·d on
        every device, once) and every device computes the same
        initialisation as an unsharded call.
      validate: eager value checks of ``x``, ``sample_weight`` and the given
        parameters.

    Returns:
      The initial :class:`GMMParams`, in the dtype of ``x``.

    Raises:
      ValueError: unknown option, bad shapes, ``n < n_components``; eagerly,
        non-finite ``x`` or invalid weights.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (400, 2))
      >>> p = init(jax.random.key(1), x, 2)
      >>> p.means.shape, p.covariances.shape
      ((2, 2), (2, 2, 2))
    """
    x, w, k = _check_data(x, n_components, sample_weight, validate)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    _validate.check_choice(method, "method", INIT_METHODS)
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    given = {"weights": weights, "means": means, "precisions": precisions}
    shapes = {
        "weights": (k,),
        "means": (k, x.shape[1]),
        "precisions": _cov_shape(covariance_type, k, x.shape[1]),
    }
    for name, value in given.items():
        if value is not None:
            given[name] = _validate.as_float(value, name, dtype=x.dtype)
            if given[name].shape != shapes[name]:
                raise ValueError(
                    f"{name} must have shape {shapes[name]}, got {given[name].shape}"
                )
            _validate.check_finite(given[name], name, validate)
    if given["weights"] is not None:
        given["weights"] = _validate.check_weights(
            given["weights"], "weights", (k,), dtype=x.dtype, validate=validate
        )
        given["weights"] = given["weights"] / jnp.sum(given["weights"])
    if all(value is not None for value in given.values()):
        return from_precisions(
            given["weights"],
            given["means"],
            given["precisions"],
            covariance_type,
            validate=validate,
        )
    params = _init(
        key,
        x,
        w,
        reg_covar,
        n_components=k,
        covariance_type=covariance_type,
        method=method,
        axis_name=axis_name,
    )
    if given["precisions"] is not None:
        prec_chol, cov = _from_precisions(given["precisions"], covariance_type)
        params = dataclasses.replace(
            params, covariances=cov, precisions_cholesky=prec_chol
        )
    if given["weights"] is not None:
        params = dataclasses.replace(params, weights=given["weights"])
    if given["means"] is not None:
        params = dataclasses.replace(params, means=given["means"])
    return params


@functools.partial(
    jax.jit,
    static_argnames=("n_components", "covariance_type", "method", "axis_name"),
)
def _init(key, x, w, reg_covar, *, n_components, covariance_type, method, axis_name):
    shift = _weighted_mean(x, w, axis_name)
    xc = x - shift
    params = _init_centred(
        key, xc, w, reg_covar, n_components, covariance_type, method, axis_name
    )
    return _translate(params, shift)


def _init_centred(key, xc, w, reg_covar, k, covariance_type, method, axis_name):
    """Initial parameters in the frame of centred data ``xc``."""
    if axis_name is not None:
        xc = jax.lax.all_gather(xc, axis_name, tiled=True, to="invarying")
        w = jax.lax.all_gather(w, axis_name, tiled=True, to="invarying")
    n = xc.shape[0]
    if n < k:
        raise ValueError(f"n_components={k} must be <= the number of samples {n}")
    if method == "random":
        resp = jax.random.uniform(key, (n, k), xc.dtype)
        resp = resp / jnp.sum(resp, axis=1, keepdims=True)
    else:
        if method == "random_from_data":
            idx = jax.random.choice(key, n, (k,), replace=False, p=w / jnp.sum(w))
            centres = xc[idx]
        else:
            centres = _kmeans_plusplus(key, xc, w, k)
        if method == "kmeans":
            centres = _lloyd(xc, w, centres)
        labels = jnp.argmin(_sq_distances(centres, xc), axis=0)
        resp = jax.nn.one_hot(labels, k, dtype=xc.dtype)
    stats = _statistics(_features(xc, covariance_type), resp, w, None)
    return _params_from_statistics(stats, reg_covar, covariance_type, xc.shape[1])


def _sq_distances(centres, x):
    """[m, n] squared distances between ``centres`` [m, d] and ``x`` [n, d]."""
    cross = jnp.matmul(centres, x.T, precision=_HIGHEST)
    sq = jnp.sum(centres**2, 1)[:, None] - 2 * cross + jnp.sum(x**2, 1)[None, :]
    return jnp.maximum(sq, 0)


def _kmeans_plusplus(key, x, w, k):
    """k-means++ seeds [k, d]: D² sampling with greedy local trials.

    References:
      Arthur and Vassilvitskii (2007), k-means++: the advantages of careful
      seeding, SODA.
    """
    n_trials = 2 + int(math.log(k))
    u = jax.random.uniform(key, (k, n_trials), x.dtype)  # all the randomness
    first = x[_sample_index(u[0, :1], w)[0]]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    closest = _sq_distances(first[None], x)[0]  # [n]

    def add_centre(i, carry):
        centres, closest = carry
        mass = w * closest
        # Every sample on a centre already (fewer distinct points than K):
        # sample by weight alone.
        cand = _sample_index(u[i], jnp.where(jnp.sum(mass) > 0, mass, w))
        new_closest = jnp.minimum(closest, _sq_distances(x[cand], x))  # [trials, n]
        best = jnp.argmin(new_closest @ w)
        return centres.at[i].set(x[cand[best]]), new_closest[best]

    centres, _ = jax.lax.fori_loop(1, k, add_centre, (centres, closest))
    return centres


def _sample_index(u, mass):
    """Indices drawn with probability proportional to ``mass``, by inverse CDF.

    Args:
      u: [m] uniform numbers in [0, 1).
      mass: [n] non-negative masses with a positive sum.
    """
    cdf = jnp.cumsum(mass)
    index = jnp.searchsorted(cdf, u * cdf[-1], side="right", method="compare_all")
    return jnp.minimum(index, mass.shape[0] - 1)


def _lloyd(x, w, centres):
    """Weighted Lloyd iterations; an emptied cluster keeps its centre."""

    def step(_, centres):
        labels = jnp.argmin(_sq_distances(centres, x), axis=0)
        onehot = jax.nn.one_hot(labels, centres.shape[0], dtype=x.dtype) * w[:, None]
        counts = jnp.sum(onehot, axis=0)[:, None]
        sums = jnp.matmul(onehot.T, x, precision=_HIGHEST)
        return jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), centres)

    return jax.lax.fori_loop(0, _LLOYD_ITERATIONS, step, centres)


# ------------------------------------------------- the EM step on features


def _features(xc, covariance_type):
    """The feature block ``[1, x, quadratic terms]`` [n, F] of centred samples."""
    if covariance_type in ("full", "tied"):
        # x_i x_j for i <= j, row-major: the order of np.triu_indices.
        quad = [xc[:, i : i + 1] * xc[:, i:] for i in range(xc.shape[1])]
    elif covariance_type == "diag":
        quad = [xc * xc]
    else:
        quad = [jnp.sum(xc * xc, axis=1, keepdims=True)]
    return jnp.concatenate([jnp.ones_like(xc[:, :1]), xc, *quad], axis=1)


def _coefficients(params):
    """[F, K] such that ``features(x) @ coefficients`` = log w_k + log N(x|k)."""
    ct = params.covariance_type
    mu, prec_chol = params.means, params.precisions_cholesky
    k, d = mu.shape
    if ct in ("full", "tied"):
        iu, ju = np.triu_indices(d)
        # x_i x_j appears twice in the quadratic form for i != j.
        off = np.where(iu == ju, 1.0, 2.0).astype(mu.dtype)
        if ct == "full":
            ut_mu = jnp.einsum("kij,ki->kj", prec_chol, mu, precision=_HIGHEST)
            lin = jnp.einsum("kij,kj->ki", prec_chol, ut_mu, precision=_HIGHEST)
            prec = jnp.einsum("kij,klj->kil", prec_chol, prec_chol, precision=_HIGHEST)
            quad = -0.5 * off * prec[:, iu, ju]
            half_log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, 0, -2, -1)), -1)
        else:
            ut_mu = jnp.matmul(mu, prec_chol, precision=_HIGHEST)
            lin = jnp.matmul(ut_mu, prec_chol.T, precision=_HIGHEST)
            prec = jnp.matmul(prec_chol, prec_chol.T, precision=_HIGHEST)
            quad = jnp.broadcast_to(-0.5 * off * prec[iu, ju], (k, iu.size))
            half_log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol)))
        mu_prec_mu = jnp.sum(ut_mu**2, axis=-1)
    elif ct == "diag":
        prec = prec_chol**2
        lin = prec * mu
        quad = -0.5 * prec
        half_log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
        mu_prec_mu = jnp.sum(lin * mu, axis=-1)
    else:
        prec = prec_chol**2
        lin = prec[:, None] * mu
        quad = -0.5 * prec[:, None]
        half_log_det = d * jnp.log(prec_chol)
        mu_prec_mu = prec * jnp.sum(mu * mu, axis=-1)
    const = (
        jnp.log(params.weights) + half_log_det - 0.5 * d * _LOG_2PI - 0.5 * mu_prec_mu
    )
    return jnp.concatenate([const[:, None], lin, quad], axis=1).T


def _e_step_features(phi, coef, w, axis_name):
    """Log-responsibilities [n, K] and the weighted mean log-likelihood."""
    log_prob = jnp.matmul(phi, coef, precision=_HIGHEST)
    log_norm = logsumexp(log_prob, axis=1)
    ll = _psum(jnp.dot(w, log_norm), axis_name) / _psum(jnp.sum(w), axis_name)
    return log_prob - log_norm[:, None], ll


def _statistics(phi, resp, w, axis_name):
    """[K, F] weighted sums of the features per component (psum-ed over shards)."""
    stats = jnp.matmul((resp * w[:, None]).T, phi, precision=_HIGHEST)
    return _psum(stats, axis_name)


def _params_from_statistics(stats, reg_covar, covariance_type, d):
    """The M-step: closed-form parameters from the [K, F] sufficient statistics."""
    eps = jnp.finfo(stats.dtype).eps
    nk = stats[:, 0] + 10 * eps  # as scikit-learn: no division by zero
    means = stats[:, 1 : d + 1] / nk[:, None]
    quad = stats[:, d + 1 :]
    eye = jnp.eye(d, dtype=stats.dtype)
    if covariance_type == "full":
        second = quad[:, _symmetric_index(d)] / nk[:, None, None]  # E_k[x x^T]
        cov = second - means[:, :, None] * means[:, None, :] + reg_covar * eye
        cov, prec_chol = _rescued_cholesky(cov, second)
    elif covariance_type == "tied":
        second = jnp.sum(quad, axis=0)[_symmetric_index(d)] / jnp.sum(nk)
        outer = jnp.einsum("k,ki,kj->ij", nk, means, means, precision=_HIGHEST)
        cov = second - outer / jnp.sum(nk) + reg_covar * eye
        cov, prec_chol = _rescued_cholesky(cov, second)
    elif covariance_type == "diag":
        cov = jnp.maximum(quad / nk[:, None] - means**2, 0) + reg_covar
        prec_chol = jax.lax.rsqrt(cov)
    else:
        var = (quad[:, 0] / nk - jnp.sum(means**2, axis=1)) / d
        cov = jnp.maximum(var, 0) + reg_covar
        prec_chol = jax.lax.rsqrt(cov)
    weights = nk / jnp.sum(nk)
    return GMMParams(weights, means, cov, prec_chol, covariance_type)


def _rescued_cholesky(cov, second):
    """Precision Cholesky factors; a failed factorisation gets a rounding jitter."""
    d = cov.shape[-1]
    eye = jnp.eye(d, dtype=cov.dtype)
    failed = ~jnp.all(
        jnp.isfinite(jnp.linalg.cholesky(jax.lax.stop_gradient(cov))), axis=(-2, -1)
    )
    trace = jnp.trace(jax.lax.stop_gradient(second), axis1=-2, axis2=-1)
    jitter = jnp.where(failed, d * jnp.finfo(cov.dtype).eps * trace, 0)
    cov = cov + jitter[..., None, None] * eye
    return cov, _inverse_transpose(jnp.linalg.cholesky(cov))


def _em_iteration(phi, w, params, reg_covar, axis_name):
    """One EM iteration on features: (new params, mean log-likelihood of params)."""
    log_resp, ll = _e_step_features(phi, _coefficients(params), w, axis_name)
    stats = _statistics(phi, jnp.exp(log_resp), w, axis_name)
    d = params.means.shape[1]
    return _params_from_statistics(stats, reg_covar, params.covariance_type, d), ll


@functools.cache
def _symmetric_index(d):
    """[d, d] position of entry (i, j) in the row-major upper triangle."""
    iu, ju = np.triu_indices(d)
    index = np.empty((d, d), dtype=np.int32)
    index[iu, ju] = index[ju, iu] = np.arange(iu.size)
    return index


# --------------------------------------------------------- public EM steps


def e_step(
    params: GMMParams,
    x: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """The E-step: log-responsibilities and the mean log-likelihood.

    Args:
      params: the current :class:`GMMParams`.
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
    shift = _weighted_mean(x, w, axis_name)
    phi = _features(x - shift, params.covariance_type)
    return _e_step_features(
        phi, _coefficients(_translate(params, -shift)), w, axis_name
    )


def m_step(
    x: jax.Array,
    log_resp: jax.Array,
    *,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> GMMParams:
    """The M-step: the closed-form parameters given log-responsibilities.

    ``nk = sum_i w_i r_ik + 10 eps``, ``mean_k = sum_i w_i r_ik x_i / nk``,
    covariances are the responsibility-weighted second moments about the means
    plus ``reg_covar`` on the diagonal (tied: pooled over components; diag:
    per feature; spherical: averaged over features), weights ``nk / sum nk``.

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
      The new :class:`GMMParams`.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0], [2.0], [10.0], [12.0]])
      >>> resp = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> p = m_step(x, jnp.log(resp), covariance_type="diag", reg_covar=0.0)
      >>> p.means[:, 0].round(4).tolist(), p.covariances[:, 0].round(4).tolist()
      ([1.0, 11.0], [1.0, 1.0])
    """
    x, w, _ = _check_data(x, 1, sample_weight, validate)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    log_resp = _validate.as_float(log_resp, "log_resp", ndim=2, dtype=x.dtype)
    if log_resp.shape[0] != x.shape[0]:
        raise ValueError(
            f"log_resp must have {x.shape[0]} rows (one per sample), "
            f"got shape {log_resp.shape}"
        )
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    return _m_step(
        x, log_resp, w, reg_covar, covariance_type=covariance_type, axis_name=axis_name
    )


@functools.partial(jax.jit, static_argnames=("covariance_type", "axis_name"))
def _m_step(x, log_resp, w, reg_covar, *, covariance_type, axis_name):
    shift = _weighted_mean(x, w, axis_name)
    phi = _features(x - shift, covariance_type)
    stats = _statistics(phi, jnp.exp(log_resp), w, axis_name)
    params = _params_from_statistics(stats, reg_covar, covariance_type, x.shape[1])
    return _translate(params, shift)


def em_step(
    params: GMMParams,
    x: jax.Array,
    *,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> tuple[GMMParams, jax.Array]:
    """One EM iteration: an E-step on ``params`` then an M-step.

    Every operation is differentiable: a fixed number of steps under
    ``lax.fori_loop``/``lax.scan`` can be differentiated in reverse mode with
    respect to the initial parameters (:func:`fit` uses a ``while_loop``,
    which only supports forward mode).

    Args:
      params: the current :class:`GMMParams`.
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
    shift = _weighted_mean(x, w, axis_name)
    phi = _features(x - shift, params.covariance_type)
    new, ll = _em_iteration(phi, w, _translate(params, -shift), reg_covar, axis_name)
    return _translate(new, shift), ll


# ---------------------------------------------------------------------- fit


def fit(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    init: str = "kmeans++",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    init_params: GMMParams | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> FitResult:
    """Fits a Gaussian mixture by EM, with scikit-learn's stopping rule.

    The iterations run in one ``lax.while_loop``: each computes the mean
    log-likelihood of the current parameters (E-step) and the new parameters
    (M-step), and the loop stops when that log-likelihood changed by less
    than ``tol`` (``tol=0``: run ``max_iter`` iterations), after ``max_iter``
    iterations, or when it is not finite (``converged=False``). With
    ``n_init > 1`` the restarts run in parallel (``vmap``; the feature block
    is shared, so each E-step is one wider matmul) and the restart with the
    highest final log-likelihood is returned, as scikit-learn does.

    Args:
      key: a PRNG key (initialisation; unused when ``init_params`` is given).
      x: [n, d] samples.
      n_components: the number of components K.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      init: the initialisation method, one of :data:`INIT_METHODS` (see
        :func:`init`).
      n_init: the number of restarts.
      max_iter: the maximum number of EM iterations (0: return the
        initialisation).
      tol: the convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to the covariances' diagonal.
      sample_weight: optional [n] non-negative sample weights: the fit
        maximises ``sum_i w_i log p(x_i)``.
      init_params: starting :class:`GMMParams` (with ``n_init=1``), e.g. from
        :func:`init` with user-given weights, means or precisions.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x`` (and
        ``sample_weight``), the mapped axis: the sufficient statistics are
        ``psum``-ed, so every shard returns the unsharded fit (up to
        summation order). The initialisation gathers the data (see
        :func:`init`); pass ``init_params`` to avoid it.
      validate: eager value checks of ``x``, ``sample_weight`` and
        ``init_params``.

    Returns:
      A :class:`FitResult`: parameters, final mean log-likelihood, number of
      iterations, convergence flag, per-iteration log-likelihoods.

    Raises:
      ValueError: unknown option, bad shapes, ``n < n_components``,
        ``init_params`` of another K, d or covariance type, ``n_init > 1``
        with ``init_params``; eagerly, non-finite ``x`` or invalid weights.
      TypeError: a non-integer ``n_components``, ``n_init`` or ``max_iter``.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (400, 2))
      >>> res = fit(jax.random.key(1), x, 2)
      >>> res.params.means.shape, bool(res.converged), int(res.n_iter) > 1
      ((2, 2), True, True)
    """
    x, w, k = _check_data(x, n_components, sample_weight, validate)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    _validate.check_choice(init, "init", INIT_METHODS)
    n_init = _validate.check_int(n_init, "n_init", minimum=1)
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=0)
    tol = _check_nonnegative(tol, "tol", x.dtype)
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    if init_params is not None:
        if n_init != 1:
            raise ValueError("n_init must be 1 when init_params is given")
        init_params = _check_params(init_params, x.shape[1], x.dtype, validate)
        if init_params.covariance_type != covariance_type:
            raise ValueError(
                f"init_params has covariance_type {init_params.covariance_type!r}, "
                f"but covariance_type={covariance_type!r}"
            )
        if init_params.weights.shape[0] != k:
            raise ValueError(
                f"init_params has {init_params.weights.shape[0]} components, "
                f"but n_components={k}"
            )
    return _fit(
        key,
        x,
        w,
        init_params,
        tol,
        reg_covar,
        n_components=k,
        covariance_type=covariance_type,
        method=init,
        n_init=n_init,
        max_iter=max_iter,
        axis_name=axis_name,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "n_components",
        "covariance_type",
        "method",
        "n_init",
        "max_iter",
        "axis_name",
    ),
)
def _fit(
    key,
    x,
    w,
    init_params,
    tol,
    reg_covar,
    *,
    n_components,
    covariance_type,
    method,
    n_init,
    max_iter,
    axis_name,
):
    shift = _weighted_mean(x, w, axis_name)
    xc = x - shift
    phi = _features(xc, covariance_type)
    run = functools.partial(
        _run_em,
        phi,
        w,
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        axis_name=axis_name,
    )
    if init_params is not None:
        result = run(_translate(init_params, -shift))
    else:

        def restart(key):
            params = _init_centred(
                key, xc, w, reg_covar, n_components, covariance_type, method, axis_name
            )
            return run(params)

        results = jax.vmap(restart)(jax.random.split(key, n_init))
        ll = results.log_likelihood
        best = jnp.argmax(jnp.where(jnp.isnan(ll), -jnp.inf, ll))
        result = jax.tree.map(lambda a: a[best], results)
    return result._replace(params=_translate(result.params, shift))


def _run_em(phi, w, params, *, tol, reg_covar, max_iter, axis_name):
    """The EM loop on a feature block, in the centred frame."""
    dtype = phi.dtype

    def cond(state):
        i, _, ll, converged, _ = state
        return (i < max_iter) & ~converged & ((i == 0) | jnp.isfinite(ll))

    def body(state):
        i, params, ll_prev, _, trace = state
        params, ll = _em_iteration(phi, w, params, reg_covar, axis_name)
        converged = jnp.abs(ll - ll_prev) < tol
        return i + 1, params, ll, converged, trace.at[i].set(ll)

    state = (
        jnp.zeros((), jnp.int32),
        params,
        jnp.asarray(-jnp.inf, dtype),
        jnp.zeros((), bool),
        jnp.full((max_iter,), jnp.nan, dtype),
    )
    n_iter, params, ll, converged, trace = jax.lax.while_loop(cond, body, state)
    return FitResult(params, ll, n_iter, converged & jnp.isfinite(ll), trace)


# ----------------------------------------------------- evaluation functions


def log_prob(params: GMMParams, x: jax.Array, *, validate: bool = True) -> jax.Array:
    """Log-density of the mixture at each sample (scikit-learn's ``score_samples``).

    Computed in the direct form ``log sum_k w_k N(x | mu_k, P_k^-1)`` with
    ``|U_k^T (x - mu_k)|^2``, accurate to rounding in float32 too.
    Differentiable with respect to ``params`` and ``x``.

    Args:
      params: the :class:`GMMParams`.
      x: [n, d] samples.
      validate: eager check that ``x`` is finite (under a transformation a
        non-finite sample gives NaN for that sample only).

    Returns:
      [n] log-densities.

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_covariances(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones(1), "spherical")
      >>> log_prob(p, jnp.zeros((1, 2))).round(4).tolist()  # -log(2 pi)
      [-1.8379]
    """
    params, x, _ = _check_params_data(params, x, None, validate)
    return _log_prob(params, x)


def predict_proba(
    params: GMMParams, x: jax.Array, *, validate: bool = True
) -> jax.Array:
    """Posterior probabilities of the components (responsibilities), [n, K].

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
      ...                      jnp.ones(2), "spherical")
      >>> predict_proba(p, jnp.zeros((1, 1))).tolist()
      [[0.5, 0.5]]
    """
    params, x, _ = _check_params_data(params, x, None, validate)
    return _predict_proba(params, x)


def predict(params: GMMParams, x: jax.Array, *, validate: bool = True) -> jax.Array:
    """The most probable component of each sample, [n] int32.

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
      ...                      jnp.ones(2), "spherical")
      >>> predict(p, jnp.array([[-2.0], [3.0]])).tolist()
      [0, 1]
    """
    params, x, _ = _check_params_data(params, x, None, validate)
    return _predict(params, x)


@jax.jit
def _component_log_prob(params, x):
    """[n, K] log w_k + log N(x_i | mu_k, P_k^-1), direct form."""
    ct, prec_chol = params.covariance_type, params.precisions_cholesky
    d = x.shape[1]
    diff = x[:, None, :] - params.means  # [n, K, d]
    if ct == "full":
        y = jnp.einsum("nkd,kde->nke", diff, prec_chol, precision=_HIGHEST)
        half_log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, 0, -2, -1)), -1)
    elif ct == "tied":
        y = jnp.matmul(diff, prec_chol, precision=_HIGHEST)
        half_log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol)))
    elif ct == "diag":
        y = diff * prec_chol
        half_log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
    else:
        y = diff * prec_chol[:, None]
        half_log_det = d * jnp.log(prec_chol)
    maha = jnp.sum(y * y, axis=-1)
    return jnp.log(params.weights) + half_log_det - 0.5 * (d * _LOG_2PI + maha)


@jax.jit
def _log_prob(params, x):
    return logsumexp(_component_log_prob(params, x), axis=1)


@jax.jit
def _predict_proba(params, x):
    return jax.nn.softmax(_component_log_prob(params, x), axis=1)


@jax.jit
def _predict(params, x):
    return jnp.argmax(_component_log_prob(params, x), axis=1).astype(jnp.int32)


def sample(key: jax.Array, params: GMMParams, n: int) -> tuple[jax.Array, jax.Array]:
    """Draws ``n`` samples from the mixture.

    Args:
      key: a PRNG key.
      params: the :class:`GMMParams`.
      n: the number of samples (a Python int).

    Returns:
      ``(x, labels)``: [n, d] samples and [n] int32 component of each.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.3, 0.7]), jnp.zeros((2, 2)),
      ...                      jnp.stack([jnp.eye(2), 2 * jnp.eye(2)]))
      >>> x, labels = sample(jax.random.key(0), p, 1000)
      >>> x.shape, labels.shape
      ((1000, 2), (1000,))
    """
    n = _validate.check_int(n, "n", minimum=0)
    params = _check_params(params, None, None, False)
    return _sample(key, params, n=n)


@functools.partial(jax.jit, static_argnames=("n",))
def _sample(key, params, *, n):
    ct, prec_chol = params.covariance_type, params.precisions_cholesky
    label_key, normal_key = jax.random.split(key)
    labels = jax.random.categorical(label_key, jnp.log(params.weights), shape=(n,))
    z = jax.random.normal(normal_key, (n, params.means.shape[1]), params.means.dtype)
    # x - mu = U^-T z, so that Cov = U^-T U^-1 = P^-1.
    if ct == "full":
        u = prec_chol[labels]  # [n, d, d]
        y = solve_triangular(u, z[..., None], trans="T", lower=False)[..., 0]
    elif ct == "tied":
        y = solve_triangular(prec_chol, z.T, trans="T", lower=False).T
    elif ct == "diag":
        y = z / prec_chol[labels]
    else:
        y = z / prec_chol[labels][:, None]
    return params.means[labels] + y, labels.astype(jnp.int32)


def bic(
    params: GMMParams,
    x: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    validate: bool = True,
) -> jax.Array:
    """Bayesian information criterion ``-2 log L + p log n`` (lower is better).

    ``log L = sum_i w_i log p(x_i)`` and ``n = sum_i w_i`` (unit weights: the
    sample count, scikit-learn's ``bic``); ``p`` is the number of free
    parameters.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[-2.0], [-1.0], [1.0], [2.0]])
      >>> zero, one = jnp.zeros((1, 1)), jnp.ones((1, 1))
      >>> p = from_covariances(jnp.ones(1), zero, one, "diag")  # N(0, 1)
      >>> round(float(bic(p, x)), 2)  # -2 log L + 2 log 4: two free parameters
      20.12
    """
    params, x, w = _check_params_data(params, x, sample_weight, validate)
    log_lik, n = _total_log_likelihood(params, x, w)
    return -2 * log_lik + _n_parameters(params) * jnp.log(n)


def aic(
    params: GMMParams,
    x: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    validate: bool = True,
) -> jax.Array:
    """Akaike information criterion ``-2 log L + 2 p`` (lower is better).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[-2.0], [-1.0], [1.0], [2.0]])
      >>> zero, one = jnp.zeros((1, 1)), jnp.ones((1, 1))
      >>> p = from_covariances(jnp.ones(1), zero, one, "diag")  # N(0, 1)
      >>> round(float(aic(p, x)), 2)  # -2 log L + 2 * 2: two free parameters
      21.35
    """
    params, x, w = _check_params_data(params, x, sample_weight, validate)
    log_lik, _ = _total_log_likelihood(params, x, w)
    return -2 * log_lik + 2 * _n_parameters(params)


@jax.jit
def _total_log_likelihood(params, x, w):
    return jnp.dot(w, _log_prob(params, x)), jnp.sum(w)


def _n_parameters(params):
    """Free parameters: K - 1 weights, K d means, the covariances."""
    k, d = params.means.shape
    cov = {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[params.covariance_type]
    return k - 1 + k * d + cov


# ------------------------------------------------------------------ helpers


def _translate(params, shift):
    """The same mixture with every mean moved by ``shift`` [d]."""
    return dataclasses.replace(params, means=params.means + shift)


def _weighted_mean(x, w, axis_name):
    total = _psum(jnp.sum(w), axis_name)
    return _psum(jnp.matmul(w, x, precision=_HIGHEST), axis_name) / total


def _psum(value, axis_name):
    return value if axis_name is None else jax.lax.psum(value, axis_name)


def _cov_shape(covariance_type, k, d):
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
        covariance_type
    ]


def _check_nonnegative(value, name, dtype):
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
        value, bool
    ):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return jnp.asarray(value, dtype)


def _check_data(x, n_components, sample_weight, validate):
    """Checks and converts the data [n, d], the sample weights [n] and K."""
    x = _validate.as_float(x, "x", ndim=2)
    k = _validate.check_int(n_components, "n_components", minimum=1)
    _validate.check_finite(x, "x", validate)
    if sample_weight is None:
        w = jnp.ones(x.shape[0], x.dtype)
    else:
        w = _validate.check_weights(
            sample_weight,
            "sample_weight",
            x.shape[:1],
            dtype=x.dtype,
            validate=validate,
        )
    return x, w, k


def _check_parts(weights, means, cov, covariance_type, cov_name):
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    dtype = _validate.common_float_dtype(weights, means, cov)
    weights = _validate.as_float(weights, "weights", ndim=1, dtype=dtype)
    means = _validate.as_float(means, "means", ndim=2, dtype=dtype)
    cov = _validate.as_float(cov, cov_name, dtype=dtype)
    k, d = means.shape
    if weights.shape != (k,):
        raise ValueError(
            f"weights must have shape ({k},) to match means {means.shape}, "
            f"got {weights.shape}"
        )
    want = _cov_shape(covariance_type, k, d)
    if cov.shape != want:
        raise ValueError(
            f"{cov_name} of covariance_type {covariance_type!r} must have shape "
            f"{want}, got {cov.shape}"
        )
    return weights, means, cov


def _check_params(params, d, dtype, validate):
    """Checks a GMMParams' type, option and shapes; casts it to ``dtype``."""
    if not isinstance(params, GMMParams):
        raise TypeError(f"params must be a GMMParams, got {type(params).__name__}")
    ct = params.covariance_type
    weights, means, cov = _check_parts(
        params.weights, params.means, params.covariances, ct, "params.covariances"
    )
    dtype = means.dtype if dtype is None else dtype
    prec_chol = _validate.as_float(
        params.precisions_cholesky, "params.precisions_cholesky", dtype=dtype
    )
    if prec_chol.shape != cov.shape:
        raise ValueError(
            f"params.precisions_cholesky must have shape {cov.shape}, "
            f"got {prec_chol.shape}"
        )
    if d is not None and means.shape[1] != d:
        raise ValueError(
            f"params are for {means.shape[1]} features but x has {d} (its last axis)"
        )
    _validate.check_finite(prec_chol, "params.precisions_cholesky", validate)
    return GMMParams(
        weights.astype(dtype), means.astype(dtype), cov.astype(dtype), prec_chol, ct
    )


def _check_params_data(params, x, sample_weight, validate):
    if not isinstance(params, GMMParams):
        raise TypeError(f"params must be a GMMParams, got {type(params).__name__}")
    x = _validate.as_float(x, "x", ndim=2)
    dtype = _validate.common_float_dtype(x, params.means)
    x, w, _ = _check_data(x.astype(dtype), 1, sample_weight, validate)
    return _check_params(params, x.shape[1], dtype, validate), x, w
