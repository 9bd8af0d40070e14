"""The network simplex for the transportation problem, in ``lax`` loops.

Private module behind :mod:`densax.ot.exact`. One call of :func:`solve` runs
the primal network simplex (the method of POT's and LEMON's ``emd``) on one
balanced transportation problem ``min <P, C>`` subject to ``P 1 = a``,
``P^T 1 = b``, ``P >= 0``, entirely as array code: no host callback, so it
runs under ``jit``, ``vmap`` and ``shard_map`` on any backend.

Graph: ``n`` source nodes ``0..n-1``, ``m`` sink nodes ``n..n+m-1`` and an
artificial root ``R = n + m``. The basis is a spanning tree stored *per
node*: every node ``v != R`` owns the tree arc joining it to ``parent[v]``
(its endpoints ``src[v] -> tgt[v]``, its ``flow[v]`` and whether it points
up, ``v -> parent[v]``). The start (:func:`_staircase`) is a feasible
basis: the north-west-corner coupling of the sources and sinks sorted along
the cost's main axis, hung from the root by one artificial arc of zero flow
(nodes of zero mass hang from the root directly, as in LEMON's start). The
arcs at the root point up, carry no flow and are never priced.

One iteration prices a block of rows of the reduced costs
``C_ij + pi_i - pi_j`` (block search, as in LEMON) and, when an entry is
below ``-tol * max|C|``, pivots it in. A pivot's tree operations are done for
all nodes at once, with no walk along the tree: the tree also keeps a preorder
numbering ``pre`` and subtree sizes, so that "u is an ancestor of x" is the
interval test ``pre[u] <= pre[x] < pre[u] + size[u]``. That gives the two
paths to the apex of the cycle and the subtree cut off by the leaving arc in
a few elementwise operations; the new numbering (the subtree re-rooted along
its path and moved under the entering arc's other end) is computed in closed
form with one cumulative sum. The leaving arc follows LEMON's rule for strongly
feasible trees (the last blocking arc met from the apex), which prevents
cycling on degenerate problems (ties, zero weights). The solver stops after a
full pass over the blocks finds no negative reduced cost: the tree is then
optimal, and the potentials recomputed exactly from it are the duals.

References:
  Ahuja, R. K., Magnanti, T. L. and Orlin, J. B. (1993). Network Flows,
  ch. 11 (network simplex, strongly feasible spanning trees).
  Kovács, P. (2015). Minimum-cost flow algorithms: an experimental
  evaluation. Optimization Methods and Software 30, 94–127 (LEMON).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["SimplexResult", "block_rows", "solve"]

# Reduced costs priced per iteration (rows of C times m), about. The pivot
# count hardly depends on it (a full pricing saves some 15% of the pivots),
# so the block is small: pricing then costs little beside the pivot's own
# kernels. On a quiet CPU 2k and 16k take the same time; on a CPU shared with
# other work the small block is clearly faster.
_BLOCK_ELEMENTS = 1 << 11
# Power iterations for the main axis of the start basis.
_POWER_STEPS = 8


class SimplexResult(NamedTuple):
    """The final basis of :func:`solve` (N = n + m + 1 nodes)."""

    parent: jax.Array  # [N] int32, tree parent (the root is its own parent)
    src: jax.Array  # [N] int32, source node of the node's tree arc
    tgt: jax.Array  # [N] int32, target node of the node's tree arc
    flow: jax.Array  # [N] float, flow on the node's tree arc
    pi: jax.Array  # [N] float, node potentials (pi[R] = 0), from the tree
    n_iter: jax.Array  # [] int32, block searches done (pivots + clean blocks)
    n_pivot: jax.Array  # [] int32, pivots done
    optimal: jax.Array  # [] bool, a full pass found no entering arc


def block_rows(n: int, m: int) -> int:
    """Rows of ``C`` priced per iteration: about ``_BLOCK_ELEMENTS`` entries."""
    return max(1, min(n, -(-_BLOCK_ELEMENTS // m)))


def _lifting(parent: jax.Array, levels: int) -> tuple[jax.Array, list[jax.Array]]:
    """Depths and the ``2^k``-th ancestors of every node, by pointer jumping."""
    root = parent.shape[0] - 1
    nodes = jnp.arange(parent.shape[0])
    depth = (nodes != root).astype(jnp.int32)
    anc = parent
    ups = []
    for _ in range(levels):
        ups.append(anc)
        depth = depth + depth[anc]
        anc = anc[anc]
    return depth, ups


def _kth(ups: list[jax.Array], start: jax.Array, k: jax.Array) -> jax.Array:
    """The ``k``-th ancestor of ``start`` (elementwise), ``k < 2^len(ups)``."""
    for b, up in enumerate(ups):
        start = jnp.where((k >> b) & 1, up[start], start)
    return start


def _tree_sums(parent: jax.Array, weight: jax.Array, levels: int) -> jax.Array:
    """``sum`` of ``weight`` over each node's path to the root (root's is 0)."""
    anc = parent
    total = weight
    for _ in range(levels):
        total = total + total[anc]
        anc = anc[anc]
    return total


def _arc_cost(src, tgt, cost, n, m, art):
    """Cost of each node's tree arc: real ``C_ij``, artificial ``0`` or ``ART``."""
    root = n + m
    real = (src < n) & (tgt >= n) & (tgt < root)
    c = cost[jnp.clip(src, 0, n - 1), jnp.clip(tgt - n, 0, m - 1)]
    return jnp.where(real, c, jnp.where(src == root, art, 0.0).astype(cost.dtype))


