"""The fast EM engine of :func:`densax.gmm.fit`: cell-blocked features.

(See the package docstring of :mod:`densax.gmm` for how and why.) The
public textbook steps are in :mod:`densax.gmm._steps`; this engine computes
the same iteration (a test checks that they agree) faster and more accurately
in float32.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from densax.cluster import _sq_distances
from densax.gmm._kmeans import _gather, _lloyd
from densax.gmm._model import (
    _LOG_2PI,
    GaussianMixture,
    _inverse_transpose,
    _psum,
)
from densax.gmm._steps import _rescued_cholesky

__all__ = []

_HIGHEST = jax.lax.Precision.HIGHEST
_MAX_CELLS = 64  # at most this many cells with their own coordinates
_PARTITION_SAMPLE = 4096  # the cells are found on about this many samples
_MAX_BLOCK_ROWS = 1024  # rows per block of the EM matmuls, at most
_CHUNK_ROWS = 4096  # rows per chunk of the fused EM iteration (fits in L2 cache)


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

    ``labels * n + index`` sorts several times faster on CPU than a stable
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
