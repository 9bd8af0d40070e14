"""Gaussian mixture models fitted by Expectation-Maximisation.

Everything a scikit-learn ``GaussianMixture`` user reaches for, as pure
functions over a :class:`GaussianMixture` pytree: the four covariance types
(``full``, ``tied``, ``diag``, ``spherical``), four initialisations,
:func:`e_step` / :func:`m_step` / :func:`em_step`, :func:`fit` (the whole loop
in one ``lax.while_loop``, ``n_init`` restarts in parallel under ``vmap``),
:func:`log_prob` (scikit-learn's ``score_samples``), :func:`predict_proba`,
:func:`predict`, :func:`sample`, :func:`bic`, :func:`aic`. Per-sample weights
and data-parallel EM (``axis_name``) come with every estimation step.

How the EM iteration is computed. A component's weighted log-density is a
quadratic polynomial in local coordinates ``z`` of ``x``::

  log w_k + log N(x | mu_k, P_k^-1) = phi(z) @ coef_k,
  phi(z) = [1, z, (z_i z_j)_{i<=j}]   ([1, z, z**2] diag, [1, z, |z|^2] spherical),

so the E-step is one ``[n, F] @ [F, K]`` matmul (``F = 1 + d + d(d+1)/2``)
and a ``logsumexp``, and the M-step's sufficient statistics (the counts,
first and second moments of every component) are one ``[K, n] @ [n, F]``
matmul. No ``[n, K, d]`` or ``[n, K, d, d]`` array is formed, and the flops
are about half those of the direct form ``|U_k^T (x - mu_k)|^2``.

Expanding the quadratic form cancels terms of size ``|z|^2 ||P_k||`` down to
the size of the result: with one origin for all samples (the data mean),
float32 would lose as many digits as the log10 of the squared Mahalanobis
distance from that origin to the samples, which is catastrophic for narrow
or elongated components far from the mean (measured: 1e-3 relative error of
the log-likelihood on the benchmark's data, where scikit-learn has 1e-6).
So, once per fit, the samples are cut into cells (k-means with 2K cells,
seeded by k-means++ on a subsample; the cells depend on the data only, so
every restart shares them) and each sample takes the coordinates of its
cell: ``z = L_c^-1 (x - mean_c)`` with ``L_c`` the Cholesky factor of the
cell's covariance (full/tied; diag/spherical need no whitening). The samples
are sorted by cell into blocks of up to 1024 rows, one cell per block, so the
steps are batched matmuls with each block's coefficients, and the M-step
moves the per-cell statistics back to data coordinates exactly. One EM
iteration of :func:`fit` runs the E-step and the M-step's matmul chunk by
chunk (about 4096 rows, which stay in cache between the two), skipping the
chunks of padding. Every term then has the size of a Mahalanobis distance
within a cell. Measured in float32 on the benchmark's data (n = 100 000,
d = 16, K = 16), the mean error of the per-sample log-densities is 1e-5 to
1e-4, as scikit-learn's float32 direct form; a rare sample far from its
cell's origin, in the metric of a narrow component, has a larger error
(99.9th percentile up to 1e-2, the largest about 1 nat, against 4e-2 for
scikit-learn), and the mean log-likelihood after 10 float32 iterations is
within 1e-5 relative of the float64 fit's (five datasets). :func:`log_prob`,
:func:`predict_proba`, :func:`predict` and :func:`e_step` use the direct
form; :func:`m_step` and :func:`em_step` cut their data into cells on every
call (use :func:`fit` for many iterations).

Degenerate cases. ``reg_covar`` is added to every covariance's diagonal, as in
scikit-learn. A component that loses all its points keeps a weight of about
``10 eps / n``, mean 0 and covariance ``reg_covar I`` (as in scikit-learn),
and stays finite. Variances of ``diag``/``spherical`` components are clipped
at zero before ``reg_covar`` is added (rounding can make a vanishing variance
slightly negative). A ``full``/``tied`` covariance whose Cholesky
factorisation fails after ``reg_covar`` (only through rounding, e.g. a
float32 component collapsed on duplicate points) gets ``d eps`` times the
size of its second moments more on its diagonal. With ``reg_covar > 0`` EM is
a penalised EM whose log-likelihood can dip by rounding-sized amounts near
convergence (scikit-learn's too). When the log-likelihood becomes non-finite
(NaN or inf in ``x`` under a transformation, ``reg_covar=0`` with a
collapsed component) :func:`fit` stops and reports ``converged=False``.

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
  >>> bool(result.converged), jnp.sort(result.model.means[:, 0]).round(0).tolist()
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
    "GaussianMixture",
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
    "sample_with_labels",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "kmeans++", "random", "random_from_data")

_HIGHEST = jax.lax.Precision.HIGHEST
_LLOYD_ITERATIONS = 10  # Lloyd iterations of the "kmeans" initialisation
_MAX_CELLS = 64  # at most this many cells with their own coordinates
_PARTITION_SAMPLE = 4096  # the cells are found on about this many samples
_MAX_BLOCK_ROWS = 1024  # rows per block of the EM matmuls, at most
_CHUNK_ROWS = 4096  # rows per chunk of the fused EM iteration (fits in L2 cache)
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


class FitResult(NamedTuple):
    """The output of :func:`fit`."""

    model: GaussianMixture  # the fitted mixture (after the last M-step)
    # [] float: mean log-likelihood at the last E-step, i.e. of the parameters
    # before the last M-step (scikit-learn's lower_bound_); -inf if max_iter=0.
    log_likelihood: jax.Array
    n_iter: jax.Array  # [] int32: EM iterations run
    converged: jax.Array  # [] bool: the change of log_likelihood fell below tol
    # [max_iter] float: log_likelihood after each iteration (scikit-learn's
    # lower_bounds_); NaN from index n_iter on.
    trace: jax.Array


# ---------------------------------------------------------------- constructors


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
    return GaussianMixture(weights, means, covariances, prec_chol, covariance_type)


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


# ----------------------------------------------------------- initialisation


def init(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    method: str = "kmeans++",
    mixture_weights: jax.Array | None = None,
    means: jax.Array | None = None,
    precisions: jax.Array | None = None,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> GaussianMixture:
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
    nearest-seed assignment anyway. Any of ``mixture_weights``, ``means``,
    ``precisions`` given replaces the computed one (scikit-learn's
    ``weights_init`` / ``means_init`` / ``precisions_init``); with all three
    given the data are not used.

    Args:
      key: a PRNG key.
      x: [n, d] samples, n >= n_components.
      n_components: the number of components K.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      method: one of :data:`INIT_METHODS`.
      mixture_weights: optional [K] initial mixture weights (normalised to sum
        to one).
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
      The initial :class:`GaussianMixture`, in the dtype of ``x``.

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
    given = {
        "mixture_weights": mixture_weights,
        "means": means,
        "precisions": precisions,
    }
    shapes = {
        "mixture_weights": (k,),
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
    if given["mixture_weights"] is not None:
        given["mixture_weights"] = _validate.check_weights(
            given["mixture_weights"],
            "mixture_weights",
            (k,),
            dtype=x.dtype,
            validate=validate,
        )
        given["mixture_weights"] /= jnp.sum(given["mixture_weights"])
    if all(value is not None for value in given.values()):
        return from_precisions(
            given["mixture_weights"],
            given["means"],
            given["precisions"],
            covariance_type,
            validate=validate,
        )
    blocks = _blocks_for(x, w, k, covariance_type, axis_name)
    params = _init(
        key,
        x,
        w,
        blocks,
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
    if given["mixture_weights"] is not None:
        params = dataclasses.replace(params, weights=given["mixture_weights"])
    if given["means"] is not None:
        params = dataclasses.replace(params, means=given["means"])
    return params


@functools.partial(
    jax.jit,
    static_argnames=("n_components", "covariance_type", "method", "axis_name"),
)
def _init(
    key, x, w, blocks, reg_covar, *, n_components, covariance_type, method, axis_name
):
    return _initial_params(
        key, x, w, blocks, reg_covar, n_components, covariance_type, method, axis_name
    )


def _initial_params(
    key, x, w, blocks, reg_covar, k, covariance_type, method, axis_name
):
    """The M-step of the initial responsibilities of ``method``."""
    n = x.shape[0]
    n_total = n if axis_name is None else n * jax.lax.axis_size(axis_name)
    if n_total < k:
        raise ValueError(f"n_components={k} must be <= the number of samples {n_total}")
    if method == "random":
        # The same numbers for a sample whether or not the data are sharded.
        resp = jax.random.uniform(key, (n_total, k), x.dtype)
        if axis_name is not None:
            offset = jax.lax.axis_index(axis_name) * n
            resp = jax.lax.dynamic_slice_in_dim(resp, offset, n)
        resp = resp / jnp.sum(resp, axis=1, keepdims=True)
    else:
        xg, wg = _gather((x, w), axis_name)  # seeding needs every sample
        centre = jnp.matmul(wg, xg, precision=_HIGHEST) / jnp.sum(wg)
        xg = xg - centre  # centred: precise squared distances
        if method == "random_from_data":
            idx = jax.random.choice(
                key, n_total, (k,), replace=False, p=wg / jnp.sum(wg)
            )
            centres = xg[idx]
        else:
            centres = _kmeans_plusplus(key, xg, wg, k)
        if method == "kmeans":
            centres = _lloyd(xg, wg, centres)
        labels = jnp.argmin(_sq_distances(x - centre, centres), axis=1)
        resp = jax.nn.one_hot(labels, k, dtype=x.dtype)
    return _m_step_blocks(
        blocks, _to_blocks(resp, blocks), reg_covar, covariance_type, axis_name
    )


def _gather(tree, axis_name):
    """Every shard's rows (invariant across the mapped axis), or ``tree`` itself."""
    if axis_name is None:
        return tree
    return jax.lax.all_gather(tree, axis_name, tiled=True, to="invarying")


