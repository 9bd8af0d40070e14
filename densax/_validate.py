"""Input checks shared by densax's public functions.

Two kinds of checks, following one convention across the package:

* **Static checks** (rank, shape, dtype, option strings, Python-int options)
  run at trace time on every call, under ``jit``, ``vmap`` and ``grad`` too,
  and raise a ``TypeError`` or ``ValueError`` that names the argument.
* **Value checks** (NaN or inf in data, negative weights, weights summing to
  zero, a bandwidth that is not positive) need the numbers themselves. They
  run when the caller passes ``validate=True`` (the default of every public
  entry point) *and* the arrays are concrete, i.e. on an eager call. Under a
  transformation the arrays are tracers: the checks are skipped (no host sync
  inside a traced program) and the function's documented behaviour for such
  values applies instead (usually NaN propagated to the affected output only).

Dtype policy: floating inputs keep their dtype; integer inputs are promoted to
JAX's default float (float32, or float64 when x64 is enabled); bool, complex
and non-numeric inputs are rejected with a ``TypeError``.
"""

from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_float",
    "check_choice",
    "check_finite",
    "check_int",
    "check_ndim",
    "check_same_last_dim",
    "check_weights",
    "common_float_dtype",
    "is_concrete",
    "value_check",
]


def is_concrete(*trees: Any) -> bool:
    """True when no leaf of ``trees`` is a tracer (the call is eager)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def common_float_dtype(*arrays: Any) -> np.dtype:
    """The floating dtype that ``arrays`` promote to.

    Floating arrays keep their (common) dtype; integer-only inputs give JAX's
    default float dtype. ``None`` entries are ignored.
    """
    dtypes = [jnp.asarray(a).dtype for a in arrays if a is not None]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return np.dtype(dtype)


def as_float(
    x: Any,
    name: str,
    *,
    ndim: int | Collection[int] | None = None,
    dtype: Any = None,
) -> jax.Array:
    """Converts ``x`` to a floating JAX array, checking its kind and rank.

    Args:
      x: array-like input.
      name: the argument's name, used in error messages.
      ndim: the allowed rank, or a collection of allowed ranks.
      dtype: the floating dtype to cast to; by default floating inputs keep
        their dtype and integer inputs take JAX's default float.

    Returns:
      ``x`` as a ``jax.Array`` of a floating dtype.

    Raises:
      TypeError: ``x`` is bool, complex or not numeric.
      ValueError: ``x`` has a rank not in ``ndim``.

    Example:
      >>> as_float([[1, 2], [3, 4]], "x", ndim=2).dtype
      dtype('float32')
    """
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(
            f"{name} must be a numeric array, got {type(x).__name__}"
        ) from err
    if arr.dtype == jnp.bool_ or jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must have a real numeric dtype, got {arr.dtype}")
    if not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if ndim is not None:
        check_ndim(arr, name, ndim)
    target = common_float_dtype(arr) if dtype is None else np.dtype(dtype)
    return arr.astype(target) if arr.dtype != target else arr


def check_ndim(x: Any, name: str, ndim: int | Collection[int]) -> None:
    """Raises ``ValueError`` unless ``x.ndim`` is ``ndim`` (or one of them)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if jnp.ndim(x) not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(
            f"{name} must have rank {want}, got shape {jnp.shape(x)} "
            f"(rank {jnp.ndim(x)})"
        )


def check_same_last_dim(x: Any, y: Any, x_name: str, y_name: str) -> None:
    """Raises ``ValueError`` when ``x`` and ``y`` differ in their last axis."""
    if jnp.shape(x)[-1:] != jnp.shape(y)[-1:]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same dimension (last axis), "
            f"got shapes {jnp.shape(x)} and {jnp.shape(y)}"
        )


def check_choice(value: Any, name: str, allowed: Collection[Any]) -> None:
    """Raises ``ValueError`` naming the allowed values when ``value`` is not one."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Checks that ``value`` is a Python/NumPy integer, at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def value_check(validate: bool, ok: Any, message: str) -> None:
    """Raises ``ValueError(message)`` when ``ok`` is concrete and false.

    Does nothing when ``validate`` is false or ``ok`` is a tracer (see the
    module docstring).
    """
    if validate and is_concrete(ok) and not bool(np.all(np.asarray(ok))):
        raise ValueError(message)


def check_finite(x: jax.Array, name: str, validate: bool) -> None:
    """Value check: every entry of ``x`` is finite (no NaN, no inf)."""
    if validate and is_concrete(x):
        value_check(True, jnp.all(jnp.isfinite(x)), f"{name} contains NaN or inf")


def check_weights(
    w: Any,
    name: str,
    shape: tuple[int, ...],
    *,
    dtype: Any,
    validate: bool,
) -> jax.Array:
    """Checks a weight array: its shape, its dtype and, eagerly, its values.

    Args:
      w: the weights, array-like; need not be normalised.
      name: the argument's name, for error messages.
      shape: the shape ``w`` must have.
      dtype: the floating dtype to cast to.
      validate: whether to run the value checks (non-negative, finite,
        positive sum along the last axis) on concrete inputs.

    Returns:
      ``w`` as a ``jax.Array`` of ``dtype``.
    """
    w = as_float(w, name, dtype=dtype)
    if w.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {w.shape}")
    if validate and is_concrete(w):
        value_check(True, jnp.all(jnp.isfinite(w)), f"{name} contains NaN or inf")
        value_check(True, jnp.all(w >= 0), f"{name} must be non-negative")
        value_check(
            True, jnp.all(jnp.sum(w, axis=-1) > 0), f"{name} must have a positive sum"
        )
    return w
