"""EM on a stream of chunks: batch EM one pass per iteration, and online EM.

For data that never sit in memory at once. The chunks come from the host (a
list or other re-iterable of arrays, or a function of the chunk index), one
at a time; only the sufficient statistics of the mixture (``[K, F]`` numbers,
``F = 1 + d + d(d+1)/2``) are kept between them, so memory does not depend on
the number of rows.

The statistics are those of :func:`densax.gmm.fit`'s engine
(:mod:`densax.gmm._engine`): sums of ``r_ik w_i phi(z_i)`` over the samples,
with ``phi(z) = [1, z, (z_a z_b)_{a<=b}]`` (diag: ``[1, z, z**2]``, spherical:
``[1, z, |z|^2]``) and ``z`` the samples' local coordinates. Where the
in-memory engine cuts the data into cells with their own coordinates, the
stream has one cell: ``z = L^-1 (x - mean)``, with the mean and covariance
``L L^T`` (full/tied; diag/spherical are not whitened) of the first chunk,
fixed for the whole fit. The M-step is the engine's own
(``_params_from_statistics``), so both fits compute the same map: the
streamed fit equals :func:`densax.gmm.fit` on the concatenated chunks (same
start) to rounding. In float32 the expanded quadratic form loses about
``log10`` of the squared Mahalanobis distance from that one origin in digits
(the reason the in-memory engine uses cells): fit in float64 when components
are narrow and far from the data's mean.

At most a few chunk steps are dispatched ahead of the device (JAX's
dispatch is asynchronous), so that memory holds a few chunks whatever the
number of rows. Every chunk goes through one jitted step at one shape:
chunks are padded with rows of weight zero to the first chunk's row count
(larger chunks are cut into pieces of that size), so a ragged last chunk
compiles nothing new.

References:
  Dempster, Laird and Rubin (1977), Maximum likelihood from incomplete data
  via the EM algorithm, JRSS B 39(1).
  Cappé and Moulines (2009), On-line expectation-maximization algorithm for
  latent data models, JRSS B 71(3).
"""

import collections
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from densax import _validate
from densax.gmm._engine import _coefficients, _params_from_statistics
from densax.gmm._fit import FitResult
from densax.gmm._init import INIT_METHODS, init
from densax.gmm._model import (
    COVARIANCE_TYPES,
    GaussianMixture,
    _check_nonnegative,
    _check_params,
    _inverse_transpose,
)

__all__ = ["fit_online", "fit_stream"]

_HIGHEST = jax.lax.Precision.HIGHEST
# Chunk steps dispatched ahead of the device at most: reading the next chunk
# overlaps the last one's step, and memory stays a few chunks whatever n.
_IN_FLIGHT = 2
# Rows per block of a chunk step's scan (a block's features fit in L2 cache).
_BLOCK_ROWS = 1024


class _Frame(NamedTuple):
    """The stream's one cell: what the engine's M-step reads from its blocks."""

    frames: jax.Array  # [1, d]: the origin (the first chunk's weighted mean)
    scales: jax.Array | None  # [1, d, d]: its covariance's Cholesky factor (full/tied)


# ------------------------------------------------------------- the chunks


def _chunk_source(chunks, n_chunks):
    """A function returning a fresh iterator over the chunks, and their count."""
    if callable(chunks):
        if n_chunks is None:
            raise ValueError("n_chunks must be given when chunks is a function")
        n_chunks = _validate.check_int(n_chunks, "n_chunks", minimum=1)
        return lambda: (chunks(i) for i in range(n_chunks)), n_chunks
    if not isinstance(chunks, Iterable) or isinstance(chunks, Iterator):
        raise TypeError(
            "chunks must be a re-iterable (e.g. a list) of arrays, or a function "
            "of the chunk index with n_chunks; a one-shot iterator or generator "
            f"cannot be read once per EM iteration, got {type(chunks).__name__}"
        )
    if n_chunks is not None:
        raise ValueError("n_chunks is only for chunks given as a function")
    return lambda: iter(chunks), None


