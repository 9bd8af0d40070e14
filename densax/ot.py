"""Optimal transport distances with exact solutions: 1D and sliced Wasserstein.

On the real line the optimal coupling between two weighted empirical measures
is the monotone rearrangement: it pairs the quantile functions, so
``W_p^p = ∫_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p dt`` is computed exactly from
the sorted samples and a merge of the two cumulative weight sequences.
Sliced Wasserstein averages that quantity over random 1D projections.

Sorting dominates the cost, and XLA's CPU sort is several times slower than
NumPy's. On CPU, large sorts (and the merge) therefore run on the host through
``jax.pure_callback``, selected with ``lax.platform_dependent`` so that GPU and
TPU keep ``lax.sort``. The callbacks return integer permutations and ranks
only, which are piecewise constant; every floating-point operation stays in
JAX, so ``jit``, ``vmap``, ``grad`` and ``jvp`` work as usual.

References:
  Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, §2.6.
  Santambrogio, F. (2015). Optimal Transport for Applied Mathematicians, §2.2.
  Bonneel, N., Rabin, J., Peyré, G. and Pfister, H. (2015). Sliced and Radon
  Wasserstein barycenters of measures. J. Math. Imaging Vis. 51, 22–45.
"""

import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from densax import _validate

__all__ = [
    "Coupling1D",
    "random_directions",
    "sliced_wasserstein",
    "wasserstein_1d",
]

# Below this many elements per call, XLA's own sort beats the ~0.1 ms round trip
# of a host callback (measured on a 2-core CPU; see benchmarks/bench_ot.py).
_HOST_MIN_SIZE = 2048


class Coupling1D(NamedTuple):
    """A sparse optimal coupling between two 1D measures (coordinate format).

    Entry ``k`` moves ``mass[..., k]`` from ``u[..., u_index[..., k]]`` to
    ``v[..., v_index[..., k]]``. Entries with zero mass (ties, zero weights) are
    kept so that the size is static.
    """

    u_index: jax.Array  # [..., n + m - 1] int32, index into u's last axis
    v_index: jax.Array  # [..., n + m - 1] int32, index into v's last axis
    mass: jax.Array  # [..., n + m - 1] float, non-negative, summing to one


# ---------------------------------------------------------------------------
# Sorting and merging: NumPy on the host for large CPU inputs, XLA elsewhere.


def _np_argsort(x: Any) -> np.ndarray:
    return np.argsort(np.asarray(x), axis=-1).astype(np.int32)


def _np_merge_ranks(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    # A stable argsort of two concatenated sorted rows is a linear-time merge
    # (timsort finds the two runs); ties put ``a`` first. The k-th element of
    # ``a`` sits at merged position k + #(b < a_k).
    a, b = np.asarray(a), np.asarray(b)
    n, m = a.shape[-1], b.shape[-1]
    order = np.argsort(np.concatenate([a, b], axis=-1), axis=-1, kind="stable")
    from_a = order < n
    pos_a = np.nonzero(from_a)[-1].reshape(a.shape)
    pos_b = np.nonzero(~from_a)[-1].reshape(b.shape)
    return (
        (pos_a - np.arange(n)).astype(np.int32),
        (pos_b - np.arange(m)).astype(np.int32),
    )


def _xla_argsort(x: jax.Array) -> jax.Array:
    return jnp.argsort(x, axis=-1, stable=False).astype(jnp.int32)


def _xla_merge_ranks(a: jax.Array, b: jax.Array, method: str) -> tuple[jax.Array, ...]:
    def ranks(a, b):
        return (
            jnp.searchsorted(b, a, side="left", method=method).astype(jnp.int32),
            jnp.searchsorted(a, b, side="right", method=method).astype(jnp.int32),
        )

    return jnp.vectorize(ranks, signature="(n),(m)->(n),(m)")(a, b)


def _host_or_xla(host_fn, xla_fn, out_like, *args):
    """``xla_fn(*args)``, or ``host_fn`` via a callback for a large CPU input.

    Both compute integer outputs that are piecewise constant in ``args``, so the
    arguments are cut from the gradient (callbacks have no differentiation
    rule, and none is needed).
    """
    args = lax.stop_gradient(args)
    if sum(a.size for a in args) < _HOST_MIN_SIZE:
        return xla_fn(*args)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.int32), out_like)

    def on_host(*args):
        return jax.pure_callback(host_fn, shapes, *args, vmap_method="broadcast_all")

    return lax.platform_dependent(*args, cpu=on_host, default=xla_fn)


