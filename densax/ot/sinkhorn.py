"""Entropic optimal transport: Sinkhorn's algorithm, its output and its plan.

Between weighted point clouds ``(x, a)`` and ``(y, b)`` with ground cost
``C_ij = c(x_i, y_j)``, entropic OT solves

    OT_eps(a, b) = min_{P 1 = a, P^T 1 = b}  <P, C> + eps KL(P | a ⊗ b),

whose dual is a smooth concave problem in two potentials ``f, g``. The optimal
plan is ``P_ij = exp((f_i + g_j - C_ij) / eps)`` (ott-jax's convention, in
which ``f`` and ``g`` absorb ``eps log a`` and ``eps log b``). Sinkhorn's
algorithm alternates exact maximisations of the dual in ``g`` and ``f``.

This module is the public solver (:func:`sinkhorn`, :class:`SinkhornOutput`,
:func:`transport_plan`, :func:`apply_plan`, :func:`to_ott`); its parts live
in private modules beside it (``densax/ot/README.md`` maps them and states
the invariants once). The solver, written for speed on CPU and accelerators:

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

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from ott.geometry import costs, pointcloud

from densax import _validate
from densax.ot._config import SinkhornConfig, merge, resolve
from densax.ot._geometry import (
    Geom,
    apply,
    gather,
    make_geom,
    plan_cost,
    psum,
    row_pass,
)
from densax.ot._implicit import potentials, valued
from densax.ot._solve import Problem, epsilons, total_mass

__all__ = [
    "SinkhornOutput",
    "apply_plan",
    "sinkhorn",
    "to_ott",
    "transport_plan",
]


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
    # [] bool: the accelerated path stalled and the plain iteration from the
    # zero start gave the result (SinkhornConfig, "Fallback")
    fallback: jax.Array
    epsilon: jax.Array  # [] regularisation used
    x: jax.Array | None  # [n, d] source points (None for a cost matrix)
    y: jax.Array | None  # [m, d] target points (None for a cost matrix)
    a: jax.Array  # [n] source weights, normalised to sum 1
    b: jax.Array  # [m] target weights, normalised to sum 1
    cost_fn: costs.CostFn | None  # ground cost of x, y (None for a cost matrix)
    cost_matrix: jax.Array | None  # [n, m] the cost given, or None for x, y
    config: "SinkhornConfig"  # the options, every "auto" resolved (static)


def _safe_log(w):
    return jnp.log(jnp.where(w > 0, w, 1.0))


def _dual_value(cfg, cost_fn, geom, f, g, a, b, eps, symmetric, mass):
    """The dual objective, equal to the entropic cost at the optimum.

    ``<a, f - eps log a> + <b, g - eps log b> - eps (sum P - 1)``; with ``f, g``
    held fixed, its derivative in ``x, y, a, b, eps`` is the envelope gradient.
    ``mass``, ``sum P`` as the solve computed it (:class:`Aux`), is the
    value; a pass over the plan gives its derivatives, only when
    differentiated.
    """
    total = functools.partial(total_mass, cfg, cost_fn)
    fa = psum(a @ jnp.where(a > 0, f - eps * _safe_log(a), 0.0), cfg.axis_name)
    if symmetric:
        mass = valued(total, mass, (geom, f, gather(g, cfg.axis_name), eps))
        return 2.0 * fa - eps * (mass - 1.0)
    gb = b @ jnp.where(b > 0, g - eps * _safe_log(b), 0.0)
    mass = valued(total, mass, (geom, f, g, eps))
    return fa + gb - eps * (mass - 1.0)


def _normalise(w, axis_name):
    return w / psum(jnp.sum(w), axis_name)


def _fix_gauge(f, g, a, b, axis_name):
    """Shifts ``(f + c, g - c)`` so that ``<a, f> = <b, g>``.

    A smooth choice of the one free constant: it makes the potentials
    differentiable functions of the data.
    """
    fa = psum(a @ jnp.where(a > 0, f, 0.0), axis_name)
    gb = b @ jnp.where(b > 0, g, 0.0)
    c = 0.5 * (gb - fa)
    return f + c, g - c


def _solve_problem(cfg, cost_fn, x, y, a, b, epsilon, threshold, cost, init, record):
    """Solves ``OT(a, b)``; returns its :class:`SinkhornOutput` and schedule.

    ``cost`` is the ``[n, m]`` cost matrix given instead of points (``x``,
    ``y`` then None), ``init`` a warm start ``(f_init, g_init)`` or None, and
    ``record`` the resolved :class:`SinkhornConfig` the output carries.
    """
    geom = make_geom(cost_fn, x, y, cfg.block_size, cfg.axis_name, cost)
    eps, sched = epsilons(cfg, cost_fn, geom, a, b, epsilon, init)
    prob = Problem(geom, cost_fn, a, b, eps)
    (f, g), aux = potentials(cfg, prob, sched, threshold, False)
    f, g = _fix_gauge(f, g, a, b, cfg.axis_name)
    if cfg.differentiation == "envelope":
        fd, gd = lax.stop_gradient((f, g))
    else:
        fd, gd = f, g
    reg_cost = _dual_value(cfg, cost_fn, geom, fd, gd, a, b, eps, False, aux.mass)
    cost_of = functools.partial(
        plan_cost, cost_fn, block_size=cfg.block_size, axis_name=cfg.axis_name
    )
    if aux.transport_cost is None:
        transport_cost = cost_of(geom, f, g, eps)
    else:
        transport_cost = valued(cost_of, aux.transport_cost, (geom, f, g, eps))
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
        fallback=aux.fallback,
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
    if a is None:
        # Like the rows (ones_like): split as they are under shard_map.
        rows = x if cost_matrix is None else cost_matrix
        a = jnp.ones_like(rows, dtype, shape=(n,))
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
      Half-precision (``float16``, ``bfloat16``) inputs are computed in
      float32 and the results returned in the input dtype.
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
    config = merge(config, options)
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
    record, cfg = resolve(
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
    dtype = a.dtype
    work = _validate.compute_dtype(dtype)
    if work != dtype:  # half precision: computed in float32
        args = _validate.cast_floats((x, y, cost, a, b, epsilon, tol, init), work)
        out = _sinkhorn_core(*args, cost_fn, cfg, record)
        return _validate.cast_floats(out, dtype)
    return _sinkhorn_core(x, y, cost, a, b, epsilon, tol, init, cost_fn, cfg, record)


def _check_result(result: SinkhornOutput, storage, block_size) -> int | None:
    """The rows per block of a pass over ``result``'s plan (None: dense)."""
    if isinstance(getattr(result, "xy", None), SinkhornOutput):  # a divergence's
        raise TypeError("pass the SinkhornOutput of a problem, e.g. result.xy")
    if not isinstance(result, SinkhornOutput):
        raise TypeError(f"result must be a SinkhornOutput, got {type(result).__name__}")
    matrix = result.cost_matrix is not None
    n, m = result.f.shape[0], result.g.shape[0]
    config = SinkhornConfig(storage=storage, block_size=block_size)
    _, cfg = resolve(
        config, cost_fn=result.cost_fn, n=n, m=m, d=0 if matrix else 1, matrix=matrix
    )
    return cfg.block_size


def _result_geom(result: SinkhornOutput, block_size, axis_name) -> Geom:
    return make_geom(
        result.cost_fn, result.x, result.y, block_size, axis_name, result.cost_matrix
    )


@functools.partial(jax.jit, static_argnames=("block_size", "axis_name"))
def _plan_core(result: SinkhornOutput, block_size, axis_name):
    geom = _result_geom(result, block_size, axis_name)
    return row_pass(
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
    return apply(
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
    dtype = result.f.dtype
    work = _validate.compute_dtype(dtype)
    if work != dtype:  # half precision: computed in float32
        return _plan_core(
            _validate.cast_floats(result, work), block_size, axis_name
        ).astype(dtype)
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
    dtype = result.f.dtype
    work = _validate.compute_dtype(dtype)
    if work != dtype:  # half precision: computed in float32
        result, mat = _validate.cast_floats((result, mat), work)
    out = _apply_core(result, mat, transpose, block_size, axis_name).astype(dtype)
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
