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
and non-numeric inputs are rejected with a ``TypeError``. Half-precision
inputs (float16, bfloat16) are *computed* in float32 and the results returned
in the input's half dtype (:func:`half_precision`, the decorator of every
public function): LAPACK has no half-precision factorisations, and sums of
squares overflow float16 (max 65504) long before the data do.

Weights act only through their ratios: the cores normalise them first
(:func:`normalize_weights`, to mean one, so that unit weights are unchanged),
and any floor they add is relative to that scale.
"""

import functools
import inspect
import math
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "HALF_DTYPES",
    "as_float",
    "cast_floats",
    "check_choice",
    "check_finite",
    "check_int",
    "check_key",
    "check_ndim",
    "check_nonempty",
    "check_positive_definite",
    "check_same_last_dim",
    "check_scalar",
    "check_sums_to_one",
    "check_symmetric",
    "check_weights",
    "common_float_dtype",
    "compute_dtype",
    "half_precision",
    "is_concrete",
    "normalize_weights",
    "public",
    "value_check",
]

HALF_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))


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


def check_nonempty(x: Any, name: str, *, axis: int = 0, minimum: int = 1) -> None:
    """Static check: ``x`` has at least ``minimum`` entries along ``axis``.

    Raises:
      ValueError: naming ``name`` and its shape.
    """
    shape = jnp.shape(x)
    if len(shape) > axis and shape[axis] < minimum:
        what = "sample" if axis == 0 else "feature"
        what = f"one {what}" if minimum == 1 else f"{minimum} {what}s"
        raise ValueError(
            f"{name} must have at least {what} (axis {axis}), got shape {shape}"
        )


def check_scalar(
    value: Any,
    name: str,
    dtype: Any,
    *,
    minimum: float | None = None,
    positive: bool = False,
) -> jax.Array:
    """A real scalar option (``reg_covar``, ``tol``...), as a 0-d array of ``dtype``.

    Static checks (always): a real number or a 0-d real array. On a concrete
    value (eagerly): finite and ``>= minimum`` (``> minimum`` with
    ``positive``). A traced value is accepted as it is (e.g. to differentiate
    with respect to it); the function documents what a bad traced value gives.

    Raises:
      TypeError: ``value`` is not a real scalar.
      ValueError: a concrete ``value`` that is NaN, infinite or out of range.
    """
    if isinstance(value, bool) or (
        not isinstance(value, (int, float, np.integer, np.floating))
        and not (hasattr(value, "dtype") and jnp.ndim(value) == 0)
    ):
        raise TypeError(f"{name} must be a real scalar, got {type(value).__name__}")
    if (
        hasattr(value, "dtype")
        and not (
            jnp.issubdtype(value.dtype, jnp.floating)
            or jnp.issubdtype(value.dtype, jnp.integer)
        )
    ) or (hasattr(value, "dtype") and value.dtype == jnp.bool_):
        raise TypeError(f"{name} must be a real scalar, got dtype {value.dtype}")
    if is_concrete(value):
        v = float(np.asarray(value))
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        if minimum is not None and (v <= minimum if positive else v < minimum):
            op = ">" if positive else ">="
            raise ValueError(f"{name} must be {op} {minimum}, got {v}")
    return jnp.asarray(value, dtype)


SUM_TOL = 1e-3  # |sum - 1| allowed of probabilities given as normalised


def check_sums_to_one(total: Any, name: str, what: str = "") -> None:
    """Value check (call on concrete inputs): sums of probabilities equal one.

    The tolerance, ``SUM_TOL = 1e-3``, catches mistakes (counts, a wrong
    axis, weights summing to 2), not rounding: half-precision probabilities
    sum to one only to about ``1e-3``.

    Raises:
      ValueError: naming ``name``, with the worst sum.
    """
    total = np.asarray(total, np.float64)
    if total.size and np.any(np.abs(total - 1) > SUM_TOL):
        worst = float(total.ravel()[np.argmax(np.abs(total.ravel() - 1))])
        raise ValueError(
            f"{name} must sum to one{what} (got a sum of {worst:.6g}); "
            "normalise it first"
        )


def check_symmetric(m: jax.Array, name: str, validate: bool) -> None:
    """Value check: ``m`` [..., d, d] is symmetric up to rounding."""
    if validate and is_concrete(m):
        tol = 100 * jnp.finfo(m.dtype).eps * jnp.max(jnp.abs(m), initial=0.0)
        ok = jnp.all(jnp.abs(m - jnp.swapaxes(m, -1, -2)) <= tol)
        value_check(True, ok, f"{name} must be symmetric")


def check_positive_definite(m: jax.Array, name: str, validate: bool) -> None:
    """Value check: ``m`` [..., d, d] is finite, symmetric and positive definite."""
    if validate and is_concrete(m):
        check_finite(m, name, True)
        check_symmetric(m, name, True)
        ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(m)))
        value_check(True, ok, f"{name} must be positive definite")


def normalize_weights(w: jax.Array, axis_name: str | None = None) -> jax.Array:
    """``w`` [n] rescaled to mean one over all shards (for jitted cores).

    Weights act only through their ratios: rescaling them first makes every
    later sum of the order of the sample count, whatever their scale (1e-30
    or 1e30 in float32), and keeps unit weights bit for bit, so that any
    floor added afterwards (e.g. the ``10 eps`` of an empty component) is
    relative to the weights' scale. With ``axis_name`` the total and the
    count are summed over the shards. Weights that are not valid (only under
    tracing, where they are not checked) stay invalid: negative ones stay
    negative, and a sum that is not positive gives NaN.
    """
    # Two steps: the largest weight first, so that the sum cannot overflow.
    peak = jnp.max(w, initial=0.0)
    count = jnp.asarray(w.shape[0], w.dtype)
    if axis_name is not None:
        peak = jax.lax.pmax(jax.lax.stop_gradient(peak), axis_name)
        count = jax.lax.psum(count, axis_name)
    peak = jax.lax.stop_gradient(jnp.where(peak > 0, peak, 1))
    scaled = w / peak
    total = jnp.sum(scaled)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    # Invalid weights (traced: unchecked) must not turn valid: a sum that is
    # not positive gives NaN, and negative weights stay negative.
    return scaled * jnp.where(total > 0, count / total, jnp.nan)


def _is_float(leaf: Any) -> bool:
    """A floating array (JAX, NumPy, or a tracer); not a dtype or a type."""
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return False
    return jax.dtypes.issubdtype(leaf.dtype, jnp.floating)


def _is_half(leaf: Any) -> bool:
    return _is_float(leaf) and np.dtype(leaf.dtype) in HALF_DTYPES


def compute_dtype(dtype: Any) -> np.dtype:
    """float32 for a half-precision ``dtype``, else ``dtype`` itself.

    For wrappers that resolve their problem's dtype themselves (the entropic
    OT solvers) and apply the policy of :func:`half_precision` with
    :func:`cast_floats`.

    Example:
      >>> compute_dtype(jnp.bfloat16), compute_dtype(jnp.float64)
      (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype in HALF_DTYPES else dtype


def cast_floats(tree: Any, dtype: Any) -> Any:
    """The floating arrays of ``tree`` cast to ``dtype`` (other leaves kept)."""

    def one(leaf):
        return leaf.astype(dtype) if _is_float(leaf) else leaf

    return jax.tree.map(one, tree)


def half_precision(fn: Callable) -> Callable:
    """Decorator: half-precision inputs computed in float32, returned in their dtype.

    When every floating array among the arguments (leaves of pytrees, e.g. a
    model's fields) is float16 or bfloat16, they are cast to float32, ``fn``
    runs, and the floating leaves of its result are cast back to the inputs'
    (common) half dtype. Mixed half and float32/float64 inputs are computed
    in float32 and returned as ``fn`` returns them (the promotion of the
    wider dtype). Integer, boolean and key leaves are left alone. Works under
    ``jit`` (dtypes are static).

    Example:
      >>> @half_precision
      ... def double(x):
      ...     return 2 * x
      >>> double(jnp.ones(2, jnp.float16)).dtype
      dtype('float16')
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        leaves = jax.tree.leaves((args, kwargs))
        floats = {np.dtype(leaf.dtype) for leaf in leaves if _is_float(leaf)}
        if not floats & set(HALF_DTYPES):
            return fn(*args, **kwargs)
        up = lambda a: a.astype(jnp.float32) if _is_half(a) else a
        args, kwargs = jax.tree.map(up, (args, kwargs))
        out = fn(*args, **kwargs)
        if not floats <= set(HALF_DTYPES):
            return out
        target = functools.reduce(jnp.promote_types, floats)
        if np.dtype(target) not in HALF_DTYPES:  # float16 with bfloat16
            return out
        return cast_floats(out, target)

    return wrapper


def check_key(key: Any, name: str = "key") -> None:
    """Static check: ``key`` is a PRNG key (typed, or legacy raw uint32 [..., 2]).

    Raises:
      TypeError: naming ``name``, for anything else (an int seed, floats...).
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype is not None and dtype == jnp.uint32 and jnp.shape(key)[-1:] == (2,):
        return
    what = f"dtype {dtype} and shape {jnp.shape(key)}" if dtype is not None else ""
    raise TypeError(
        f"{name} must be a PRNG key (jax.random.key(seed)), got "
        f"{what or type(key).__name__}"
    )


def public(fn: Callable | None = None, *, optional_key: bool = False) -> Callable:
    """Decorator of densax's public functions: the checks every one shares.

    A first parameter named ``key`` is checked to be a PRNG key
    (:func:`check_key`; ``None`` passes where it is the default, or with
    ``optional_key`` where the function checks it itself), and
    half-precision inputs are computed in float32 (:func:`half_precision`).
    """
    if fn is None:
        return functools.partial(public, optional_key=optional_key)
    params = list(inspect.signature(fn).parameters.values())
    has_key = bool(params) and params[0].name == "key"
    none_ok = has_key and (params[0].default is None or optional_key)
    inner = half_precision(fn)
    if not has_key:
        return inner

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        key = args[0] if args else kwargs.get("key")
        if not (none_ok and key is None):
            check_key(key)
        return inner(*args, **kwargs)

    return wrapper
