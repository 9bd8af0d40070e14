"""Entropic optimal transport: Sinkhorn's algorithm and the Sinkhorn divergence.

Between weighted point clouds ``(x, a)`` and ``(y, b)`` with ground cost
``C_ij = c(x_i, y_j)``, entropic OT solves

    OT_eps(a, b) = min_{P 1 = a, P^T 1 = b}  <P, C> + eps KL(P | a ⊗ b),

whose dual is a smooth concave problem in two potentials ``f, g``. The optimal
plan is ``P_ij = exp((f_i + g_j - C_ij) / eps)`` (ott-jax's convention, in
which ``f`` and ``g`` absorb ``eps log a`` and ``eps log b``). Sinkhorn's
algorithm alternates exact maximisations of the dual in ``g`` and ``f``.

The solver core, written for speed on CPU and accelerators:

* **One pass per half-iteration, in log space.** After an exact update of
  ``g`` every column of ``P`` sums to ``b_j <= 1``, so every exponent
  ``(f_i + g_j - C_ij) / eps`` is ``<= 0``. The next update needs only
  ``sum_j exp(...)``, the current row mass, with no maximum to subtract: it
  cannot overflow, and an underflowing row (mass below the smallest normal
  number) takes a shorter, still monotone, step. The L1 marginal error comes
  free with each pass.
* **A Gaussian start**: for the squared Euclidean cost the iterations start
  from the entropic potentials between Gaussian fits of the two clouds, in
  closed form (Janati et al. 2020; Thornton & Cuturi 2023 start from the
  unregularised ones), which hold the problem's large scales.
* **epsilon-scaling** (annealing from the cost's spread down to ``epsilon``,
  one iteration per level, as in GeomLoss, when ``epsilon`` is at least 4x
  below the spread; by default only from the zero start) and **adaptive
  over-relaxation**
  (the relaxation ``omega`` of successive over-relaxation, started from the
  optimum for the rate that ``epsilon / scale`` predicts and raised from the
  observed rate of convergence, Hageman & Young) cut the number of
  iterations several-fold at small ``epsilon``.
* **A cached kernel** (stabilised scaling, Schmitzer 2019) when memory
  allows: ``K = exp((f0 + g0 - C) / eps)`` is stored once and a pass is a
  matrix-vector product with scalings ``exp((f - f0) / eps)``, several times
  cheaper than ``n m`` exponentials. The annealing levels differ by exactly
  ``epsilon_scaling = 1/2``, so the kernel of the next level is the square
  of the current one (no exponential); it is rebuilt when a scaling leaves
  a safe range. Rounding then enters once per build, not once per pass.
* **Dense or online** (``SinkhornConfig.storage``). ``"dense"`` materialises
  the cost matrix once (a user's ``cost_matrix`` always is); ``"online"``
  with ``block_size=B`` recomputes cost blocks of ``B`` rows inside ``lax.map``
  (memory ``O((n + m) d + B max(n, m))``, no cached kernel); for the squared
  Euclidean cost a block is a single matrix product, which stays in cache.
  An online iteration is **one pass**: a stripe of columns gives their
  masses, hence the new ``g`` there, and, rescaled while still in cache,
  its share of the row masses at that ``g`` (half the exponentials).
  ``"kernel"`` (the default ``"auto"`` above ``2^16`` entries) caches the
  kernel up to ``2^25`` entries and runs online passes (the annealing start,
  the outputs' derivatives) beside it. Every ``"auto"`` is resolved in one
  place, :func:`_resolve`, and recorded in the output's ``config``.
* **Gradients** by the envelope theorem (default: the cost of one pass), by
  implicit differentiation of the fixed point (a well-conditioned Schur
  complement solved by conjugate gradients, or directly when small), or by
  unrolling the iterations.

References:
  Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
  NeurIPS 2013. Peyré & Cuturi, "Computational Optimal Transport", 2019.
  Feydy et al., "Interpolating between Optimal Transport and MMD using
  Sinkhorn Divergences", AISTATS 2019 (debiasing, symmetric updates,
  epsilon-scaling). Thibault et al., "Overrelaxed Sinkhorn-Knopp Algorithm
  for Regularized Optimal Transport", 2021. Hageman & Young, "Applied
  Iterative Methods", 1981 (adaptive SOR). Luise et al., "Differential
  Properties of Sinkhorn Approximation", NeurIPS 2018 (implicit gradients).
  Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized
  Transport Problems", SIAM J. Sci. Comput. 2019 (the cached kernel).
  Janati, Muzellec, Peyré & Cuturi, "Entropic Optimal Transport between
  Unbalanced Gaussian Measures has a Closed Form", NeurIPS 2020. Thornton &
  Cuturi, "Rethinking Initialization of the Sinkhorn Algorithm", AISTATS
  2023.
"""

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from ott.geometry import costs, pointcloud

from densax import _parallel, _validate

__all__ = [
    "SinkhornConfig",
    "SinkhornDivergenceOutput",
    "SinkhornOutput",
    "apply_plan",
    "sinkhorn",
    "sinkhorn_divergence",
    "to_ott",
    "transport_plan",
    "wasserstein_entropic",
]

_DEFAULT_EPSILON_SCALE = 0.05  # epsilon = 0.05 x the cost scale by default
_RELAX_CLIP = 5.0  # bound on the over-relaxed part of a log-step
_MAX_RATE = 0.99  # largest convergence rate used to set omega (omega <= 1.82)
_PROBE = 3  # errors at the target epsilon before the rate is first estimated
# omega at the start of the target phase: optimal for a plain rate
# lam0 = 1 - _GAP_PER_EPSILON x epsilon / scale (the spectral gap of the Gibbs
# kernel shrinks like epsilon / diameter^2 for the squared Euclidean cost).
_GAP_PER_EPSILON = 4.0
# Fewer annealing levels than this are not run: within a factor 1 / q^2 of
# the start, plain iterations converge in a handful, and a level costs an
# iteration and a kernel squaring.
_MIN_LEVELS = 2.0
_DIVERGENCE_GUARD = 100.0  # omega falls back to 1 if the error grows this much
_DIRECT_SOLVE_MAX = 1024  # implicit gradients: direct solve up to this size
_CG_MAX_ITER = 1000
_DIFFERENTIATION = ("envelope", "implicit", "unroll")
_INITIALIZERS = ("auto", "gaussian", "zero", "warm")
_AUTO_EPSILON_SCALING = 0.5  # epsilon_scaling="auto" from the zero start
# storage="auto": dense up to this many cost entries (squared Euclidean:
# above it, one in-cache matrix product per block beats reading a stored
# matrix; other costs: the stored matrix is kept up to 64 MB in float32) ...
_AUTO_DENSE_SQEUCLIDEAN = 1 << 16
_AUTO_DENSE_OTHER = 1 << 24
# ... and blocks of about this many entries (4 MB in float32) above it, with
# at least 64 rows for the squared Euclidean cost: its block product and
# exponentials cost 1.2 ns an entry with 10 rows, 0.26 ns with 64 (m = 10^5).
_AUTO_BLOCK_ENTRIES = 1 << 20
_AUTO_MIN_ROWS_SQEUCLIDEAN = 64
# "auto" caches the kernel exp((f + g - C) / eps) up to this many entries
# (128 MB in float32); "dense" and "kernel" always do, "online" never.
_AUTO_KERNEL_ENTRIES = 1 << 25
_UNLIMITED = 1 << 62
_BUILD_ENTRIES = 1 << 19  # row blocks of a kernel build (online, sq. Euclidean)
_STRIPE_ENTRIES = 1 << 21  # column stripes of an online iteration (_one_pass)


class SinkhornOutput(NamedTuple):
    """Solution of an entropic optimal transport problem.

    The plan is ``P_ij = exp((f_i + g_j - C_ij) / epsilon)``, as in ott-jax's
    ``Geometry.transport_from_potentials``; it is never formed unless
    :func:`transport_plan` is called.
    """

    f: jax.Array  # [n] first potential (-inf where a_i = 0)
    g: jax.Array  # [m] second potential (-inf where b_j = 0)
    reg_cost: jax.Array  # [] entropic objective <P, C> + eps KL(P | a ⊗ b)
    transport_cost: jax.Array  # [] <P, C>
    converged: jax.Array  # [] bool: L1 marginal error <= tol at epsilon
    n_iter: jax.Array  # [] int32 iterations run (annealing included)
    trace: jax.Array  # [max_iter] L1 marginal error per iteration, NaN after
    epsilon: jax.Array  # [] regularisation used
    x: jax.Array | None  # [n, d] source points (None for a cost matrix)
    y: jax.Array | None  # [m, d] target points (None for a cost matrix)
    a: jax.Array  # [n] source weights, normalised to sum 1
    b: jax.Array  # [m] target weights, normalised to sum 1
    cost_fn: costs.CostFn | None  # ground cost of x, y (None for a cost matrix)
    cost_matrix: jax.Array | None  # [n, m] the cost given, or None for x, y
    config: "SinkhornConfig"  # the options, every "auto" resolved (static)


class SinkhornDivergenceOutput(NamedTuple):
    """The debiased Sinkhorn divergence and the three problems behind it."""

    divergence: jax.Array  # [] OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2
    xy: SinkhornOutput  # the cross problem between (x, a) and (y, b)
    f_xx: jax.Array  # [n] symmetric potential of OT(a, a)
    g_yy: jax.Array  # [m] symmetric potential of OT(b, b)
    converged: jax.Array  # [] bool: all three problems converged
    n_iter: jax.Array  # [3] int32 iterations of the xy, xx and yy problems


# --------------------------------------------------------------------------
# Static configuration and the geometry of a problem.


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static options of the solver (hashable: part of the jit cache key)."""

    max_iter: int
    min_iter: int
    epsilon_scaling: float | None
    relaxation: float | None  # None: adaptive
    block_size: int | None  # None: dense (the cost matrix is stored)
    differentiation: str
    axis_name: Any
    initializer: str  # "gaussian", "zero" or "warm" (see _resolve)
    # Cache the kernel (stabilised scaling, see _Kernel) of problems with at
    # most this many entries (per device); 0: never.
    kernel: int = 0

    @property
    def fixed(self) -> bool:
        """Exactly ``max_iter`` iterations: the loop is a ``scan``."""
        return self.min_iter == self.max_iter


class _Geom(NamedTuple):
    """Ground cost between the rows of ``x`` and of ``y``."""

    x: jax.Array  # [n, d] rows (translated for the squared Euclidean cost)
    y: jax.Array  # [m, d] columns
    cost: jax.Array | None  # [n, m] dense cost matrix; None in online mode
    cost_t: jax.Array | None  # [m, n] its transpose (row-major column passes)


def _is_sq_euclidean(cost_fn: costs.CostFn) -> bool:
    return type(cost_fn) is costs.SqEuclidean


def _caches_kernel(cfg: _Config, geom: "_Geom") -> bool:
    return geom.x.shape[0] * geom.y.shape[0] <= cfg.kernel


_psum = _parallel.psum
# A maximum over devices is only ever a bound or a shift here: no derivative
# (which also lets unrolled gradients run under shard_map).
_pmax = _parallel.pmax


def _gather(v: jax.Array, axis_name: Any) -> jax.Array:
    """``v`` of every device, concatenated along its first axis."""
    return v if axis_name is None else lax.all_gather(v, axis_name, tiled=True)


def _pairwise(cost_fn: costs.CostFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost matrix ``[n, m]``; one matrix product for the squared Euclidean."""
    if _is_sq_euclidean(cost_fn):
        sq_x = jnp.sum(x * x, axis=-1)
        sq_y = jnp.sum(y * y, axis=-1)
        return sq_x[:, None] + sq_y[None, :] - 2.0 * (x @ y.T)
    return cost_fn.all_pairs(x, y)


def _make_geom(cost_fn, x, y, block_size, axis_name, cost=None) -> _Geom:
    """The geometry of points ``x``, ``y``, or of a given ``[n, m]`` ``cost``.

    A cost matrix is always dense; its points are placeholders with no
    coordinates (``[n, 0]``, ``[m, 0]``), which carry the sizes.
    """
    if cost is not None:
        n, m = cost.shape
        empty = lambda k: jnp.zeros((k, 0), cost.dtype)
        return _Geom(empty(n), empty(m), cost, cost.T)
    if _is_sq_euclidean(cost_fn):
        # Translation invariance: centring the clouds keeps the expansion
        # |x|^2 + |y|^2 - 2 x.y accurate in float32.
        center = lax.stop_gradient(
            0.5 * (_pmean(jnp.mean(x, axis=0), axis_name) + jnp.mean(y, axis=0))
        )
        x, y = x - center, y - center
    if block_size is not None:
        return _Geom(x, y, None, None)
    cost = _pairwise(cost_fn, x, y)
    return _Geom(x, y, cost, cost.T)


def _pmean(v: jax.Array, axis_name: Any) -> jax.Array:
    return v if axis_name is None else lax.pmean(v, axis_name)


def _cost_rows(cost_fn, geom: _Geom, transpose: bool):
    """Row source for a pass: ``(rows, row_cost_fn)``.

    With ``transpose=False`` the rows are the points of ``x`` and a row of the
    cost is ``C[i, :]``; with ``transpose=True`` they are the points of ``y``
    and a row is ``C[:, j]``.
    """
    if transpose:
        rows, cols = geom.y, geom.x
        return rows, lambda r: _pairwise(cost_fn, cols, r[None])[:, 0]
    rows, cols = geom.x, geom.y
    return rows, lambda r: _pairwise(cost_fn, r[None], cols)[0]