def _split(chunk):
    """``(x, sample_weight or None)`` from a chunk ``x`` or ``(x, w)``."""
    if isinstance(chunk, tuple):
        if len(chunk) != 2:
            raise ValueError(
                "a chunk must be an [n, d] array or a pair (x, sample_weight), "
                f"got a tuple of {len(chunk)}"
            )
        return chunk
    return chunk, None


def _pieces(chunk, rows, d, dtype, validate):
    """The chunk as padded pieces ``(x [rows, d], w [rows])``, checked."""
    x, w = _split(chunk)
    x = _validate.as_float(x, "chunk", ndim=2, dtype=dtype)
    if x.shape[1] != d:
        raise ValueError(f"every chunk must have {d} columns, got shape {x.shape}")
    n = x.shape[0]
    if w is None:
        w = jnp.ones(n, dtype)
    else:
        w = _validate.check_weights(
            w, "sample_weight", (n,), dtype=dtype, validate=validate
        )
    _validate.check_finite(x, "chunk", validate)
    for start in range(0, n, rows):  # an empty chunk adds nothing
        xs, ws = x[start : start + rows], w[start : start + rows]
        pad = rows - xs.shape[0]
        if pad:
            xs = jnp.pad(xs, ((0, pad), (0, 0)))
            ws = jnp.pad(ws, (0, pad))
        yield xs, ws


# ------------------------------------------------------------- jitted steps


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _make_frame(x, w, *, covariance_type):
    """The one cell: the first chunk's mean and (full/tied) covariance factor."""
    d = x.shape[1]
    mean = (w @ x) / jnp.sum(w)
    scales = None
    if covariance_type in ("full", "tied"):
        z = x - mean
        cov = jnp.matmul(z.T * w, z, precision=_HIGHEST) / jnp.sum(w)
        # As the engine's cells: regularised so that a degenerate chunk has one.
        trace = jnp.trace(cov)
        jitter = jnp.where(trace > 0, 1e-6 * trace / d, 1.0)
        scales = jnp.linalg.cholesky(cov + jitter * jnp.eye(d, dtype=x.dtype))[None]
    return _Frame(mean[None], scales)


def _dense_coefficients(coef, covariance_type, d):
    """``coef`` [F, K] for the gather-free features of :func:`_dense_features`.

    For full/tied, the quadratic features are all ``d * d`` products
    ``z_i z_j``: an off-diagonal coefficient of the engine's upper triangle
    (which counts ``z_i z_j`` twice) is split over ``(i, j)`` and ``(j, i)``.
    """
    if covariance_type not in ("full", "tied"):
        return coef
    iu, ju = np.triu_indices(d)
    quad = coef[1 + d :]  # [d(d+1)/2, K]
    square = jnp.zeros((d, d, coef.shape[1]), coef.dtype)
    square = square.at[iu, ju].add(0.5 * quad).at[ju, iu].add(0.5 * quad)
    return jnp.concatenate([coef[: 1 + d], square.reshape(d * d, -1)])


def _dense_features(z, covariance_type):
    """The features ``[1, z, q(z)]`` [B, F'] of ``z`` [B, d], without gathers.

    ``q`` is ``vec(z z^T)`` (full/tied), ``z**2`` (diag) or ``|z|^2``
    (spherical).
    """
    b, d = z.shape
    if covariance_type in ("full", "tied"):
        quad = (z[:, :, None] * z[:, None, :]).reshape(b, d * d)
    elif covariance_type == "diag":
        quad = z * z
    else:
        quad = jnp.sum(z * z, axis=-1, keepdims=True)
    return jnp.concatenate([jnp.ones_like(z[:, :1]), z, quad], axis=-1)


