"""The accelerations of the fixed-point loop: annealing and over-relaxation.

Each is a small frozen (static, hashable) rule with its own state, a
``NamedTuple`` carried by the loop, and ``init`` / ``update`` functions, as
optax's transforms and ott-jax's ``Momentum`` are:

* :class:`Annealing` (epsilon-scaling, as in GeomLoss): the iterations run at
  ``eps / q^L, ..., eps / q, eps``, one iteration per level, from about the
  cost's spread down to the target ``eps``. Consecutive levels differ by
  exactly ``q``, so a cached kernel passes from one level to the next by an
  integer power when ``1 / q`` is one (``_kernel.next_kernel``).
* :class:`Relaxation` (adaptive successive over-relaxation, Hageman &
  Young): every log-step is scaled by ``omega`` (:func:`relax`); at the target
  epsilon ``omega`` starts from the optimum for the rate that
  ``epsilon / scale`` predicts and is raised from the observed rate of
  convergence, never past what the error history supports.

Neither changes the fixed point: only the path to it. Both are frozen
(``stop_gradient``): no derivative flows through ``omega`` or the levels.

References:
  Feydy et al., "Interpolating between Optimal Transport and MMD using
  Sinkhorn Divergences", AISTATS 2019 (epsilon-scaling). Thibault et al.,
  "Overrelaxed Sinkhorn-Knopp Algorithm for Regularized Optimal Transport",
  2021. Hageman & Young, "Applied Iterative Methods", 1981 (adaptive SOR).
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["AnnealState", "Annealing", "RelaxState", "Relaxation", "relax"]

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
# Progress at the target epsilon: the error has fallen by this factor since
# `mark` (see RelaxState); the loop calls a path stalled without it for a
# while (_loop.stalled).
_STALL_DROP = 0.98


class AnnealState(NamedTuple):
    """Where the annealing stands."""

    level: jax.Array  # [] int32 annealing levels left (0: at the target)
    eps: jax.Array  # [] epsilon of the last iteration


@dataclasses.dataclass(frozen=True)
class Annealing:
    """Epsilon-scaling by a factor ``scaling`` per iteration (None: none).

    Attributes:
      scaling: ``q`` in ``(0, 1)``, or None for no annealing.
      max_iter: the iteration budget (no more levels than that).
    """

    scaling: float | None
    max_iter: int

    def levels(self, eps, start):
        """Number of annealing levels: the first iteration runs near ``start``.

        With ``q = scaling``, the schedule is ``eps / q^L, ..., eps / q,
        eps``; ``L`` is the nearest integer to ``log(start / eps) / log(1 /
        q)``, none below ``_MIN_LEVELS``.
        """
        if self.scaling is None:
            return jnp.zeros((), jnp.int32)
        ratio = jnp.log(start / eps) / -math.log(self.scaling)
        ok = jnp.isfinite(ratio) & (ratio >= _MIN_LEVELS)
        levels = jnp.minimum(jnp.where(ok, ratio, 0.0), self.max_iter)
        return jnp.round(levels).astype(jnp.int32)

    def epsilon(self, eps, level):
        """``eps / q^level``: the epsilon of an iteration ``level`` levels above."""
        if self.scaling is None:
            return eps
        return eps * jnp.power(jnp.asarray(1.0 / self.scaling, eps.dtype), level)

    def init(self, eps, levels) -> AnnealState:
        """The state before the first iteration, ``levels`` above ``eps``."""
        return AnnealState(level=levels, eps=self.epsilon(eps, levels))

    def update(self, state: AnnealState, eps):
        """``(epsilon, at_target, state after)`` of the next iteration."""
        e = self.epsilon(eps, state.level)
        return e, state.level == 0, AnnealState(jnp.maximum(state.level - 1, 0), e)


class RelaxState(NamedTuple):
    """The relaxation and the error history it is adapted from."""

    omega: jax.Array  # [] relaxation of the next iteration
    k_target: jax.Array  # [] int32 iterations run at the target epsilon
    history: jax.Array  # [3] last errors at the target epsilon (newest first)
    best: jax.Array  # [] smallest error seen at the target epsilon
    mark: jax.Array  # [] error at the target when it last fell by _STALL_DROP
    since: jax.Array  # [] int32 iterations at the target since then


def relax(step, omega):
    """Over-relaxed log-step ``step + (omega - 1) clip(step)``.

    The extra part is clipped so that a wild early step cannot overflow the
    next pass; near convergence steps are small and the clip is inactive.
    """
    return step + (omega - 1.0) * jnp.clip(step, -_RELAX_CLIP, _RELAX_CLIP)


@dataclasses.dataclass(frozen=True)
class Relaxation:
    """Over-relaxation: a fixed ``omega``, or adaptive (``omega=None``).

    Attributes:
      omega: the relaxation in ``(0, 2)`` (1: plain Sinkhorn), or None for
        Hageman & Young's adaptive rule.
    """

    omega: float | None

    def init(self, dtype) -> RelaxState:
        """Plain (``omega = 1``) until the target epsilon is reached."""
        inf = jnp.asarray(jnp.inf, dtype)
        return RelaxState(
            omega=jnp.asarray(1.0, dtype),
            k_target=jnp.asarray(0, jnp.int32),
            history=jnp.full(3, jnp.inf, dtype),
            best=inf,
            mark=inf,
            since=jnp.asarray(0, jnp.int32),
        )

    @staticmethod
    def start(eps, scale, levels):
        """Relaxation that starts the target phase, from ``epsilon / scale``.

        ``scale`` is the cost scale. Without annealing levels (none asked
        for, or ``epsilon`` near the start, where plain iterations converge
        fast) the start is plain (``omega = 1``).
        """
        gap = jnp.minimum(_GAP_PER_EPSILON * eps / scale, 1.0)
        omega = jnp.where(levels > 0, 2.0 / (1.0 + jnp.sqrt(gap)), 1.0)
        return lax.stop_gradient(omega)

    def update(self, state: RelaxState, err, at_target, omega0) -> RelaxState:
        """The state after an iteration with L1 error ``err``.

        The first iteration at the target epsilon is plain; ``omega0`` (see
        :meth:`start`) follows. From the observed rate ``mu`` under
        relaxation ``omega``, the plain Sinkhorn rate is
        ``lam = (mu + omega - 1)^2 / (mu omega^2)``, and the optimal
        relaxation ``2 / (1 + sqrt(1 - lam))``. ``omega`` only grows, capped
        by ``_MAX_RATE``, and falls back to 1 if the error blows up.
        """
        history = jnp.where(
            at_target,
            jnp.concatenate([err[None], state.history[:2]]),
            jnp.full(3, jnp.inf, err.dtype),
        )
        k_target = state.k_target + at_target.astype(jnp.int32)
        best = jnp.where(at_target, jnp.minimum(state.best, err), jnp.inf)
        progress = err < _STALL_DROP * state.mark
        mark = jnp.where(at_target, jnp.where(progress, err, state.mark), jnp.inf)
        since = jnp.where(at_target & ~progress, state.since + 1, 0)
        if self.omega is not None:
            omega = jnp.asarray(self.omega, err.dtype)
            return RelaxState(omega, k_target, history, best, mark, since)
        omega = state.omega
        mu = jnp.sqrt(history[0] / history[2])
        lam = jnp.clip((mu + omega - 1.0) ** 2 / (mu * omega**2), 0.0, _MAX_RATE)
        omega_opt = 2.0 / (1.0 + jnp.sqrt(1.0 - lam))
        update = at_target & (k_target >= _PROBE) & (mu < 1.0) & (mu > omega - 1.0)
        omega = jnp.where(update, jnp.maximum(omega, omega_opt), omega)
        omega = jnp.where(at_target & (k_target == 1), omega0, omega)
        blown_up = at_target & (err > _DIVERGENCE_GUARD * state.best)
        omega = jnp.where(blown_up, 1.0, omega)
        omega = lax.stop_gradient(omega)
        return RelaxState(omega, k_target, history, best, mark, since)