def _argsort(x: jax.Array) -> jax.Array:
    """int32 permutation sorting ``x`` along its last axis (NaN last)."""
    return _host_or_xla(_np_argsort, _xla_argsort, x, x)


def _merge_ranks(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For rows sorted along the last axis: ``#(b < a_i)`` and ``#(a <= b_j)``."""
    small = a.size + b.size < _HOST_MIN_SIZE
    xla = functools.partial(_xla_merge_ranks, method="scan" if small else "sort")
    return _host_or_xla(_np_merge_ranks, xla, (a, b), a, b)


# ---------------------------------------------------------------------------
# Exact 1D transport.


def _cost(d: jax.Array, p: int | float) -> jax.Array:
    """``|d|^p``, with the cheap exact forms for p = 1 and integer p."""
    return jnp.abs(d) if p == 1 else jnp.abs(d) ** p


def _root(s: jax.Array, p: int | float) -> jax.Array:
    """``s^(1/p)`` with a zero (not NaN) gradient at ``s = 0``."""
    if p == 1:
        return s
    positive = s > 0
    return jnp.where(positive, jnp.where(positive, s, 1) ** (1 / p), 0)


def _sorted_cdf(x: jax.Array, w: jax.Array | None, shape: tuple[int, ...]):
    """Sorts ``x`` and returns ``(perm, sorted x, normalised CDF)`` of ``shape``.

    The CDF is non-decreasing and ends at exactly one: XLA's parallel cumsum
    is not monotone to the last bit, so a running maximum (exact, as max does
    not round) repairs it, with the cumsum's gradient. Negative weights or a
    non-positive total give a NaN CDF, hence a NaN distance.
    """
    n = x.shape[-1]
    perm = _argsort(x)
    xs = jnp.take_along_axis(x, perm, axis=-1)
    if w is None:
        cdf = jnp.arange(1, n + 1, dtype=x.dtype) / n
        return perm, xs, jnp.broadcast_to(cdf, shape)
    ws = jnp.take_along_axis(
        jnp.broadcast_to(w, shape), jnp.broadcast_to(perm, shape), axis=-1
    )
    c = jnp.cumsum(ws, axis=-1)
    c = c + lax.stop_gradient(lax.cummax(c, axis=c.ndim - 1) - c)
    total = c[..., -1:]
    ok = (total > 0) & ~jnp.any(ws < 0, axis=-1, keepdims=True)
    last = jnp.where(ok, 1, jnp.nan).astype(c.dtype)  # not total / total: XLA
    cdf = c[..., :-1] / jnp.where(ok, total, jnp.nan)  # divides by a reciprocal
    return perm, xs, jnp.concatenate([cdf, last], axis=-1)


def _prepend_zero(c: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.zeros_like(c[..., :1]), c], axis=-1)


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx, axis=-1)


