"""The geometry of an entropic OT problem: where the cost lives, and passes over it.

The one place that knows the storage of the cost. A :class:`Geom` holds the
points and, when dense, the ``[n, m]`` cost matrix (and its transpose); when
online (``cost is None``) every pass recomputes cost blocks of ``block_size``
rows. For the squared Euclidean cost a block of exponents
``(f_i + g_j - C_ij) / eps`` is one matrix product of augmented points
(:func:`augmented`); other costs call ``cost_fn.all_pairs``. The cached
kernel built from a geometry is in ``_kernel.py``.

Invariants kept here (see ``densax/ot/README.md``):

* **Masking of zero weights.** A zero weight has a ``-inf`` potential; every
  differentiable pass replaces it by 0 and carries a mask
  (:func:`finite_part`, :func:`dense_exponent`, :func:`safe_augmented`), so
  that gradients never meet ``0 * inf``.
* **No max-shift in a mass pass.** :func:`reduce` with ``op="sumexp"`` and
  :func:`one_pass` assume every exponent ``<= 0`` (true after a g-update);
  :func:`hard_transform` and :func:`ball_transform` give starts with it.
* **Sharding.** With ``axis_name`` the rows (``x``, ``a`` or the rows of a
  cost matrix) are split: sums over rows use ``densax._parallel.psum``,
  bounds and shifts ``densax._parallel.pmax`` (no derivative).

The interface used by the loop and the solver: :func:`make_geom`,
:func:`sums` (row or column masses), :func:`one_pass` (an online iteration),
:func:`hard_transform` / :func:`ball_transform` (c-transform and its bound),
:func:`pair_sum` / :func:`plan_cost` / :func:`apply` (differentiable passes
over the plan), :func:`cost_scale` (mean and spread of the cost).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from ott.geometry import costs

from densax import _parallel

__all__ = [
    "Geom",
    "apply",
    "augmented",
    "ball_transform",
    "caches_kernel",
    "cost_rows",
    "cost_scale",
    "dense_exponent",
    "finite_part",
    "gather",
    "hard_transform",
    "is_sq_euclidean",
    "make_geom",
    "map_rows",
    "one_pass",
    "pair_sum",
    "pairwise",
    "plan_cost",
    "pmax",
    "psum",
    "reduce",
    "row_pass",
    "safe_augmented",
    "sums",
]

_STRIPE_ENTRIES = 1 << 21  # column stripes of an online iteration (one_pass)


class Geom(NamedTuple):
    """Ground cost between the rows of ``x`` and of ``y``."""

    x: jax.Array  # [n, d] rows (translated for the squared Euclidean cost)
    y: jax.Array  # [m, d] columns
    cost: jax.Array | None  # [n, m] dense cost matrix; None in online mode
    cost_t: jax.Array | None  # [m, n] its transpose (row-major column passes)


def is_sq_euclidean(cost_fn: costs.CostFn) -> bool:
    """The squared Euclidean cost: the matrix-product fast path applies."""
    return type(cost_fn) is costs.SqEuclidean


def caches_kernel(cfg, geom: "Geom") -> bool:
    """Whether a loop caches the kernel: at most ``cfg.kernel`` entries."""
    return geom.x.shape[0] * geom.y.shape[0] <= cfg.kernel


psum = _parallel.psum
# A maximum over devices is only ever a bound or a shift here: no derivative
# (which also lets unrolled gradients run under shard_map).
pmax = _parallel.pmax


def gather(v: jax.Array, axis_name: Any) -> jax.Array:
    """``v`` of every device, concatenated along its first axis."""
    return v if axis_name is None else lax.all_gather(v, axis_name, tiled=True)


def pairwise(cost_fn: costs.CostFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost matrix ``[n, m]``; one matrix product for the squared Euclidean."""
    if is_sq_euclidean(cost_fn):
        sq_x = jnp.sum(x * x, axis=-1)
        sq_y = jnp.sum(y * y, axis=-1)
        return sq_x[:, None] + sq_y[None, :] - 2.0 * (x @ y.T)
    return cost_fn.all_pairs(x, y)