def _principal_orders(cost: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Orders of the sources and sinks along the cross-covariance's main axis.

    For ``C_ij = |x_i - y_j|^2`` the double-centred ``-C / 2`` is the Gram
    matrix ``<x_i - x̄, y_j - ȳ>``; a few power iterations give its leading
    singular pair, i.e. the positions of ``x`` and ``y`` along a common main
    axis. For other costs it is only a heuristic (it affects the number of
    pivots, never the result).
    """
    gram = cost - jnp.mean(cost, 1, keepdims=True) - jnp.mean(cost, 0, keepdims=True)
    gram = -(gram + jnp.mean(cost))
    tiny = jnp.finfo(cost.dtype).tiny
    v = gram[jnp.argmax(jnp.sum(gram * gram, axis=1))]
    for _ in range(_POWER_STEPS):
        u = gram @ v
        u = u / jnp.maximum(jnp.linalg.norm(u), tiny)
        v = gram.T @ u
        v = v / jnp.maximum(jnp.linalg.norm(v), tiny)
    return jnp.argsort(gram @ v), jnp.argsort(v)


def _staircase(a, b, cost, levels):
    """The north-west-corner basis of the problem sorted along its main axis.

    Sources and sinks of positive mass, each sorted by
    :func:`_principal_orders`, are matched by the north-west-corner rule (the
    monotone coupling of the two orders: near-optimal when the cost is
    nearly that of a 1D problem), a spanning tree of ``n' + m' - 1`` arcs whose
    first source hangs from the root by an artificial up arc. Nodes of zero
    mass hang from the root by up arcs of zero flow (LEMON's start). At a tie
    of the cumulative masses the source is added first, so that every
    zero-flow arc points up: the tree is strongly feasible.

    Returns:
      parent, src, tgt, flow, up, pi, pre, sub_size of the start basis (the
      order in which the nodes are added is a preorder of the tree).
    """
    n, m = cost.shape
    dtype = cost.dtype
    size = n + m + 1
    root = n + m
    order_a, order_b = _principal_orders(cost)
    # Zero masses last (stable), so that positive masses form the staircase.
    order_a = order_a[jnp.argsort(a[order_a] <= 0, stable=True)]
    order_b = order_b[jnp.argsort(b[order_b] <= 0, stable=True)]
    sa, sb = a[order_a], b[order_b]
    hi_a, hi_b = jnp.cumsum(sa), jnp.cumsum(sb)
    zero = jnp.zeros(1, dtype)
    lo_a = jnp.concatenate([zero, hi_a[:-1]])
    lo_b = jnp.concatenate([zero, hi_b[:-1]])
    # Event k: the k-th sorted source (sink), k >= 1, joins at lo of it.
    inf = jnp.array(jnp.inf, dtype)
    time = jnp.concatenate(
        [jnp.where(sa[1:] > 0, lo_a[1:], inf), jnp.where(sb[1:] > 0, lo_b[1:], inf)]
    )
    is_b = jnp.concatenate([jnp.zeros(n - 1, bool), jnp.ones(m - 1, bool)])
    rank = jnp.concatenate([jnp.arange(1, n), jnp.arange(1, m)])
    ev = jnp.lexsort((is_b, time))
    time, is_b, rank = time[ev], is_b[ev], rank[ev]
    valid = time < inf
    # The current source (sink) rank after each event.
    cur_a = jnp.cumsum(~is_b)
    cur_b = jnp.cumsum(is_b)
    node = jnp.where(is_b, n + order_b[rank], order_a[rank])
    par = jnp.where(is_b, order_a[cur_a], n + order_b[cur_b])
    par = jnp.where(valid, par, root)
    seq = jnp.concatenate([order_a[:1], n + order_b[:1], node]).astype(jnp.int32)
    seq_par = jnp.concatenate([jnp.array([root, order_a[0]]), par]).astype(jnp.int32)
    seq_valid = jnp.concatenate([jnp.ones(2, bool), valid])
    seq_b = jnp.concatenate([jnp.array([False, True]), is_b])
    n_stair = jnp.sum(seq_valid)
    pos = jnp.arange(size - 1)
    nxt_other = jnp.concatenate([seq_b[1:] != seq_b[:-1], jnp.zeros(1, bool)])
    nxt_other = nxt_other & jnp.concatenate([seq_valid[1:], jnp.zeros(1, bool)])
    seq_size = jnp.where(
        pos == 0, n_stair, jnp.where(seq_valid & nxt_other, n_stair - pos, 1)
    )
    # Interval of each node's mass on the common [0, 1] axis.
    lo = jnp.zeros(size, dtype).at[order_a].set(lo_a).at[n + order_b].set(lo_b)
    hi = jnp.zeros(size, dtype).at[order_a].set(hi_a).at[n + order_b].set(hi_b)
    seq_flow = jnp.maximum(
        jnp.minimum(hi[seq], hi[seq_par]) - jnp.maximum(lo[seq], lo[seq_par]), 0
    )
    seq_flow = jnp.where(seq_valid & (pos > 0), seq_flow, 0)
    seq_up = (seq < n) | ~seq_valid
    seq_src = jnp.where(seq_up, seq, seq_par)
    seq_tgt = jnp.where(seq_up, seq_par, seq)

    def scatter(values, fill):
        out = jnp.full((size,), fill, values.dtype)
        return out.at[seq].set(values)

    parent = scatter(seq_par, root)
    src = scatter(seq_src, root)
    tgt = scatter(seq_tgt, root)
    flow = scatter(seq_flow, 0)
    up = scatter(seq_up, False)
    pre = scatter((pos + 1).astype(jnp.int32), 0)
    sub_size = scatter(seq_size.astype(jnp.int32), size)
    c = _arc_cost(src, tgt, cost, n, m, 0)
    weight = jnp.where(up, -c, c).at[root].set(0)
    weight = jnp.where(parent == root, 0, weight)
    pi = _tree_sums(parent, weight, levels)
    return parent, src, tgt, flow, up, pi, pre, sub_size


def solve(
    a: jax.Array, b: jax.Array, cost: jax.Array, *, max_iter: int, tol: float
) -> SimplexResult:
    """Network simplex on one balanced problem (``sum a == sum b``).

    Args:
      a: [n] non-negative source masses.
      b: [m] non-negative sink masses, with the same total as ``a``.
      cost: [n, m] finite costs.
      max_iter: most block searches (each pivots at most once).
      tol: an arc enters when its reduced cost is below ``-tol * max|C|``.

    Returns:
      The final :class:`SimplexResult`.
    """
    n, m = cost.shape
    dtype = cost.dtype
    size = n + m + 1
    root = n + m
    levels = max(1, math.ceil(math.log2(size)))
    rows = block_rows(n, m)
    n_blocks = -(-n // rows)
    nodes = jnp.arange(size, dtype=jnp.int32)

    cmax = jnp.max(jnp.abs(cost))
    art = (cmax + 1) * size
    thr = tol * jnp.maximum(cmax, jnp.finfo(dtype).tiny)
    padded = jnp.pad(cost, ((0, n_blocks * rows - n), (0, 0)), constant_values=jnp.inf)
    blocks = padded.reshape(n_blocks, rows, m)

    parent, src, tgt, flow, up, pi, pre, sub_size = _staircase(a, b, cost, levels)

    def pivot(state, i, j, rc):
        parent, src, tgt, flow, up, pi, pre, sub_size = state
        first, second = i, n + j
        # u is an ancestor of x (or x itself) iff x's preorder number falls in
        # u's subtree interval [pre[u], pre[u] + size[u]).
        end = pre + sub_size
        on_first = (pre <= pre[first]) & (pre[first] < end)
        on_second = (pre <= pre[second]) & (pre[second] < end)
        common = on_first & on_second
        side1, side2 = on_first & ~common, on_second & ~common
        d1 = jnp.where(side1 & up, flow, jnp.inf)
        d2 = jnp.where(side2 & ~up, flow, jnp.inf)
        min1, min2 = jnp.min(d1), jnp.min(d2)
        use2 = min2 <= min1
        delta = jnp.minimum(min1, min2)
        # Along a path to the root the preorder number grows with the depth.
        out1 = jnp.argmax(jnp.where(side1 & (d1 == delta), pre, -1))
        out2 = jnp.argmin(jnp.where(side2 & (d2 == delta), pre, size + 1))
        u_out = jnp.where(use2, out2, out1).astype(jnp.int32)

        flow = flow + jnp.where(side1, jnp.where(up, -delta, delta), 0)
        flow = flow + jnp.where(side2, jnp.where(up, delta, -delta), 0)

        # The subtree S cut off by the leaving arc, re-rooted at w.
        w = jnp.where(use2, second, first).astype(jnp.int32)
        other = jnp.where(use2, first, second).astype(jnp.int32)
        s0, length = pre[u_out], sub_size[u_out]
        sub = (pre >= s0) & (pre < s0 + length)
        path = jnp.where(use2, side2, side1) & sub
        moved = path & (nodes != u_out)
        # Each path node but u_out hands its arc to its parent, reversed: a
        # node's new arc is its path child's (one scatter, then gathers).
        # Distinct out-of-range indices for the rest: a scatter of unique indices.
        idx = jnp.where(moved, parent, size + nodes)
        child = (
            jnp.full((size,), size, jnp.int32)
            .at[idx]
            .set(nodes, mode="drop", unique_indices=True)
        )
        takes = child < size
        child = jnp.minimum(child, size - 1)
        at_w = nodes == w
        parent2 = jnp.where(at_w, other, jnp.where(takes, child, parent))
        src2 = jnp.where(at_w, first, jnp.where(takes, src[child], src))
        tgt2 = jnp.where(at_w, second, jnp.where(takes, tgt[child], tgt))
        flow2 = jnp.where(at_w, delta, jnp.where(takes, flow[child], flow))
        up2 = jnp.where(at_w, w == first, jnp.where(takes, ~up[child], up))
        shift = jnp.where(w == second, rc, -rc)
        pi2 = pi + jnp.where(sub, shift, 0)

        # New preorder of S: w's old subtree, then for each path node p_i
        # (i = 1..k, p_k = u_out) p_i and its old subtree minus p_(i-1)'s.
        # Section index of v in S: k + 1 - (number of path intervals holding v).
        n_path = jnp.sum(path, dtype=jnp.int32)
        marks = jnp.concatenate(
            [jnp.where(path, pre, size), jnp.where(path, end, size)]
        )
        signs = jnp.concatenate([jnp.ones_like(pre), -jnp.ones_like(pre)])
        cover = jnp.zeros((size + 1,), jnp.int32).at[marks].add(signs, mode="drop")
        section = n_path - jnp.cumsum(cover)[pre]
        slot = jnp.where(path, section, size + nodes)
        by = (
            jnp.zeros((size,), jnp.int32)
            .at[slot]
            .set(nodes, mode="drop", unique_indices=True)
        )
        pre_by, size_by = pre[by], sub_size[by]
        prev = jnp.maximum(section - 1, 0)
        rel = jnp.where(
            section == 0,
            pre - pre[w],
            size_by[prev]
            + pre
            - pre_by[section]
            - jnp.where(pre > pre_by[prev], size_by[prev], 0),
        )
        size_s = jnp.where(
            path, jnp.where(section == 0, length, length - size_by[prev]), sub_size
        )
        # S leaves its interval and comes back right after `other`.
        q = pre - jnp.where(pre > s0, length, 0)
        ins = q[other] + 1
        pre2 = jnp.where(sub, ins + rel, q + jnp.where(q >= ins, length, 0))
        above_out = (pre < s0) & (s0 < end)
        above_other = (pre <= pre[other]) & (pre[other] < end)
        size2 = jnp.where(
            sub,
            size_s,
            sub_size
            - jnp.where(above_out, length, 0)
            + jnp.where(above_other, length, 0),
        )
        return parent2, src2, tgt2, flow2, up2, pi2, pre2, size2

    def body(carry):
        state, it, npiv, block, clean = carry
        pi = state[5]
        if n_blocks == 1:
            pi_rows = pi[:n]
        else:
            pi_rows = jnp.pad(pi[:n], (0, n_blocks * rows - n))
            pi_rows = lax.dynamic_slice(pi_rows, (block * rows,), (rows,))
        # Two-stage argmin (row minima, then one row): XLA's CPU argmin over
        # the whole block is several times slower than a plain min.
        pi_cols = pi[n:root]
        # With one block, index it statically (under vmap a traced index would
        # gather a copy of every problem's matrix at each iteration).
        block_cost = blocks[0] if n_blocks == 1 else blocks[block]
        rc = block_cost + pi_rows[:, None] - pi_cols[None, :]
        r = jnp.argmin(jnp.min(rc, axis=1)).astype(jnp.int32)
        row = block_cost[r] + pi_rows[r] - pi_cols
        j = jnp.argmin(row).astype(jnp.int32)
        value = row[j]
        enter = value < -thr
        i = (block * rows + r).astype(jnp.int32)
        state = lax.cond(enter, lambda s: pivot(s, i, j, value), lambda s: s, state)
        clean = jnp.where(enter, 0, clean + 1)
        block = (block + 1) % n_blocks
        return state, it + 1, npiv + enter.astype(jnp.int32), block, clean

    def cond(carry):
        _, it, _, _, clean = carry
        return (clean < n_blocks) & (it < max_iter)

    zero = jnp.int32(0)
    init = ((parent, src, tgt, flow, up, pi, pre, sub_size), zero, zero, zero, zero)
    (parent, src, tgt, flow, up, *_), it, npiv, _, clean = lax.while_loop(
        cond, body, init
    )
    # Potentials recomputed from the tree (no drift from the pivots' updates):
    # pi[v] = pi[parent] - c when the arc points up, + c when it points down.
    # The arcs from the root carry the big cost ART (or 0): sum the rest, then
    # add each component's offset, relative to the component of the heaviest
    # source, so that potentials do not round at the scale of ART.
    c = _arc_cost(src, tgt, cost, n, m, art)
    weight = jnp.where(up, -c, c).at[root].set(0)
    top_arc = parent == root
    rel = _tree_sums(parent, jnp.where(top_arc, 0, weight), levels)
    depth, ups = _lifting(parent, levels)
    top = _kth(ups, nodes, jnp.maximum(depth - 1, 0))
    offset = jnp.where(nodes == root, 0, weight[top])
    pi = rel + (offset - offset[jnp.argmax(a)])
    return SimplexResult(parent, src, tgt, flow, pi, it, npiv, clean >= n_blocks)
