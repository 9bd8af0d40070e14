"""The Gaussian mixture model: its pytree, constructors, log-density, sampling.

Everything that needs only the parameters (and the input checks every part of
:mod:`densax.gmm` shares).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from densax import _validate

__all__ = [
    "COVARIANCE_TYPES",
    "GaussianMixture",
    "aic",
    "bic",
    "from_covariances",
    "from_precisions",
    "log_prob",
    "predict",
    "predict_proba",
    "sample",
    "sample_with_labels",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

_HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2 * math.pi)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["weights", "means", "covariances", "precisions_cholesky"],
    meta_fields=["covariance_type"],
)
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
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

    def log_prob(self, x: jax.Array, *, validate: bool = True) -> jax.Array:
        """[n] log-densities of ``x`` [n, d]: :func:`log_prob`."""
        return log_prob(self, x, validate=validate)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """[n, d] samples: :func:`sample`."""
        return sample(key, self, n)


# ---------------------------------------------------------------- constructors


@_validate.public
def from_covariances(
    weights: jax.Array,
    means: jax.Array,
    covariances: jax.Array,
    covariance_type: str = "full",
    *,
    validate: bool = True,
) -> GaussianMixture:
    """Builds :class:`GaussianMixture` from weights, means and covariances.

    Args:
      weights: [K] mixture weights (non-negative, summing to one).
      means: [K, d] component means.
      covariances: full [K, d, d], tied [d, d], diag [K, d] or spherical [K];
        positive definite.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      validate: eagerly check the values: weights non-negative and summing to
        one (to 1e-3), finite means, covariances symmetric positive
        definite. Under a transformation they are not checked: negative or
        unnormalised weights give wrong (NaN or shifted) log-densities, and a
        covariance that is not positive definite NaN precision factors.

    Returns:
      The parameters, with ``precisions_cholesky`` computed by Cholesky
      factorisation and a triangular solve.

    Raises:
      ValueError: unknown ``covariance_type``, inconsistent shapes; eagerly,
        invalid weights, non-finite means, a covariance that is not symmetric
        positive definite.

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
    _check_values(weights, means, covariances, covariance_type, "covariances", validate)
    prec_chol = _precision_cholesky(covariances, covariance_type)
    _validate.value_check(
        validate,
        jnp.all(jnp.isfinite(prec_chol)),
        "covariances must be positive definite",
    )
    return GaussianMixture(weights, means, covariances, prec_chol, covariance_type)