def _engine_statistics(stats, covariance_type, d):
    """[K, F'] statistics of :func:`_dense_features` as the engine's [K, F]."""
    if covariance_type not in ("full", "tied"):
        return stats
    iu, ju = np.triu_indices(d)
    square = stats[:, 1 + d :].reshape(-1, d, d)
    return jnp.concatenate([stats[:, : 1 + d], square[:, iu, ju]], axis=-1)


@jax.jit
def _chunk_statistics(x, w, params, frame):
    """One chunk's engine statistics: ([1, K, F], sum w log p, sum w, rows).

    ``rows`` counts the rows of positive weight (padding rows have none).
    The chunk is read in blocks of ``_BLOCK_ROWS`` rows by a ``scan``, so
    that a block's features stay in cache between the E-step's matmul and
    the statistics' (the chunk's last block is padded with rows of weight
    zero). Within a block the features are formed without gathers (all
    ``d * d`` products for full/tied, folded back to the engine's upper
    triangle once per chunk), which CPUs run faster than the engine's
    indexed features.
    """
    n, d = x.shape
    ct = params.covariance_type
    block = min(n, _BLOCK_ROWS)
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    if pad:
        x = jnp.pad(x, ((0, pad), (0, 0)))
        w = jnp.pad(w, (0, pad))
    origin = frame.frames[0]
    inverse = None
    if frame.scales is not None:
        inverse = _inverse_transpose(frame.scales[0]).T  # L^-1
    coef = _coefficients(params, frame.frames, frame.scales)[0]  # [F, K]
    coef = _dense_coefficients(coef, ct, d)  # [F', K]

    def add_block(carry, block_xw):
        xb, wb = block_xw  # [B, d], [B]
        z = xb - origin
        if inverse is not None:
            z = jnp.matmul(z, inverse.T, precision=_HIGHEST)
        phi = _dense_features(z, ct)  # [B, F']
        log_prob = jnp.matmul(phi, coef, precision=_HIGHEST)
        log_norm = logsumexp(log_prob, axis=-1)
        rw = jnp.exp(log_prob - log_norm[:, None]) * wb[:, None]
        stats = jnp.matmul(rw.T, phi, precision=_HIGHEST)
        total = jnp.sum(jnp.where(wb > 0, wb * log_norm, 0))
        return jax.tree.map(jnp.add, carry, (stats, total)), None

    zero = (jnp.zeros(coef.shape[::-1], x.dtype), jnp.zeros((), x.dtype))
    blocks = (x.reshape(n_blocks, block, d), w.reshape(n_blocks, block))
    (stats, total), _ = jax.lax.scan(add_block, zero, blocks)
    stats = _engine_statistics(stats, ct, d)
    return stats[None], total, jnp.sum(w), jnp.sum(w > 0).astype(w.dtype)


@jax.jit
def _add(carry, step):
    return jax.tree.map(jnp.add, carry, step)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _m_step(stats, frame, reg_covar, *, covariance_type):
    """The engine's M-step (the same function as :func:`densax.gmm.fit`'s)."""
    return _params_from_statistics(stats, frame, reg_covar, covariance_type)


@jax.jit
def _online_update(running, stats, mass, gamma):
    """Stochastic approximation of the statistics per unit weight (Cappé-Moulines).

    A chunk of zero total weight leaves them unchanged.
    """
    new = (1 - gamma) * running + gamma * stats / jnp.where(mass > 0, mass, 1)
    return jnp.where(mass > 0, new, running)


# ------------------------------------------------------------- set-up