def make_geom(cost_fn, x, y, block_size, axis_name, cost=None) -> Geom:
    """The geometry of points ``x``, ``y``, or of a given ``[n, m]`` ``cost``.

    A cost matrix is always dense; its points are placeholders with no
    coordinates (``[n, 0]``, ``[m, 0]``), which carry the sizes.
    """
    if cost is not None:
        n, m = cost.shape
        empty = lambda k: jnp.zeros((k, 0), cost.dtype)
        return Geom(empty(n), empty(m), cost, cost.T)
    if is_sq_euclidean(cost_fn):
        # Translation invariance: centring the clouds keeps the expansion
        # |x|^2 + |y|^2 - 2 x.y accurate in float32.
        center = lax.stop_gradient(
            0.5 * (_pmean(jnp.mean(x, axis=0), axis_name) + jnp.mean(y, axis=0))
        )
        x, y = x - center, y - center
    if block_size is not None:
        return Geom(x, y, None, None)
    cost = pairwise(cost_fn, x, y)
    return Geom(x, y, cost, cost.T)


def _pmean(v: jax.Array, axis_name: Any) -> jax.Array:
    return v if axis_name is None else lax.pmean(v, axis_name)


def cost_rows(cost_fn, geom: Geom, transpose: bool):
    """Row source for a pass: ``(rows, row_cost_fn)``.

    With ``transpose=False`` the rows are the points of ``x`` and a row of the
    cost is ``C[i, :]``; with ``transpose=True`` they are the points of ``y``
    and a row is ``C[:, j]``.
    """
    if transpose:
        rows, cols = geom.y, geom.x
        return rows, lambda r: pairwise(cost_fn, cols, r[None])[:, 0]
    rows, cols = geom.x, geom.y
    return rows, lambda r: pairwise(cost_fn, r[None], cols)[0]


def map_rows(fn, xs, block_size: int | None, remat: bool):
    """``fn`` over the leading axis of ``xs``: vmapped, or by blocks of rows."""
    if block_size is None:
        return jax.vmap(fn)(*xs)
    if remat:
        fn = jax.checkpoint(fn)
    return lax.map(lambda args: fn(*args), xs, batch_size=block_size)


def row_pass(
    cost_fn, geom, f, g, eps, row_fn, row_data=(), *, transpose, block_size, remat
):
    """Applies ``row_fn(c_row, v_row, mask_row, *data_row)`` to each cost row.

    ``v = (f_i + g_j - C_ij) / eps`` with -inf potentials replaced by 0 and
    reported in ``mask`` (so that gradients never meet ``0 * inf``).
    """
    f_rows, g_cols = (g, f) if transpose else (f, g)
    ok_cols = g_cols > -jnp.inf
    g_safe = jnp.where(ok_cols, g_cols, 0.0)
    dense = geom.cost_t if transpose else geom.cost

    def one(c_row, f_r, *data):
        ok = (f_r > -jnp.inf) & ok_cols
        v = (jnp.where(f_r > -jnp.inf, f_r, 0.0) + g_safe - c_row) / eps
        return row_fn(c_row, v, ok, *data)

    if dense is not None:
        return map_rows(one, (dense, f_rows, *row_data), None, remat)
    rows, cost_row = cost_rows(cost_fn, geom, transpose)
    return map_rows(
        lambda r, f_r, *data: one(cost_row(r), f_r, *data),
        (rows, f_rows, *row_data),
        block_size,
        remat,
    )


# --------------------------------------------------------------------------
# Passes over the kernel.


