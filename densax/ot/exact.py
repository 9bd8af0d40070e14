"""Exact discrete optimal transport: the Kantorovich problem, assignments, W_p.

Solves ``min_P <P, C>`` over couplings ``P >= 0`` with ``P 1 = a`` and
``P^T 1 = b`` between two weighted discrete measures, exactly, in any
dimension, as JAX array code (``jit``, ``vmap``, ``shard_map``; no host
callback), with a certificate of optimality and gradients.

Algorithm: the primal **network simplex** (the method of POT's ``emd`` and
of LEMON), written in ``lax`` loops in ``densax.ot._simplex``. Why this one:

* it is exact for real-valued masses and costs: it ends on a vertex of the
  transport polytope (a spanning-tree basis, hence at most ``n + m - 1``
  non-zero entries) whose tree potentials are dual feasible, so the
  duality gap closes up to rounding. Auction and ε-scaling methods are exact
  only for integer data and otherwise leave an ``O(n ε)`` gap, and an
  interior-point or entropic solver never reaches a vertex;
* every pivot is a fixed-size array computation: a block of reduced costs is
  priced (vectorised over the block, like LEMON's block search) and the tree
  is updated for all nodes at once (preorder intervals and one cumulative
  sum, no walk along the tree), so a batch of independent problems under
  ``vmap`` runs as one loop of batched pivots;
* LEMON's rule for the leaving arc keeps the tree strongly feasible, which
  rules out cycling on degenerate problems (ties, zero weights).

The start is not LEMON's all-artificial basis but a feasible one: sources and
targets are sorted along the main axis of the cost (the leading singular pair
of the double-centred ``-C / 2``, which for ``|x - y|^2`` is the Gram matrix
of the centred points) and matched by the north-west-corner rule, i.e. the
optimal plan of the problem projected on that axis. It needs fewer pivots,
and every iterate is a coupling.

Cost: a pivot is a few dozen small array kernels over ``n + m`` nodes plus
one priced block of about 2k reduced costs, and random problems take some
``6 n`` (``n`` in the hundreds) to ``30 n`` (``n`` in the thousands) pivots,
each a sequential step. On a CPU the per-kernel cost of XLA (dispatch, batched
gathers and scatters under ``vmap``) dominates, so POT's sequential C++
simplex, which updates only the part of the tree that changes, is faster on
a CPU, on single problems and on batches alike. Other exact methods do not
change this: a dense shortest-augmenting-path (Hungarian) method is
``O(n^3)`` array work against the simplex's ``O(n^2)``, and auction methods
are exact only for integer costs. The point of this solver is exactness
inside ``jit``/``vmap``/``grad`` programs and on accelerators, not CPU speed.
``benchmarks/bench_ot_exact_floor.py`` measures the floor of any such array
simplex on a CPU: a loop of the same number of iterations that does nothing
but ten dependent passes over the nodes (fewer than any pivot needs: price,
bottleneck, leaving arc, subtree, renumbering, potentials) already takes more
than twice POT's time on one problem, and more than the POT loop on a batch.

Certificate: the output carries the duals ``f``, ``g`` read from the final
tree, ``dual_infeasibility = max(f_i + g_j - C_ij, 0)`` and the relative
duality gap ``|<P, C> - (<a, f> + <b, g>)| / |<P, C>|``. In float64 both are
at the level of rounding (``<= 1e-9`` on well-posed problems) when
``converged`` is true. When ``max_iter`` stops the solver first,
``converged`` is false and the plan is a coupling (a vertex of the transport
polytope) that is not yet optimal; its tree duals satisfy complementary
slackness, so the gap stays small and ``dual_infeasibility`` is what
measures how far it is from optimal (:func:`emd2` then returns NaN).

Float32: the pricing threshold is ``64 eps max|C|`` and the potentials carry
float32 rounding of sizes up to ``(n + m) max|C|`` on degenerate trees, so
expect relative gaps around ``1e-6`` to ``1e-5`` (the plan may then be one of
several within that of the optimum); use float64 when exactness matters.

Masses: weights act through their ratios; ``a`` and ``b`` are normalised to
sum to one, so the plan is a probability coupling. An eager call with
``validate=True`` raises when ``sum(a)`` and ``sum(b)`` differ (relative
``sqrt(eps)``); under ``jit`` (or with ``validate=False``) each is normalised
separately.

Gradients (:func:`emd2`, :func:`wasserstein_exact`): by the envelope theorem,
``d cost = <P, dC> + <f - <f, a>, da> + <g - <g, b>, db>`` (potentials centred
by their means under ``a`` and ``b``, which makes them independent of the
dual's free constant and exact for the normalisation above); the derivative
in positions flows from ``<P, dC>`` through the cost function. At ties (a
degenerate optimum) it is one subgradient.

References:
  Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, ch. 3.
  Ahuja, R. K., Magnanti, T. L. and Orlin, J. B. (1993). Network Flows, ch. 11.
  Bonneel, N., van de Panne, M., Paris, S. and Heidrich, W. (2011).
  Displacement interpolation using Lagrangian mass transport (POT's emd).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import costs

from densax import _validate
from densax.ot import _simplex

__all__ = [
    "AssignmentOutput",
    "ExactOutput",
    "assignment",
    "emd",
    "emd2",
    "plan_dense",
    "wasserstein_exact",
]


class ExactOutput(NamedTuple):
    """An optimal coupling in coordinate format, its cost and its certificate.

    Entry ``k`` of the plan moves ``mass[k]`` from ``x[rows[k]]`` to
    ``y[cols[k]]``; padding entries have zero mass (and index 0). The plan is
    a basic solution: at most ``n + m - 1`` entries are non-zero.
    """

    rows: jax.Array  # [n + m - 1] int32, source index of each entry
    cols: jax.Array  # [n + m - 1] int32, target index of each entry
    mass: jax.Array  # [n + m - 1] float, transported mass (sums to one)
    cost: jax.Array  # [] float, <P, C>
    f: jax.Array  # [n] float, dual potential of the sources
    g: jax.Array  # [m] float, dual potential of the targets
    converged: jax.Array  # [] bool, optimal basis reached within max_iter
    n_iter: jax.Array  # [] int32, pivots done
    dual_infeasibility: jax.Array  # [] float, max(f_i + g_j - C_ij, 0)
    gap: jax.Array  # [] float, relative duality gap

    def plan_dense(self, shape: tuple[int, int] | None = None) -> jax.Array:
        """The plan as an ``[n, m]`` matrix (see :func:`plan_dense`)."""
        return plan_dense(self, shape)


class AssignmentOutput(NamedTuple):
    """An optimal permutation: ``x[i]`` goes to ``y[perm[i]]``."""

    perm: jax.Array  # [n] int32, the optimal permutation
    cost: jax.Array  # [] float, sum_i C[i, perm[i]]
    converged: jax.Array  # [] bool, optimal basis reached within max_iter
    gap: jax.Array  # [] float, relative duality gap of the underlying emd


def plan_dense(out: ExactOutput, shape: tuple[int, int] | None = None) -> jax.Array:
    """The dense ``[n, m]`` coupling of an :class:`ExactOutput`.

    Args:
      out: a result of :func:`emd` (unbatched; ``vmap`` this for batches).
      shape: ``(n, m)``; by default ``(len(out.f), len(out.g))``.

    Returns:
      [n, m] the optimal plan, zero off its support.

    Example:
      >>> import jax.numpy as jnp
      >>> from densax.ot import exact
      >>> out = exact.emd(jnp.array([[0.0], [1.0]]), jnp.array([[1.0], [0.0]]))
      >>> print(exact.plan_dense(out))
      [[0.  0.5]
       [0.5 0. ]]
    """
    n, m = shape if shape is not None else (out.f.shape[-1], out.g.shape[-1])
    dense = jnp.zeros((n, m), out.mass.dtype)
    return dense.at[out.rows, out.cols].add(out.mass)


# ---------------------------------------------------------------------------
# Input handling.


def _check_iter(
    max_iter: Any, tol: Any, n: int, m: int, dtype: Any
) -> tuple[int, float]:
    """Resolves ``max_iter`` and ``tol`` (static Python values) and checks them."""
    if tol is None:
        tol = float(64 * np.finfo(dtype).eps)
    if max_iter is None:
        rows = _simplex.block_rows(n, m)
        max_iter = 50 * (n + m) + 4 * (-(-n // rows)) + 100
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=1)
    if not isinstance(tol, (int, float, np.floating)) or isinstance(tol, bool):
        raise TypeError(f"tol must be a float, got {type(tol).__name__}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    return max_iter, float(tol)


def _cost_matrix(x, y, cost_matrix, cost_fn, validate):
    """The ``[n, m]`` cost matrix from points (``x``, ``y``, ``cost_fn``) or given."""
    if cost_matrix is not None:
        if x is not None or y is not None:
            raise ValueError("give either x and y or cost_matrix, not both")
        if cost_fn is not None:
            raise ValueError(
                "cost_fn applies to x and y; it cannot go with cost_matrix"
            )
        cost = _validate.as_float(cost_matrix, "cost_matrix", ndim=2)
        if 0 in cost.shape:
            raise ValueError(f"cost_matrix must not be empty, got shape {cost.shape}")
        _validate.check_finite(cost, "cost_matrix", validate)
        return cost
    if x is None or y is None:
        raise ValueError("give x and y (point clouds) or cost_matrix")
    dtype = _validate.common_float_dtype(x, y)
    x = _validate.as_float(x, "x", ndim=2, dtype=dtype)
    y = _validate.as_float(y, "y", ndim=2, dtype=dtype)
    _validate.check_same_last_dim(x, y, "x", "y")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(f"x and y must be non-empty, got {x.shape} and {y.shape}")
    _validate.check_finite(x, "x", validate)
    _validate.check_finite(y, "y", validate)
    cost_fn = costs.SqEuclidean() if cost_fn is None else cost_fn
    if not isinstance(cost_fn, costs.CostFn):
        raise TypeError(
            "cost_fn must be an ott.geometry.costs.CostFn, "
            f"got {type(cost_fn).__name__}"
        )
    return cost_fn.all_pairs(x, y).astype(dtype)


def _marginals(a, b, n, m, dtype, validate):
    a = jnp.full((n,), 1.0 / n, dtype) if a is None else a
    b = jnp.full((m,), 1.0 / m, dtype) if b is None else b
    a = _validate.check_weights(a, "a", (n,), dtype=dtype, validate=validate)
    b = _validate.check_weights(b, "b", (m,), dtype=dtype, validate=validate)
    if validate and _validate.is_concrete(a, b):
        sa, sb = float(jnp.sum(a)), float(jnp.sum(b))
        rtol = float(np.sqrt(np.finfo(dtype).eps))
        _validate.value_check(
            True,
            abs(sa - sb) <= rtol * max(sa, sb),
            f"a and b must have the same total mass, got {sa} and {sb} "
            "(normalise them, or pass validate=False to normalise each)",
        )
    return a, b


def _prepare(x, y, a, b, cost_matrix, cost_fn, max_iter, tol, validate):
    cost = _cost_matrix(x, y, cost_matrix, cost_fn, validate)
    n, m = cost.shape
    a, b = _marginals(a, b, n, m, cost.dtype, validate)
    max_iter, tol = _check_iter(max_iter, tol, n, m, cost.dtype)
    return a, b, cost, max_iter, tol


# ---------------------------------------------------------------------------
# The jitted core.


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _emd_core(a, b, cost, *, max_iter, tol):
    n, m = cost.shape
    dtype = cost.dtype
    a = a / jnp.sum(a)
    b = b / jnp.sum(b)
    res = _simplex.solve(a, b, cost, max_iter=max_iter, tol=tol)
    root = n + m
    src, tgt, flow = res.src[:root], res.tgt[:root], res.flow[:root]
    real = (src < n) & (tgt >= n) & (tgt < root)
    rows = jnp.where(real, src, 0)
    cols = jnp.where(real, tgt - n, 0)
    order = jnp.argsort(jnp.where(real, rows * m + cols, n * m))[: n + m - 1]
    rows, cols = rows[order].astype(jnp.int32), cols[order].astype(jnp.int32)
    mass = jnp.where(real[order], flow[order], 0).astype(dtype)

    f, g = -res.pi[:n], res.pi[n:root]
    # Fix the free constant (f + c, g - c) so that <a, f> = <b, g>.
    shift = 0.5 * (jnp.dot(a, f) - jnp.dot(b, g))
    f, g = f - shift, g + shift
    primal = jnp.sum(mass * cost[rows, cols])
    dual = jnp.dot(a, f) + jnp.dot(b, g)
    infeas = jnp.maximum(jnp.max(f[:, None] + g[None, :] - cost), 0)
    floor = jnp.finfo(dtype).eps * jnp.max(jnp.abs(cost))
    gap = jnp.abs(primal - dual) / jnp.maximum(jnp.abs(primal), floor)
    finite = jnp.all(jnp.isfinite(cost)) & jnp.isfinite(primal)
    converged = res.optimal & finite
    return ExactOutput(
        rows, cols, mass, primal, f, g, converged, res.n_pivot, infeas, gap
    )


# ---------------------------------------------------------------------------
# Public entry points.


@_validate.half_precision
def emd(
    x: Any = None,
    y: Any = None,
    *,
    a: Any = None,
    b: Any = None,
    cost_matrix: Any = None,
    cost_fn: costs.CostFn | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    validate: bool = True,
) -> ExactOutput:
    """Exact optimal transport between two weighted discrete measures.

    Solves the Kantorovich problem ``min <P, C>`` over couplings of
    ``Σ_i a_i δ_{x_i}`` and ``Σ_j b_j δ_{y_j}`` with the network simplex (see
    the module docstring), and certifies the result with the duals.

    Args:
      x: [n, d] source points (with ``y``; leave None with ``cost_matrix``).
      y: [m, d] target points.
      a: [n] non-negative source weights (zeros allowed); uniform if None.
      b: [m] non-negative target weights; uniform if None.
      cost_matrix: [n, m] costs, instead of ``x``, ``y`` and ``cost_fn``.
      cost_fn: an ``ott.geometry.costs.CostFn`` applied to all pairs of
        ``x`` and ``y``; ``SqEuclidean()`` (``|x - y|^2``) if None.
      max_iter: most block searches (each pivots at most once); the default
        ``50 (n + m) + ...`` is far above what random problems need.
      tol: an arc enters the basis when its reduced cost is below
        ``-tol * max|C|``; default ``64 eps`` of the dtype.
      validate: run the eager value checks (finite inputs, non-negative
        weights with a positive sum, equal total masses).

    Returns:
      An :class:`ExactOutput`: the sparse plan (``rows``, ``cols``, ``mass``,
      ``n + m - 1`` entries), ``cost``, the duals ``f`` [n] and ``g`` [m],
      ``converged``, ``n_iter`` (pivots), ``dual_infeasibility`` and ``gap``.

    Raises:
      ValueError: bad shapes, both or neither of points and ``cost_matrix``,
        or (eagerly) NaN/inf, negative weights or unequal total masses.
      TypeError: a non-numeric input or a ``cost_fn`` that is not a CostFn.

    References:
      Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, §3.

    Example:
      >>> import jax.numpy as jnp
      >>> from densax.ot import exact
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
      >>> out = exact.emd(x, x + 1.0, a=jnp.array([0.5, 0.25, 0.25]))
      >>> print(round(float(out.cost), 4), bool(out.converged), out.rows.shape)
      2.75 True (5,)
    """
    a, b, cost, max_iter, tol = _prepare(
        x, y, a, b, cost_matrix, cost_fn, max_iter, tol, validate
    )
    return _emd_core(a, b, cost, max_iter=max_iter, tol=tol)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _emd2_value(a, b, cost, max_iter, tol):
    out = _emd_core(a, b, cost, max_iter=max_iter, tol=tol)
    return jnp.where(out.converged, out.cost, jnp.nan)


@_emd2_value.defjvp
def _emd2_jvp(max_iter, tol, primals, tangents):
    a, b, cost = primals
    da, db, dcost = tangents
    out = _emd_core(a, b, cost, max_iter=max_iter, tol=tol)
    sa, sb = jnp.sum(a), jnp.sum(b)
    an, bn = a / sa, b / sb
    f = (out.f - jnp.dot(an, out.f)) / sa
    g = (out.g - jnp.dot(bn, out.g)) / sb
    plan = plan_dense(out, cost.shape)
    tangent = jnp.sum(plan * dcost) + jnp.dot(f, da) + jnp.dot(g, db)
    return jnp.where(out.converged, out.cost, jnp.nan), tangent


@_validate.half_precision
def emd2(
    x: Any = None,
    y: Any = None,
    *,
    a: Any = None,
    b: Any = None,
    cost_matrix: Any = None,
    cost_fn: costs.CostFn | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    validate: bool = True,
) -> jax.Array:
    """The optimal transport cost ``min <P, C>``, differentiable.

    Same problem and arguments as :func:`emd`. The derivative with respect to
    ``a`` and ``b`` is given by the centred dual potentials, the one with
    respect to the points (or ``cost_matrix``) by the optimal plan (envelope
    theorem); at ties it is a subgradient.

    Args:
      x: [n, d] source points.
      y: [m, d] target points.
      a: [n] source weights (uniform if None).
      b: [m] target weights (uniform if None).
      cost_matrix: [n, m] costs, instead of points.
      cost_fn: a ``CostFn`` for points (``SqEuclidean`` if None).
      max_iter: most block searches.
      tol: pricing tolerance relative to ``max|C|``.
      validate: eager value checks.

    Returns:
      [] the optimal cost (NaN when the solver did not certify optimality,
      so that a non-converged value is never used silently).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from densax.ot import exact
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0]])
      >>> y = jnp.array([[0.0, 1.0], [1.0, 2.0]])
      >>> print(round(float(exact.emd2(x, y)), 4))
      2.5
      >>> print(jax.grad(lambda x: exact.emd2(x, y))(x).shape)
      (2, 2)
    """
    cost_given = cost_matrix is not None
    if not cost_given:
        # Differentiate through the cost function: compute C outside.
        cost_fn_ = costs.SqEuclidean() if cost_fn is None else cost_fn
        cost = _cost_matrix(x, y, None, cost_fn_, validate)
    else:
        cost = _cost_matrix(None, None, cost_matrix, cost_fn, validate)
    n, m = cost.shape
    a, b = _marginals(a, b, n, m, cost.dtype, validate)
    max_iter, tol = _check_iter(max_iter, tol, n, m, cost.dtype)
    return _emd2_value(a, b, cost, max_iter, tol)


@_validate.half_precision
def assignment(
    x: Any = None,
    y: Any = None,
    *,
    cost_matrix: Any = None,
    cost_fn: costs.CostFn | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    validate: bool = True,
) -> AssignmentOutput:
    """The optimal assignment (a permutation) between two sets of equal size.

    The optimal coupling of two uniform measures of ``n`` points is a
    permutation (a vertex of the Birkhoff polytope); :func:`emd` finds it.

    Args:
      x: [n, d] points.
      y: [n, d] points.
      cost_matrix: [n, n] costs, instead of points.
      cost_fn: a ``CostFn`` for points (``SqEuclidean`` if None).
      max_iter: most block searches.
      tol: pricing tolerance relative to ``max|C|``.
      validate: eager value checks.

    Returns:
      An :class:`AssignmentOutput`: ``perm`` [n] (``x[i] -> y[perm[i]]``),
      ``cost = sum_i C[i, perm[i]]`` (SciPy's ``linear_sum_assignment``
      total, ``n`` times the :func:`emd` cost), ``converged`` and ``gap``.

    Raises:
      ValueError: the two sides differ in size, or as :func:`emd`.

    Example:
      >>> import jax.numpy as jnp
      >>> from densax.ot import exact
      >>> c = jnp.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
      >>> out = exact.assignment(cost_matrix=c)
      >>> print(out.perm, float(out.cost))
      [1 0 2] 5.0
    """
    cost = _cost_matrix(x, y, cost_matrix, cost_fn, validate)
    n, m = cost.shape
    if n != m:
        raise ValueError(f"assignment needs as many sources as targets, got {n}, {m}")
    max_iter, tol = _check_iter(max_iter, tol, n, m, cost.dtype)
    return _assignment_core(cost, max_iter=max_iter, tol=tol)


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _assignment_core(cost, *, max_iter, tol):
    n = cost.shape[0]
    uniform = jnp.ones((n,), cost.dtype)
    out = _emd_core(uniform, uniform, cost, max_iter=max_iter, tol=tol)
    # A basic optimal plan of uniform measures has entries 0 or 1/n.
    keep = out.mass > 0.5 / n
    perm = jnp.zeros((n,), jnp.int32)
    perm = perm.at[jnp.where(keep, out.rows, n)].set(out.cols, mode="drop")
    total = jnp.sum(cost[jnp.arange(n), perm])
    return AssignmentOutput(perm, total, out.converged, out.gap)


@_validate.half_precision
def wasserstein_exact(
    x: Any,
    y: Any,
    p: float = 2,
    *,
    a: Any = None,
    b: Any = None,
    max_iter: int | None = None,
    tol: float | None = None,
    validate: bool = True,
) -> jax.Array:
    """Exact ``W_p`` between two weighted point clouds, in any dimension.

    ``W_p = (min_P Σ_ij P_ij |x_i - y_j|^p)^(1/p)`` with the Euclidean norm:
    the exact counterpart of the entropic ``wasserstein_entropic`` and the
    ``d``-dimensional extension of ``wasserstein_1d``. Differentiable (see
    :func:`emd2`); the ``1/p`` root has an infinite slope at ``W_p = 0``.

    Args:
      x: [n, d] source points.
      y: [m, d] target points.
      p: the order, ``p >= 1``.
      a: [n] source weights (uniform if None).
      b: [m] target weights (uniform if None).
      max_iter: most block searches.
      tol: pricing tolerance relative to ``max|C|``.
      validate: eager value checks.

    Returns:
      [] the distance ``W_p``.

    Example:
      >>> import jax.numpy as jnp
      >>> from densax.ot import exact
      >>> x = jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> print(round(float(exact.wasserstein_exact(x, x + 1.0, p=1)), 4))
      1.4142
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.number)):
        raise TypeError(f"p must be a number, got {type(p).__name__}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    p = float(p)
    cost_fn = costs.SqEuclidean() if p == 2 else _EuclideanPow(p)
    value = emd2(
        x, y, a=a, b=b, cost_fn=cost_fn, max_iter=max_iter, tol=tol, validate=validate
    )
    safe = jnp.where(value > 0, value, 1)
    return jnp.where(value > 0, safe ** (1 / p), 0)


@jax.tree_util.register_pytree_node_class
class _EuclideanPow(costs.CostFn):
    """``|x - y|_2^p`` (ott's ``PNormP`` is the ``p``-norm, divided by ``p``)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def __call__(self, x, y):
        z = x - y
        sq = jnp.sum(z * z)
        safe = jnp.where(sq > 0, sq, 1)
        return jnp.where(sq > 0, safe ** (0.5 * self.p), 0)

    def tree_flatten(self):
        return (), (self.p,)

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        del children
        return cls(*aux_data)