@functools.partial(jax.jit, static_argnames=("p", "coupling"))
def _wasserstein_1d_pow(u, v, u_weights, v_weights, p, coupling):
    """``W_p^p`` over the last axis (and the coupling if ``coupling``)."""
    n, m = u.shape[-1], v.shape[-1]
    u_shape = (
        u.shape if u_weights is None else jnp.broadcast_shapes(u.shape, u_weights.shape)
    )
    v_shape = (
        v.shape if v_weights is None else jnp.broadcast_shapes(v.shape, v_weights.shape)
    )
    pu, su, cu = _sorted_cdf(u, u_weights, u_shape)
    pv, sv, cv = _sorted_cdf(v, v_weights, v_shape)
    if u_weights is None and v_weights is None and n == m and not coupling:
        # Equal uniform weights: the quantile functions share their steps.
        return jnp.mean(_cost(su - sv, p), axis=-1)

    batch = jnp.broadcast_shapes(u_shape[:-1], v_shape[:-1])
    pu, su, cu = (jnp.broadcast_to(a, (*batch, n)) for a in (pu, su, cu))
    pv, sv, cv = (jnp.broadcast_to(a, (*batch, m)) for a in (pv, sv, cv))
    # The breakpoints of the merged CDFs split (0, 1] into intervals on which
    # both quantile functions are constant. The interval ending at cu[i] pairs
    # su[i] with sv[j], j = #(cv < cu[i]), and starts at the previous breakpoint
    # max(cu[i-1], cv[j-1]); symmetrically for cv[j] with i = #(cu <= cv[j]).
    # The one ending at cv[m-1] = 1 = cu[n-1] is empty and left out.
    j_of_u, i_of_v = _merge_ranks(cu, cv)
    i_of_v = i_of_v[..., :-1]
    cu0, cv0 = _prepend_zero(cu), _prepend_zero(cv)
    # XLA recomputes the CDFs inside several fusions, with FMA contraction, so
    # their last bits may differ from those the ranks saw: clip at zero.
    mass_u = jnp.maximum(cu - jnp.maximum(cu0[..., :-1], _take(cv0, j_of_u)), 0)
    mass_v = jnp.maximum(
        cv[..., :-1] - jnp.maximum(cv0[..., :-2], _take(cu0, i_of_v)), 0
    )
    j_of_u = jnp.minimum(j_of_u, m - 1)
    i_of_v = jnp.minimum(i_of_v, n - 1)
    cost_u = _cost(su - _take(sv, j_of_u), p)
    cost_v = _cost(_take(su, i_of_v) - sv[..., :-1], p)
    w_pow = jnp.sum(mass_u * cost_u, axis=-1) + jnp.sum(mass_v * cost_v, axis=-1)
    if not coupling:
        return w_pow
    plan = Coupling1D(
        u_index=jnp.concatenate([pu, _take(pu, i_of_v)], axis=-1),
        v_index=jnp.concatenate([_take(pv, j_of_u), pv[..., :-1]], axis=-1),
        mass=jnp.concatenate([mass_u, mass_v], axis=-1),
    )
    return w_pow, plan


# ---------------------------------------------------------------------------
# Input checks.


def _check_p(p: Any) -> int | float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number (a static Python value), got {p!r}")
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return int(p) if float(p).is_integer() else float(p)


def _as_floats(**arrays: Any) -> dict[str, jax.Array | None]:
    """Checks each array's kind and casts all of them to their common float dtype."""
    for name, x in arrays.items():
        if x is not None:
            _validate.as_float(x, name)
    dtype = _validate.common_float_dtype(*arrays.values())
    return {
        name: None if x is None else _validate.as_float(x, name, dtype=dtype)
        for name, x in arrays.items()
    }


def _check_samples(x: jax.Array, name: str, sample_axis: int) -> int:
    """Raises unless ``x`` has a non-empty sample axis; returns its length."""
    if x.ndim < -sample_axis or x.shape[sample_axis] == 0:
        raise ValueError(
            f"{name} must have at least {-sample_axis} axes and a non-empty "
            f"sample axis, got shape {x.shape}"
        )
    return x.shape[sample_axis]


def _check_weights(
    w: jax.Array | None, name: str, n: int, samples: str, validate: bool
) -> jax.Array | None:
    """Weights with ``n`` entries along their last axis, eagerly value-checked."""
    if w is None:
        return None
    if w.ndim < 1 or w.shape[-1] != n:
        raise ValueError(
            f"{name} must have {n} entries along its last axis (one per sample "
            f"of {samples}), got shape {w.shape}"
        )
    return _validate.check_weights(w, name, w.shape, dtype=w.dtype, validate=validate)


def _broadcast_batch(*named_shapes: tuple[str, tuple[int, ...]]) -> tuple[int, ...]:
    try:
        return jnp.broadcast_shapes(*(s for _, s in named_shapes))
    except ValueError as err:
        desc = ", ".join(f"{name} {s}" for name, s in named_shapes)
        raise ValueError(f"batch shapes do not broadcast: {desc}") from err


