"""The cached kernel (stabilised scaling): when it is built, squared, rebuilt.

``K_ij = exp((f0_i + g0_j - C_ij) / eps)`` is built once at ``(f0, g0, eps)``
(:func:`build_kernel`: from a dense cost, or online by blocks of matrix
products for the squared Euclidean cost); a pass at potentials ``(f, g)`` is
then a matrix-vector product with the scalings ``exp((f - f0) / eps)``,
``exp((g - g0) / eps)`` (:func:`scaling`), several times cheaper than ``n m``
exponentials.

Invariant kept here (see ``densax/ot/README.md``): the kernel is rebuilt
when ``eps`` changes (annealing levels with ``1 / epsilon_scaling`` an
integer square it instead, :func:`next_kernel`) or when a scaling leaves
``[tiny^(1/4), tiny^(-1/4)]`` (:func:`stale`), so that entries flushed to zero
at the build never matter. Zero weights give zero rows/columns.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from densax.ot._geometry import (
    dense_exponent,
    finite_part,
    pmax,
    psum,
    safe_augmented,
)

__all__ = [
    "Kernel",
    "build_kernel",
    "kernel_plan_cost",
    "next_kernel",
    "scaling",
    "stale",
]

_BUILD_ENTRIES = 1 << 19  # row blocks of a kernel build (online, sq. Euclidean)


class Kernel(NamedTuple):
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


def build_kernel(cost_fn, geom, f, g, eps) -> Kernel:
    """Builds the kernel at ``(f, g, eps)`` (zero rows/columns at -inf)."""
    if geom.cost is not None:
        v, ok = dense_exponent(f, g, geom.cost, eps)
        k = jnp.where(ok, jnp.exp(v), 0.0)
    else:
        p_aug, q_aug, _, _, on_f, on_g = safe_augmented(geom, f, g, eps)
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
    return Kernel(k, f, g, eps)


def scaling(p, p0, eps):
    """``exp((p - p0) / eps)``; 0 where the weight is zero (``p = -inf``)."""
    p0_safe, ok = finite_part(p0)
    return jnp.where(ok, jnp.exp((p - p0_safe) / eps), 0.0)


def next_kernel(epsilon_scaling: float, kern: Kernel, f, g, eps, rebuild) -> Kernel:
    """The kernel at the next annealing level ``eps = q kern.eps``.

    With ``1 / q = p`` an integer, ``exp(Z / eps) = exp(Z / kern.eps)^p``: the
    current scalings are absorbed and the kernel raised to the power ``p``,
    with no exponential. (The relative rounding error of an entry grows like
    ``|Z| / eps``, as it would if computed directly.) Otherwise
    ``rebuild()``, a fresh kernel.
    """
    p = round(1.0 / epsilon_scaling)
    if abs(p * epsilon_scaling - 1.0) > 1e-12:
        return rebuild()
    u = scaling(f, kern.f0, kern.eps)
    v = scaling(g, kern.g0, kern.eps)
    return Kernel(lax.integer_pow(kern.k * u[:, None] * v[None, :], p), f, g, eps)


def kernel_plan_cost(geom, kern: Kernel, f, g, axis_name):
    """``<P, C>`` at ``(f, g)`` from a kernel at the target epsilon.

    Dense: one fused pass over ``K`` and ``C``. Squared Euclidean online:
    ``sum_ij P_ij (|x_i|^2 + |y_j|^2 - 2 x_i.y_j)``, one product of ``K``
    with ``[m, d + 2]`` columns; no exponential either way.
    """
    u = scaling(f, kern.f0, kern.eps)
    v = scaling(g, kern.g0, kern.eps)
    if geom.cost is not None:
        rows = jnp.sum(kern.k * geom.cost * v[None, :], axis=1)
        return psum(u @ rows, axis_name)
    x, y = geom.x, geom.y
    sq_y = jnp.sum(y * y, 1)
    cols = jnp.concatenate([y, sq_y[:, None], jnp.ones_like(sq_y)[:, None]], 1)
    ky = kern.k @ (v[:, None] * cols)  # [n, d + 2]
    d = x.shape[1]
    per_row = (
        jnp.sum(x * x, 1) * ky[:, d + 1] + ky[:, d] - 2.0 * jnp.sum(x * ky[:, :d], 1)
    )
    return psum(u @ per_row, axis_name)


def stale(kern: Kernel, f, g, eps, axis_name):
    """Whether the kernel must be rebuilt before a pass at ``(f, g, eps)``.

    The same on every device when ``f`` is sharded: the loops that test it
    contain collectives.
    """
    bound = -0.25 * eps * jnp.log(jnp.finfo(f.dtype).tiny)

    def drift(p, p0):
        p0_safe, ok = finite_part(p0)
        return jnp.max(jnp.where(ok & (p > -jnp.inf), jnp.abs(p - p0_safe), 0.0))

    drift_f = pmax(drift(f, kern.f0), axis_name)
    return (eps != kern.eps) | (drift_f > bound) | (drift(g, kern.g0) > bound)