def _sq_distances(x, centres):
    """[n, m] squared distances between ``x`` [n, d] and ``centres`` [m, d]."""
    cross = jnp.matmul(x, centres.T, precision=_HIGHEST)
    sq = jnp.sum(x**2, 1)[:, None] - 2 * cross + jnp.sum(centres**2, 1)[None, :]
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
    closest = _sq_distances(x, first[None])[:, 0]  # [n]

    def add_centre(i, carry):
        centres, closest = carry
        mass = w * closest
        # Every sample on a centre already (fewer distinct points than K):
        # sample by weight alone.
        cand = _sample_index(u[i], jnp.where(jnp.sum(mass) > 0, mass, w))
        new_closest = jnp.minimum(closest[:, None], _sq_distances(x, x[cand]))
        best = jnp.argmin(w @ new_closest)  # the trial that most reduces the cost
        return centres.at[i].set(x[cand[best]]), new_closest[:, best]

    centres, _ = jax.lax.fori_loop(1, k, add_centre, (centres, closest))
    return centres


def _sample_index(u, mass):
    """Indices drawn with probability proportional to ``mass``, by inverse CDF.

    Args:
      u: [m] uniform numbers in [0, 1).
      mass: [n] non-negative masses.
    """
    cdf = jnp.cumsum(mass)
    index = jnp.searchsorted(cdf, u * cdf[-1], side="right", method="compare_all")
    return jnp.minimum(index, mass.shape[0] - 1)