def augmented(geom, f, g, eps, transpose=False):
    """``(P, Q)`` with ``P @ Q.T = (f_i + g_j - C_ij) / eps``, squared Euclidean.

    ``v = [2p/eps, (f - |p|^2)/eps, 1] . [q, 1, (g - |q|^2)/eps]``: a block of
    exponents is one matrix product. Rows of ``P`` are the points of ``x``
    (of ``y`` with ``transpose``); ``f`` and ``g`` must be finite where the
    result is differentiated.
    """
    f_rows, g_cols = (g, f) if transpose else (f, g)
    p, q = (geom.y, geom.x) if transpose else (geom.x, geom.y)
    inv = 1.0 / eps
    p_aug = jnp.concatenate(
        [
            (2.0 * inv) * p,
            ((f_rows - jnp.sum(p * p, 1)) * inv)[:, None],
            jnp.ones_like(p[:, :1]),
        ],
        axis=1,
    )
    q_aug = jnp.concatenate(
        [q, jnp.ones_like(q[:, :1]), ((g_cols - jnp.sum(q * q, 1)) * inv)[:, None]],
        axis=1,
    )
    return p_aug, q_aug


def reduce(cost_fn, geom, f, g, eps, *, transpose, block_size, op):
    """Forward-only row reductions of ``v_ij = (f_i + g_j - C_ij) / eps``.

    ``op="sumexp"``: ``sum_j exp(v_ij)`` (no max-shift: callers keep every
    ``v <= 0``, see the module docstring); ``op="max"``: ``max_j v_ij``. With
    ``transpose`` the reduction runs over ``i`` for each column ``j``. One
    fused pass over the dense cost, or, online, one matrix product per block
    for the squared Euclidean cost.
    """
    f_rows, g_cols = (g, f) if transpose else (f, g)
    reduce = (
        (lambda v: jnp.sum(jnp.exp(v), -1))
        if op == "sumexp"
        else (lambda v: jnp.max(v, -1))
    )
    dense = geom.cost_t if transpose else geom.cost
    if dense is not None:
        return reduce((f_rows[:, None] + g_cols[None, :] - dense) / eps)
    if is_sq_euclidean(cost_fn):
        p_aug, q_aug = augmented(geom, f, g, eps, transpose)
        return lax.map(lambda r: reduce(q_aug @ r), p_aug, batch_size=block_size)
    return row_pass(
        cost_fn,
        geom,
        f,
        g,
        eps,
        lambda c, v, ok: reduce(jnp.where(ok, v, -jnp.inf)),
        transpose=transpose,
        block_size=block_size,
        remat=False,
    )


def sums(cost_fn, geom, f, g, eps, *, transpose, block_size, axis_name):
    """Row masses ``sum_j P_ij`` (column masses with ``transpose``)."""
    out = reduce(
        cost_fn,
        geom,
        f,
        g,
        eps,
        transpose=transpose,
        block_size=block_size,
        op="sumexp",
    )
    return psum(out, axis_name) if transpose else out


