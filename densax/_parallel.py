"""Collectives over a mapped axis, written once for the whole package.

Every data-parallel function of densax takes ``axis_name: str | None``. With
``None`` the helpers below are the identity (one device holds all the data);
with a name they reduce over that axis of a ``jax.shard_map`` / ``jax.pmap``,
so a sharded call equals the unsharded one. Semantics, the same everywhere:

* :func:`psum`: the sum over devices of a per-device partial sum;
* :func:`pmax`: the maximum over devices, **without derivative** (it is only
  ever used as a shift or a bound, never as a value to differentiate; JAX has
  no differentiation rule for ``pmax``);
* :func:`gather`: the shards concatenated along axis 0, the same (invariant)
  array on every device;
* :func:`logsumexp`: ``log sum_devices exp(lse)`` by a ``pmax`` shift and a
  ``psum``, finite where every shard is ``-inf``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from densax import _parallel
  >>> float(_parallel.psum(jnp.float32(2.0), None))
  2.0
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["gather", "logsumexp", "pmax", "psum"]


def psum(value: Any, axis_name: Any) -> Any:
    """Sum of a pytree over the devices of ``axis_name`` (identity for None)."""
    return value if axis_name is None else lax.psum(value, axis_name)


def pmax(value: Any, axis_name: Any) -> Any:
    """Maximum over the devices of ``axis_name``, as a constant for autodiff."""
    if axis_name is None:
        return value
    return lax.pmax(lax.stop_gradient(value), axis_name)


def gather(value: Any, axis_name: Any) -> Any:
    """Every device's rows concatenated along axis 0, invariant across devices."""
    if axis_name is None:
        return value
    return lax.all_gather(value, axis_name, tiled=True, to="invarying")


def logsumexp(lse: jax.Array, axis_name: Any) -> jax.Array:
    """``log(sum over devices of exp(lse))``, elementwise; ``lse`` for None."""
    if axis_name is None:
        return lse
    top = pmax(lse, axis_name)
    top = jnp.where(jnp.isfinite(top), top, 0)
    return top + jnp.log(lax.psum(jnp.exp(lse - top), axis_name))