# ---------------------------------------------------------------------------
# Public functions.


def wasserstein_1d(
    u: Any,
    v: Any,
    *,
    u_weights: Any = None,
    v_weights: Any = None,
    p: float = 1,
    return_coupling: bool = False,
    validate: bool = True,
) -> jax.Array | tuple[jax.Array, Coupling1D]:
    """Exact p-Wasserstein distance between two weighted samples on the line.

    Computes ``W_p = (∫_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p dt)^(1/p)`` between
    the empirical measures ``Σ_i a_i δ_{u_i}`` and ``Σ_j b_j δ_{v_j}`` (weights
    normalised to sum to one), along the last axis; leading axes are batch
    axes and broadcast. Differentiable with respect to the samples and the
    weights (the derivative at ties and at ``W = 0`` is a subgradient, never
    NaN).

    Args:
      u: [..., n] samples of the first measure.
      v: [..., m] samples of the second measure.
      u_weights: [..., n] non-negative weights of ``u`` (any positive total);
        uniform when ``None``.
      v_weights: [..., m] weights of ``v``; uniform when ``None``.
      p: the order, a Python number >= 1 (static).
      return_coupling: also return the optimal coupling, a
        :class:`Coupling1D` with ``n + m - 1`` entries.
      validate: check the weights' values (finite, non-negative, positive
        total) on an eager call. Under ``jit`` invalid weights give NaN. NaN
        in a sample is not an error: it makes that batch element NaN.

    Returns:
      [...] the distances ``W_p`` in the inputs' floating dtype, and the
      coupling when ``return_coupling``.

    Raises:
      TypeError: non-numeric inputs or a non-number ``p``.
      ValueError: empty samples, shapes that do not match or broadcast,
        ``p < 1``, or (eagerly) invalid weights.

    References:
      Peyré and Cuturi (2019), Computational Optimal Transport, Remark 2.30.

    Example:
      >>> import jax.numpy as jnp
      >>> u = jnp.array([0.0, 1.0, 3.0])
      >>> v = jnp.array([5.0, 6.0])
      >>> round(float(wasserstein_1d(u, v)), 4)
      4.1667
      >>> w, plan = wasserstein_1d(u, v, p=2, return_coupling=True)
      >>> plan.mass.shape
      (4,)
    """
    p = _check_p(p)
    arrays = _as_floats(u=u, v=v, u_weights=u_weights, v_weights=v_weights)
    u, v = arrays["u"], arrays["v"]
    n, m = _check_samples(u, "u", -1), _check_samples(v, "v", -1)
    u_weights = _check_weights(arrays["u_weights"], "u_weights", n, "u", validate)
    v_weights = _check_weights(arrays["v_weights"], "v_weights", m, "v", validate)
    _broadcast_batch(
        ("u", u.shape[:-1]),
        ("v", v.shape[:-1]),
        *(("u_weights", w.shape[:-1]) for w in [u_weights] if w is not None),
        *(("v_weights", w.shape[:-1]) for w in [v_weights] if w is not None),
    )
    out = _wasserstein_1d_pow(u, v, u_weights, v_weights, p=p, coupling=return_coupling)
    if return_coupling:
        w_pow, plan = out
        return _root(w_pow, p), plan
    return _root(out, p)


def random_directions(
    key: jax.Array, n: int, d: int, *, dtype: Any = None
) -> jax.Array:
    """Directions drawn uniformly on the unit sphere of ``R^d`` (normed Gaussians).

    The same ``key`` gives the same directions as
    ``ott.tools.sliced.random_proj_sphere``.

    Args:
      key: a PRNG key.
      n: number of directions.
      d: dimension.
      dtype: floating dtype; JAX's default float when ``None``.

    Returns:
      [n, d] unit vectors.

    Example:
      >>> import jax
      >>> theta = random_directions(jax.random.key(0), 5, 3)
      >>> theta.shape, bool(jnp.allclose(jnp.linalg.norm(theta, axis=1), 1.0))
      ((5, 3), True)
    """
    n = _validate.check_int(n, "n", minimum=1)
    d = _validate.check_int(d, "d", minimum=1)
    dtype = _validate.common_float_dtype() if dtype is None else dtype
    z = jax.random.normal(key, (n, d), dtype=dtype)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("p",))