def _lloyd(x, w, centres, axis_name=None):
    """Weighted Lloyd iterations; an emptied cluster keeps its centre."""
    k = centres.shape[0]

    def step(_, centres):
        labels = jnp.argmin(_sq_distances(x, centres), axis=1)
        counts = _psum(jax.ops.segment_sum(w, labels, k), axis_name)[:, None]
        sums = _psum(jax.ops.segment_sum(w[:, None] * x, labels, k), axis_name)
        return jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), centres)

    return jax.lax.fori_loop(0, _LLOYD_ITERATIONS, step, centres)


# ------------------------------------------- the EM step on blocked features


class _Blocks(NamedTuple):
    """The samples, cut into cells with their own coordinates, laid out in blocks.

    Sample x of cell c has local coordinates ``z = L_c^-1 (x - frame_c)``:
    relative to the cell's mean and, for full/tied covariances, whitened by
    the cell's covariance (``L_c`` its Cholesky factor). Every block of B rows
    holds samples of one cell; padding rows have weight zero.
    """

    phi: jax.Array  # [NB, B, F]: features [1, z, quadratic terms of z]
    w: jax.Array  # [NB, B]: sample weights, 0 on padding rows
    group: jax.Array  # [NB] int32: the cell of each block
    frames: jax.Array  # [G, d]: the origin of each cell
    scales: jax.Array | None  # [G, d, d] lower-triangular L_c (full/tied only)
    source: jax.Array  # [NB, B] int32: the sample in each row (any, on padding)
    used: jax.Array  # [] int32: the blocks holding samples come first, the rest pad


