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
up, ``v -> parent[v]``). The start is LEMON's: each source sends its mass to
the root at cost 0, the root sends each sink its demand at the big cost
``ART = (max|C| + 1) (n + m + 1)``; artificial arcs never re-enter.

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

# Reduced costs priced per iteration (rows of C times m), about.
_BLOCK_ELEMENTS = 1 << 14


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

    supply = jnp.concatenate([a, -b, jnp.zeros((1,), dtype)])
    pos = supply >= 0
    parent = jnp.full((size,), root, jnp.int32)
    src = jnp.where(pos, nodes, root).astype(jnp.int32)
    tgt = jnp.where(pos, root, nodes).astype(jnp.int32)
    flow = jnp.abs(supply)
    up = pos.at[root].set(False)
    pi = jnp.where(pos, 0.0, art).astype(dtype).at[root].set(0)

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
        idx = jnp.where(moved, parent, size)
        child = jnp.full((size,), size, jnp.int32).at[idx].set(nodes, mode="drop")
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
        n_path = jnp.sum(path)
        marks = jnp.concatenate(
            [jnp.where(path, pre, size), jnp.where(path, end, size)]
        )
        signs = jnp.concatenate([jnp.ones_like(pre), -jnp.ones_like(pre)])
        cover = jnp.zeros((size + 1,), jnp.int32).at[marks].add(signs, mode="drop")
        section = n_path - jnp.cumsum(cover)[pre]
        slot = jnp.where(path, section, size)
        by = jnp.zeros((size,), jnp.int32).at[slot].set(nodes, mode="drop")
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
        r = jnp.argmin(jnp.min(rc, axis=1))
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
    pre = jnp.where(nodes == root, 0, nodes + 1).astype(jnp.int32)
    sub_size = jnp.where(nodes == root, size, 1).astype(jnp.int32)
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