def _stripe_width(block_size: int, rows: int) -> int:
    """Columns per stripe of :func:`one_pass`.

    ``block_size`` at most, and about ``_STRIPE_ENTRIES`` entries, so that a
    stripe stays in cache.
    """
    return max(1, min(block_size, _STRIPE_ENTRIES // max(rows, 1)))


def _scan_blocks(fn, carry, xs, block: int):
    """``lax.scan`` of ``fn(carry, xs_block)`` over blocks of ``block`` rows.

    The last ``len % block`` rows, if any, form one smaller block.
    """
    length = jax.tree.leaves(xs)[0].shape[0]
    full, rest = divmod(length, block)
    split = lambda v: v[: full * block].reshape(full, block, *v.shape[1:])
    carry, out = lax.scan(fn, carry, jax.tree.map(split, xs))
    out = jax.tree.map(lambda v: v.reshape(full * block, *v.shape[2:]), out)
    if rest:
        carry, tail = fn(carry, jax.tree.map(lambda v: v[full * block :], xs))
        out = jax.tree.map(lambda u, v: jnp.concatenate([u, v]), out, tail)
    return carry, out


def one_pass(cost_fn, geom, f, g, eps, b, log_b, relax, *, block_size, axis_name):
    """An online iteration's two half-steps in one pass over the exponentials.

    Column stripes ``J`` (all rows, ``B`` columns) are computed once: their
    column masses ``t_J`` give the (relaxed) log-step of ``g_J``, and the
    stripe, rescaled by ``exp(step_J)``, adds its part of the row masses at
    the new ``g``, while it is still in cache. Half the exponentials of two
    passes, the same arithmetic up to rounding.

    Exponents are shifted by ``sigma = -log(tiny) / 2``: a rescaled entry
    ``exp(v + step)`` then flushes to zero only below ``b_j exp(-sigma)``,
    even when a column mass ``t_j`` is tiny, and with every ``v <= 0`` (see
    the module docstring) nothing overflows.

    ``relax`` maps the plain log-step of ``g`` (in units of ``eps``) to the
    one taken (the identity for plain Sinkhorn, see ``_acceleration.relax``).

    Returns ``(step_g, col_err, r)``: the relaxed step of ``g`` (in units of
    ``eps``), the L1 error of the column masses after it, and the row masses
    ``[n]`` at ``g + eps step_g``.
    """
    tiny = jnp.finfo(f.dtype).tiny
    sigma = -0.5 * math.log(float(tiny))
    if is_sq_euclidean(cost_fn):
        xs, q_aug = augmented(geom, f, g, eps, transpose=True)
        exponent = lambda rows: rows @ q_aug.T
    else:
        xs = (geom.y, g)
        exponent = lambda rows: (
            (rows[1][:, None] + f[None, :] - pairwise(cost_fn, geom.x, rows[0]).T) / eps
        )

    def stripe(r, args):
        rows, b_j, log_b_j = args
        e = jnp.exp(exponent(rows) + sigma)  # [B, n]: exp(sigma) P_ij, transposed
        t = psum(jnp.sum(e, axis=1), axis_name)
        # log max(t exp(-sigma), tiny), as in the two-pass update.
        log_t = jnp.log(jnp.maximum(t, tiny * math.exp(sigma))) - sigma
        step = relax(log_b_j - log_t)
        scale = jnp.exp(step - sigma)
        return r + scale @ e, (step, jnp.abs(t * scale - b_j))

    width = _stripe_width(block_size, geom.x.shape[0])
    r, (step, col_err) = _scan_blocks(stripe, jnp.zeros_like(f), (xs, b, log_b), width)
    return step, jnp.sum(col_err), r


def hard_transform(cost_fn, geom, f, *, block_size, axis_name):
    """``g_j = min_i (C_ij - f_i)``.

    With it every exponent ``f_i + g_j - C_ij`` is ``<= 0`` and each column's
    largest is 0, whatever ``epsilon``: a safe start for the one-pass updates.
    """
    zeros = jnp.zeros(geom.y.shape[0], f.dtype)
    out = reduce(
        cost_fn, geom, f, zeros, 1.0, transpose=True, block_size=block_size, op="max"
    )
    return -pmax(out, axis_name)


def ball_transform(geom, a, f, axis_name):
    """A lower bound of ``min_i (C_ij - f_i)``, squared Euclidean cost.

    With ``c`` the ``a``-weighted mean of ``x`` and ``R = max_i |x_i - c|``,
    ``|x_i - y_j| >= |y_j - c| - R``, so ``g_j = max(|y_j - c| - R, 0)^2 -
    max_i f_i`` keeps every exponent ``f_i + g_j - C_ij <= 0`` (up to
    rounding), in ``O((n + m) d)`` instead of :func:`hard_transform`'s pass
    over the ``n m`` costs. It starts loops that cache the kernel: a bound
    far below the minimum (clouds far apart relative to ``epsilon``) only
    makes the first kernel stale, never overflows.
    """
    c = psum(a @ geom.x, axis_name)
    radius = jnp.sqrt(jnp.max(jnp.sum((geom.x - c) ** 2, 1)))
    radius, f_max = pmax((radius, jnp.max(f)), axis_name)
    gap = jnp.maximum(jnp.sqrt(jnp.sum((geom.y - c) ** 2, 1)) - radius, 0.0)
    return gap * gap - f_max


def finite_part(p):
    """``(p with -inf replaced by 0, mask of finite entries)``: zero weights."""
    ok = p > -jnp.inf
    return jnp.where(ok, p, 0.0), ok


def dense_exponent(f, g, cost, eps):
    """``v = (f_i + g_j - C_ij) / eps`` and the mask of finite potentials.

    -inf potentials (zero weights) are replaced by 0 in ``v`` and masked, so
    that gradients never meet ``0 * inf``.
    """
    (f_safe, ok_f), (g_safe, ok_g) = finite_part(f), finite_part(g)
    return (f_safe[:, None] + g_safe[None, :] - cost) / eps, ok_f[:, None] & ok_g


def safe_augmented(geom, f, g, eps):
    """:func:`augmented` for differentiable passes: -inf potentials set to 0.

    Returns ``(P, Q, f_safe, g_safe, on_f, on_g)``: the potentials with -inf
    replaced by 0, and ``on_f, on_g`` 1 where the potential is finite and 0
    where it is -inf (a zero weight). Multiplying by them after the
    exponential keeps gradients away from ``0 * inf``.
    """
    (f_safe, ok_f), (g_safe, ok_g) = finite_part(f), finite_part(g)
    p_aug, q_aug = augmented(geom, f_safe, g_safe, eps)
    return p_aug, q_aug, f_safe, g_safe, ok_f.astype(f.dtype), ok_g.astype(g.dtype)


def pair_sum(cost_fn, geom, f, g, eps, wr, wc, *, block_size, axis_name):
    """``sum_ij P_ij (wr_i + wc_j)``, differentiable, memory O(block)."""
    if geom.cost is not None:
        v, ok = dense_exponent(f, g, geom.cost, eps)
        p = jnp.where(ok, jnp.exp(v), 0.0)
        return psum(jnp.sum(p * (wr[:, None] + wc[None, :])), axis_name)
    if is_sq_euclidean(cost_fn):
        rows, q_aug, _, _, on_f, on_g = safe_augmented(geom, f, g, eps)
        cols = jnp.stack([on_g, on_g * wc], axis=1)

        def sq_row(p_aug, on_i, wr_i):
            s = jnp.exp(q_aug @ p_aug) @ cols
            return on_i * (wr_i * s[0] + s[1])

        out = map_rows(sq_row, (rows, on_f, wr), block_size, remat=True)
        return psum(jnp.sum(out), axis_name)

    def row(c, v, ok, wr_i):
        p = jnp.where(ok, jnp.exp(v), 0.0)
        return wr_i * jnp.sum(p) + p @ wc

    out = row_pass(
        cost_fn,
        geom,
        f,
        g,
        eps,
        row,
        (wr,),
        transpose=False,
        block_size=block_size,
        remat=True,
    )
    return psum(jnp.sum(out), axis_name)


def plan_cost(cost_fn, geom, f, g, eps, *, block_size, axis_name):
    """``<P, C>``, differentiable."""
    if geom.cost is not None:
        v, ok = dense_exponent(f, g, geom.cost, eps)
        return psum(jnp.sum(jnp.where(ok, jnp.exp(v) * geom.cost, 0.0)), axis_name)
    if is_sq_euclidean(cost_fn):
        rows, q_aug, f_safe, g_safe, on_f, on_g = safe_augmented(geom, f, g, eps)

        def sq_row(p_aug, on_i, f_i):
            v = q_aug @ p_aug
            # C_ij = f_i + g_j - eps v_ij, no second matrix product.
            return on_i * ((jnp.exp(v) * (f_i + g_safe - eps * v)) @ on_g)

        out = map_rows(sq_row, (rows, on_f, f_safe), block_size, remat=True)
        return psum(jnp.sum(out), axis_name)

    def row(c, v, ok):
        return jnp.sum(jnp.where(ok, jnp.exp(v) * c, 0.0))

    out = row_pass(
        cost_fn,
        geom,
        f,
        g,
        eps,
        row,
        transpose=False,
        block_size=block_size,
        remat=True,
    )
    return psum(jnp.sum(out), axis_name)


def apply(cost_fn, geom, f, g, eps, vec, *, transpose, block_size, axis_name):
    """``P @ vec`` (``vec: [m, k]``) or ``P^T @ vec`` (``vec: [n, k]``)."""

    def row(c, v, ok):
        return jnp.where(ok, jnp.exp(v), 0.0) @ vec

    if transpose:
        # Column j of P against all rows: sum_i P_ij vec_i.
        out = row_pass(
            cost_fn,
            geom,
            f,
            g,
            eps,
            row,
            transpose=True,
            block_size=block_size,
            remat=True,
        )
        return psum(out, axis_name)
    return row_pass(
        cost_fn,
        geom,
        f,
        g,
        eps,
        row,
        transpose=False,
        block_size=block_size,
        remat=True,
    )


def _moments(v, w, axis_name):
    """Centred moments of the points ``v`` under the weights ``w``.

    Returns ``(mean [d], covariance [d, d], trace, var |u|^2, E[|u|^2 u] [d])``
    with ``u = v - mean``.
    """
    mean = psum(w @ v, axis_name)
    u = v - mean
    sq = jnp.sum(u * u, 1)
    cov = psum((u * w[:, None]).T @ u, axis_name)
    trace = psum(w @ sq, axis_name)
    var_sq = psum(w @ (sq - trace) ** 2, axis_name)
    return mean, cov, trace, var_sq, psum((w * sq) @ u, axis_name)


def cost_scale(cost_fn, geom, a, b, *, block_size, axis_name):
    """Mean and standard deviation of the cost under ``a ⊗ b``, covariances.

    The mean is ``sum_ij a_i b_j |C_ij|``. For the squared Euclidean cost both
    come in closed form from moments of each cloud (``O((n + m) d^2)``):
    with ``x = mu + u`` and ``y = nu + w`` (``u, w`` centred, covariances
    ``S, T``) and ``delta = mu - nu``,
    ``Var C = Var|u|^2 + Var|w|^2 + 4 delta^T (S + T) delta + 4 tr(S T)
    + 4 delta . (E[|u|^2 u] - E[|w|^2 w])``. Otherwise by one pass.

    Returns:
      ``(mean, std, covs)``: ``covs = (S, T)`` for the squared Euclidean cost,
      else None.
    """
    if is_sq_euclidean(cost_fn):
        mean_x, cov_x, tr_x, var_x, skew_x = _moments(geom.x, a, axis_name)
        mean_y, cov_y, tr_y, var_y, skew_y = _moments(geom.y, b, None)
        delta = mean_x - mean_y
        mean = tr_x + tr_y + delta @ delta
        var = (
            var_x
            + var_y
            + 4.0 * delta @ (cov_x + cov_y) @ delta
            + 4.0 * jnp.sum(cov_x * cov_y)
            + 4.0 * delta @ (skew_x - skew_y)
        )
        return mean, jnp.sqrt(jnp.maximum(var, 0.0)), (cov_x, cov_y)

    def row(c, a_i):
        return a_i * jnp.stack([jnp.abs(c) @ b, c @ b, (c * c) @ b])

    if geom.cost is not None:
        out = jax.vmap(row)(geom.cost, a)
    else:
        rows, cost_row = cost_rows(cost_fn, geom, False)
        out = lax.map(
            lambda args: row(cost_row(args[0]), args[1]),
            (rows, a),
            batch_size=block_size,
        )
    mean_abs, mean, second = psum(jnp.sum(out, 0), axis_name)
    return mean_abs, jnp.sqrt(jnp.maximum(second - mean * mean, 0.0)), None


# --------------------------------------------------------------------------
# The fixed-point loops.