def _sliced_core(theta, x, y, x_weights, y_weights, p):
    px = theta @ x.T  # [L, n]: one row per direction, sorted along the rows
    py = theta @ y.T
    w_pow = _wasserstein_1d_pow(px, py, x_weights, y_weights, p=p, coupling=False)
    return _root(jnp.mean(w_pow), p)


def sliced_wasserstein(
    key: jax.Array | None,
    x: Any,
    y: Any,
    *,
    x_weights: Any = None,
    y_weights: Any = None,
    n_projections: int = 50,
    p: float = 2,
    projections: Any = None,
    validate: bool = True,
) -> jax.Array:
    """Monte Carlo sliced p-Wasserstein distance between two weighted samples.

    ``SW_p = (E_θ W_p^p(θ#μ, θ#ν))^(1/p)`` with ``θ`` uniform on the sphere,
    estimated with ``n_projections`` random directions, each 1D distance
    computed exactly (:func:`wasserstein_1d`). Differentiable with respect to
    ``x``, ``y`` and the weights, e.g. as a generator's training loss.

    Args:
      key: PRNG key for the directions (ignored when ``projections`` is
        given, and may then be ``None``).
      x: [n, d] samples of the first measure.
      y: [m, d] samples of the second measure.
      x_weights: [n] non-negative weights of ``x``; uniform when ``None``.
      y_weights: [m] weights of ``y``; uniform when ``None``.
      n_projections: number of random directions (static).
      p: the order, a Python number >= 1 (static).
      projections: [L, d] directions to use instead of random ones, e.g.
        :func:`random_directions`; they need not be unit vectors.
      validate: check the weights' values on an eager call (see
        :func:`wasserstein_1d`).

    Returns:
      [] the sliced distance, in the inputs' floating dtype.

    Raises:
      TypeError: non-numeric inputs, or a non-int ``n_projections``.
      ValueError: inputs that are not [n, d] / [m, d] with the same ``d``,
        weights of the wrong shape, ``p < 1``, ``n_projections < 1``, neither
        ``key`` nor ``projections``, or (eagerly) invalid weights.

    References:
      Bonneel, Rabin, Peyré and Pfister (2015), Sliced and Radon Wasserstein
      barycenters of measures, J. Math. Imaging Vis. 51.

    Example:
      >>> import jax
      >>> kx, ky, kp = jax.random.split(jax.random.key(0), 3)
      >>> x = jax.random.normal(kx, (256, 2))
      >>> y = jax.random.normal(ky, (256, 2)) + 3.0
      >>> loss = lambda x: sliced_wasserstein(kp, x, y, n_projections=100)
      >>> jax.jit(jax.grad(loss))(x).shape
      (256, 2)
    """
    p = _check_p(p)
    n_projections = _validate.check_int(n_projections, "n_projections", minimum=1)
    arrays = _as_floats(x=x, y=y, x_weights=x_weights, y_weights=y_weights)
    x, y = arrays["x"], arrays["y"]
    _validate.check_ndim(x, "x", 2)
    _validate.check_ndim(y, "y", 2)
    _validate.check_same_last_dim(x, y, "x", "y")
    n, m = _check_samples(x, "x", -2), _check_samples(y, "y", -2)
    x_weights = _check_weights(arrays["x_weights"], "x_weights", n, "x", validate)
    y_weights = _check_weights(arrays["y_weights"], "y_weights", m, "y", validate)
    for w, name in ((x_weights, "x_weights"), (y_weights, "y_weights")):
        if w is not None:
            _validate.check_ndim(w, name, 1)
    if projections is None:
        if key is None:
            raise ValueError("sliced_wasserstein needs a key or projections")
        theta = random_directions(key, n_projections, x.shape[1], dtype=x.dtype)
    else:
        theta = _validate.as_float(projections, "projections", ndim=2, dtype=x.dtype)
        _validate.check_same_last_dim(theta, x, "projections", "x")
    return _sliced_core(theta, x, y, x_weights, y_weights, p=p)
