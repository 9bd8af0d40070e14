"""One problem's Sinkhorn iterations: the cross and the symmetric updates.

:func:`solve_xy` iterates ``g <- eps log b - LSE_i(f - C) / eps``,
``f <- eps log a - LSE_j(g - C) / eps`` (log-domain, relaxed) for
``OT(a, b)``; :func:`solve_sym` iterates ``f <- (f + T(f)) / 2`` for
``OT(a, a)``. Each writes one iteration as a ``body`` and hands it to
``_loop.run_loop`` with the cached kernel's ``build`` when the geometry caches
it. The body asks the geometry (or the kernel) for the masses: a cached
kernel gives them by matrix-vector products, a dense cost by two fused
passes, an online one by ``_geometry.one_pass``.

:func:`solve_and_state` runs a solve and what it reports besides the
potentials (:class:`Aux`); :func:`epsilons` sets the target epsilon and the
annealing :class:`Schedule` from the cost's scale.

Invariant kept here: after each g-update every exponent is ``<= 0`` (each
column of the plan sums to ``b_j <= 1``), so the row masses need no
max-shift (see ``densax/ot/README.md``).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from ott.geometry import costs

from densax.ot._acceleration import Relaxation, relax
from densax.ot._geometry import (
    Geom,
    caches_kernel,
    cost_scale,
    gather,
    one_pass,
    pair_sum,
    plan_cost,
    psum,
    sums,
)
from densax.ot._kernel import Kernel, build_kernel, kernel_plan_cost, scaling
from densax.ot._loop import LoopState, init_state, run_loop
from densax.ot._starts import start_potentials

__all__ = [
    "Aux",
    "Problem",
    "Schedule",
    "epsilons",
    "solve_and_state",
    "solve_sym",
    "solve_xy",
    "total_mass",
]

_DEFAULT_EPSILON_SCALE = 0.05  # epsilon = 0.05 x the cost scale by default
_PLAIN = Relaxation(1.0)


class Schedule(NamedTuple):
    """Where the annealing starts, the scale that sets ``omega0``, the fits."""

    start: jax.Array  # [] the cost's spread (at least epsilon)
    scale: jax.Array  # [] the cost scale (mean cost)
    # ([d, d], [d, d]) covariances of x and y for the Gaussian start, or None
    covs: tuple[jax.Array, jax.Array] | None = None
    # (f_init [n], g_init [m] or None): a warm start (no gradient), or None
    init: tuple[jax.Array, jax.Array | None] | None = None


def epsilons(cfg, cost_fn, geom, a, b, epsilon, init=None):
    """Target epsilon and the annealing :class:`Schedule`.

    The target defaults to ``0.05 x`` the cost scale (the mean cost, as in
    ott-jax). The annealing starts at the cost's spread, its standard
    deviation under ``a ⊗ b``: a constant added to the cost changes neither
    the plan nor the spread, so it adds no level. Nothing here carries a
    gradient when derived from the data; nor does a warm start ``init``.
    """
    init = None if init is None else lax.stop_gradient(init)
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    scale, spread, covs = lax.stop_gradient(cost_scale(cost_fn, geom, a, b, **kw))
    covs = covs if cfg.initializer == "gaussian" else None
    scale = jnp.where(scale > 0, scale, 1.0)
    eps = _DEFAULT_EPSILON_SCALE * scale if epsilon is None else epsilon
    plain = lax.stop_gradient(eps)
    if cfg.epsilon_scaling is None:
        return eps, Schedule(plain, plain, covs, init)
    start, scale = jnp.maximum(spread, plain), jnp.maximum(scale, plain)
    return eps, Schedule(start, scale, covs, init)


def solve_xy(cfg, cost_fn, geom, a, b, eps, sched, threshold, resume=None):
    """Sinkhorn iterations for the cross problem.

    ``resume``: ``(k, trace)`` of an earlier path whose budget this one
    continues, or None. Returns the final state and the last kernel.
    """
    tiny = jnp.finfo(a.dtype).tiny
    log_a, log_b = jnp.log(a), jnp.log(b)
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    annealing, relaxation = cfg.annealing, cfg.over_relaxation
    levels = annealing.levels(eps, sched.start)
    eps0 = annealing.epsilon(eps, levels)
    f0, g0 = start_potentials(
        cfg, cost_fn, geom, a, b, eps0, sched.covs, False, sched.init
    )
    omega0 = relaxation.start(eps, sched.scale, levels).astype(a.dtype)

    def body(s: LoopState, kern: Kernel | None = None) -> LoopState:
        e, at_target, anneal = annealing.update(s.anneal, eps)
        omega = s.relax.omega
        if kern is None and geom.cost is None:
            step_g, col_err, r = one_pass(
                cost_fn, geom, s.f, s.g, e, b, log_b, lambda t: relax(t, omega), **kw
            )
            g = s.g + e * step_g
        else:
            if kern is not None:
                u = scaling(s.f, kern.f0, e)
                t = psum(u @ kern.k, cfg.axis_name) * scaling(s.g, kern.g0, e)
            else:
                t = sums(cost_fn, geom, s.f, s.g, e, transpose=True, **kw)
            step_g = relax(log_b - jnp.log(jnp.maximum(t, tiny)), omega)
            g = s.g + e * step_g
            col_err = jnp.sum(jnp.abs(t * jnp.exp(step_g) - b))
            if kern is not None:
                r = u * (kern.k @ scaling(g, kern.g0, e))
            else:
                r = sums(cost_fn, geom, s.f, g, e, transpose=False, **kw)
        err = psum(jnp.sum(jnp.abs(r - a)), cfg.axis_name) + col_err
        f = s.f + e * relax(log_a - jnp.log(jnp.maximum(r, tiny)), omega)
        relax_state = relaxation.update(s.relax, err, at_target, omega0)
        return LoopState(
            f=f,
            g=g,
            f_out=s.f,
            err=err,
            k=s.k + 1,
            anneal=anneal,
            relax=relax_state,
            trace=s.trace.at[s.k].set(err),
            mass=psum(jnp.sum(r), cfg.axis_name),
        )

    init = _resumed(init_state(cfg, f0, g0, eps, levels), resume)
    build = functools.partial(build_kernel, cost_fn, geom)
    build = build if caches_kernel(cfg, geom) else None
    return run_loop(cfg, body, init, threshold, eps, build)


def _resumed(init: LoopState, resume) -> LoopState:
    """``init`` continuing the iteration count and trace ``resume``."""
    if resume is None:
        return init
    return init._replace(k=resume[0], trace=resume[1])


def solve_sym(cfg, cost_fn, geom, a, eps, sched, threshold, resume=None):
    """Symmetric Sinkhorn for OT(a, a): ``f <- (f + T(f)) / 2``.

    With ``x`` sharded, ``geom`` pairs the local points (rows) with all points
    (columns), and the column potentials are gathered at each iteration.
    """
    tiny = jnp.finfo(a.dtype).tiny
    log_a = jnp.log(a)
    axis_name = cfg.axis_name
    gather_all = functools.partial(gather, axis_name=axis_name)
    kw = dict(block_size=cfg.block_size, axis_name=None)
    annealing = cfg.annealing
    levels = annealing.levels(eps, sched.start)
    eps0 = annealing.epsilon(eps, levels)
    # h_i <= min_j (C_ij - f0_j): (f0 + h) / 2 keeps every exponent <= 0.
    f0, h = start_potentials(cfg, cost_fn, geom, a, a, eps0, sched.covs, True)
    f_init = 0.5 * (f0 + h)

    def body(s: LoopState, kern: Kernel | None = None) -> LoopState:
        e, at_target, anneal = annealing.update(s.anneal, eps)
        if kern is None:
            r = sums(cost_fn, geom, s.f, gather_all(s.f), e, transpose=False, **kw)
        else:
            v = scaling(gather_all(s.f), kern.g0, e)
            r = scaling(s.f, kern.f0, e) * (kern.k @ v)
        err = 2.0 * psum(jnp.sum(jnp.abs(r - a)), axis_name)
        f = s.f + 0.5 * e * (log_a - jnp.log(jnp.maximum(r, tiny)))
        # No relaxation (the symmetric update is already averaged); the
        # error history is kept all the same.
        history = _PLAIN.update(s.relax, err, at_target, 1.0)
        return s._replace(
            f=f,
            g=f,
            f_out=s.f,
            err=err,
            k=s.k + 1,
            anneal=anneal,
            relax=history._replace(omega=s.relax.omega),
            trace=s.trace.at[s.k].set(err),
            mass=psum(jnp.sum(r), axis_name),
        )

    init = _resumed(init_state(cfg, f_init, f_init, eps, levels), resume)
    build = None
    if caches_kernel(cfg, geom):
        # Columns are all points: run_loop hands the kernel (and its
        # staleness test) gather_all(g).
        build = functools.partial(build_kernel, cost_fn, geom)
    return run_loop(cfg, body, init, threshold, eps, build, gather_all)


# --------------------------------------------------------------------------
# Differentiation: envelope (raise on potentials), implicit, unrolled.


class Problem(NamedTuple):
    """Differentiable data of a problem (a pytree for ``custom_vjp``)."""

    geom: Geom
    cost_fn: costs.CostFn
    a: jax.Array  # [n]
    b: jax.Array  # [m]
    eps: jax.Array  # []


class Aux(NamedTuple):
    """What a solve reports besides the potentials (no gradient)."""

    trace: jax.Array  # [max_iter]
    n_iter: jax.Array  # [] int32
    converged: jax.Array  # [] bool
    mass: jax.Array  # [] sum_ij P_ij at the returned potentials
    transport_cost: jax.Array | None  # [] <P, C> from the cached kernel
    fallback: jax.Array  # [] bool: the plain zero-start path gave the result


def total_mass(cfg, cost_fn, geom, f, g, eps):
    """``sum_ij P_ij`` at ``(f, g, eps)`` by a pass, differentiable."""
    ones, zeros = jnp.ones_like(f), jnp.zeros_like(g)
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    return pair_sum(cost_fn, geom, f, g, eps, ones, zeros, **kw)


def solve_and_state(cfg, prob: Problem, sched, threshold, symmetric):
    """Solves; returns the final loop state and its :class:`Aux`.

    The loop's last pass gives the plan's mass, and a cached kernel its
    transport cost, when they are at the target epsilon; a solve stopped
    while annealing pays a pass for each instead.
    """
    geom, cost_fn, a, b, eps = prob

    def solve(cfg, sched, resume=None):
        if symmetric:
            return solve_sym(cfg, cost_fn, geom, a, eps, sched, threshold, resume)
        return solve_xy(cfg, cost_fn, geom, a, b, eps, sched, threshold, resume)

    s, kern = solve(cfg, sched)
    fallback = jnp.zeros((), bool)
    if cfg.stall:
        s, kern, fallback = _fall_back(cfg, solve, sched, s, kern, threshold, eps)
    g = gather(s.f_out, cfg.axis_name) if symmetric else s.g  # columns: all points
    mass = lax.cond(
        s.anneal.eps == eps,
        lambda: s.mass,
        lambda: total_mass(cfg, cost_fn, geom, s.f_out, g, eps),
    )
    transport_cost = None
    if kern is not None and not symmetric:
        kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
        transport_cost = lax.cond(
            (kern.eps == eps) & ~fallback,
            lambda: kernel_plan_cost(geom, kern, s.f_out, s.g, cfg.axis_name),
            lambda: plan_cost(cost_fn, geom, s.f_out, s.g, eps, **kw),
        )
    converged = _converged(s, threshold, eps)
    return s, Aux(s.trace, s.k, converged, mass, transport_cost, fallback)


def _converged(s: LoopState, threshold, eps):
    return (s.err <= threshold) & (s.anneal.eps <= eps) & jnp.isfinite(s.err)


def _fall_back(cfg, solve, sched, s, kern, threshold, eps):
    """The plain zero-start iteration after a stalled accelerated path.

    An acceleration (the Gaussian or a warm start, annealing, relaxation)
    changes the path, not the fixed point, and on some ill-conditioned
    problems its path stalls where plain Sinkhorn from the zero start
    converges at once (ten points against a shifted copy at a small
    epsilon). The loop stops such a path (``cfg.stall``); then, within the
    same jitted program, plain Sinkhorn from ``f = eps log a`` takes the rest
    of the budget, and the state with the smaller error is kept (the first
    one, with its own trace, if the plain path does no better). Under
    ``vmap`` the members that did not stall take no plain iteration.

    Returns ``(state, kernel, fallback)``, ``fallback`` whether the plain
    path's state was kept (the kernel is then the first path's, stale).
    """
    # No cached kernel either: the plain loop is a single while_loop (the
    # fallback is compiled into every accelerated solve; this halves its
    # size), and it runs only on stalled problems.
    plain = dataclasses.replace(
        cfg,
        initializer="zero",
        epsilon_scaling=None,
        relaxation=1.0,
        stall=0,
        kernel=0,
    )
    stalled = (s.k < cfg.max_iter) & ~_converged(s, threshold, eps)
    stalled = stalled & jnp.isfinite(s.err)

    def run(args):
        s, kern = args
        # Members that did not stall start with no budget left (vmap).
        k0 = jnp.where(stalled, s.k, cfg.max_iter)
        t, _ = solve(plain, sched._replace(covs=None, init=None), (k0, s.trace))
        better = t.err < s.err
        pick = lambda u, v: jax.tree.map(lambda p, q: jnp.where(better, p, q), u, v)
        return pick(t, s), kern, better

    def keep(args):
        return (*args, jnp.zeros((), bool))

    return lax.cond(stalled, run, keep, (s, kern))