def _map_rows(fn, xs, block_size: int | None, remat: bool):
    """``fn`` over the leading axis of ``xs``: vmapped, or by blocks of rows."""
    if block_size is None:
        return jax.vmap(fn)(*xs)
    if remat:
        fn = jax.checkpoint(fn)
    return lax.map(lambda args: fn(*args), xs, batch_size=block_size)


def _row_pass(
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
        return _map_rows(one, (dense, f_rows, *row_data), None, remat)
    rows, cost_row = _cost_rows(cost_fn, geom, transpose)
    return _map_rows(
        lambda r, f_r, *data: one(cost_row(r), f_r, *data),
        (rows, f_rows, *row_data),
        block_size,
        remat,
    )


# --------------------------------------------------------------------------
# Passes over the kernel.


def _augmented(geom, f, g, eps, transpose=False):
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


def _reduce(cost_fn, geom, f, g, eps, *, transpose, block_size, op):
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
    if _is_sq_euclidean(cost_fn):
        p_aug, q_aug = _augmented(geom, f, g, eps, transpose)
        return lax.map(lambda r: reduce(q_aug @ r), p_aug, batch_size=block_size)
    return _row_pass(
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


def _sums(cost_fn, geom, f, g, eps, *, transpose, block_size, axis_name):
    """Row masses ``sum_j P_ij`` (column masses with ``transpose``)."""
    out = _reduce(
        cost_fn,
        geom,
        f,
        g,
        eps,
        transpose=transpose,
        block_size=block_size,
        op="sumexp",
    )
    return _psum(out, axis_name) if transpose else out


def _stripe_width(block_size: int, rows: int) -> int:
    """Columns per stripe of :func:`_one_pass`.

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


def _one_pass(cost_fn, geom, f, g, eps, b, log_b, omega, *, block_size, axis_name):
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

    Returns ``(step_g, col_err, r)``: the relaxed step of ``g`` (in units of
    ``eps``), the L1 error of the column masses after it, and the row masses
    ``[n]`` at ``g + eps step_g``.
    """
    tiny = jnp.finfo(f.dtype).tiny
    sigma = -0.5 * math.log(float(tiny))
    if _is_sq_euclidean(cost_fn):
        xs, q_aug = _augmented(geom, f, g, eps, transpose=True)
        exponent = lambda rows: rows @ q_aug.T
    else:
        xs = (geom.y, g)
        exponent = lambda rows: (
            (rows[1][:, None] + f[None, :] - _pairwise(cost_fn, geom.x, rows[0]).T)
            / eps
        )

    def stripe(r, args):
        rows, b_j, log_b_j = args
        e = jnp.exp(exponent(rows) + sigma)  # [B, n]: exp(sigma) P_ij, transposed
        t = _psum(jnp.sum(e, axis=1), axis_name)
        # log max(t exp(-sigma), tiny), as in the two-pass update.
        log_t = jnp.log(jnp.maximum(t, tiny * math.exp(sigma))) - sigma
        step = _relax(log_b_j - log_t, omega)
        scale = jnp.exp(step - sigma)
        return r + scale @ e, (step, jnp.abs(t * scale - b_j))

    width = _stripe_width(block_size, geom.x.shape[0])
    r, (step, col_err) = _scan_blocks(stripe, jnp.zeros_like(f), (xs, b, log_b), width)
    return step, jnp.sum(col_err), r


def _hard_transform(cost_fn, geom, f, *, block_size, axis_name):
    """``g_j = min_i (C_ij - f_i)``.

    With it every exponent ``f_i + g_j - C_ij`` is ``<= 0`` and each column's
    largest is 0, whatever ``epsilon``: a safe start for the one-pass updates.
    """
    zeros = jnp.zeros(geom.y.shape[0], f.dtype)
    out = _reduce(
        cost_fn, geom, f, zeros, 1.0, transpose=True, block_size=block_size, op="max"
    )
    return -_pmax(out, axis_name)


def _ball_transform(geom, a, f, axis_name):
    """A lower bound of ``min_i (C_ij - f_i)``, squared Euclidean cost.

    With ``c`` the ``a``-weighted mean of ``x`` and ``R = max_i |x_i - c|``,
    ``|x_i - y_j| >= |y_j - c| - R``, so ``g_j = max(|y_j - c| - R, 0)^2 -
    max_i f_i`` keeps every exponent ``f_i + g_j - C_ij <= 0`` (up to
    rounding), in ``O((n + m) d)`` instead of :func:`_hard_transform`'s pass
    over the ``n m`` costs. It starts loops that cache the kernel: a bound
    far below the minimum (clouds far apart relative to ``epsilon``) only
    makes the first kernel stale, never overflows.
    """
    c = _psum(a @ geom.x, axis_name)
    radius = jnp.sqrt(jnp.max(jnp.sum((geom.x - c) ** 2, 1)))
    radius, f_max = _pmax((radius, jnp.max(f)), axis_name)
    gap = jnp.maximum(jnp.sqrt(jnp.sum((geom.y - c) ** 2, 1)) - radius, 0.0)
    return gap * gap - f_max


def _gaussian_start(geom, mean_x, mean_y, covs, eps):
    """Potentials of the entropic problem between Gaussian fits of the clouds.

    For ``N(mu, S)`` and ``N(nu, T)`` and the squared Euclidean cost the
    potentials are quadratics in closed form (Janati et al. 2020): with
    ``s = eps / 2``, ``K = S^(1/2) T S^(1/2)``, ``D = (4 K + s^2 I)^(1/2)``
    and ``Q = S^(-1/2) (D - s I) S^(-1/2) / 2``,

        f(x) = u^T (I - Q) u + 2 u . (mu - nu),   u = x - mu,

    up to a constant (``(D - s I) / 2 = 2 K (D + s I)^(-1)`` is evaluated in
    ``K``'s eigenbasis, without cancellation). Returns ``(f0 [n], g0 [m])``:
    ``f0`` at ``x``, and ``g0`` its exact c-transform over all of ``R^d``,

        g0(y) = |y - mu|^2 - (y - nu)^T Q^(-1) (y - nu),

    a lower bound of ``min_i (C_ij - f0_i)``: every exponent of the first
    kernel is ``<= 0``. Both covariances get a ridge of ``sqrt(u)`` (``u``
    the unit roundoff) times their mean variance plus ``s``, so that one
    point or a flat cloud still gives a finite, positive definite ``Q``.

    Args:
      geom: the problem's points (``x`` local rows, ``y`` columns).
      mean_x: ``[d]`` mean of ``x`` under ``a`` (all devices).
      mean_y: ``[d]`` mean of ``y`` under ``b``.
      covs: ``([d, d], [d, d])`` covariances of ``x`` and ``y``.
      eps: ``[]`` the epsilon of the first iteration.
    """
    dtype = geom.x.dtype
    if jnp.finfo(dtype).bits < 32:
        # Half precision: no eigh kernel, and too few digits; float32 here.
        up = lambda v: v.astype(jnp.float32)
        geom = geom._replace(x=up(geom.x), y=up(geom.y))
        f0, g0 = _gaussian_start(
            geom, up(mean_x), up(mean_y), jax.tree.map(up, covs), up(eps)
        )
        return f0.astype(dtype), g0.astype(dtype)
    cov_x, cov_y = covs
    dim = cov_x.shape[0]
    s = 0.5 * eps
    ridge = jnp.sqrt(jnp.finfo(cov_x.dtype).eps) * (
        (jnp.trace(cov_x) + jnp.trace(cov_y)) / (2 * dim) + s
    )
    eye = jnp.eye(dim, dtype=cov_x.dtype)
    w_s, v_s = jnp.linalg.eigh(cov_x + ridge * eye)
    w_s = jnp.maximum(w_s, ridge)
    root = (v_s * jnp.sqrt(w_s)) @ v_s.T
    inv_root = (v_s / jnp.sqrt(w_s)) @ v_s.T
    w_k, v_k = jnp.linalg.eigh(root @ (cov_y + ridge * eye) @ root)
    w_k = jnp.maximum(w_k, ridge * ridge)
    h = 2.0 * w_k / (jnp.sqrt(4.0 * w_k + s * s) + s)
    q = inv_root @ ((v_k * h) @ v_k.T) @ inv_root
    q_inv = root @ ((v_k / h) @ v_k.T) @ root
    u = geom.x - mean_x
    f0 = jnp.sum(u * (u - u @ q), 1) + 2.0 * (u @ (mean_x - mean_y))
    w = geom.y - mean_y
    g0 = jnp.sum((geom.y - mean_x) ** 2, 1) - jnp.sum(w * (w @ q_inv), 1)
    return f0, g0


def _start_potentials(cfg, cost_fn, geom, a, b, eps0, covs, symmetric, init=None):
    """``(f0, g0)`` that start a loop, with ``f0_i + g0_j <= C_ij``.

    ``f0 = eps0 log a``, plus the Gaussian potential (:func:`_gaussian_start`)
    when ``cfg.initializer == "gaussian"``; with ``"warm"``, ``init[0]`` (the
    user's ``f_init``, ``-inf`` where ``a_i = 0``), and ``g0`` at most
    ``init[1]`` when that is given. ``g0`` is a lower bound of
    ``min_i (C_ij - f0_i)`` in ``O((n + m) d^2)`` where the loop caches the
    kernel online (:func:`_bounded_start`), else that minimum, by one pass.
    For a symmetric problem (``geom.y`` all the points, ``b`` unused) the
    bound ``h_i <= min_j (C_ij - f0_j)`` is returned at the rows.
    """
    axis_name = cfg.axis_name
    if cfg.initializer == "warm":
        f_init, g_init = init
        f0 = jnp.where(a > 0, f_init, -jnp.inf)
        cfg = dataclasses.replace(cfg, initializer="zero")
        f0, g0 = _start_potentials(cfg, cost_fn, geom, a, b, eps0, covs, False, f0)
        return f0, g0 if g_init is None else jnp.minimum(g0, g_init)
    f0 = eps0 * jnp.log(a) if init is None else init
    bounded = _bounded_start(cfg, cost_fn, geom)
    if cfg.initializer == "gaussian":
        top = _pmax(jnp.max(f0), axis_name)
        mean_x = _psum(a @ geom.x, axis_name)
        mean_y = mean_x if symmetric else b @ geom.y
        cols = geom._replace(y=geom.x) if symmetric else geom
        f_q, g_q = lax.stop_gradient(
            _gaussian_start(cols, mean_x, mean_y, covs, lax.stop_gradient(eps0))
        )
        f0 = f0 + f_q
        if bounded:
            return f0, g_q - top
    if bounded:
        if symmetric:
            # C >= 0 and C_ii = 0: -max_j f0_j bounds the minimum from below,
            # and equals it for uniform weights.
            return f0, jnp.full_like(f0, -_pmax(jnp.max(f0), axis_name))
        return f0, _ball_transform(geom, a, f0, axis_name)
    if symmetric:
        g0 = -_reduce(
            cost_fn,
            geom,
            jnp.zeros_like(f0),
            _gather(f0, axis_name),
            1.0,
            transpose=False,
            block_size=cfg.block_size,
            op="max",
        )
        return f0, g0
    kw = dict(block_size=cfg.block_size, axis_name=axis_name)
    return f0, _hard_transform(cost_fn, geom, f0, **kw)


def _bounded_start(cfg, cost_fn, geom) -> bool:
    """Whether a loop starts from bounds instead of a pass over the costs.

    Online with a cached kernel and the squared Euclidean cost: the pass
    would cost about as much as the kernel's build (see
    :func:`_ball_transform`).
    """
    return _caches_kernel(cfg, geom) and geom.cost is None and _is_sq_euclidean(cost_fn)


def _finite_part(p):
    """``(p with -inf replaced by 0, mask of finite entries)``: zero weights."""
    ok = p > -jnp.inf
    return jnp.where(ok, p, 0.0), ok


class _Kernel(NamedTuple):
    """A cached kernel ``K_ij = exp((f0_i + g0_j - C_ij) / eps)``.

    Stabilised scaling (Schmitzer 2019): at potentials ``(f, g)`` near
    ``(f0, g0)`` the plan is ``u_i K_ij v_j`` with scalings
    ``u = exp((f - f0) / eps)``, ``v = exp((g - g0) / eps)``, so a row or
    column mass is one matrix-vector product instead of ``n m``
    exponentials. The kernel is rebuilt ("absorbed") when ``epsilon``
    changes or a scaling leaves ``[tiny^(1/4), tiny^(-1/4)]`` (``tiny`` the
    dtype's smallest normal), so that entries flushed to zero at the build
    never matter.
    """

    k: jax.Array  # [n, m]
    f0: jax.Array  # [n]
    g0: jax.Array  # [m]
    eps: jax.Array  # []


def _kernel(cost_fn, geom, f, g, eps) -> _Kernel:
    """Builds the kernel at ``(f, g, eps)`` (zero rows/columns at -inf)."""
    if geom.cost is not None:
        v, ok = _dense_exponent(f, g, geom.cost, eps)
        k = jnp.where(ok, jnp.exp(v), 0.0)
    else:
        p_aug, q_aug, _, _, on_f, on_g = _safe_augmented(geom, f, g, eps)
        n, m = p_aug.shape[0], q_aug.shape[0]
        block = max(
            (b for b in range(1, n + 1) if n % b == 0 and b * m <= _BUILD_ENTRIES),
            default=1,
        )
        if block >= 8:
            # Blocks that divide n: each product stays in cache and the
            # exponentials are written straight into the one [n, m] buffer.
            row = lambda p, on: jnp.exp(p @ q_aug.T) * on * on_g
            k = lax.map(lambda args: row(*args), (p_aug, on_f), batch_size=block)
        else:
            k = jnp.exp(p_aug @ q_aug.T) * on_f[:, None] * on_g[None, :]
    return _Kernel(k, f, g, eps)


def _scaling(p, p0, eps):
    """``exp((p - p0) / eps)``; 0 where the weight is zero (``p = -inf``)."""
    p0_safe, ok = _finite_part(p0)
    return jnp.where(ok, jnp.exp((p - p0_safe) / eps), 0.0)


def _next_kernel(cfg: _Config, kern: _Kernel, f, g, eps, rebuild) -> _Kernel:
    """The kernel at the next annealing level ``eps = q kern.eps``.

    With ``1 / q = p`` an integer, ``exp(Z / eps) = exp(Z / kern.eps)^p``: the
    current scalings are absorbed and the kernel raised to the power ``p``,
    with no exponential. (The relative rounding error of an entry grows like
    ``|Z| / eps``, as it would if computed directly.) Otherwise
    ``rebuild()``, a fresh kernel.
    """
    p = round(1.0 / cfg.epsilon_scaling)
    if abs(p * cfg.epsilon_scaling - 1.0) > 1e-12:
        return rebuild()
    u = _scaling(f, kern.f0, kern.eps)
    v = _scaling(g, kern.g0, kern.eps)
    return _Kernel(lax.integer_pow(kern.k * u[:, None] * v[None, :], p), f, g, eps)


def _kernel_plan_cost(geom, kern: _Kernel, f, g, axis_name):
    """``<P, C>`` at ``(f, g)`` from a kernel at the target epsilon.

    Dense: one fused pass over ``K`` and ``C``. Squared Euclidean online:
    ``sum_ij P_ij (|x_i|^2 + |y_j|^2 - 2 x_i.y_j)``, one product of ``K``
    with ``[m, d + 2]`` columns; no exponential either way.
    """
    u = _scaling(f, kern.f0, kern.eps)
    v = _scaling(g, kern.g0, kern.eps)
    if geom.cost is not None:
        rows = jnp.sum(kern.k * geom.cost * v[None, :], axis=1)
        return _psum(u @ rows, axis_name)
    x, y = geom.x, geom.y
    sq_y = jnp.sum(y * y, 1)
    cols = jnp.concatenate([y, sq_y[:, None], jnp.ones_like(sq_y)[:, None]], 1)
    ky = kern.k @ (v[:, None] * cols)  # [n, d + 2]
    d = x.shape[1]
    per_row = (
        jnp.sum(x * x, 1) * ky[:, d + 1] + ky[:, d] - 2.0 * jnp.sum(x * ky[:, :d], 1)
    )
    return _psum(u @ per_row, axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _valued(fn, value, args):
    """``fn(*args)``, whose value is known already: ``value``.

    Its derivatives are ``fn``'s; ``fn`` runs only when differentiated.
    """
    del fn, args
    return value


@_valued.defjvp
def _valued_jvp(fn, primals, tangents):
    value, args = primals
    _, d_args = tangents
    return value, jax.jvp(lambda a: fn(*a), (args,), (d_args,))[1]


def _stale(kern: _Kernel, f, g, eps, axis_name):
    """Whether the kernel must be rebuilt before a pass at ``(f, g, eps)``.

    The same on every device when ``f`` is sharded: the loops that test it
    contain collectives.
    """
    bound = -0.25 * eps * jnp.log(jnp.finfo(f.dtype).tiny)

    def drift(p, p0):
        p0_safe, ok = _finite_part(p0)
        return jnp.max(jnp.where(ok & (p > -jnp.inf), jnp.abs(p - p0_safe), 0.0))

    drift_f = _pmax(drift(f, kern.f0), axis_name)
    return (eps != kern.eps) | (drift_f > bound) | (drift(g, kern.g0) > bound)


def _dense_exponent(f, g, cost, eps):
    """``v = (f_i + g_j - C_ij) / eps`` and the mask of finite potentials.

    -inf potentials (zero weights) are replaced by 0 in ``v`` and masked, so
    that gradients never meet ``0 * inf``.
    """
    (f_safe, ok_f), (g_safe, ok_g) = _finite_part(f), _finite_part(g)
    return (f_safe[:, None] + g_safe[None, :] - cost) / eps, ok_f[:, None] & ok_g


def _safe_augmented(geom, f, g, eps):
    """:func:`_augmented` for differentiable passes: -inf potentials set to 0.

    Returns ``(P, Q, f_safe, g_safe, on_f, on_g)``: the potentials with -inf
    replaced by 0, and ``on_f, on_g`` 1 where the potential is finite and 0
    where it is -inf (a zero weight). Multiplying by them after the
    exponential keeps gradients away from ``0 * inf``.
    """
    (f_safe, ok_f), (g_safe, ok_g) = _finite_part(f), _finite_part(g)
    p_aug, q_aug = _augmented(geom, f_safe, g_safe, eps)
    return p_aug, q_aug, f_safe, g_safe, ok_f.astype(f.dtype), ok_g.astype(g.dtype)


def _pair_sum(cost_fn, geom, f, g, eps, wr, wc, *, block_size, axis_name):
    """``sum_ij P_ij (wr_i + wc_j)``, differentiable, memory O(block)."""
    if geom.cost is not None:
        v, ok = _dense_exponent(f, g, geom.cost, eps)
        p = jnp.where(ok, jnp.exp(v), 0.0)
        return _psum(jnp.sum(p * (wr[:, None] + wc[None, :])), axis_name)
    if _is_sq_euclidean(cost_fn):
        rows, q_aug, _, _, on_f, on_g = _safe_augmented(geom, f, g, eps)
        cols = jnp.stack([on_g, on_g * wc], axis=1)

        def sq_row(p_aug, on_i, wr_i):
            s = jnp.exp(q_aug @ p_aug) @ cols
            return on_i * (wr_i * s[0] + s[1])

        out = _map_rows(sq_row, (rows, on_f, wr), block_size, remat=True)
        return _psum(jnp.sum(out), axis_name)

    def row(c, v, ok, wr_i):
        p = jnp.where(ok, jnp.exp(v), 0.0)
        return wr_i * jnp.sum(p) + p @ wc

    out = _row_pass(
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
    return _psum(jnp.sum(out), axis_name)


def _plan_cost(cost_fn, geom, f, g, eps, *, block_size, axis_name):
    """``<P, C>``, differentiable."""
    if geom.cost is not None:
        v, ok = _dense_exponent(f, g, geom.cost, eps)
        return _psum(jnp.sum(jnp.where(ok, jnp.exp(v) * geom.cost, 0.0)), axis_name)
    if _is_sq_euclidean(cost_fn):
        rows, q_aug, f_safe, g_safe, on_f, on_g = _safe_augmented(geom, f, g, eps)

        def sq_row(p_aug, on_i, f_i):
            v = q_aug @ p_aug
            # C_ij = f_i + g_j - eps v_ij, no second matrix product.
            return on_i * ((jnp.exp(v) * (f_i + g_safe - eps * v)) @ on_g)

        out = _map_rows(sq_row, (rows, on_f, f_safe), block_size, remat=True)
        return _psum(jnp.sum(out), axis_name)

    def row(c, v, ok):
        return jnp.sum(jnp.where(ok, jnp.exp(v) * c, 0.0))

    out = _row_pass(
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
    return _psum(jnp.sum(out), axis_name)


def _apply(cost_fn, geom, f, g, eps, vec, *, transpose, block_size, axis_name):
    """``P @ vec`` (``vec: [m, k]``) or ``P^T @ vec`` (``vec: [n, k]``)."""

    def row(c, v, ok):
        return jnp.where(ok, jnp.exp(v), 0.0) @ vec

    if transpose:
        # Column j of P against all rows: sum_i P_ij vec_i.
        out = _row_pass(
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
        return _psum(out, axis_name)
    return _row_pass(
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
    mean = _psum(w @ v, axis_name)
    u = v - mean
    sq = jnp.sum(u * u, 1)
    cov = _psum((u * w[:, None]).T @ u, axis_name)
    trace = _psum(w @ sq, axis_name)
    var_sq = _psum(w @ (sq - trace) ** 2, axis_name)
    return mean, cov, trace, var_sq, _psum((w * sq) @ u, axis_name)


def _cost_scale(cost_fn, geom, a, b, *, block_size, axis_name):
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
    if _is_sq_euclidean(cost_fn):
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
        rows, cost_row = _cost_rows(cost_fn, geom, False)
        out = lax.map(
            lambda args: row(cost_row(args[0]), args[1]),
            (rows, a),
            batch_size=block_size,
        )
    mean_abs, mean, second = _psum(jnp.sum(out, 0), axis_name)
    return mean_abs, jnp.sqrt(jnp.maximum(second - mean * mean, 0.0)), None


# --------------------------------------------------------------------------
# The fixed-point loops.


class _LoopState(NamedTuple):
    f: jax.Array  # [n] next f (after the row update)
    g: jax.Array  # [m] current g
    f_out: jax.Array  # [n] the f paired with g: (f_out, g) has error `err`
    err: jax.Array  # [] L1 marginal error of (f_out, g)
    k: jax.Array  # [] int32 iterations done
    level: jax.Array  # [] int32 annealing levels left (see _level_eps)
    eps: jax.Array  # [] epsilon of the last iteration
    omega: jax.Array  # [] relaxation
    k_target: jax.Array  # [] int32 iterations run at the target epsilon
    history: jax.Array  # [3] last errors at the target epsilon (newest first)
    best: jax.Array  # [] smallest error seen at the target epsilon
    trace: jax.Array  # [max_iter] L1 error per iteration, NaN after
    mass: jax.Array  # [] sum_ij P_ij at (f_out, g)


def _relax(step, omega):
    """Over-relaxed log-step.

    The extra part is clipped so that a wild early step cannot overflow the
    next pass; near convergence steps are small and the clip is inactive.
    """
    return step + (omega - 1.0) * jnp.clip(step, -_RELAX_CLIP, _RELAX_CLIP)


def _omega_start(eps, sched: "_Schedule", levels):
    """Relaxation that starts the target phase, from ``epsilon / scale``.

    ``sched.scale`` is the cost scale. Without annealing levels (none asked
    for, or ``epsilon`` near the start, where plain iterations converge
    fast) the start is plain (``omega = 1``).
    """
    gap = jnp.minimum(_GAP_PER_EPSILON * eps / sched.scale, 1.0)
    omega = jnp.where(levels > 0, 2.0 / (1.0 + jnp.sqrt(gap)), 1.0)
    return lax.stop_gradient(omega)


def _adapt_omega(cfg: _Config, s: _LoopState, err, at_target, omega0):
    """Adaptive over-relaxation (Hageman & Young's adaptive SOR).

    The first iteration at the target epsilon is plain; ``omega0`` (see
    :func:`_omega_start`) follows. From the observed rate ``mu`` under
    relaxation ``omega``, the plain Sinkhorn rate is
    ``lam = (mu + omega - 1)^2 / (mu omega^2)``, and the optimal relaxation
    ``2 / (1 + sqrt(1 - lam))``. ``omega`` only grows, capped by ``_MAX_RATE``,
    and falls back to 1 if the error blows up.
    """
    history = jnp.where(
        at_target,
        jnp.concatenate([err[None], s.history[:2]]),
        jnp.full(3, jnp.inf, err.dtype),
    )
    k_target = s.k_target + at_target.astype(jnp.int32)
    best = jnp.where(at_target, jnp.minimum(s.best, err), jnp.inf)
    if cfg.relaxation is not None:
        return jnp.asarray(cfg.relaxation, err.dtype), k_target, history, best
    omega = s.omega
    mu = jnp.sqrt(history[0] / history[2])
    lam = jnp.clip((mu + omega - 1.0) ** 2 / (mu * omega**2), 0.0, _MAX_RATE)
    omega_opt = 2.0 / (1.0 + jnp.sqrt(1.0 - lam))
    update = at_target & (k_target >= _PROBE) & (mu < 1.0) & (mu > omega - 1.0)
    omega = jnp.where(update, jnp.maximum(omega, omega_opt), omega)
    omega = jnp.where(at_target & (k_target == 1), omega0, omega)
    blown_up = at_target & (err > _DIVERGENCE_GUARD * s.best)
    omega = jnp.where(blown_up, 1.0, omega)
    return lax.stop_gradient(omega), k_target, history, best


def _run_loop(
    cfg: _Config, body, init: _LoopState, threshold, eps, build=None, gather=None
):
    """Runs ``body`` until convergence, or for exactly ``max_iter``.

    Returns the final state and the last kernel (``None`` without ``build``).
    ``while_loop`` by default; a ``scan`` for a fixed number of iterations
    (``min_iter == max_iter``), or for unrolled gradients (then the state
    freezes once converged).

    With a kernel ``build`` (see :class:`_Kernel`) every loop is a
    ``while_loop``: the annealing one carries the kernel from level to level
    (:func:`_next_kernel`); at the target epsilon, an inner loop iterates
    with the kernel as a loop invariant until it is stale, and an outer one
    rebuilds it. ``gather`` maps the state's ``g`` to the kernel's columns
    (symmetric problems with ``x`` sharded).
    """

    def active(s):
        if cfg.fixed:
            return s.k < cfg.max_iter
        going = (s.k < cfg.min_iter) | (s.eps > eps) | (s.err > threshold)
        return (s.k < cfg.max_iter) & going

    if build is not None:
        cols = (lambda g: g) if gather is None else gather
        e_next = lambda s: _level_eps(cfg, eps, s.level)
        kernel = lambda s: build(s.f, cols(s.g), e_next(s))

        def anneal(c):
            s, kern = c
            s = body(s, kern)
            rebuild = lambda: kernel(s)
            return s, _next_kernel(cfg, kern, s.f, cols(s.g), e_next(s), rebuild)

        def iterate(s, kern):
            fresh = lambda t: (
                active(t) & ~_stale(kern, t.f, cols(t.g), e_next(t), cfg.axis_name)
            )
            return lax.while_loop(fresh, lambda t: body(t, kern), s)

        def absorb(c):
            # At least one iteration per build, whatever _stale says (a NaN
            # epsilon makes every kernel stale).
            kern = kernel(c[0])
            return iterate(body(c[0], kern), kern), kern

        s, kern = init, kernel(init)
        if cfg.epsilon_scaling is not None:
            annealing = lambda c: active(c[0]) & (c[0].level > 0)
            s, kern = lax.while_loop(annealing, anneal, (s, kern))
        s = iterate(s, kern)
        return lax.while_loop(lambda c: active(c[0]), absorb, (s, kern))
    if cfg.differentiation != "unroll" and not cfg.fixed:
        return lax.while_loop(active, body, init), None

    step = jax.checkpoint(body) if cfg.differentiation == "unroll" else body

    def scan_body(s, _):
        if cfg.fixed:
            return step(s), None
        new = step(s)
        keep = active(s)
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, s), None

    out, _ = lax.scan(scan_body, init, None, length=cfg.max_iter)
    return out, None


def _levels(cfg: _Config, eps, sched: "_Schedule"):
    """Number of annealing levels: the first iteration runs near ``sched.start``.

    With ``q = epsilon_scaling``, the schedule is ``eps / q^L, ...,
    eps / q, eps``: consecutive levels differ by exactly ``q``, so a cached
    kernel passes from one to the next by an integer power when ``1 / q`` is
    an integer (see :func:`_next_kernel`). None below ``_MIN_LEVELS``.
    """
    if cfg.epsilon_scaling is None:
        return jnp.zeros((), jnp.int32)
    ratio = jnp.log(sched.start / eps) / -math.log(cfg.epsilon_scaling)
    ok = jnp.isfinite(ratio) & (ratio >= _MIN_LEVELS)
    levels = jnp.minimum(jnp.where(ok, ratio, 0.0), cfg.max_iter)
    return jnp.round(levels).astype(jnp.int32)


def _level_eps(cfg: _Config, eps, level):
    """``eps / q^level``: the epsilon of an iteration ``level`` levels above."""
    if cfg.epsilon_scaling is None:
        return eps
    return eps * jnp.power(jnp.asarray(1.0 / cfg.epsilon_scaling, eps.dtype), level)


def _init_state(cfg, f, g, eps, levels):
    dtype = f.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    return _LoopState(
        f=f,
        g=g,
        f_out=f,
        err=inf,
        k=jnp.asarray(0, jnp.int32),
        level=levels,
        eps=_level_eps(cfg, eps, levels),
        omega=jnp.asarray(1.0, dtype),
        k_target=jnp.asarray(0, jnp.int32),
        history=jnp.full(3, jnp.inf, dtype),
        best=inf,
        trace=jnp.full(cfg.max_iter, jnp.nan, dtype),
        mass=inf,
    )


def _next_level(cfg: _Config, s: _LoopState, eps):
    """``(epsilon, at_target, level after)`` of the iteration from ``s``."""
    return _level_eps(cfg, eps, s.level), s.level == 0, jnp.maximum(s.level - 1, 0)


def _solve_xy(cfg: _Config, cost_fn, geom, a, b, eps, sched, threshold):
    """Sinkhorn iterations for the cross problem; returns the final state."""
    tiny = jnp.finfo(a.dtype).tiny
    log_a, log_b = jnp.log(a), jnp.log(b)
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    levels = _levels(cfg, eps, sched)
    eps0 = _level_eps(cfg, eps, levels)
    f0, g0 = _start_potentials(
        cfg, cost_fn, geom, a, b, eps0, sched.covs, False, sched.init
    )
    omega0 = _omega_start(eps, sched, levels).astype(a.dtype)

    def body(s: _LoopState, kern: _Kernel | None = None) -> _LoopState:
        e, at_target, level = _next_level(cfg, s, eps)
        if kern is None and geom.cost is None:
            step_g, col_err, r = _one_pass(
                cost_fn, geom, s.f, s.g, e, b, log_b, s.omega, **kw
            )
            g = s.g + e * step_g
        else:
            if kern is not None:
                u = _scaling(s.f, kern.f0, e)
                t = _psum(u @ kern.k, cfg.axis_name) * _scaling(s.g, kern.g0, e)
            else:
                t = _sums(cost_fn, geom, s.f, s.g, e, transpose=True, **kw)
            step_g = _relax(log_b - jnp.log(jnp.maximum(t, tiny)), s.omega)
            g = s.g + e * step_g
            col_err = jnp.sum(jnp.abs(t * jnp.exp(step_g) - b))
            if kern is not None:
                r = u * (kern.k @ _scaling(g, kern.g0, e))
            else:
                r = _sums(cost_fn, geom, s.f, g, e, transpose=False, **kw)
        err = _psum(jnp.sum(jnp.abs(r - a)), cfg.axis_name) + col_err
        f = s.f + e * _relax(log_a - jnp.log(jnp.maximum(r, tiny)), s.omega)
        omega, k_target, history, best = _adapt_omega(cfg, s, err, at_target, omega0)
        return _LoopState(
            f=f,
            g=g,
            f_out=s.f,
            err=err,
            k=s.k + 1,
            level=level,
            eps=e,
            omega=omega,
            k_target=k_target,
            history=history,
            best=best,
            trace=s.trace.at[s.k].set(err),
            mass=_psum(jnp.sum(r), cfg.axis_name),
        )

    init = _init_state(cfg, f0, g0, eps, levels)
    build = functools.partial(_kernel, cost_fn, geom)
    build = build if _caches_kernel(cfg, geom) else None
    return _run_loop(cfg, body, init, threshold, eps, build)


def _solve_sym(cfg: _Config, cost_fn, geom, a, eps, sched, threshold):
    """Symmetric Sinkhorn for OT(a, a): ``f <- (f + T(f)) / 2``.

    With ``x`` sharded, ``geom`` pairs the local points (rows) with all points
    (columns), and the column potentials are gathered at each iteration.
    """
    tiny = jnp.finfo(a.dtype).tiny
    log_a = jnp.log(a)
    axis_name = cfg.axis_name
    gather = functools.partial(_gather, axis_name=axis_name)
    kw = dict(block_size=cfg.block_size, axis_name=None)
    levels = _levels(cfg, eps, sched)
    eps0 = _level_eps(cfg, eps, levels)
    # h_i <= min_j (C_ij - f0_j): (f0 + h) / 2 keeps every exponent <= 0.
    f0, h = _start_potentials(cfg, cost_fn, geom, a, a, eps0, sched.covs, True)
    f_init = 0.5 * (f0 + h)

    def body(s: _LoopState, kern: _Kernel | None = None) -> _LoopState:
        e, at_target, level = _next_level(cfg, s, eps)
        if kern is None:
            r = _sums(cost_fn, geom, s.f, gather(s.f), e, transpose=False, **kw)
        else:
            v = _scaling(gather(s.f), kern.g0, e)
            r = _scaling(s.f, kern.f0, e) * (kern.k @ v)
        err = 2.0 * _psum(jnp.sum(jnp.abs(r - a)), axis_name)
        f = s.f + 0.5 * e * (log_a - jnp.log(jnp.maximum(r, tiny)))
        _, k_target, history, best = _adapt_omega(
            dataclasses.replace(cfg, relaxation=1.0), s, err, at_target, 1.0
        )
        return s._replace(
            f=f,
            g=f,
            f_out=s.f,
            err=err,
            k=s.k + 1,
            level=level,
            eps=e,
            k_target=k_target,
            history=history,
            best=best,
            trace=s.trace.at[s.k].set(err),
            mass=_psum(jnp.sum(r), axis_name),
        )

    init = _init_state(cfg, f_init, f_init, eps, levels)
    build = None
    if _caches_kernel(cfg, geom):
        # Columns are all points: _run_loop hands the kernel (and its
        # staleness test) gather(g).
        build = functools.partial(_kernel, cost_fn, geom)
    return _run_loop(cfg, body, init, threshold, eps, build, gather)


# --------------------------------------------------------------------------
# Differentiation: envelope (raise on potentials), implicit, unrolled.


class _Problem(NamedTuple):
    """Differentiable data of a problem (a pytree for ``custom_vjp``)."""

    geom: _Geom
    cost_fn: costs.CostFn
    a: jax.Array  # [n]
    b: jax.Array  # [m]
    eps: jax.Array  # []


class _Aux(NamedTuple):
    """What a solve reports besides the potentials (no gradient)."""

    trace: jax.Array  # [max_iter]
    n_iter: jax.Array  # [] int32
    converged: jax.Array  # [] bool
    mass: jax.Array  # [] sum_ij P_ij at the returned potentials
    transport_cost: jax.Array | None  # [] <P, C> from the cached kernel


def _mass(cfg, cost_fn, geom, f, g, eps):
    """``sum_ij P_ij`` at ``(f, g, eps)`` by a pass, differentiable."""
    ones, zeros = jnp.ones_like(f), jnp.zeros_like(g)
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    return _pair_sum(cost_fn, geom, f, g, eps, ones, zeros, **kw)


def _solve_and_state(cfg, prob: _Problem, sched, threshold, symmetric):
    """Solves; returns the final loop state and its :class:`_Aux`.

    The loop's last pass gives the plan's mass, and a cached kernel its
    transport cost, when they are at the target epsilon; a solve stopped
    while annealing pays a pass for each instead.
    """
    geom, cost_fn, a, b, eps = prob
    if symmetric:
        s, kern = _solve_sym(cfg, cost_fn, geom, a, eps, sched, threshold)
        g = _gather(s.f_out, cfg.axis_name)  # the columns are all points
    else:
        s, kern = _solve_xy(cfg, cost_fn, geom, a, b, eps, sched, threshold)
        g = s.g
    mass = lax.cond(
        s.eps == eps,
        lambda: s.mass,
        lambda: _mass(cfg, cost_fn, geom, s.f_out, g, eps),
    )
    transport_cost = None
    if kern is not None and not symmetric:
        kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
        transport_cost = lax.cond(
            kern.eps == eps,
            lambda: _kernel_plan_cost(geom, kern, s.f_out, s.g, cfg.axis_name),
            lambda: _plan_cost(cost_fn, geom, s.f_out, s.g, eps, **kw),
        )
    converged = (s.err <= threshold) & (s.eps <= eps) & jnp.isfinite(s.err)
    return s, _Aux(s.trace, s.k, converged, mass, transport_cost)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _fixed_point(cfg, prob, sched, threshold, symmetric):
    s, aux = _solve_and_state(cfg, prob, sched, threshold, symmetric)
    return (s.f_out, s.g), aux


def _unwrap(tree):
    is_primal = lambda p: isinstance(p, CustomVJPPrimal)
    return jax.tree.map(
        lambda p: p.value if is_primal(p) else p, tree, is_leaf=is_primal
    )


def _fixed_point_fwd(cfg, prob, sched, threshold, symmetric):
    prob, sched, threshold = _unwrap((prob, sched, threshold))
    out = _fixed_point(cfg, prob, sched, threshold, symmetric)
    return out, (prob, sched, threshold, out[0])


def _fixed_point_bwd(cfg, symmetric, res, ct):
    prob, sched, threshold, (f, g) = res
    (ct_f, ct_g), _ = ct
    nothing = (
        jax.tree.map(jnp.zeros_like, prob),
        jax.tree.map(jnp.zeros_like, sched),
        jnp.zeros_like(threshold),
    )
    if isinstance(ct_f, SymbolicZero) and isinstance(ct_g, SymbolicZero):
        return nothing
    if cfg.differentiation == "envelope":
        raise ValueError(
            "sinkhorn(..., differentiation='envelope') differentiates reg_cost "
            "only (envelope theorem); the potentials f, g and what depends on "
            "them (transport_cost, transport_plan, apply_plan) need "
            "differentiation='implicit' or 'unroll'"
        )
    if symmetric:
        grads = _implicit_vjp_sym(
            cfg, prob, f, _instantiate(ct_f, f) + _instantiate(ct_g, g)
        )
    else:
        grads = _implicit_vjp_xy(
            cfg, prob, f, g, _instantiate(ct_f, f), _instantiate(ct_g, g)
        )
    return (grads, *nothing[1:])


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd, symbolic_zeros=True)


def _potentials(cfg, prob, sched, threshold, symmetric):
    """Solves; returns ``(f, g)`` and an :class:`_Aux`."""
    if cfg.differentiation == "unroll":
        s, aux = _solve_and_state(cfg, prob, sched, threshold, symmetric)
        return (s.f_out, s.g), jax.tree.map(lax.stop_gradient, aux)
    (f, g), aux = _fixed_point(cfg, prob, sched, threshold, symmetric)
    return (f, g), jax.tree.map(lax.stop_gradient, aux)


def _cg(matvec, rhs, dot, tol):
    """Conjugate gradients for an SPD operator.

    The inner product is a parameter, so that sharded vectors reduce across
    devices.
    """
    x = jnp.zeros_like(rhs)
    r = rhs
    p = r
    rr = dot(r, r)
    stop = (tol**2) * dot(rhs, rhs)

    def cond(c):
        return (c[4] < _CG_MAX_ITER) & (c[3] > stop)

    def body(c):
        x, r, p, rr, k = c
        ap = matvec(p)
        alpha = rr / dot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr) * p
        return x, r, p, rr_new, k + 1

    return lax.while_loop(cond, body, (x, r, p, rr, 0))[0]


def _cg_tol(dtype):
    return 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-10


def _implicit_vjp_xy(cfg, prob: _Problem, f, g, ct_f, ct_g):
    """VJP of the fixed point ``P 1 = a, P^T 1 = b`` (implicit function theorem).

    With ``H = [[diag(P 1), P], [P^T, diag(P^T 1)]]`` (eps times the Jacobian in
    ``(f, g)``), the adjoint ``H lam = ct`` is solved through the Schur
    complement in ``g``: in the scaled variable ``w = diag(P^T 1)^(1/2) lam_g``
    it is ``(I - K^T K) w = rhs`` with ``K = D_r^(-1/2) P D_c^(-1/2)``, whose
    only null vector ``s = sqrt(P^T 1)`` (the gauge ``(f + c, g - c)``) is
    deflated: ``I - K^T K + s s^T`` is SPD with eigenvalues in
    ``[1 - sigma_2^2, 1]``, well conditioned in float32. The cotangent is then
    ``-eps d/dtheta [lam_f^T (P 1 - a) + lam_g^T (P^T 1 - b)]``.
    """
    geom, cost_fn, _, _, eps = prob
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    ones = lambda v: v[:, None]
    p_apply = lambda v: _apply(
        cost_fn, geom, f, g, eps, ones(v), transpose=False, **kw
    )[:, 0]
    pt_apply = lambda u: _apply(
        cost_fn, geom, f, g, eps, ones(u), transpose=True, **kw
    )[:, 0]
    d_r = _sums(cost_fn, geom, f, g, eps, transpose=False, **kw)
    d_c = _sums(cost_fn, geom, f, g, eps, transpose=True, **kw)
    inv_r = jnp.where(d_r > 0, 1.0 / jnp.where(d_r > 0, d_r, 1.0), 0.0)
    isqrt_c = jnp.where(d_c > 0, lax.rsqrt(jnp.where(d_c > 0, d_c, 1.0)), 0.0)
    s = jnp.sqrt(d_c)
    s = s / jnp.linalg.norm(s)
    rhs = isqrt_c * (ct_g - pt_apply(inv_r * ct_f))
    rhs = rhs - (s @ rhs) * s

    m = g.shape[0]
    if geom.cost is not None and m <= _DIRECT_SOLVE_MAX:
        plan = jnp.where(
            (f[:, None] > -jnp.inf) & (g[None, :] > -jnp.inf),
            jnp.exp((f[:, None] + g[None, :] - geom.cost) / eps),
            0.0,
        )
        k_mat = plan * (jnp.sqrt(inv_r)[:, None] * isqrt_c[None, :])
        gram = _psum(k_mat.T @ k_mat, cfg.axis_name)
        system = jnp.eye(m, dtype=g.dtype) - gram + jnp.outer(s, s)
        w = jax.scipy.linalg.solve(system, rhs, assume_a="pos")
    else:

        def matvec(w):
            u = inv_r * p_apply(isqrt_c * w)
            return w - isqrt_c * pt_apply(u) + (s @ w) * s

        w = _cg(matvec, rhs, jnp.dot, _cg_tol(g.dtype))
    lam_g = isqrt_c * w
    lam_f = inv_r * (ct_f - p_apply(lam_g))
    lam_f, lam_g = lax.stop_gradient((lam_f, lam_g))
    eps_c = lax.stop_gradient(eps)

    def residual(prob_):
        geom_, cost_fn_, a_, b_, eps_ = prob_
        mass = _pair_sum(cost_fn_, geom_, f, g, eps_, lam_f, lam_g, **kw)
        return -eps_c * (mass - _psum(lam_f @ a_, cfg.axis_name) - lam_g @ b_)

    _, vjp = jax.vjp(residual, prob)
    return vjp(jnp.ones((), g.dtype))[0]


def _implicit_vjp_sym(cfg, prob: _Problem, f, ct):
    """VJP of the symmetric fixed point ``P 1 = a``.

    With ``P = exp((f_i + f_j - C_ij) / eps)`` the Jacobian is
    ``(diag(P 1) + P) / eps``, i.e. ``I + K`` after diagonal scaling, with
    eigenvalues in ``[1, 2]`` for a positive-definite kernel; solved by CG.
    """
    geom, cost_fn, _, _, eps = prob
    axis_name = cfg.axis_name
    gather = functools.partial(_gather, axis_name=axis_name)
    kw = dict(block_size=cfg.block_size, axis_name=None)
    f_all = gather(f)
    d = _sums(cost_fn, geom, f, f_all, eps, transpose=False, **kw)
    isqrt = jnp.where(d > 0, lax.rsqrt(jnp.where(d > 0, d, 1.0)), 0.0)

    def matvec(w):
        pv = _apply(
            cost_fn,
            geom,
            f,
            f_all,
            eps,
            gather(isqrt * w)[:, None],
            transpose=False,
            **kw,
        )[:, 0]
        return w + isqrt * pv

    dot = lambda u, v: _psum(u @ v, axis_name)
    w = _cg(matvec, isqrt * ct, dot, _cg_tol(f.dtype))
    lam = lax.stop_gradient(isqrt * w)
    eps_c = lax.stop_gradient(eps)

    def residual(prob_):
        geom_, cost_fn_, a_, _, eps_ = prob_
        # P 1 - a with f fixed: the cost depends on the points on both sides.
        mass = _pair_sum(
            cost_fn_, geom_, f, f_all, eps_, lam, jnp.zeros_like(f_all), **kw
        )
        return -eps_c * (_psum(mass, axis_name) - _psum(lam @ a_, axis_name))

    _, vjp = jax.vjp(residual, prob)
    return vjp(jnp.ones((), f.dtype))[0]


def _instantiate(ct, like):
    return jnp.zeros_like(like) if isinstance(ct, SymbolicZero) else ct


# --------------------------------------------------------------------------
# Objectives and the jitted cores.


def _safe_log(w):
    return jnp.log(jnp.where(w > 0, w, 1.0))


def _dual_value(cfg, cost_fn, geom, f, g, a, b, eps, symmetric, mass):
    """The dual objective, equal to the entropic cost at the optimum.

    ``<a, f - eps log a> + <b, g - eps log b> - eps (sum P - 1)``; with ``f, g``
    held fixed, its derivative in ``x, y, a, b, eps`` is the envelope gradient.
    ``mass``, ``sum P`` as the solve computed it (:class:`_Aux`), is the
    value; a pass over the plan gives its derivatives, only when
    differentiated.
    """
    total = functools.partial(_mass, cfg, cost_fn)
    fa = _psum(a @ jnp.where(a > 0, f - eps * _safe_log(a), 0.0), cfg.axis_name)
    if symmetric:
        mass = _valued(total, mass, (geom, f, _gather(g, cfg.axis_name), eps))
        return 2.0 * fa - eps * (mass - 1.0)
    gb = b @ jnp.where(b > 0, g - eps * _safe_log(b), 0.0)
    mass = _valued(total, mass, (geom, f, g, eps))
    return fa + gb - eps * (mass - 1.0)


def _normalise(w, axis_name):
    return w / _psum(jnp.sum(w), axis_name)


class _Schedule(NamedTuple):
    """Where the annealing starts, the scale that sets ``omega0``, the fits."""

    start: jax.Array  # [] the cost's spread (at least epsilon)
    scale: jax.Array  # [] the cost scale (mean cost)
    # ([d, d], [d, d]) covariances of x and y for the Gaussian start, or None
    covs: tuple[jax.Array, jax.Array] | None = None
    # (f_init [n], g_init [m] or None): a warm start (no gradient), or None
    init: tuple[jax.Array, jax.Array | None] | None = None


def _epsilons(cfg, cost_fn, geom, a, b, epsilon, init=None):
    """Target epsilon and the annealing :class:`_Schedule`.

    The target defaults to ``0.05 x`` the cost scale (the mean cost, as in
    ott-jax). The annealing starts at the cost's spread, its standard
    deviation under ``a ⊗ b``: a constant added to the cost changes neither
    the plan nor the spread, so it adds no level. Nothing here carries a
    gradient when derived from the data; nor does a warm start ``init``.
    """
    init = None if init is None else lax.stop_gradient(init)
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    scale, spread, covs = lax.stop_gradient(_cost_scale(cost_fn, geom, a, b, **kw))
    covs = covs if cfg.initializer == "gaussian" else None
    scale = jnp.where(scale > 0, scale, 1.0)
    eps = _DEFAULT_EPSILON_SCALE * scale if epsilon is None else epsilon
    plain = lax.stop_gradient(eps)
    if cfg.epsilon_scaling is None:
        return eps, _Schedule(plain, plain, covs, init)
    start, scale = jnp.maximum(spread, plain), jnp.maximum(scale, plain)
    return eps, _Schedule(start, scale, covs, init)


def _fix_gauge(f, g, a, b, axis_name):
    """Shifts ``(f + c, g - c)`` so that ``<a, f> = <b, g>``.

    A smooth choice of the one free constant: it makes the potentials
    differentiable functions of the data.
    """
    fa = _psum(a @ jnp.where(a > 0, f, 0.0), axis_name)
    gb = b @ jnp.where(b > 0, g, 0.0)
    c = 0.5 * (gb - fa)
    return f + c, g - c


def _solve_problem(cfg, cost_fn, x, y, a, b, epsilon, threshold, cost, init, record):
    """Solves ``OT(a, b)``; returns its :class:`SinkhornOutput` and schedule.

    ``cost`` is the ``[n, m]`` cost matrix given instead of points (``x``,
    ``y`` then None), ``init`` a warm start ``(f_init, g_init)`` or None, and
    ``record`` the resolved :class:`SinkhornConfig` the output carries.
    """
    geom = _make_geom(cost_fn, x, y, cfg.block_size, cfg.axis_name, cost)
    eps, sched = _epsilons(cfg, cost_fn, geom, a, b, epsilon, init)
    prob = _Problem(geom, cost_fn, a, b, eps)
    (f, g), aux = _potentials(cfg, prob, sched, threshold, False)
    f, g = _fix_gauge(f, g, a, b, cfg.axis_name)
    if cfg.differentiation == "envelope":
        fd, gd = lax.stop_gradient((f, g))
    else:
        fd, gd = f, g
    reg_cost = _dual_value(cfg, cost_fn, geom, fd, gd, a, b, eps, False, aux.mass)
    plan_cost = functools.partial(
        _plan_cost, cost_fn, block_size=cfg.block_size, axis_name=cfg.axis_name
    )
    if aux.transport_cost is None:
        transport_cost = plan_cost(geom, f, g, eps)
    else:
        transport_cost = _valued(plan_cost, aux.transport_cost, (geom, f, g, eps))
    ok = eps > 0
    nan_if_bad = lambda v: jnp.where(ok, v, jnp.nan)
    out = SinkhornOutput(
        f=nan_if_bad(f),
        g=nan_if_bad(g),
        reg_cost=nan_if_bad(reg_cost),
        transport_cost=nan_if_bad(transport_cost),
        converged=aux.converged & ok,
        n_iter=aux.n_iter,
        trace=aux.trace,
        epsilon=eps,
        x=x,
        y=y,
        a=a,
        b=b,
        cost_fn=cost_fn,
        cost_matrix=cost,
        config=record,
    )
    return out, sched


@functools.partial(jax.jit, static_argnames=("cfg", "record"))
def _sinkhorn_core(x, y, cost, a, b, epsilon, tol, init, cost_fn, cfg, record):
    a = _normalise(a, cfg.axis_name)
    b = _normalise(b, None)
    return _solve_problem(cfg, cost_fn, x, y, a, b, epsilon, tol, cost, init, record)[0]


def _self_cost(cfg, cost_fn, pts, w, eps, sched, threshold, axis_name, cost=None):
    """Entropic cost OT(w, w) and its symmetric potential.

    ``sched.covs``, if any, are the covariances of ``pts`` (twice). ``cost``:
    the problem's ``[n, n]`` cost matrix instead of points.
    """
    cfg = dataclasses.replace(cfg, axis_name=axis_name)
    cols = None if cost is not None else _gather(pts, axis_name)
    geom = _make_geom(cost_fn, pts, cols, cfg.block_size, axis_name, cost)
    prob = _Problem(geom, cost_fn, w, w, eps)
    (f, _), aux = _potentials(cfg, prob, sched, threshold, True)
    fd = lax.stop_gradient(f) if cfg.differentiation == "envelope" else f
    cost = _dual_value(cfg, cost_fn, geom, fd, fd, w, w, eps, True, aux.mass)
    return cost, f, aux.n_iter, aux.converged


def _self_fit(sched: _Schedule, side: int) -> _Schedule:
    """The cross problem's schedule, with the fit of ``x`` (0) or ``y`` (1)."""
    covs = None if sched.covs is None else (sched.covs[side],) * 2
    return sched._replace(covs=covs, init=None)


@functools.partial(jax.jit, static_argnames=("cfg", "record"))
def _divergence_core(x, y, costs3, a, b, epsilon, tol, cost_fn, cfg, record):
    a = _normalise(a, cfg.axis_name)
    b = _normalise(b, None)
    c_xy, c_xx, c_yy = (None, None, None) if costs3 is None else costs3
    # The self-problems share the cross problem's epsilon and schedule.
    xy, sched = _solve_problem(
        cfg, cost_fn, x, y, a, b, epsilon, tol, c_xy, None, record
    )
    eps = xy.epsilon
    cost_xx, f_xx, n_xx, conv_xx = _self_cost(
        cfg, cost_fn, x, a, eps, _self_fit(sched, 0), tol, cfg.axis_name, c_xx
    )
    cost_yy, g_yy, n_yy, conv_yy = _self_cost(
        cfg, cost_fn, y, b, eps, _self_fit(sched, 1), tol, None, c_yy
    )
    divergence = xy.reg_cost - 0.5 * (cost_xx + cost_yy)
    return SinkhornDivergenceOutput(
        divergence=divergence,
        xy=xy,
        f_xx=f_xx,
        g_yy=g_yy,
        converged=xy.converged & conv_xx & conv_yy,
        n_iter=jnp.stack([xy.n_iter, n_xx, n_yy]),
    )


# --------------------------------------------------------------------------
# Options: one frozen configuration, and one resolver of every "auto" rule.

_STORAGES = ("auto", "dense", "online", "kernel")


@dataclasses.dataclass(frozen=True)
class SinkhornConfig:
    """Options of the Sinkhorn solver, shared by every entropic function.

    A frozen, hashable value (static under ``jit``): :func:`sinkhorn`,
    :func:`sinkhorn_divergence` and :func:`wasserstein_entropic` take it as
    ``config=``, or its fields as keywords (``max_iter=50`` is short for
    ``config=SinkhornConfig(max_iter=50)``; keywords given with a ``config``
    replace its fields). Every ``"auto"`` is resolved in one place, from the
    problem's sizes and cost, and the output's ``config`` field holds the
    options as resolved (e.g. ``storage="dense"``, ``initializer="gaussian"``).

    Attributes:
      max_iter: iteration budget (annealing iterations included); also the
        length of the output's ``trace``.
      min_iter: iterations run before convergence is tested. With
        ``min_iter == max_iter`` exactly ``max_iter`` iterations run, as a
        ``scan``: a predictable cost, and under ``vmap`` a batch no longer
        runs at its slowest member's pace (``converged`` still reports the
        final error against ``tol``).
      initializer: the potentials the iterations start from. ``"gaussian"``
        (squared Euclidean cost between points only): those of the entropic
        problem between the Gaussians fitted to ``(x, a)`` and ``(y, b)``, in
        closed form (Janati et al. 2020; ott-jax's ``GaussianInitializer``
        takes the unregularised ones), at the cost of two ``d x d``
        eigendecompositions (in float32 for half-precision inputs).
        Near-Gaussian clouds start close to the solution. ``"zero"``:
        ``f = epsilon log a``, zero but for the weights (as ott-jax's
        default). ``"auto"`` (default): ``"gaussian"`` for the squared
        Euclidean cost when ``d^3 <= n m``, else ``"zero"``; ``"warm"`` when
        ``f_init`` is given (resolved only). Either way the first ``g`` is a
        lower bound of the c-transform of ``f``, so that no exponent of the
        first pass is positive.
      epsilon_scaling: ``"auto"`` (default): no annealing from the Gaussian
        or a warm start, which already hold the large scales that annealing
        would resolve, and ``1/2`` from the zero start. ``q`` in ``(0, 1)``:
        anneal from about the cost's spread ``sigma`` (its standard deviation
        under ``a ⊗ b``, which a constant added to the cost leaves unchanged)
        down to ``epsilon``, one iteration per level (GeomLoss): the levels
        are ``epsilon / q^L, ..., epsilon / q, epsilon`` with ``L`` the
        nearest integer to ``log(sigma / epsilon) / log(1 / q)``, or 0 when
        that is below 2, so that a cached kernel passes from one level to
        the next by the integer power ``1 / q`` when it is one (as for
        ``1/2``). ``None`` disables it.
      relaxation: ``"adaptive"`` (default: plain Sinkhorn while annealing; at
        ``epsilon``, over-relaxation ``omega`` starting from the optimum for
        a plain rate ``1 - 4 epsilon / s`` (plain without annealing levels)
        and raised as the observed convergence rate requires, never past what
        the error history supports), or a fixed ``omega`` in ``(0, 2)`` (1 is
        plain Sinkhorn).
      storage: where the cost lives. ``"dense"``: the ``[n, m]`` cost matrix
        is stored once (and its transpose) and the kernel
        ``exp((f + g - C) / epsilon)`` cached (stabilised scaling: a pass is
        a matrix-vector product). ``"online"``: the cost is recomputed by
        blocks of ``block_size`` rows at every pass (memory
        ``O((n + m) d + block_size max(n, m))``, no cached kernel; an
        iteration is one pass over stripes of at most ``block_size`` columns,
        narrower when that keeps a stripe near ``2^21`` entries).
        ``"kernel"`` (squared Euclidean cost): online, but the ``[n, m]``
        kernel is cached, built by blocks of matrix products. ``"auto"``
        (default): dense up to ``2^16`` entries for the squared Euclidean
        cost (whose online blocks are one matrix product) or ``2^24`` for
        other costs, above that ``"kernel"`` up to ``2^25`` entries (128 MB
        in float32) per problem for the squared Euclidean cost and
        ``"online"`` otherwise; a cost matrix is always dense. No kernel is
        cached with ``differentiation="unroll"``. Under ``vmap`` each
        problem has its own kernel: use ``"online"`` for large batches.
      block_size: rows per block of the online passes; ``None`` (default):
        about ``2^20`` entries per block (at least 64 rows for the squared
        Euclidean cost, 8 otherwise, at most 1024). Unused when dense.
      differentiation: how gradients flow through the solution.
        ``"envelope"`` (default): ``reg_cost`` is differentiated w.r.t. the
        points (or cost matrix), weights and ``epsilon`` with the potentials
        held fixed (Danskin's theorem; exact at the optimum, costs one
        pass); differentiating anything that depends on the potentials
        raises a ``ValueError``. ``"implicit"``: the potentials are
        differentiated by the implicit function theorem (a linear solve,
        conjugate gradients or a direct solve for ``m <= 1024`` when dense),
        so are ``transport_cost`` and plans. ``"unroll"``: backpropagation
        through the iterations (runs ``max_iter`` iterations, the state
        frozen after convergence; memory ``O((n + m) max_iter)``), for
        comparison.

    Raises:
      TypeError, ValueError: a field of the wrong type or value (named).

    Example:
      >>> import densax
      >>> cfg = densax.ot.SinkhornConfig(max_iter=50, relaxation=1.0)
      >>> cfg.max_iter, cfg.storage, hash(cfg) == hash(cfg)
      (50, 'auto', True)
    """

    max_iter: int = 2000
    min_iter: int = 0
    initializer: str = "auto"
    epsilon_scaling: float | str | None = "auto"
    relaxation: float | str = "adaptive"
    storage: str = "auto"
    block_size: int | None = None
    differentiation: str = "envelope"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        max_iter = _validate.check_int(self.max_iter, "max_iter", minimum=1)
        min_iter = _validate.check_int(self.min_iter, "min_iter", minimum=0)
        if min_iter > max_iter:
            raise ValueError(f"min_iter ({min_iter}) must be <= max_iter ({max_iter})")
        set_("max_iter", max_iter)
        set_("min_iter", min_iter)
        _validate.check_choice(self.initializer, "initializer", _INITIALIZERS)
        scaling = self.epsilon_scaling
        if isinstance(scaling, str):
            _validate.check_choice(scaling, "epsilon_scaling", ("auto",))
        elif scaling is not None:
            if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
                raise TypeError(
                    "epsilon_scaling must be 'auto', a float in (0, 1) or None, "
                    f"got {type(scaling).__name__}"
                )
            if not 0.0 < scaling < 1.0:
                raise ValueError(
                    f"epsilon_scaling must be in (0, 1) or None, got {scaling}"
                )
            set_("epsilon_scaling", float(scaling))
        relaxation = self.relaxation
        if isinstance(relaxation, str):
            _validate.check_choice(relaxation, "relaxation", ("adaptive",))
        elif isinstance(relaxation, bool) or not isinstance(relaxation, (int, float)):
            raise TypeError(
                "relaxation must be 'adaptive' or a float in (0, 2), got "
                f"{type(relaxation).__name__}"
            )
        elif not 0.0 < relaxation < 2.0:
            raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
        else:
            set_("relaxation", float(relaxation))
        _validate.check_choice(self.storage, "storage", _STORAGES)
        if self.block_size is not None:
            set_(
                "block_size",
                _validate.check_int(self.block_size, "block_size", minimum=1),
            )
        _validate.check_choice(
            self.differentiation, "differentiation", _DIFFERENTIATION
        )


jax.tree_util.register_static(SinkhornConfig)


def _config(config: SinkhornConfig | None, options: dict) -> SinkhornConfig:
    """``config`` (default options when None) with the keyword ``options``."""
    if config is None:
        return SinkhornConfig(**options)
    if not isinstance(config, SinkhornConfig):
        raise TypeError(f"config must be a SinkhornConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


def _auto_rows(n: int, m: int, sq: bool) -> int:
    rows = _AUTO_MIN_ROWS_SQEUCLIDEAN if sq else 8
    return int(min(max(_AUTO_BLOCK_ENTRIES // max(n, m), rows), 1024))


def _resolve(
    config: SinkhornConfig,
    *,
    cost_fn,
    n: int,
    m: int,
    d: int,
    matrix: bool = False,
    warm: bool = False,
    axis_name: Any = None,
    batch_size: int | None = None,
) -> tuple[SinkhornConfig, _Config]:
    """Every ``"auto"`` rule of the solver, in one place.

    Returns the options as resolved (what the output records) and the static
    configuration of the jitted core. ``n, m, d``: the problem's local sizes
    (``d = 0`` for a cost matrix, ``matrix=True``); ``warm``: ``f_init`` is
    given; ``batch_size``: that of an ott-jax ``PointCloud``, which makes
    ``storage="auto"`` online.
    """
    sq = not matrix and _is_sq_euclidean(cost_fn)
    # The start.
    init = config.initializer
    if warm:
        if init not in ("auto", "warm"):
            raise ValueError(
                f"initializer={init!r} conflicts with f_init (a warm start); "
                "leave initializer='auto'"
            )
        init = "warm"
    elif init == "warm":
        raise ValueError("initializer='warm' needs f_init")
    elif init == "gaussian" and not sq:
        what = "a cost matrix" if matrix else type(cost_fn).__name__
        raise ValueError(
            "initializer='gaussian' needs the squared Euclidean cost between "
            f"points, got {what}"
        )
    elif init == "auto":
        init = "gaussian" if sq and d**3 <= n * m else "zero"
    scaling = config.epsilon_scaling
    if scaling == "auto":
        scaling = None if init in ("gaussian", "warm") else _AUTO_EPSILON_SCALING
    # The storage, the blocks and the cached kernel.
    storage, block = config.storage, config.block_size
    unroll = config.differentiation == "unroll"
    if matrix and storage not in ("auto", "dense"):
        raise ValueError(
            f"a cost matrix is stored: storage must be 'auto' or 'dense', got "
            f"{storage!r}"
        )
    if storage == "kernel" and not sq:
        raise ValueError(
            "storage='kernel' builds the kernel by matrix products: it needs the "
            "squared Euclidean cost between points"
        )
    kernel = _UNLIMITED
    if storage == "auto" and batch_size is not None:
        storage, block = "online", block or batch_size
    if storage == "auto":
        limit = _AUTO_DENSE_SQEUCLIDEAN if sq else _AUTO_DENSE_OTHER
        if matrix or n * m <= limit:
            storage = "dense"
        else:
            kernel = _AUTO_KERNEL_ENTRIES if sq else 0
            cached = n * m <= kernel and not unroll
            storage = "kernel" if cached else "online"
    elif storage == "online":
        kernel = 0
    if storage == "dense":
        block = None
    elif block is None:
        block = _auto_rows(n, m, sq)
    if unroll:
        kernel = 0
        storage = "online" if storage == "kernel" else storage
    relaxation = None if config.relaxation == "adaptive" else config.relaxation
    cfg = _Config(
        max_iter=config.max_iter,
        min_iter=config.min_iter,
        epsilon_scaling=scaling,
        relaxation=relaxation,
        block_size=block,
        differentiation=config.differentiation,
        axis_name=axis_name,
        initializer=init,
        kernel=kernel,
    )
    record = dataclasses.replace(
        config,
        initializer=init,
        epsilon_scaling=scaling,
        storage=storage,
        block_size=block,
    )
    return record, cfg


def _check_matrix(c: Any, name: str, shape: tuple[int, ...] | None, dtype=None):
    c = _validate.as_float(c, name, ndim=2, dtype=dtype)
    if shape is not None and c.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {c.shape}")
    if c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and column, got {c.shape}")
    return c


def _check_inputs(
    x, y, cost_matrix, a, b, epsilon, tol, cost_fn, config, axis_name, validate
):
    """Static and (eager) value checks; unpacks an ott-jax ``PointCloud``.

    Returns the checked arrays, ``cost_fn`` (None for a cost matrix), the
    sizes ``(n, m, d)`` and the PointCloud's ``batch_size`` (or None).
    """
    batch_size = None
    if cost_matrix is not None:
        if x is not None or y is not None:
            raise ValueError("x and y must be None when cost_matrix is given")
        if cost_fn is not None:
            raise ValueError("cost_fn must be None when cost_matrix is given")
        cost_matrix = _check_matrix(cost_matrix, "cost_matrix", None)
        dtype = cost_matrix.dtype
        (n, m), d = cost_matrix.shape, 0
        _validate.check_finite(cost_matrix, "cost_matrix", validate)
    else:
        if isinstance(x, pointcloud.PointCloud):
            if y is not None:
                raise ValueError("y must be None when x is an ott-jax PointCloud")
            geom = x
            scale = geom._scale_cost
            if not (isinstance(scale, (int, float)) and scale == 1.0):
                raise ValueError(
                    "only PointClouds with scale_cost=1.0 are supported, got "
                    f"scale_cost={scale!r}"
                )
            if cost_fn is not None:
                raise ValueError("cost_fn must be None when x is a PointCloud")
            x, y, cost_fn = geom.x, geom.y, geom.cost_fn
            epsilon = geom.epsilon if epsilon is None else epsilon
            batch_size = geom.batch_size
        elif x is None or y is None:
            raise ValueError(
                "give points x and y (or an ott-jax PointCloud x), or cost_matrix"
            )
        cost_fn = costs.SqEuclidean() if cost_fn is None else cost_fn
        if not isinstance(cost_fn, costs.CostFn):
            raise TypeError(
                "cost_fn must be an ott.geometry.costs.CostFn, got "
                f"{type(cost_fn).__name__}"
            )
        dtype = _validate.common_float_dtype(x, y)
        x = _validate.as_float(x, "x", ndim=2, dtype=dtype)
        y = _validate.as_float(y, "y", ndim=2, dtype=dtype)
        _validate.check_same_last_dim(x, y, "x", "y")
        (n, d), m = x.shape, y.shape[0]
        if n == 0 or m == 0:
            raise ValueError(f"x and y must have at least one point, got {n} and {m}")
        _validate.check_finite(x, "x", validate)
        _validate.check_finite(y, "y", validate)
    a = jnp.ones(n, dtype) if a is None else a
    b = jnp.ones(m, dtype) if b is None else b
    a = _validate.check_weights(a, "a", (n,), dtype=dtype, validate=validate)
    b = _validate.check_weights(b, "b", (m,), dtype=dtype, validate=validate)
    if epsilon is not None:
        epsilon = _validate.as_float(epsilon, "epsilon", ndim=0, dtype=dtype)
        _validate.value_check(
            validate,
            jnp.isfinite(epsilon) & (epsilon > 0),
            f"epsilon must be positive and finite, got {epsilon}",
        )
    tol = _validate.as_float(tol, "tol", ndim=0, dtype=dtype)
    _validate.value_check(validate, tol >= 0, f"tol must be >= 0, got {tol}")
    return x, y, cost_matrix, a, b, epsilon, tol, cost_fn, (n, m, d), batch_size


def sinkhorn(
    x: Any = None,
    y: Any = None,
    *,
    a: Any = None,
    b: Any = None,
    cost_matrix: Any = None,
    epsilon: Any = None,
    cost_fn: costs.CostFn | None = None,
    tol: float = 1e-3,
    f_init: Any = None,
    g_init: Any = None,
    config: SinkhornConfig | None = None,
    axis_name: Any = None,
    validate: bool = True,
    **options: Any,
) -> SinkhornOutput:
    """Entropic optimal transport between two weighted point clouds or histograms.

    Solves ``min_P <P, C> + epsilon KL(P | a ⊗ b)`` over couplings of ``a`` and
    ``b`` with log-domain Sinkhorn iterations (see the package docstring),
    until the L1 marginal error ``||P 1 - a||_1 + ||P^T 1 - b||_1`` of the
    returned potentials is at most ``tol``. After each iteration one of the
    two terms is zero without relaxation, so this is ott-jax's criterion.
    The problem is given as points ``x``, ``y`` with a ``cost_fn``, or as a
    cost matrix ``cost_matrix`` (e.g. histograms ``a``, ``b`` over a fixed
    grid; ``vmap`` over many marginals on one cost).

    Args:
      x: ``[n, d]`` source points, or an ott-jax ``PointCloud`` (then ``y``
        and ``cost_fn`` are taken from it, and ``epsilon`` too unless given).
        None with ``cost_matrix``.
      y: ``[m, d]`` target points; None with ``cost_matrix``.
      a: ``[n]`` non-negative source weights (uniform by default); normalised
        to sum to 1. Zero weights give ``f_i = -inf``, as in ott-jax.
      b: ``[m]`` target weights, likewise.
      cost_matrix: ``[n, m]`` ground cost ``C_ij`` instead of points (always
        stored dense; ``initializer="gaussian"`` needs points).
      epsilon: regularisation, a positive scalar. Default: ``0.05 x`` the cost
        scale ``sum_ij a_i b_j |C_ij|`` (the mean cost under the independent
        coupling), computed without gradient.
      cost_fn: an ``ott.geometry.costs.CostFn`` between points; default
        ``SqEuclidean()``, which has a matrix-product fast path. Other costs
        are evaluated with ``cost_fn.all_pairs``.
      tol: tolerance on the L1 marginal error. Rounding of the exponents
        ``(f_i + g_j - C_ij) / epsilon`` puts a floor of the order of
        ``u max|C| / epsilon`` under the reachable error (``u`` the unit
        roundoff, ``6e-8`` in float32) when they are recomputed at every
        pass (online storage): in float32 at ``epsilon = 1e-4 x`` the cost
        scale that floor is a few ``1e-3``, so such a solve stays finite but
        may end with ``converged=False`` at ``tol=1e-3``. The cached kernel
        rounds once per build and reaches lower errors; float64 is the safe
        choice there.
      f_init: ``[n]`` a warm start: the first potential of a previous
        solution (this problem's gauge and ``epsilon`` need not match, e.g.
        a solution at a larger ``epsilon``). No gradient flows through it.
      g_init: ``[m]`` the second potential of that solution (optional, with
        ``f_init``): the first ``g`` is at most it and at most the
        c-transform of ``f_init``, so that no exponent of the first pass is
        positive.
      config: a :class:`SinkhornConfig` (the solver's options: iteration
        budget, start, annealing, relaxation, storage, differentiation).
      axis_name: inside ``shard_map``/``pmap`` with the points of ``x`` (or the
        rows of ``cost_matrix``) and ``a`` split along this axis and ``y``,
        ``b`` replicated: reductions over ``x`` use ``psum``/``pmax``, so the
        result equals the single-device one (``f`` is returned per shard).
      validate: run the value checks (finite points or costs, non-negative
        weights with a positive sum, positive epsilon) on eager calls.
      **options: fields of :class:`SinkhornConfig` (``max_iter=100``, ...),
        replacing those of ``config``.

    Returns:
      A :class:`SinkhornOutput`; its ``config`` holds the options as resolved.
      Potentials are gauge-fixed by ``<a, f> = <b, g>``. A traced
      ``epsilon <= 0`` gives NaN values and ``converged=False``; NaN inputs
      give ``converged=False``.

    Raises:
      TypeError: non-numeric inputs, an unknown option, or options of the
        wrong type.
      ValueError: bad ranks or shapes, dimensions of ``x`` and ``y`` differ,
        both points and a cost matrix, unknown option values; eagerly,
        negative or zero-sum weights, non-finite points or costs,
        ``epsilon <= 0``.

    References:
      Cuturi, NeurIPS 2013; Peyré & Cuturi, "Computational Optimal
      Transport", 2019; Feydy et al., AISTATS 2019; Thibault et al., 2021;
      Janati et al., NeurIPS 2020; Thornton & Cuturi, AISTATS 2023.

    Example:
      >>> import jax, densax
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> y = jax.random.normal(jax.random.key(1), (48, 2)) + 1.0
      >>> out = densax.ot.sinkhorn(x, y, epsilon=0.1)
      >>> bool(out.converged), out.f.shape, out.g.shape
      (True, (64,), (48,))
      >>> round(float(out.transport_cost), 2)
      2.15
      >>> out.config.storage, out.config.initializer
      ('dense', 'gaussian')
      >>> # The same problem as a cost matrix:
      >>> c = ((x[:, None] - y[None]) ** 2).sum(-1)
      >>> out2 = densax.ot.sinkhorn(cost_matrix=c, epsilon=0.1)
      >>> round(float(out2.transport_cost), 2)
      2.15
    """
    config = _config(config, options)
    x, y, cost, a, b, epsilon, tol, cost_fn, (n, m, d), batch = _check_inputs(
        x, y, cost_matrix, a, b, epsilon, tol, cost_fn, config, axis_name, validate
    )
    init = None
    if f_init is not None:
        f_init = _validate.as_float(f_init, "f_init", ndim=1, dtype=a.dtype)
        if f_init.shape != (n,):
            raise ValueError(f"f_init must have shape ({n},), got {f_init.shape}")
        if g_init is not None:
            g_init = _validate.as_float(g_init, "g_init", ndim=1, dtype=a.dtype)
            if g_init.shape != (m,):
                raise ValueError(f"g_init must have shape ({m},), got {g_init.shape}")
        init = (f_init, g_init)
    elif g_init is not None:
        raise ValueError("g_init needs f_init (the first update sets g from f)")
    record, cfg = _resolve(
        config,
        cost_fn=cost_fn,
        n=n,
        m=m,
        d=d,
        matrix=cost is not None,
        warm=init is not None,
        axis_name=axis_name,
        batch_size=batch,
    )
    return _sinkhorn_core(x, y, cost, a, b, epsilon, tol, init, cost_fn, cfg, record)


def sinkhorn_divergence(
    x: Any = None,
    y: Any = None,
    *,
    a: Any = None,
    b: Any = None,
    cost_matrix: Any = None,
    cost_matrix_xx: Any = None,
    cost_matrix_yy: Any = None,
    epsilon: Any = None,
    cost_fn: costs.CostFn | None = None,
    tol: float = 1e-3,
    config: SinkhornConfig | None = None,
    axis_name: Any = None,
    validate: bool = True,
    **options: Any,
) -> SinkhornDivergenceOutput:
    """Debiased Sinkhorn divergence ``OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2``.

    ``OT`` is the entropic cost ``reg_cost`` of :func:`sinkhorn` (with the
    KL-to-``a ⊗ b`` regulariser, as in ott-jax), all three problems with the
    same ``epsilon``; the two self-problems use the symmetric update
    ``f <- (f + T(f)) / 2``, which converges in a few iterations (it assumes a
    symmetric cost, as all of ott-jax's are). For the squared Euclidean cost
    (and any cost whose kernel ``exp(-C / epsilon)`` is positive definite) the
    divergence is ``>= 0``, zero iff the two measures are equal, and metrises
    weak convergence; it interpolates between ``W_2^2`` (``epsilon -> 0``) and
    an MMD (``epsilon -> inf``).

    This combines the three *regularised* costs, as ott-jax's
    ``sinkhorn_divergence`` and GeomLoss do. POT's
    ``empirical_sinkhorn_divergence`` combines the three *transport* costs
    ``<P, C>`` instead and clips at 0, a different (not always positive
    definite) quantity: the two differ by the entropic terms.

    The default ``differentiation="envelope"`` makes ``jax.grad`` cost about
    one pass per problem: the path to use when training a generator on the
    divergence. Inside a jitted training loop, a fixed budget (``min_iter =
    max_iter`` of a few dozen, or a looser ``tol``) keeps each step's cost
    predictable; check ``converged`` in the output.

    Args:
      x: ``[n, d]`` source points (None with cost matrices).
      y: ``[m, d]`` target points (None with cost matrices).
      a: ``[n]`` source weights (uniform by default), normalised.
      b: ``[m]`` target weights, likewise.
      cost_matrix: ``[n, m]`` cost of the cross problem, instead of points.
        Alone, it is the cost of all three problems: ``a`` and ``b`` are
        histograms on one support (``n = m``), ``C`` symmetric with a zero
        diagonal (a grid's cost); otherwise give the self-problems' costs too.
      cost_matrix_xx: ``[n, n]`` cost between the source points.
      cost_matrix_yy: ``[m, m]`` cost between the target points.
      epsilon: regularisation; default ``0.05 x`` the cost scale of the cross
        problem (see :func:`sinkhorn`).
      cost_fn: ott-jax cost function between points (default squared
        Euclidean).
      tol: L1 marginal error tolerance of each of the three problems.
      config: a :class:`SinkhornConfig`, the options of all three problems
        (the self-problems need no relaxation; the Gaussian start of a
        self-problem is the entropic potential between a cloud's Gaussian
        fit and itself).
      axis_name: with ``x``, ``a`` split over this axis (``shard_map``); the
        self-problem of ``x`` gathers the points (``all_gather``). With cost
        matrices, the rows of ``cost_matrix`` and ``cost_matrix_xx`` are
        split (all three must be given).
      validate: eager value checks.
      **options: fields of :class:`SinkhornConfig`, replacing ``config``'s.

    Returns:
      A :class:`SinkhornDivergenceOutput`.

    Raises:
      TypeError, ValueError: as :func:`sinkhorn`, and cost matrices of the
        wrong shapes or given partly.

    References:
      Feydy, Séjourné, Vialard, Amari, Trouvé & Peyré, "Interpolating between
      Optimal Transport and MMD using Sinkhorn Divergences", AISTATS 2019.
      Genevay, Peyré & Cuturi, "Learning Generative Models with Sinkhorn
      Divergences", AISTATS 2018.

    Example:
      >>> import jax, densax
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> y = jax.random.normal(jax.random.key(1), (48, 2)) + 1.0
      >>> out = densax.ot.sinkhorn_divergence(x, y, epsilon=0.1)
      >>> bool(out.converged), round(float(out.divergence), 2)
      (True, 2.07)
      >>> grad = jax.grad(lambda x: densax.ot.sinkhorn_divergence(x, y).divergence)
      >>> grad(x).shape
      (64, 2)
    """
    config = _config(config, options)
    if isinstance(x, pointcloud.PointCloud):
        raise TypeError("sinkhorn_divergence takes arrays x, y, not a PointCloud")
    selfs = (cost_matrix_xx, cost_matrix_yy)
    if cost_matrix is None and any(c is not None for c in selfs):
        raise ValueError("cost_matrix_xx and cost_matrix_yy need cost_matrix")
    x, y, cost, a, b, epsilon, tol, cost_fn, (n, m, d), _ = _check_inputs(
        x, y, cost_matrix, a, b, epsilon, tol, cost_fn, config, axis_name, validate
    )
    costs3 = None
    if cost is not None:
        if all(c is None for c in selfs):
            if n != m or axis_name is not None:
                raise ValueError(
                    "cost_matrix alone serves all three problems only for "
                    f"histograms on one support (n = m) on one device, got "
                    f"shape {cost.shape}; give cost_matrix_xx and cost_matrix_yy"
                )
            costs3 = (cost, cost, cost)
        elif any(c is None for c in selfs):
            raise ValueError("give both cost_matrix_xx and cost_matrix_yy, or neither")
        else:
            n_all = n if axis_name is None else None
            c_xx = _check_matrix(cost_matrix_xx, "cost_matrix_xx", None, cost.dtype)
            if c_xx.shape[0] != n or (n_all is not None and c_xx.shape[1] != n):
                raise ValueError(
                    f"cost_matrix_xx must have shape ({n}, {n}), got {c_xx.shape}"
                )
            c_yy = _check_matrix(cost_matrix_yy, "cost_matrix_yy", (m, m), cost.dtype)
            _validate.check_finite(c_xx, "cost_matrix_xx", validate)
            _validate.check_finite(c_yy, "cost_matrix_yy", validate)
            costs3 = (cost, c_xx, c_yy)
    record, cfg = _resolve(
        config,
        cost_fn=cost_fn,
        n=n,
        m=m,
        d=d,
        matrix=cost is not None,
        axis_name=axis_name,
    )
    return _divergence_core(x, y, costs3, a, b, epsilon, tol, cost_fn, cfg, record)


def _wasserstein_cost(p: float) -> costs.CostFn:
    if p == 2:
        return costs.SqEuclidean()
    if p == 1:
        return costs.Euclidean()
    return costs.EuclideanP(p)


def wasserstein_entropic(
    x: Any,
    y: Any,
    p: float = 2,
    *,
    a: Any = None,
    b: Any = None,
    epsilon: Any = None,
    tol: float = 1e-3,
    config: SinkhornConfig | None = None,
    axis_name: Any = None,
    validate: bool = True,
    **options: Any,
) -> jax.Array:
    """Entropic estimate of the Wasserstein distance ``W_p(a, b)``.

    Returns ``max(S_eps, 0)^(1/p)``, with ``S_eps`` the debiased
    :func:`sinkhorn_divergence` for the cost ``c(x, y) = ||x - y||_2^p``
    (``SqEuclidean`` for ``p=2``, ``Euclidean`` for ``p=1``, ott-jax's
    ``EuclideanP(p)`` otherwise). The debiased divergence approaches
    ``W_p^p`` as ``epsilon -> 0`` (with an ``O(epsilon^2)`` bias for smooth
    densities, much smaller than the ``O(epsilon log(1/epsilon))`` of
    ``reg_cost``), so this tends to ``W_p``. Its gradient is taken zero where
    the divergence is 0. To read convergence flags use
    :func:`sinkhorn_divergence` directly.

    Args:
      x: ``[n, d]`` source points.
      y: ``[m, d]`` target points.
      p: the exponent, ``>= 1``.
      a: ``[n]`` source weights (uniform by default).
      b: ``[m]`` target weights.
      epsilon: regularisation (on the scale of ``||x - y||^p``); default as in
        :func:`sinkhorn`.
      tol: L1 marginal error tolerance of each problem.
      config: a :class:`SinkhornConfig`.
      axis_name: see :func:`sinkhorn_divergence`.
      validate: eager value checks.
      **options: fields of :class:`SinkhornConfig`, replacing ``config``'s.

    Returns:
      A scalar, the estimate of ``W_p``.

    Raises:
      ValueError: ``p < 1``, or as :func:`sinkhorn_divergence`.

    References:
      Chizat, Roussillon, Léger, Vialard & Peyré, "Faster Wasserstein Distance
      Estimation with the Sinkhorn Divergence", NeurIPS 2020.

    Example:
      >>> import jax, densax
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> shifted = x + jax.numpy.array([3.0, 4.0])  # W_2 = |shift| = 5
      >>> round(float(densax.ot.wasserstein_entropic(x, shifted, epsilon=0.1)), 2)
      5.0
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a number >= 1, got {type(p).__name__}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    out = sinkhorn_divergence(
        x,
        y,
        a=a,
        b=b,
        epsilon=epsilon,
        cost_fn=_wasserstein_cost(p),
        tol=tol,
        config=config,
        axis_name=axis_name,
        validate=validate,
        **options,
    )
    s = out.divergence
    positive = s > 0
    return jnp.where(positive, jnp.where(positive, s, 1.0) ** (1.0 / p), 0.0)


def _check_result(result: SinkhornOutput, storage, block_size) -> int | None:
    """The rows per block of a pass over ``result``'s plan (None: dense)."""
    if isinstance(result, SinkhornDivergenceOutput):
        raise TypeError("pass the SinkhornOutput of a problem, e.g. result.xy")
    if not isinstance(result, SinkhornOutput):
        raise TypeError(f"result must be a SinkhornOutput, got {type(result).__name__}")
    matrix = result.cost_matrix is not None
    n, m = result.f.shape[0], result.g.shape[0]
    config = SinkhornConfig(storage=storage, block_size=block_size)
    _, cfg = _resolve(
        config, cost_fn=result.cost_fn, n=n, m=m, d=0 if matrix else 1, matrix=matrix
    )
    return cfg.block_size


def _result_geom(result: SinkhornOutput, block_size, axis_name) -> _Geom:
    return _make_geom(
        result.cost_fn, result.x, result.y, block_size, axis_name, result.cost_matrix
    )


@functools.partial(jax.jit, static_argnames=("block_size", "axis_name"))
def _plan_core(result: SinkhornOutput, block_size, axis_name):
    geom = _result_geom(result, block_size, axis_name)
    return _row_pass(
        result.cost_fn,
        geom,
        result.f,
        result.g,
        result.epsilon,
        lambda c, v, ok: jnp.where(ok, jnp.exp(v), 0.0),
        transpose=False,
        block_size=block_size,
        remat=False,
    )


@functools.partial(jax.jit, static_argnames=("transpose", "block_size", "axis_name"))
def _apply_core(result: SinkhornOutput, mat, transpose, block_size, axis_name):
    geom = _result_geom(result, block_size, axis_name)
    return _apply(
        result.cost_fn,
        geom,
        result.f,
        result.g,
        result.epsilon,
        mat,
        transpose=transpose,
        block_size=block_size,
        axis_name=axis_name,
    )


def transport_plan(
    result: SinkhornOutput,
    *,
    storage: str = "dense",
    block_size: int | None = None,
    axis_name: Any = None,
) -> jax.Array:
    """Materialises the entropic plan ``P_ij = exp((f_i + g_j - C_ij) / eps)``.

    Args:
      result: the output of :func:`sinkhorn` (points or a cost matrix).
      storage: ``"dense"`` (default) forms the cost matrix at once;
        ``"online"`` builds ``P`` by blocks of rows (same values; caps the
        temporary memory of the cost at ``O(block_size m)``); ``"auto"`` as
        in :class:`SinkhornConfig`. A cost-matrix result is always dense.
      block_size: rows per block when online (None: automatic).
      axis_name: for a result computed with ``x`` sharded, the rows of the
        local shard.

    Returns:
      ``[n, m]`` plan, its rows sum to ``a`` and columns to ``b`` (within the
      solver's tolerance).

    Example:
      >>> import jax, densax
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> y = jax.random.normal(jax.random.key(1), (48, 2)) + 1.0
      >>> out = densax.ot.sinkhorn(x, y, epsilon=0.1, tol=1e-6)
      >>> plan = densax.ot.transport_plan(out)
      >>> plan.shape, round(float(plan.sum()), 4)
      ((64, 48), 1.0)
    """
    block_size = _check_result(result, storage, block_size)
    return _plan_core(result, block_size, axis_name)


def apply_plan(
    result: SinkhornOutput,
    vec: Any,
    *,
    transpose: bool = False,
    storage: str = "auto",
    block_size: int | None = None,
    axis_name: Any = None,
) -> jax.Array:
    """``P @ vec`` (or ``P^T @ vec``) without forming ``P`` when online.

    Args:
      result: the output of :func:`sinkhorn` (points or a cost matrix).
      vec: ``[m]`` or ``[m, k]`` (``[n]`` or ``[n, k]`` with ``transpose``).
      transpose: apply ``P^T`` instead of ``P``.
      storage: ``"online"`` computes by blocks of ``block_size`` rows (memory
        ``O(block_size max(n, m))``); ``"dense"`` forms the dense cost;
        ``"auto"`` (default) as in :class:`SinkhornConfig`. A cost-matrix
        result is always dense.
      block_size: rows per block when online (None: automatic).
      axis_name: for a result computed with ``x`` sharded along this axis
        (``P^T @ vec`` then sums over all shards).

    Returns:
      ``[n]`` / ``[n, k]`` (or ``[m]`` / ``[m, k]`` with ``transpose``).

    Example:
      >>> import jax, densax
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> y = jax.random.normal(jax.random.key(1), (48, 2)) + 1.0
      >>> out = densax.ot.sinkhorn(x, y, epsilon=0.1)
      >>> # barycentric projection: where the plan sends each x_i
      >>> t = densax.ot.apply_plan(out, out.y) / out.a[:, None]
      >>> t.shape
      (64, 2)
    """
    block_size = _check_result(result, storage, block_size)
    if not isinstance(transpose, bool):
        raise TypeError(f"transpose must be a bool, got {type(transpose).__name__}")
    n, m = result.f.shape[0], result.g.shape[0]
    want = n if transpose else m
    vec = _validate.as_float(vec, "vec", ndim=(1, 2), dtype=result.f.dtype)
    if vec.shape[0] != want:
        raise ValueError(
            f"vec must have {want} rows (the {'source' if transpose else 'target'} "
            f"points), got shape {vec.shape}"
        )
    mat = vec if vec.ndim == 2 else vec[:, None]
    out = _apply_core(result, mat, transpose, block_size, axis_name)
    return out if vec.ndim == 2 else out[:, 0]


def _uniform(w: jax.Array) -> bool:
    """Whether ``w`` is concretely uniform (False for a tracer)."""
    try:
        return bool(jnp.all(w == w[0]))
    except jax.errors.ConcretizationTypeError:
        return False


def to_ott(result: SinkhornOutput) -> Any:
    """The same solution as an ott-jax ``SinkhornOutput``.

    It carries a ``PointCloud`` geometry (a ``Geometry`` for a cost matrix)
    and a ``LinearProblem``, so ott-jax's tools apply: ``.matrix``,
    ``.apply``, ``.transport_cost_at_geom``, ``.to_dual_potentials()``
    (entropic potentials and maps out of sample). Uniform weights are passed
    as ``None``, so that ott-jax recognises a uniform problem.

    Args:
      result: the output of :func:`sinkhorn` (single device).

    Returns:
      An ``ott.solvers.linear.sinkhorn.SinkhornOutput``.

    Example:
      >>> import jax, densax
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> y = jax.random.normal(jax.random.key(1), (48, 2)) + 1.0
      >>> out = densax.ot.to_ott(densax.ot.sinkhorn(x, y, epsilon=0.1))
      >>> out.matrix.shape
      (64, 48)
    """
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    if result.cost_matrix is not None:
        geom = geometry.Geometry(cost_matrix=result.cost_matrix, epsilon=result.epsilon)
    else:
        geom = pointcloud.PointCloud(
            result.x, result.y, cost_fn=result.cost_fn, epsilon=result.epsilon
        )
    a = None if _uniform(result.a) else result.a
    b = None if _uniform(result.b) else result.b
    prob = linear_problem.LinearProblem(geom, a=a, b=b)
    return ott_sinkhorn.SinkhornOutput(
        potentials=(result.f, result.g),
        errors=jnp.where(jnp.isnan(result.trace), -1.0, result.trace)[:, None],
        reg_ot_cost=result.reg_cost,
        ot_prob=prob,
        converged=result.converged,
        inner_iterations=1,
    )