def _start(
    key,
    chunks,
    n_components,
    covariance_type,
    init_method,
    reg_covar,
    init_params,
    n_chunks,
    validate,
):
    """Checks the options and reads the first chunk.

    Returns ``(source, rows, d, dtype, reg_covar, frame, params)``.
    """
    k = _validate.check_int(n_components, "n_components", minimum=1)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    _validate.check_choice(init_method, "init", INIT_METHODS)
    source, n_chunks = _chunk_source(chunks, n_chunks)
    first = next(iter(source()), None)
    if first is None:
        raise ValueError("chunks is empty")
    x0, w0 = _split(first)
    x0 = _validate.as_float(x0, "chunk", ndim=2)
    if x0.shape[0] < 1:
        raise ValueError(f"the first chunk must have rows, got shape {x0.shape}")
    if x0.shape[1] < 1:
        raise ValueError(f"chunk must have at least one feature, got shape {x0.shape}")
    rows, d = x0.shape
    dtype = x0.dtype
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", dtype)
    x0, w0 = next(_pieces(first, rows, d, dtype, validate))
    if init_params is None:
        if rows < k:
            raise ValueError(
                f"the first chunk must have at least n_components={k} rows to "
                f"initialise from, got {rows} (or pass init_params)"
            )
        params = init(
            key,
            x0,
            k,
            covariance_type=covariance_type,
            method=init_method,
            reg_covar=float(reg_covar),
            sample_weight=w0,
            validate=validate,
        )
    else:
        params = _check_params(init_params, d, dtype, validate, "init_params")
        if params.covariance_type != covariance_type:
            raise ValueError(
                f"init_params has covariance_type {params.covariance_type!r}, "
                f"but covariance_type={covariance_type!r}"
            )
        if params.weights.shape[0] != k:
            raise ValueError(
                f"init_params has {params.weights.shape[0]} components, "
                f"but n_components={k}"
            )
    frame = _make_frame(x0, w0, covariance_type=covariance_type)
    return source, rows, d, dtype, reg_covar, frame, params


# ------------------------------------------------------------- batch EM