@_validate.public
def from_precisions(
    weights: jax.Array,
    means: jax.Array,
    precisions: jax.Array,
    covariance_type: str = "full",
    *,
    validate: bool = True,
) -> GaussianMixture:
    """Builds a :class:`GaussianMixture` from precisions (``precisions_init``).

    Args:
      weights: [K] mixture weights (non-negative, summing to one).
      means: [K, d] component means.
      precisions: inverse covariances, full [K, d, d], tied [d, d], diag [K, d]
        or spherical [K]; positive definite.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      validate: eagerly check the values, as :func:`from_covariances` does
        (precisions symmetric positive definite: a zero precision, an
        infinite variance, is rejected).

    Returns:
      The parameters. ``precisions_cholesky`` is the upper-triangular ``U``
      with ``U U^T = precision`` (a Cholesky factorisation of the reversed
      matrix, as scikit-learn does), the covariances ``U^-T U^-1``.

    Raises:
      ValueError: unknown ``covariance_type``, inconsistent shapes; eagerly,
        invalid weights, non-finite means, a precision that is not symmetric
        positive definite.

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
    _check_values(weights, means, precisions, covariance_type, "precisions", validate)
    prec_chol, covariances = _from_precisions(precisions, covariance_type)
    _validate.value_check(
        validate,
        jnp.all(jnp.isfinite(prec_chol)),
        "precisions must be positive definite",
    )
    return GaussianMixture(weights, means, covariances, prec_chol, covariance_type)


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


# ----------------------------------------------------- evaluation functions


@_validate.public
def log_prob(
    model: GaussianMixture, x: jax.Array, *, validate: bool = True
) -> jax.Array:
    """Log-density of the mixture at each sample (scikit-learn's ``score_samples``).

    Computed in the direct form ``log sum_k w_k N(x | mu_k, P_k^-1)`` with
    ``|U_k^T (x - mu_k)|^2``, accurate to rounding in float32 too.
    Differentiable with respect to ``params`` and ``x``.

    Args:
      model: the :class:`GaussianMixture`.
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
    params, x, _ = _check_params_data(model, x, None, validate)
    return _log_prob(params, x)


@_validate.public
def predict_proba(
    model: GaussianMixture, x: jax.Array, *, validate: bool = True
) -> jax.Array:
    """Posterior probabilities of the components (responsibilities), [n, K].

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
      ...                      jnp.ones(2), "spherical")
      >>> predict_proba(p, jnp.zeros((1, 1))).tolist()
      [[0.5, 0.5]]
    """
    params, x, _ = _check_params_data(model, x, None, validate)
    return _predict_proba(params, x)


@_validate.public
def predict(
    model: GaussianMixture, x: jax.Array, *, validate: bool = True
) -> jax.Array:
    """The most probable component of each sample, [n] int32.

    Example:
      >>> import jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
      ...                      jnp.ones(2), "spherical")
      >>> predict(p, jnp.array([[-2.0], [3.0]])).tolist()
      [0, 1]
    """
    params, x, _ = _check_params_data(model, x, None, validate)
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


@_validate.public
def sample(key: jax.Array, model: GaussianMixture, n: int) -> jax.Array:
    """Draws ``n`` samples from the mixture (the labels: :func:`sample_with_labels`).

    Args:
      key: a PRNG key.
      model: the :class:`GaussianMixture`.
      n: the number of samples (a Python int).

    Returns:
      [n, d] samples.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.3, 0.7]), jnp.zeros((2, 2)),
      ...                      jnp.stack([jnp.eye(2), 2 * jnp.eye(2)]))
      >>> sample(jax.random.key(0), p, 1000).shape
      (1000, 2)
    """
    return sample_with_labels(key, model, n)[0]


@_validate.public
def sample_with_labels(
    key: jax.Array, model: GaussianMixture, n: int
) -> tuple[jax.Array, jax.Array]:
    """Draws ``n`` samples from the mixture, with the component of each.

    Args:
      key: a PRNG key.
      model: the :class:`GaussianMixture`.
      n: the number of samples (a Python int).

    Returns:
      ``(x, labels)``: [n, d] samples (those of :func:`sample` with the same
      key) and [n] int32 component of each.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = from_covariances(jnp.array([0.3, 0.7]), jnp.zeros((2, 2)),
      ...                      jnp.stack([jnp.eye(2), 2 * jnp.eye(2)]))
      >>> x, labels = sample_with_labels(jax.random.key(0), p, 1000)
      >>> x.shape, labels.shape
      ((1000, 2), (1000,))
    """
    n = _validate.check_int(n, "n", minimum=0)
    model = _check_params(model, None, None, False)
    return _sample(key, model, n=n)


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


@_validate.public
def bic(
    model: GaussianMixture,
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
    params, x, w = _check_params_data(model, x, sample_weight, validate)
    log_lik, n = _total_log_likelihood(params, x, w)
    return -2 * log_lik + _n_parameters(params) * jnp.log(n)


@_validate.public
def aic(
    model: GaussianMixture,
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
    params, x, w = _check_params_data(model, x, sample_weight, validate)
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


def _psum(value, axis_name):
    return value if axis_name is None else jax.lax.psum(value, axis_name)


def _cov_shape(covariance_type, k, d):
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
        covariance_type
    ]


def _check_nonnegative(value, name, dtype):
    """A non-negative real option (a traced value is accepted unchecked)."""
    return _validate.check_scalar(value, name, dtype, minimum=0)


def _check_data(x, n_components, sample_weight, validate, *, min_samples=0):
    """Checks and converts the data [n, d], the sample weights [n] and K.

    ``min_samples``: the fewest samples allowed (``n_components`` when -1).
    """
    x = _validate.as_float(x, "x", ndim=2)
    k = _validate.check_int(n_components, "n_components", minimum=1)
    if x.shape[1] == 0:
        raise ValueError(f"x must have at least one feature, got shape {x.shape}")
    if min_samples == -1 and x.shape[0] < k:
        raise ValueError(
            f"x must have at least n_components={k} samples, got shape {x.shape}"
        )
    _validate.check_nonempty(x, "x", minimum=max(min_samples, 0))
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


def _check_values(weights, means, matrices, covariance_type, name, validate):
    """Eager value checks of mixture parameters (a no-op under tracing).

    ``weights`` non-negative and summing to one (to 1e-3), ``means``
    finite, ``matrices`` (covariances or precisions, named ``name``) finite
    and positive definite: symmetric with a Cholesky factor (full/tied),
    positive (diag/spherical).
    """
    if not (validate and _validate.is_concrete(weights, means, matrices)):
        return
    prefix = name.rpartition(".")[0]
    w_name = f"{prefix}.weights" if prefix else "weights"
    m_name = f"{prefix}.means" if prefix else "means"
    _validate.check_weights(
        weights, w_name, weights.shape, dtype=weights.dtype, validate=True
    )
    _validate.check_sums_to_one(np.sum(np.asarray(weights, np.float64)), w_name)
    _validate.check_finite(means, m_name, True)
    if covariance_type == "skip":
        return
    if covariance_type in ("full", "tied"):
        _validate.check_positive_definite(matrices, name, True)
    else:
        _validate.check_finite(matrices, name, True)
        _validate.value_check(
            True, jnp.all(matrices > 0), f"{name} must be positive definite (> 0)"
        )


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


def _check_params(params, d, dtype, validate, name="model"):
    """Checks a GaussianMixture's type, option and shapes; casts it to ``dtype``."""
    if not isinstance(params, GaussianMixture):
        raise TypeError(
            f"{name} must be a GaussianMixture, got {type(params).__name__}"
        )
    ct = params.covariance_type
    weights, means, cov = _check_parts(
        params.weights, params.means, params.covariances, ct, f"{name}.covariances"
    )
    dtype = means.dtype if dtype is None else dtype
    prec_chol = _validate.as_float(
        params.precisions_cholesky, f"{name}.precisions_cholesky", dtype=dtype
    )
    if prec_chol.shape != cov.shape:
        raise ValueError(
            f"{name}.precisions_cholesky must have shape {cov.shape}, "
            f"got {prec_chol.shape}"
        )
    if d is not None and means.shape[1] != d:
        raise ValueError(
            f"{name} is for {means.shape[1]} features but x has {d} (its last axis)"
        )
    _validate.check_finite(prec_chol, f"{name}.precisions_cholesky", validate)
    if validate and _validate.is_concrete(weights, means):
        _check_values(weights, means, None, "skip", f"{name}.covariances", True)
    return GaussianMixture(
        weights.astype(dtype), means.astype(dtype), cov.astype(dtype), prec_chol, ct
    )


def _check_params_data(params, x, sample_weight, validate):
    if not isinstance(params, GaussianMixture):
        raise TypeError(f"model must be a GaussianMixture, got {type(params).__name__}")
    x = _validate.as_float(x, "x", ndim=2)
    dtype = _validate.common_float_dtype(x, params.means)
    x, w, _ = _check_data(x.astype(dtype), 1, sample_weight, validate)
    return _check_params(params, x.shape[1], dtype, validate), x, w
