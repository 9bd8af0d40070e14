"""The fixed-point loop: its state, and its shape from the iteration bounds.

:func:`run_loop` repeats ``body(state) -> state`` (one Sinkhorn iteration,
written by ``_solve.py``) until the L1 marginal error at the target epsilon
is at most the threshold, within ``min_iter`` and ``max_iter``. Its shape
follows from the options, with no separate flag:

* ``min_iter == max_iter``: a ``scan`` of exactly ``max_iter`` iterations;
* ``differentiation="unroll"``: a ``scan`` whose state freezes once
  converged (reverse-mode differentiable, each step rematerialised);
* otherwise a ``while_loop``; with a cached kernel (``build`` given), an
  annealing ``while_loop`` carrying the kernel from level to level, then at
  the target epsilon an inner ``while_loop`` with the kernel as a loop
  invariant until it is stale (``_kernel.stale``) inside an outer one that
  rebuilds it.

The state (:class:`LoopState`) holds the potentials, the error and its
trace, and the accelerations' own states (``_acceleration``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from densax.ot._acceleration import AnnealState, RelaxState
from densax.ot._kernel import next_kernel, stale

__all__ = ["LoopState", "init_state", "run_loop"]


class LoopState(NamedTuple):
    """The state of the fixed-point loop between two iterations."""

    f: jax.Array  # [n] next f (after the row update)
    g: jax.Array  # [m] current g
    f_out: jax.Array  # [n] the f paired with g: (f_out, g) has error `err`
    err: jax.Array  # [] L1 marginal error of (f_out, g)
    k: jax.Array  # [] int32 iterations done
    anneal: AnnealState  # annealing level and epsilon of the last iteration
    relax: RelaxState  # relaxation and the error history at the target
    trace: jax.Array  # [max_iter] L1 error per iteration, NaN after
    mass: jax.Array  # [] sum_ij P_ij at (f_out, g)


def init_state(cfg, f, g, eps, levels) -> LoopState:
    """The state before the first iteration, from the start ``(f, g)``."""
    dtype = f.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    return LoopState(
        f=f,
        g=g,
        f_out=f,
        err=inf,
        k=jnp.asarray(0, jnp.int32),
        anneal=cfg.annealing.init(eps, levels),
        relax=cfg.over_relaxation.init(dtype),
        trace=jnp.full(cfg.max_iter, jnp.nan, dtype),
        mass=inf,
    )


def run_loop(cfg, body, init: LoopState, threshold, eps, build=None, gather=None):
    """Runs ``body`` until convergence, or for exactly ``max_iter``.

    With ``cfg.stall > 0`` it also stops (after ``min_iter``) when the error
    at the target epsilon has not fallen by 2 % in ``cfg.stall`` iterations
    (``RelaxState.since``): the caller then falls back to the plain
    iteration.

    Args:
      cfg: the static configuration (``_config.CoreConfig``): ``min_iter``,
        ``max_iter``, ``differentiation``, the annealing.
      body: ``body(state, kernel) -> state``, one iteration (``kernel`` is
        None without ``build``).
      init: the state before the first iteration (:func:`init_state`).
      threshold: ``[]`` the tolerance on the L1 marginal error.
      eps: ``[]`` the target epsilon.
      build: ``build(f, g, eps) -> Kernel`` to cache the kernel, or None.
      gather: maps the state's ``g`` to the kernel's columns (symmetric
        problems with ``x`` sharded), or None.

    Returns:
      The final state and the last kernel (``None`` without ``build``).
    """
    annealing = cfg.annealing

    def active(s):
        if cfg.fixed:
            return s.k < cfg.max_iter
        going = (s.k < cfg.min_iter) | (s.anneal.eps > eps) | (s.err > threshold)
        if cfg.stall:
            going = going & ((s.k < cfg.min_iter) | (s.relax.since < cfg.stall))
        return (s.k < cfg.max_iter) & going

    if build is not None:
        cols = (lambda g: g) if gather is None else gather
        e_next = lambda s: annealing.epsilon(eps, s.anneal.level)
        kernel = lambda s: build(s.f, cols(s.g), e_next(s))

        def anneal(c):
            s, kern = c
            s = body(s, kern)
            rebuild = lambda: kernel(s)
            q = annealing.scaling
            return s, next_kernel(q, kern, s.f, cols(s.g), e_next(s), rebuild)

        def iterate(s, kern):
            fresh = lambda t: (
                active(t) & ~stale(kern, t.f, cols(t.g), e_next(t), cfg.axis_name)
            )
            return lax.while_loop(fresh, lambda t: body(t, kern), s)

        def absorb(c):
            # At least one iteration per build, whatever stale says (a NaN
            # epsilon makes every kernel stale).
            kern = kernel(c[0])
            return iterate(body(c[0], kern), kern), kern

        s, kern = init, kernel(init)
        if annealing.scaling is not None:
            annealing_ = lambda c: active(c[0]) & (c[0].anneal.level > 0)
            s, kern = lax.while_loop(annealing_, anneal, (s, kern))
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