@functools.partial(jax.jit, static_argnames=("n_cells", "covariance_type", "axis_name"))
def _blocks(x, w, *, n_cells, covariance_type, axis_name):
    """Cuts the samples into cells and builds their features, once per fit."""
    n, d = x.shape
    g = n_cells
    labels, frames = _partition(x, w, g, axis_name)
    size = _block_size(n, g)
    n_blocks = -(-n // size) + g  # each cell wastes less than one block
    chunk = _chunk(size, n_blocks)
    n_blocks = -(-n_blocks // chunk) * chunk  # whole chunks
    # Cell c fills whole blocks, from row start[c] on, in label order.
    counts = jnp.bincount(labels, length=g)
    blocks_per_cell = (counts + size - 1) // size
    start = (jnp.cumsum(blocks_per_cell) - blocks_per_cell) * size
    order = _stable_argsort(labels, g)
    sorted_labels = labels[order]
    rank = jnp.arange(n) - (jnp.cumsum(counts) - counts)[sorted_labels]
    row_of_sorted = (start[sorted_labels] + rank).astype(jnp.int32)
    # The sample of every row (sample 0 on padding rows, of weight zero).
    rows = n_blocks * size
    filled = jnp.zeros(rows, bool).at[row_of_sorted].set(True).reshape(-1, size)
    source = jnp.zeros(rows, jnp.int32).at[row_of_sorted].set(order.astype(jnp.int32))
    source = source.reshape(-1, size)
    group = jnp.searchsorted(jnp.cumsum(blocks_per_cell), jnp.arange(n_blocks), "right")
    group = jnp.minimum(group, g - 1).astype(jnp.int32)
    w = jnp.where(filled, w[source], 0)
    z = jnp.where(filled[..., None], x[source] - frames[group][:, None], 0)
    scales = None
    if covariance_type in ("full", "tied"):
        # Whitened by each cell's covariance, from the blocks' Gram matrices.
        z_ = jax.lax.stop_gradient(z)
        gram = jnp.einsum("bn,bni,bnj->bij", w, z_, z_, precision=_HIGHEST)
        second = jax.ops.segment_sum(gram, group, g)
        total = jax.ops.segment_sum(jnp.sum(w, axis=1), group, g)
        second, total = _psum((second, total), axis_name)
        cov = second / jnp.where(total > 0, total, 1)[:, None, None]
        # Regularised so that a cell of identical samples still has a factor.
        trace = jnp.trace(cov, axis1=-2, axis2=-1)
        jitter = jnp.where(trace > 0, 1e-6 * trace / d, 1.0)[:, None, None]
        scales = jnp.linalg.cholesky(cov + jitter * jnp.eye(d, dtype=x.dtype))
        inverse = _inverse_transpose(scales).swapaxes(-1, -2)  # L_c^-1
        z = jnp.einsum("bnd,bed->bne", z, inverse[group], precision=_HIGHEST)
    phi = _features(z, covariance_type)
    used = jnp.sum(blocks_per_cell).astype(jnp.int32)
    return _Blocks(phi, w, group, frames, scales, source, used)


def _blocks_for(x, w, n_components, covariance_type, axis_name):
    """The blocked data for a mixture of ``n_components`` (2 K cells, at most 64)."""
    n_cells = min(2 * n_components, _MAX_CELLS)
    return _blocks(
        x, w, n_cells=n_cells, covariance_type=covariance_type, axis_name=axis_name
    )


def _partition(x, w, g, axis_name):
    """Cells of the data (k-means) and their weighted means.

    The cells depend on the data only: k-means (farthest-point seeds and Lloyd
    iterations) on a strided subsample. They are a choice of coordinates, which
    the results do not depend on (up to rounding): no gradient flows through
    them.

    Returns:
      ``(labels, frames)``: [n] the cell of each sample, [g, d] the cells'
      weighted means (the seed of an empty cell).
    """
    x, w = jax.lax.stop_gradient((x, w))
    stride = max(1, x.shape[0] // _PARTITION_SAMPLE)
    xs, ws = _gather((x[::stride], w[::stride]), axis_name)
    centre = jnp.mean(xs, axis=0)  # distances in centred coordinates
    xs, xc = xs - centre, x - centre
    seeds = _lloyd(xs, ws, _farthest_points(xs, ws, g))
    labels = jnp.argmin(_sq_distances(xc, seeds), axis=1)
    counts = _psum(jax.ops.segment_sum(w, labels, g), axis_name)[:, None]
    sums = _psum(jax.ops.segment_sum(w[:, None] * xc, labels, g), axis_name)
    frames = jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), seeds)
    return labels, frames + centre


def _farthest_points(x, w, k):
    """Seeds [k, d]: each the sample (of positive weight) farthest from the others.

    Deterministic and cheap; it reaches every isolated cluster, which is what
    the cells need (k-means++ sampling does the same for the initialisation).
    """
    far = jnp.where(w > 0, _sq_distances(x, jnp.mean(x, 0, keepdims=True))[:, 0], -1)
    first = x[jnp.argmax(far)]
    seeds = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    closest = _sq_distances(x, first[None])[:, 0]

    def add_seed(i, carry):
        seeds, closest = carry
        new = x[jnp.argmax(jnp.where(w > 0, closest, -1))]
        closest = jnp.minimum(closest, _sq_distances(x, new[None])[:, 0])
        return seeds.at[i].set(new), closest

    seeds, _ = jax.lax.fori_loop(1, k, add_seed, (seeds, closest))
    return seeds


def _block_size(n, g):
    """Rows per block: a power of two in [8, 1024], about n / (2 g).

    Batched matmuls over blocks of 1024 rows run near the speed of one large
    matmul on CPU (blocks of 256 take twice as long); each of the g cells
    leaves part of its last block empty.
    """
    target = min(max(n // (2 * g), 8), _MAX_BLOCK_ROWS)
    return 1 << (target.bit_length() - 1)


def _chunk(size, n_blocks):
    """Blocks per chunk of the fused EM iteration (about 4096 rows)."""
    return max(1, min(_CHUNK_ROWS // size, n_blocks))


def _to_blocks(values, blocks):
    """[n, ...] per-sample values in the block layout [NB, B, ...].

    Padding rows repeat some sample's values; their weight is zero.
    """
    return values[blocks.source]


def _features(z, covariance_type):
    """The features [..., F] of the expanded Gaussian log-density of ``z`` [..., d].

    ``[1, z, (z_i z_j)_{i<=j}]`` (full/tied), ``[1, z, z**2]`` (diag) or
    ``[1, z, |z|^2]`` (spherical).
    """
    one = jnp.ones_like(z[..., :1])
    if covariance_type == "spherical":
        return jnp.concatenate([one, z, jnp.sum(z * z, axis=-1, keepdims=True)], -1)
    left, right = _feature_pairs(z.shape[-1], covariance_type)
    u = jnp.concatenate([one, z], axis=-1)  # products of two entries of u
    shape = (*z.shape[:-1], left.shape[0])
    left, right = (jnp.broadcast_to(i, shape) for i in (left, right))
    take = functools.partial(jnp.take_along_axis, axis=-1, mode="clip")
    return take(u, left) * take(u, right)


@functools.cache
def _feature_pairs(d, covariance_type):
    """Indices into ``[1, z]`` of the two factors of every feature."""
    if covariance_type == "diag":
        i = j = np.arange(d)
    else:
        i, j = np.triu_indices(d)  # z_i z_j for i <= j, row-major
    left = np.concatenate([[0], np.zeros(d, int), i + 1]).astype(np.int32)
    right = np.concatenate([[0], np.arange(1, d + 1), j + 1]).astype(np.int32)
    return left, right


def _stable_argsort(labels, g):
    """``argsort(labels, stable=True)`` for labels in [0, g), by one sort of keys.

    ``labels * n + index`` sorts about five times faster on CPU than a stable
    argsort (one operand instead of two), when it fits in int32.
    """
    n = labels.shape[0]
    if n * g >= 2**31:
        return jnp.argsort(labels, stable=True)
    index = jnp.arange(n, dtype=jnp.int32)
    return jnp.sort(labels.astype(jnp.int32) * n + index) % n


def _coefficients(params, frames, scales):
    """[G, F, K] such that ``phi(z) @ coef[c]`` = log w_k + log N(x | k).

    For a sample x of cell c with local coordinates ``z = L_c^-1 (x - frame_c)``:
    with ``t = U_k^T (mu_k - frame_c)`` and ``V = U_k^T L_c``,
    ``|U_k^T (x - mu_k)|^2 = z^T V^T V z - 2 t^T V z + |t|^2``.
    """
    ct, prec_chol = params.covariance_type, params.precisions_cholesky
    k, d = params.means.shape
    g = frames.shape[0]
    delta = params.means[None] - frames[:, None]  # [G, K, d]
    if ct in ("full", "tied"):
        iu, ju = np.triu_indices(d)
        # z_i z_j appears twice in the quadratic form for i != j.
        off = np.where(iu == ju, 1.0, 2.0).astype(delta.dtype)
        if ct == "full":
            t = jnp.einsum("kij,gki->gkj", prec_chol, delta, precision=_HIGHEST)
            v = jnp.einsum("kij,gil->gkjl", prec_chol, scales, precision=_HIGHEST)
            half_log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, 0, -2, -1)), -1)
        else:
            t = jnp.matmul(delta, prec_chol, precision=_HIGHEST)
            v = jnp.einsum("ij,gil->gjl", prec_chol, scales, precision=_HIGHEST)
            v = jnp.broadcast_to(v[:, None], (g, k, d, d))
            half_log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol)))
        lin = jnp.einsum("gkji,gkj->gki", v, t, precision=_HIGHEST)
        prec = jnp.einsum("gkji,gkjl->gkil", v, v, precision=_HIGHEST)
        quad = -0.5 * off * prec[..., iu, ju]
        t_prec_t = jnp.sum(t * t, axis=-1)
    elif ct == "diag":
        prec = prec_chol**2
        lin = prec * delta
        quad = jnp.broadcast_to(-0.5 * prec, (g, k, d))
        half_log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
        t_prec_t = jnp.sum(lin * delta, axis=-1)
    else:
        prec = prec_chol**2
        lin = prec[:, None] * delta
        quad = jnp.broadcast_to(-0.5 * prec[:, None], (g, k, 1))
        half_log_det = d * jnp.log(prec_chol)
        t_prec_t = prec * jnp.sum(delta * delta, axis=-1)
    const = jnp.log(params.weights) + half_log_det - 0.5 * (d * _LOG_2PI + t_prec_t)
    coef = jnp.concatenate([const[..., None], lin, quad], axis=-1)  # [G, K, F]
    return coef.swapaxes(-1, -2)