@_validate.public(optional_key=True)
def fit_stream(
    key: jax.Array,
    chunks: Iterable[Any] | Callable[[int], Any],
    n_components: int,
    *,
    covariance_type: str = "full",
    init: str = "kmeans++",
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init_params: GaussianMixture | None = None,
    n_chunks: int | None = None,
    validate: bool = True,
) -> FitResult:
    """Fits a Gaussian mixture by EM on data read chunk by chunk, once per iteration.

    Each EM iteration is one pass over the chunks: a jitted step adds every
    chunk's sufficient statistics (the E-step's responsibility-weighted
    counts, first and second moments) to running sums, then the M-step turns
    the sums into the new parameters. Only the sums (``[K, F]``) and one
    chunk are in memory at a time. Same statistics, same M-step and same
    stopping rule as :func:`densax.gmm.fit` (the mean log-likelihood of the
    parameters before each M-step changed by less than ``tol``; ``tol=0``
    runs ``max_iter`` iterations; a non-finite value stops with
    ``converged=False``), so from the same start the result equals
    :func:`densax.gmm.fit` on the concatenated data, iteration by iteration,
    up to rounding (see the module docstring for float32).

    The start is :func:`densax.gmm.init` on the first chunk (``init``,
    ``key``), or ``init_params``. The loop over chunks is a Python loop (the
    chunks come from the host); its steps are dispatched asynchronously, so
    reading the next chunk overlaps the device's work on the last one. The
    result carries no derivatives (use :func:`densax.gmm.fit` for those).

    Args:
      key: a PRNG key (initialisation; unused with ``init_params``, then it
        may be ``None``).
      chunks: the data, one of: a re-iterable (list, tuple, or an object whose
        ``__iter__`` starts over) of [n_c, d] arrays or ``(x, sample_weight)``
        pairs; a function ``chunks(i)`` of the chunk index returning either,
        with ``n_chunks``. NumPy arrays stay on the host until their step;
        a one-shot generator is refused (it cannot be read once per
        iteration).
      n_components: the number of components K.
      covariance_type: one of :data:`densax.gmm.COVARIANCE_TYPES`.
      init: the initialisation method on the first chunk, one of
        :data:`densax.gmm.INIT_METHODS`.
      max_iter: the maximum number of EM iterations (passes); 0 returns the
        start.
      tol: the convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to the covariances' diagonal.
      init_params: the starting :class:`densax.gmm.GaussianMixture`.
      n_chunks: the number of chunks, with ``chunks`` a function.
      validate: eager value checks (finite chunks, valid weights) on the
        first pass.

    Returns:
      A :class:`densax.gmm.FitResult`, as :func:`densax.gmm.fit`'s.

    Raises:
      TypeError: a one-shot iterator, non-numeric chunks, non-int options.
      ValueError: unknown options, chunks of different widths, an empty
        stream, a first chunk of fewer than K rows (without
        ``init_params``); with ``validate``, non-finite chunks or bad weights.

    References:
      Dempster, Laird and Rubin (1977), Maximum likelihood from incomplete
      data via the EM algorithm, JRSS B 39(1).

    Example:
      >>> import jax, numpy as np
      >>> from densax import gmm
      >>> rng = np.random.default_rng(0)
      >>> chunks = [rng.standard_normal((500, 2)) + 4 * (i % 2) for i in range(6)]
      >>> res = gmm.fit_stream(jax.random.key(0), chunks, 2)
      >>> bool(res.converged), np.sort(res.model.means[:, 0]).round(0).tolist()
      (True, [0.0, 4.0])
    """
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=0)
    source, rows, d, dtype, reg_covar, frame, params = _start(
        key,
        chunks,
        n_components,
        covariance_type,
        init,
        reg_covar,
        init_params,
        n_chunks,
        validate,
    )
    tol = float(_check_nonnegative(tol, "tol", dtype))
    trace = np.full(max_iter, np.nan)
    ll, ll_prev, converged, n_iter = -np.inf, -np.inf, False, 0
    while n_iter < max_iter and not converged and (n_iter == 0 or np.isfinite(ll)):
        check = validate and n_iter == 0
        sums, pending = None, collections.deque()
        for chunk in source():
            for x, w in _pieces(chunk, rows, d, dtype, check):
                step = _chunk_statistics(x, w, params, frame)
                sums = step if sums is None else _add(sums, step)
                pending.append(sums)
                if len(pending) > _IN_FLIGHT:
                    jax.block_until_ready(pending.popleft())
        if sums is None:
            raise ValueError("chunks holds no rows")
        stats, total, mass, count = sums
        # Weights act through their ratios: the statistics of weights of mean
        # one, as gmm.fit's (its floor for empty components is then relative).
        stats = stats * (count / mass)
        params = _m_step(stats, frame, reg_covar, covariance_type=covariance_type)
        ll_prev, ll = ll, float(total / mass)
        converged = abs(ll - ll_prev) < tol
        trace[n_iter] = ll
        n_iter += 1
    return FitResult(
        params,
        jnp.asarray(ll, dtype),
        jnp.asarray(n_iter, jnp.int32),
        jnp.asarray(converged and np.isfinite(ll)),
        jnp.asarray(trace, dtype),
    )


# ------------------------------------------------------------- online EM


