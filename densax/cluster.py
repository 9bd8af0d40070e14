r"""Quantization: weighted k-means of a sample, optimal quantization of a density.

The "most representative" ``k`` points of a distribution ``mu`` minimise the
distortion ``E_mu min_j |x - c_j|^2``. Given the centres, the best
assignment sends each point to its nearest centre (the Voronoi cells); given
the cells, the best centres are the cells' means: Lloyd's algorithm
alternates the two. It is the semi-discrete transport problem of
``densax.ot.semidiscrete`` with free positions *and* free weights: at a
stationary quantizer the weights are the cells' masses, the dual weights are
zero, and the distortion is ``W2^2(mu, sum_j mu(V_j) delta_{c_j})``.

* :func:`kmeans`: weighted k-means of a sample (k-means++ seeding, Lloyd
  iterations in a ``lax.while_loop``; ``vmap`` and data shards with
  ``axis_name``), the algorithm of scikit-learn's ``KMeans(algorithm="lloyd")``.
* :func:`quantize`: the optimal quantization of a density model that samples,
  by stochastic Lloyd iterations (competitive learning with steps ``1 /
  count``, Pagès 2015) on fresh batches, measured on an independent sample.

References:
  Lloyd, S. (1982). Least squares quantization in PCM. IEEE Trans. Inf.
  Theory 28, 129–137.
  Arthur, D. and Vassilvitskii, S. (2007). k-means++: the advantages of
  careful seeding. SODA.
  Sculley, D. (2010). Web-scale k-means clustering. WWW.
  Pagès, G. (2015). Introduction to vector quantization and its applications
  for numerics. ESAIM: Proc. 48, 29–79.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from densax import cluster
  >>> x = jnp.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
  >>> res = cluster.kmeans(jax.random.key(0), x, 2)
  >>> sorted(res.centres.tolist()), float(res.inertia), bool(res.converged)
  ([[0.0, 0.5], [5.0, 5.5]], 1.0, True)
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from densax import _parallel, _validate

__all__ = [
    "KMeansResult",
    "QuantizationResult",
    "kmeans",
    "kmeans_plusplus",
    "quantize",
]

_HIGHEST = lax.Precision.HIGHEST
_EVAL_CHUNK = 4096


class KMeansResult(NamedTuple):
    """Weighted k-means clustering of a sample."""

    centres: jax.Array  # [k, d] cluster centres
    labels: jax.Array  # [n] int32 nearest centre of each (local) sample
    inertia: jax.Array  # [] sum_i w_i |x_i - centres[labels_i]|^2 (all shards)
    converged: jax.Array  # [] bool: labels stable or centre shift <= tol
    n_iter: jax.Array  # [] int32 Lloyd iterations run
    trace: jax.Array  # [max_iter] inertia before each iteration, NaN after


class QuantizationResult(NamedTuple):
    """An optimal quantizer of a density, measured on an evaluation sample."""

    centres: jax.Array  # [k, d] the quantization points
    weights: jax.Array  # [k] masses of their Voronoi cells (sum 1)
    distortion: jax.Array  # [] E min_j |x - c_j|^2, Monte Carlo estimate
    distortion_se: jax.Array  # [] its standard error
    stationarity: jax.Array  # [] |centres - cell means|_w / sqrt(distortion)
    converged: jax.Array  # [] bool: stationarity <= tol
    n_iter: jax.Array  # [] int32 stochastic steps (max_iter)
    trace: jax.Array  # [max_iter] distortion of each step's batch


def _sq_distances(x, centres):
    """[n, k] squared distances, clipped at 0 against rounding."""
    cross = jnp.matmul(x, centres.T, precision=_HIGHEST)
    sq = jnp.sum(x * x, 1)[:, None] - 2.0 * cross + jnp.sum(centres**2, 1)[None, :]
    return jnp.maximum(sq, 0.0)


def _sample_index(u, mass):
    """Indices drawn with probability proportional to ``mass``, by inverse CDF."""
    cdf = jnp.cumsum(mass)
    index = jnp.searchsorted(cdf, u * cdf[-1], side="right", method="compare_all")
    return jnp.minimum(index, mass.shape[0] - 1)


def _plusplus(key, x, w, k):
    """k-means++ seeds [k, d]: D^2 sampling with ``2 + log k`` greedy trials."""
    n_trials = 2 + int(math.log(k))
    u = jax.random.uniform(key, (k, n_trials), x.dtype)
    first = x[_sample_index(u[0, :1], w)[0]]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    closest = _sq_distances(x, first[None])[:, 0]

    def add_centre(i, carry):
        centres, closest = carry
        mass = w * closest
        # Every point already on a centre (fewer distinct points than k).
        cand = _sample_index(u[i], jnp.where(jnp.sum(mass) > 0, mass, w))
        new_closest = jnp.minimum(closest[:, None], _sq_distances(x, x[cand]))
        best = jnp.argmin(w @ new_closest)  # the trial that lowers the cost most
        return centres.at[i].set(x[cand[best]]), new_closest[:, best]

    centres, _ = lax.fori_loop(1, k, add_centre, (centres, closest))
    return centres


_plusplus_jit = jax.jit(_plusplus, static_argnums=3)


def _cell_sums(x, w, labels, k, axis_name):
    counts = _parallel.psum(jax.ops.segment_sum(w, labels, k), axis_name)
    sums = _parallel.psum(jax.ops.segment_sum(w[:, None] * x, labels, k), axis_name)
    return counts, sums


class _LloydState(NamedTuple):
    centres: jax.Array  # [k, d]
    labels: jax.Array  # [n] int32 labels of the previous iteration
    i: jax.Array  # [] int32
    stable: jax.Array  # [] bool labels unchanged
    small_shift: jax.Array  # [] bool centre shift <= tol
    trace: jax.Array  # [max_iter]


@functools.partial(jax.jit, static_argnames=("k", "max_iter", "axis_name", "seed"))
def _kmeans(key, x, w, init, tol, *, k, max_iter, axis_name, seed):
    if seed:
        init = _plusplus(
            key, _parallel.gather(x, axis_name), _parallel.gather(w, axis_name), k
        )
    total = _parallel.psum(jnp.sum(w), axis_name)
    mean = _parallel.psum(w @ x, axis_name) / total
    var = _parallel.psum(jnp.sum(w[:, None] * (x - mean) ** 2, 0), axis_name) / total
    tol_abs = tol * jnp.mean(var)  # scikit-learn's scale (weighted variance)

    def cond(s):
        return (s.i < max_iter) & ~s.stable & ~s.small_shift

    def body(s):
        dist = _sq_distances(x, s.centres)
        labels = jnp.argmin(dist, axis=1).astype(jnp.int32)
        inertia = _parallel.psum(w @ jnp.min(dist, axis=1), axis_name)
        counts, sums = _cell_sums(x, w, labels, k, axis_name)
        filled = counts[:, None] > 0
        new = jnp.where(filled, sums / jnp.where(filled, counts[:, None], 1), s.centres)
        changed = _parallel.psum(jnp.sum(labels != s.labels), axis_name)
        shift = jnp.sum((new - s.centres) ** 2)
        return _LloydState(
            new,
            labels,
            s.i + 1,
            changed == 0,
            shift <= tol_abs,
            s.trace.at[s.i].set(inertia),
        )

    start = _LloydState(
        init,
        # -1 everywhere, with x's type (varying over a shard_map axis).
        jnp.where(jnp.isnan(x[:, 0]), -1, -1).astype(jnp.int32),
        jnp.int32(0),
        jnp.bool_(False),
        jnp.bool_(False),
        jnp.full(max_iter, jnp.nan, x.dtype),
    )
    s = lax.while_loop(cond, body, start)
    dist = _sq_distances(x, s.centres)
    labels = jnp.argmin(dist, axis=1).astype(jnp.int32)
    inertia = _parallel.psum(w @ jnp.min(dist, axis=1), axis_name)
    return KMeansResult(
        s.centres, labels, inertia, s.stable | s.small_shift, s.i, s.trace
    )


def _check_x_w(x, sample_weight, validate):
    x = _validate.as_float(x, "x", ndim=2)
    _validate.check_nonempty(x, "x", axis=1)
    _validate.check_finite(x, "x", validate)
    if sample_weight is None:
        return x, jnp.ones(x.shape[0], x.dtype)
    w = _validate.check_weights(
        sample_weight, "sample_weight", x.shape[:1], dtype=x.dtype, validate=validate
    )
    return x, w


@_validate.public
def kmeans_plusplus(
    key: jax.Array,
    x: Any,
    k: int,
    *,
    sample_weight: Any = None,
    validate: bool = True,
) -> jax.Array:
    """k-means++ seeds: ``k`` sample points drawn by weighted ``D^2`` sampling.

    The first seed is drawn with probability ``w_i``; each next one among
    ``2 + floor(log k)`` candidates drawn with probability ``w_i D(x_i)^2``
    (``D`` the distance to the nearest seed), keeping the candidate that
    lowers the weighted cost most (scikit-learn's greedy variant).

    Args:
      key: a PRNG key.
      x: [n, d] samples.
      k: number of seeds (a Python int, ``1 <= k``).
      sample_weight: [n] non-negative weights (default: ones).
      validate: check ``x`` and the weights eagerly.

    Returns:
      [k, d] seeds, rows of ``x``.

    References:
      Arthur and Vassilvitskii (2007).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([[0.0], [0.1], [10.0]])
      >>> kmeans_plusplus(jax.random.key(0), x, 3).shape
      (3, 1)
    """
    x, w = _check_x_w(x, sample_weight, validate)
    k = _validate.check_int(k, "k", minimum=1)
    if k > x.shape[0]:
        raise ValueError(
            f"k must be <= the number of samples of x, got k={k} and x of "
            f"shape {x.shape}"
        )
    return _plusplus_jit(key, x, w, k)


@_validate.public
def kmeans(
    key: jax.Array,
    x: Any,
    k: int,
    *,
    sample_weight: Any = None,
    init: Any = "k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    axis_name: Any = None,
    validate: bool = True,
) -> KMeansResult:
    r"""Weighted k-means by Lloyd's algorithm.

    Minimises the inertia ``sum_i w_i min_j |x_i - c_j|^2``: from the initial
    centres, each iteration assigns every point to its nearest centre and
    moves every centre to the weighted mean of its points (a cluster left
    empty keeps its centre). It stops when no label changes, or when the
    squared centre shift ``sum_j |c_j^new - c_j|^2`` is at most ``tol`` times
    the mean (weighted) variance of the features, or after ``max_iter``
    iterations. The returned labels and inertia are those of the final
    centres. This is the iteration of scikit-learn's ``KMeans`` with
    ``algorithm="lloyd"``, except for empty clusters (scikit-learn moves them
    to far points).

    Args:
      key: a PRNG key (used by the k-means++ seeding only).
      x: [n, d] samples (this device's shard when ``axis_name`` is given).
      k: number of clusters (a Python int).
      sample_weight: [n] non-negative weights (default: ones); only their
        ratios matter.
      init: ``"k-means++"`` (default, :func:`kmeans_plusplus` on all the
        data) or a ``[k, d]`` array of initial centres.
      max_iter: the most Lloyd iterations (static); also ``trace``'s length.
      tol: relative tolerance on the centre shift (see above); 0 runs until
        the labels are stable.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x`` (and the
        weights), the mapped axis: the sums are ``psum``-ed, so every shard
        gets the centres of the whole data. The seeding gathers the data.
      validate: check ``x`` and the weights eagerly.

    Returns:
      A :class:`KMeansResult`.

    Raises:
      TypeError: non-numeric inputs, a non-int ``k`` or ``max_iter``.
      ValueError: ``init`` not ``"k-means++"`` nor ``[k, d]``, ``k > n``,
        ``tol < 0``; eagerly, non-finite ``x`` or invalid weights.

    References:
      Lloyd (1982); Arthur and Vassilvitskii (2007).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([[0.0], [1.0], [10.0], [12.0]])
      >>> res = kmeans(jax.random.key(0), x, 2, init=jnp.array([[0.0], [10.0]]))
      >>> res.centres.tolist(), res.labels.tolist(), float(res.inertia)
      ([[0.5], [11.0]], [0, 0, 1, 1], 2.5)
    """
    x, w = _check_x_w(x, sample_weight, validate)
    k = _validate.check_int(k, "k", minimum=1)
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=1)
    if not isinstance(tol, (int, float)) or tol < 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if isinstance(init, str):
        _validate.check_choice(init, "init", ("k-means++",))
        if axis_name is None and k > x.shape[0]:
            raise ValueError(
                f"k must be <= the number of samples of x, got k={k} and x of "
                f"shape {x.shape}"
            )
        seed, centres = True, jnp.zeros((k, x.shape[1]), x.dtype)
    else:
        seed = False
        centres = _validate.as_float(init, "init", ndim=2, dtype=x.dtype)
        if centres.shape != (k, x.shape[1]):
            raise ValueError(
                f"init must have shape ({k}, {x.shape[1]}), got {centres.shape}"
            )
        _validate.check_finite(centres, "init", validate)
    return _kmeans(
        key,
        x,
        w,
        centres,
        jnp.asarray(tol, x.dtype),
        k=k,
        max_iter=max_iter,
        axis_name=axis_name,
        seed=seed,
    )


@functools.partial(
    jax.jit, static_argnames=("k", "batch_size", "max_iter", "n_init", "n_eval")
)
def _quantize(key, model, init, tol, *, k, batch_size, max_iter, n_init, n_eval):
    k_init, k_run, k_eval = jax.random.split(key, 3)
    if init is None:
        x0 = model.sample(k_init, n_init)
        init = _plusplus(k_init, x0, jnp.ones(n_init, x0.dtype), k)
    dtype = init.dtype

    def step(carry, kb):
        centres, counts = carry
        x = model.sample(kb, batch_size).astype(dtype)
        dist = _sq_distances(x, centres)
        labels = jnp.argmin(dist, axis=1)
        ones = jnp.ones(batch_size, dtype)
        n_b, s_b = _cell_sums(x, ones, labels, k, None)
        counts = counts + n_b
        # Competitive learning: c_j <- c_j + (S_j - n_j c_j) / count_j.
        upd = (s_b - n_b[:, None] * centres) / jnp.where(counts > 0, counts, 1)[:, None]
        return (centres + upd, counts), jnp.mean(jnp.min(dist, axis=1))

    (centres, _), trace = lax.scan(
        step, (init, jnp.zeros(k, dtype)), jax.random.split(k_run, max_iter)
    )
    n_chunks = -(-n_eval // _EVAL_CHUNK)

    def evaluate(kb):
        x = model.sample(kb, _EVAL_CHUNK).astype(dtype)
        dist = _sq_distances(x, centres)
        d_min = jnp.min(dist, axis=1)
        labels = jnp.argmin(dist, axis=1)
        counts, sums = _cell_sums(x, jnp.ones(_EVAL_CHUNK, dtype), labels, k, None)
        return jnp.sum(d_min), jnp.sum(d_min**2), counts, sums

    s1, s2, counts, sums = lax.map(evaluate, jax.random.split(k_eval, n_chunks))
    total = n_chunks * _EVAL_CHUNK
    distortion = jnp.sum(s1) / total
    var = jnp.maximum(jnp.sum(s2) / total - distortion**2, 0.0)
    counts, sums = jnp.sum(counts, 0), jnp.sum(sums, 0)
    filled = counts[:, None] > 0
    means = jnp.where(filled, sums / jnp.where(filled, counts[:, None], 1), centres)
    weights = counts / total
    gap = jnp.sqrt(weights @ jnp.sum((means - centres) ** 2, 1))
    stationarity = gap / jnp.sqrt(jnp.where(distortion > 0, distortion, 1.0))
    return QuantizationResult(
        centres,
        weights,
        distortion,
        jnp.sqrt(var / total),
        stationarity,
        stationarity <= tol,
        jnp.int32(max_iter),
        trace,
    )


@_validate.public
def quantize(
    key: jax.Array,
    model: Any,
    k: int,
    *,
    init: Any = None,
    batch_size: int = 256,
    max_iter: int = 1000,
    n_eval: int = 1 << 16,
    tol: float = 0.05,
) -> QuantizationResult:
    r"""Optimal quantization of a density: its ``k`` most representative points.

    Minimises the distortion ``E_{x ~ mu} min_j |x - c_j|^2`` by stochastic
    Lloyd iterations on fresh batches of ``model.sample``: each step assigns
    a batch to the nearest centres and moves centre ``j`` towards the mean of
    its new points with step ``1 / (points seen by j)``, so every centre is
    the running mean of all the points it has received (competitive learning
    vector quantization, as mini-batch k-means). The start is k-means++ on
    ``max(4096, 20 k)`` samples unless ``init`` is given.

    The result is measured on ``n_eval`` independent samples: the distortion
    (the squared 2-Wasserstein distance between ``mu`` and the quantizer
    weighted by its cell masses) with its standard error, the cell masses,
    and the stationarity gap ``sqrt(sum_j w_j |c_j - m_j|^2 / distortion)``
    (``m_j`` the cell means: 0 at a fixed point of Lloyd's map). ``converged``
    is ``stationarity <= tol``; sampling noise alone gives a gap of about
    ``sqrt(k / n_eval)``. Like k-means, the iteration finds a local minimum.

    Args:
      key: a PRNG key (all the randomness).
      model: the measure: a pytree with ``sample(key, n) -> [n, d]`` usable
        under ``jit`` (every densax density model).
      k: number of points (a Python int).
      init: [k, d] initial centres (default: k-means++ on a sample).
      batch_size: samples per step (static).
      max_iter: number of steps (static); also ``trace``'s length.
      n_eval: evaluation samples (rounded up to a multiple of 4096).
      tol: tolerance on the stationarity gap for ``converged``.

    Returns:
      A :class:`QuantizationResult`.

    Raises:
      TypeError: ``model`` has no ``sample`` method; non-int sizes.
      ValueError: non-positive sizes; ``init`` of the wrong shape.

    References:
      Pagès (2015), §3 (CLVQ); Sculley (2010).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from typing import NamedTuple
      >>> class Uniform(NamedTuple):
      ...     low: jax.Array
      ...     def sample(self, key, n):
      ...         return self.low + jax.random.uniform(key, (n, 1))
      >>> q = quantize(jax.random.key(0), Uniform(jnp.zeros(1)), 2, max_iter=300)
      >>> sorted(q.centres[:, 0].round(2).tolist())  # 1/4 and 3/4
      [0.25, 0.75]
      >>> round(float(q.distortion), 3), bool(q.converged)  # 1/48
      (0.021, True)
    """
    if not callable(getattr(model, "sample", None)):
        raise TypeError(
            f"model must have a method sample(key, n), got {type(model).__name__}"
        )
    k = _validate.check_int(k, "k", minimum=1)
    batch_size = _validate.check_int(batch_size, "batch_size", minimum=1)
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=1)
    n_eval = _validate.check_int(n_eval, "n_eval", minimum=1)
    if init is not None:
        init = _validate.as_float(init, "init", ndim=2)
        if init.shape[0] != k:
            raise ValueError(f"init must have {k} rows, got shape {init.shape}")
    return _quantize(
        key,
        model,
        init,
        jnp.asarray(tol),
        k=k,
        batch_size=batch_size,
        max_iter=max_iter,
        n_init=max(4096, 20 * k),
        n_eval=n_eval,
    )