def _m_step_blocks(blocks, resp, reg_covar, covariance_type, axis_name):
    """The M-step from responsibilities [NB, B, K] in the block layout."""
    rw = resp * blocks.w[..., None]
    stats = jnp.einsum("bnk,bnf->bkf", rw, blocks.phi, precision=_HIGHEST)
    stats = jax.ops.segment_sum(stats, blocks.group, blocks.frames.shape[0])
    return _params_from_statistics(
        _psum(stats, axis_name), blocks, reg_covar, covariance_type
    )


def _params_from_statistics(stats, blocks, reg_covar, covariance_type):
    """The closed-form M-step from per-cell sufficient statistics.

    With ``R_ck``, ``m_ck`` and ``Q_ck`` the sums over cell c of ``r w``,
    ``r w (x - frame_c)`` and ``r w (x - frame_c)(x - frame_c)^T`` (``L_c``
    times those of z), the scatter about the new mean ``mu_k`` is
    ``sum_c Q_ck - m_ck d_ck^T - d_ck m_ck^T + R_ck d_ck d_ck^T`` with
    ``d_ck = mu_k - frame_c``: exact algebra, in which every term is small
    when the cells are compact, wherever they lie.

    Args:
      stats: [G, K, F] per cell and component, sums of r w phi(z).
      blocks: the blocked data (for the cells' frames and scales).
      reg_covar: added to the covariances' diagonal.
      covariance_type: one of COVARIANCE_TYPES.
    """
    frames, scales = blocks.frames, blocks.scales
    d = frames.shape[1]
    eps = jnp.finfo(stats.dtype).eps
    r, m, q = stats[..., 0], stats[..., 1 : d + 1], stats[..., d + 1 :]
    if scales is not None:  # back from whitened to data coordinates
        m = jnp.einsum("cij,ckj->cki", scales, m, precision=_HIGHEST)
        q = q[..., _symmetric_index(d)]
        q = jnp.einsum("cij,ckjl,cml->ckim", scales, q, scales, precision=_HIGHEST)
    nk = jnp.sum(r, axis=0) + 10 * eps  # as scikit-learn: no division by zero
    means = (jnp.sum(m, axis=0) + jnp.einsum("ck,cd->kd", r, frames)) / nk[:, None]
    delta = means[None] - frames[:, None]  # [G, K, d]
    if covariance_type in ("full", "tied"):
        md = jnp.einsum("cki,ckj->kij", m, delta, precision=_HIGHEST)
        rdd = jnp.einsum("ck,cki,ckj->kij", r, delta, delta, precision=_HIGHEST)
        scatter = jnp.sum(q, axis=0) - md - md.swapaxes(-1, -2) + rdd
        # The size of the terms: the rounding level, for a failed factorisation.
        size = jnp.einsum("ckii->k", q) + jnp.einsum("ck,ckd->k", r, delta**2)
        if covariance_type == "tied":
            scatter, size, total = jnp.sum(scatter, 0), jnp.sum(size), jnp.sum(nk)
        else:
            size, total = size[:, None, None], nk[:, None, None]
        cov = scatter / total + reg_covar * jnp.eye(d, dtype=stats.dtype)
        cov, prec_chol = _rescued_cholesky(cov, d * eps * size / total)
    else:
        sq = jnp.sum(2 * m * delta - r[..., None] * delta**2, axis=0)
        if covariance_type == "diag":
            scatter = jnp.sum(q, axis=0) - sq
            # Rounding can make a vanishing variance slightly negative: clip.
            cov = jnp.maximum(scatter / nk[:, None], 0) + reg_covar
        else:
            scatter = jnp.sum(q[..., 0], axis=0) - jnp.sum(sq, axis=-1)
            cov = jnp.maximum(scatter / (d * nk), 0) + reg_covar
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