@_validate.public(optional_key=True)
def fit_online(
    key: jax.Array,
    chunks: Iterable[Any] | Callable[[int], Any],
    n_components: int,
    *,
    covariance_type: str = "full",
    init: str = "kmeans++",
    step_exponent: float = 0.6,
    step_offset: float = 2.0,
    reg_covar: float = 1e-6,
    init_params: GaussianMixture | None = None,
    n_chunks: int | None = None,
    validate: bool = True,
) -> FitResult:
    """Fits a Gaussian mixture in one pass by online EM (Cappé and Moulines 2009).

    The sufficient statistics per unit weight are a stochastic approximation:
    after the start (the statistics of the first chunk under the initial
    parameters), each chunk ``t = 1, 2, ...`` moves them towards its own
    statistics under the current parameters,
    ``s_t = (1 - gamma_t) s_{t-1} + gamma_t s(chunk_t; theta_{t-1})`` with
    ``gamma_t = (t + step_offset)^-step_exponent``, and the parameters are
    the M-step of ``s_t`` (the same statistics and M-step as
    :func:`fit_stream` and :func:`densax.gmm.fit`). One pass, so each row is
    read once: for streams too long to read many times. With
    ``step_exponent`` in (1/2, 1] the iterates converge to a stationary point
    of the expected log-likelihood (Cappé and Moulines, Theorem 1); chunks
    should come in random order (not sorted by cluster).

    Args:
      key: a PRNG key (initialisation; unused with ``init_params``).
      chunks: as in :func:`fit_stream` (here a one-shot iterable would do,
        but is refused for one rule across both).
      n_components: the number of components K.
      covariance_type: one of :data:`densax.gmm.COVARIANCE_TYPES`.
      init: the initialisation method on the first chunk.
      step_exponent: ``alpha`` in ``gamma_t = (t + t0)^-alpha``, in (0.5, 1].
      step_offset: ``t0 >= 0``: larger values take smaller first steps.
      reg_covar: non-negative value added to the covariances' diagonal.
      init_params: the starting :class:`densax.gmm.GaussianMixture`.
      n_chunks: the number of chunks, with ``chunks`` a function.
      validate: eager value checks of the chunks.

    Returns:
      A :class:`densax.gmm.FitResult`: ``n_iter`` is the number of chunks
      (pieces of the first chunk's size) read, ``trace`` [n_iter] each
      chunk's mean log-likelihood under the parameters before its update,
      ``log_likelihood`` the last of those, ``converged`` whether every value
      was finite (online EM has no stopping test).

    Raises:
      TypeError, ValueError: as :func:`fit_stream`; ``step_exponent`` outside
      (0.5, 1] or a negative ``step_offset``.

    References:
      Cappé and Moulines (2009), On-line expectation-maximization algorithm
      for latent data models, JRSS B 71(3).

    Example:
      >>> import jax, numpy as np
      >>> from densax import gmm
      >>> rng = np.random.default_rng(0)
      >>> x = np.concatenate([rng.standard_normal((3000, 2)) - 4,
      ...                     rng.standard_normal((3000, 2)) + 4])
      >>> chunks = np.split(rng.permutation(x), 30)
      >>> res = gmm.fit_online(jax.random.key(0), chunks, 2)
      >>> int(res.n_iter), np.sort(res.model.means[:, 0]).round(0).tolist()
      (30, [-4.0, 4.0])
    """
    alpha = float(_check_nonnegative(step_exponent, "step_exponent", None))
    if not 0.5 < alpha <= 1:
        raise ValueError(f"step_exponent must be in (0.5, 1], got {step_exponent}")
    t0 = float(_check_nonnegative(step_offset, "step_offset", None))
    source, rows, d, dtype, reg_covar, frame, params = _start(
        key,
        chunks,
        n_components,
        covariance_type,
        init,
        reg_covar,
        init_params,
        n_chunks,
        validate,
    )
    running, trace, pending = None, [], collections.deque()
    for chunk in source():
        for x, w in _pieces(chunk, rows, d, dtype, validate):
            pending.append(running)
            if len(pending) > _IN_FLIGHT:
                jax.block_until_ready(pending.popleft())
            stats, total, mass, _ = _chunk_statistics(x, w, params, frame)
            t = len(trace)
            gamma = 1.0 if running is None else (t + t0) ** -alpha
            running = jnp.zeros_like(stats) if running is None else running
            running = _online_update(running, stats, mass, jnp.asarray(gamma, dtype))
            params = _m_step(running, frame, reg_covar, covariance_type=covariance_type)
            trace.append(total / mass)
    if not trace:
        raise ValueError("chunks holds no rows")
    trace = jnp.stack(trace).astype(dtype)
    return FitResult(
        params,
        trace[-1],
        jnp.asarray(trace.shape[0], jnp.int32),
        jnp.all(jnp.isfinite(trace)),
        trace,
    )