def _em_iteration(blocks, params, reg_covar, axis_name):
    """One EM iteration: (new params, mean log-likelihood of ``params``).

    The E-step and the M-step's statistics run chunk by chunk of blocks, so
    that each chunk's features are read from memory once (they stay in cache
    between the two matmuls), and chunks of padding blocks are skipped.
    """
    phi, w, group = blocks.phi, blocks.w, blocks.group
    n_blocks, size, _ = phi.shape
    chunk = _chunk(size, n_blocks)
    n_cells = blocks.frames.shape[0]
    coef = _coefficients(params, blocks.frames, blocks.scales)  # [G, F, K]

    def chunk_statistics(i):
        start = i * chunk
        phi_c, w_c, g_c = (
            jax.lax.dynamic_slice_in_dim(a, start, chunk) for a in (phi, w, group)
        )
        log_prob = jnp.einsum("bnf,bfk->bnk", phi_c, coef[g_c], precision=_HIGHEST)
        log_norm = logsumexp(log_prob, axis=-1)
        rw = jnp.exp(log_prob - log_norm[..., None]) * w_c[..., None]
        s = jnp.einsum("bnk,bnf->bkf", rw, phi_c, precision=_HIGHEST)
        return jax.ops.segment_sum(s, g_c, n_cells), jnp.sum(w_c * log_norm)

    def add_chunk(i, carry):  # whole chunks of padding blocks are skipped
        def add(carry):
            return jax.tree.map(jnp.add, carry, chunk_statistics(i))

        return jax.lax.cond(i * chunk < blocks.used, add, lambda c: c, carry)

    # The first chunk always holds samples (and starts the sums with the
    # right sharding type inside shard_map).
    stats, total = jax.lax.fori_loop(
        1, n_blocks // chunk, add_chunk, chunk_statistics(0)
    )
    stats, total, mass = _psum((stats, total, jnp.sum(w)), axis_name)
    new = _params_from_statistics(stats, blocks, reg_covar, params.covariance_type)
    return new, total / mass


@functools.cache
def _symmetric_index(d):
    """[d, d] position of entry (i, j) in the row-major upper triangle."""
    iu, ju = np.triu_indices(d)
    index = np.empty((d, d), dtype=np.int32)
    index[iu, ju] = index[ju, iu] = np.arange(iu.size)
    return index


# --------------------------------------------------------- public EM steps


def e_step(
    params: GaussianMixture,
    x: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """The E-step: log-responsibilities and the mean log-likelihood.

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
      The new :class:`GaussianMixture`.

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
    k = log_resp.shape[1]
    blocks = _blocks_for(x, w, k, covariance_type, axis_name)
    return _m_step(
        log_resp,
        blocks,
        reg_covar,
        covariance_type=covariance_type,
        axis_name=axis_name,
    )


@functools.partial(jax.jit, static_argnames=("covariance_type", "axis_name"))
def _m_step(log_resp, blocks, reg_covar, *, covariance_type, axis_name):
    resp = _to_blocks(jnp.exp(log_resp), blocks)
    return _m_step_blocks(blocks, resp, reg_covar, covariance_type, axis_name)


def em_step(
    params: GaussianMixture,
    x: jax.Array,
    *,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> tuple[GaussianMixture, jax.Array]:
    """One EM iteration: an E-step on ``params`` then an M-step.

    Every operation is differentiable: a fixed number of steps under
    ``lax.fori_loop``/``lax.scan`` can be differentiated in reverse mode with
    respect to the initial parameters (:func:`fit` uses a ``while_loop``,
    which only supports forward mode).

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
    blocks = _blocks_for(
        x, w, params.weights.shape[0], params.covariance_type, axis_name
    )
    return _em_step(params, blocks, reg_covar, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _em_step(params, blocks, reg_covar, *, axis_name):
    return _em_iteration(blocks, params, reg_covar, axis_name)


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
    init_params: GaussianMixture | None = None,
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
    highest final log-likelihood is returned, as scikit-learn does. Under
    ``jax.vmap`` over datasets, the fits run one after the other on CPU (a
    ``lax.map``: faster there, each fit's data staying in cache) and as one
    batched computation on accelerators. The loop supports forward-mode
    derivatives (``jax.jvp``); for reverse mode, iterate :func:`em_step`.

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
      init_params: starting :class:`GaussianMixture` (with ``n_init=1``), e.g. from
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
      >>> res.model.means.shape, bool(res.converged), int(res.n_iter) > 1
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
        init_params = _check_params(
            init_params, x.shape[1], x.dtype, validate, "init_params"
        )
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
def _fit(key, x, w, init_params, tol, reg_covar, **static):
    """:func:`_fit_one`, with its static options, batched by ``vmap`` or a loop."""
    one = functools.partial(_fit_one, **static)
    return _sequential_on_cpu(one)(key, x, w, init_params, tol, reg_covar)


def _sequential_on_cpu(fn):
    """``fn`` whose ``vmap`` is a loop on CPU, and a batched computation elsewhere.

    Batched fits on CPU run 1.3 to 2 times faster one after the other: each
    fit's features then stay in cache between the E-step and the M-step, and
    each skips its own padding. Accelerators keep the batched matmuls.
    """
    fn_vmap = jax.custom_batching.custom_vmap(fn)

    @fn_vmap.def_vmap
    def rule(axis_size, in_batched, *args):
        del axis_size
        leaves, tree = jax.tree.flatten(args)
        pairs = list(zip(leaves, jax.tree.leaves(in_batched), strict=True))
        batched = [leaf for leaf, flag in pairs if flag]

        def call(batched_leaves):  # one problem: the batched leaves' slices
            it = iter(batched_leaves)
            full = [next(it) if flag else leaf for leaf, flag in pairs]
            return fn(*jax.tree.unflatten(tree, full))

        out = jax.lax.platform_dependent(
            batched,
            cpu=lambda b: jax.lax.map(call, b),
            default=jax.vmap(call),
        )
        return out, jax.tree.map(lambda _: True, out)

    # Derivatives (forward mode, the loop being a while_loop) and their
    # batching go through ``fn`` itself.
    fn_jvp = jax.custom_jvp(fn_vmap)
    fn_jvp.defjvp(lambda primals, tangents: jax.jvp(fn, primals, tangents))
    return fn_jvp


def _fit_one(
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
    """One fit (one dataset): the cells and features, then EM from each start."""
    blocks = _blocks_for(x, w, n_components, covariance_type, axis_name)
    run = functools.partial(
        _run_em,
        blocks,
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        axis_name=axis_name,
    )
    if init_params is not None:
        return run(init_params)

    def restart(key):
        params = _initial_params(
            key,
            x,
            w,
            blocks,
            reg_covar,
            n_components,
            covariance_type,
            method,
            axis_name,
        )
        return run(params)

    # The restarts share the blocks: each E-step is one wider matmul.
    results = jax.vmap(restart)(jax.random.split(key, n_init))
    ll = results.log_likelihood
    best = jnp.argmax(jnp.where(jnp.isnan(ll), -jnp.inf, ll))
    return jax.tree.map(lambda a: a[best], results)


def _run_em(blocks, params, *, tol, reg_covar, max_iter, axis_name):
    """The EM loop on blocked features."""
    dtype = blocks.w.dtype

    def cond(state):
        i, _, ll, converged, _ = state
        return (i < max_iter) & ~converged & ((i == 0) | jnp.isfinite(ll))

    def body(state):
        i, params, ll_prev, _, trace = state
        params, ll = _em_iteration(blocks, params, reg_covar, axis_name)
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
    return GaussianMixture(
        weights.astype(dtype), means.astype(dtype), cov.astype(dtype), prec_chol, ct
    )


def _check_params_data(params, x, sample_weight, validate):
    if not isinstance(params, GaussianMixture):
        raise TypeError(
            f"model must be a GaussianMixture, got {type(params).__name__}"
        )
    x = _validate.as_float(x, "x", ndim=2)
    dtype = _validate.common_float_dtype(x, params.means)
    x, w, _ = _check_data(x.astype(dtype), 1, sample_weight, validate)
    return _check_params(params, x.shape[1], dtype, validate), x, w
