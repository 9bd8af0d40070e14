"""Exact optimal transport on the real line: :func:`wasserstein_1d`.

On the real line the optimal coupling between two weighted empirical measures
is the monotone rearrangement: it pairs the quantile functions, so
``W_p^p = ∫_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p dt`` is computed exactly from
the sorted samples and a merge of the two cumulative weight sequences.

Sorting dominates the cost, and XLA's CPU sort is several times slower than
NumPy's (and far slower on batches of short rows). The computation is written
once for both array modules. The ``sort`` option of :func:`wasserstein_1d` (and
of ``sliced_wasserstein``) is the strategy: by default (``"auto"``) on CPU,
inputs of 2048 elements or more go to the host in NumPy through
``jax.pure_callback``, selected by ``lax.platform_dependent`` so that GPU and
TPU keep XLA's sort; ``"host"`` and ``"xla"`` force one path. Either way it
returns the value and, when differentiating, the exact gradient in closed
form, which a custom JVP rule contracts with the tangents; ``jit``, ``vmap``,
``grad``, ``jvp``, ``shard_map`` and ``lax.scan`` all work as usual.

References:
  Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, §2.6.
  Santambrogio, F. (2015). Optimal Transport for Applied Mathematicians, §2.2.
"""

import functools
import math
import numbers
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from densax import _validate

__all__ = ["Coupling1D", "wasserstein_1d"]

# Below this many elements per call, XLA's own sort beats the round trip of a
# host callback (see docs/benchmarks_notes.md and benchmarks/bench_ot.py).
_HOST_MIN_SIZE = 2048
# Above this many elements, the two host sorts run on two threads (starting a
# thread costs about as much as sorting 10^5 floats).
_THREAD_MIN_SIZE = 1 << 18
_SORTS = ("auto", "host", "xla")


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
# Exact 1D transport, written once for NumPy and jax.numpy (``xp``): NumPy runs
# it on the host for a large CPU input (XLA's CPU sort is several times slower
# than NumPy's), jax.numpy everywhere else. It returns the value and, when
# asked, the gradient in closed form; ``_w_pow`` turns that into a JVP.


def _pair(xp, fn, x, y):
    """``(fn(*x), fn(*y))``; on two threads for large NumPy arrays.

    NumPy's sorts, gathers and cumsums release the GIL, so the two sides of a
    transport problem are prepared in parallel.
    """
    if xp is jnp or x[0].size + y[0].size < _THREAD_MIN_SIZE:
        return fn(*x), fn(*y)
    with ThreadPoolExecutor(max_workers=1) as pool:
        fy = pool.submit(fn, *y)
        return fn(*x), fy.result()


def _argsort(xp, x):
    if xp is jnp:
        return jnp.argsort(x, axis=-1, stable=False).astype(jnp.int32)
    return np.argsort(x, axis=-1)


def _take(xp, x, idx):
    """``x[..., idx]`` row by row (``x`` and ``idx`` share their batch shape)."""
    if xp is jnp:
        return jnp.take_along_axis(x, idx, axis=-1)
    # Flat indices: much faster than take_along_axis's broadcast indexing.
    return x[idx] if x.ndim == 1 else x.reshape(-1)[_flat_index(x, idx)]


def _flat_index(x, idx):
    rows = np.arange(math.prod(idx.shape[:-1])).reshape(*idx.shape[:-1], 1)
    return idx + rows * x.shape[-1]


def _unsort(xp, values, perm):
    """``out[..., perm[k]] = values[..., k]``: the inverse of ``_take``."""
    if xp is jnp:
        return _segment_sum(jnp, values, perm, perm.shape[-1])
    out = np.empty_like(values)
    if values.ndim == 1:
        out[perm] = values
    else:
        out.reshape(-1)[_flat_index(out, perm)] = values
    return out


def _prepend_zero(xp, c):
    return xp.concatenate([xp.zeros_like(c[..., :1]), c], axis=-1)


def _segment_sum(xp, values, idx, size):
    """``out[..., k] = Σ values[..., i]`` over ``idx[..., i] = k``, row by row."""
    batch = values.shape[:-1]
    rows = math.prod(batch)
    offsets = size * xp.arange(rows, dtype=idx.dtype).reshape(*batch, 1)
    flat = (idx + offsets).reshape(-1)
    if xp is jnp:
        out = jnp.zeros(rows * size, values.dtype).at[flat].add(values.reshape(-1))
    else:
        out = np.bincount(flat, values.reshape(-1), minlength=rows * size)
    return xp.asarray(out.reshape(*batch, size), dtype=values.dtype)


def _cdf(xp, w, perm, dtype):
    """CDF of the weights sorted by ``perm``, normalised, and their total.

    Non-decreasing, exactly one at the end, NaN if a weight is negative or the
    total is not positive. NumPy's sequential cumsum (in float64) is monotone;
    XLA's parallel one is not to the last bit, and a running maximum (exact,
    as max does not round) repairs it.
    """
    n = perm.shape[-1]
    if w is None:
        c = xp.broadcast_to(xp.arange(1, n + 1, dtype=dtype), perm.shape)
        ok = True
    else:
        ws = _take(xp, w, perm)
        if xp is jnp:
            c = lax.cummax(jnp.cumsum(ws, axis=-1), axis=perm.ndim - 1)
        else:
            c = np.cumsum(ws, axis=-1, dtype=np.float64)
        ok = (c[..., -1:] > 0) & xp.all(ws >= 0, axis=-1, keepdims=True)
    total = xp.where(ok, c[..., -1:], xp.nan)
    # The last entry is set, not divided: XLA may multiply by a reciprocal.
    last = xp.where(ok, xp.ones_like(total), xp.nan)
    cdf = xp.concatenate([c[..., :-1] / total, last], axis=-1)
    return xp.asarray(cdf, dtype=dtype), xp.asarray(total, dtype=dtype)


def _merge_ranks(xp, a, b):
    """For rows sorted along the last axis: ``#(b < a_i)`` and ``#(a <= b_j)``."""
    n, m = a.shape[-1], b.shape[-1]
    if xp is jnp:
        # Comparing all pairs is cheapest to compile and run for small rows.
        method = "compare_all" if n * m <= 1 << 16 else "sort"
        ss = functools.partial(jnp.searchsorted, method=method)
        ranks = lambda a, b: (ss(b, a, side="left"), ss(a, b, side="right"))
        j, i = jnp.vectorize(ranks, signature="(n),(m)->(n),(m)")(a, b)
        return j.astype(jnp.int32), i.astype(jnp.int32)
    # A stable argsort of two concatenated sorted rows is a linear-time merge
    # (timsort finds the two runs); ties put ``a`` first, and the i-th element
    # of ``a`` lands at merged position i + #(b < a_i).
    order = np.argsort(np.concatenate([a, b], axis=-1), axis=-1, kind="stable")
    from_a = order < n
    pos_a = np.nonzero(from_a)[-1].reshape(a.shape)
    pos_b = np.nonzero(~from_a)[-1].reshape(b.shape)
    return pos_a - np.arange(n), pos_b - np.arange(m)


def _cost(xp, d, p):
    """``|d|^p``."""
    return xp.abs(d) if p == 1 else xp.abs(d) ** p


def _dcost(xp, d, p):
    """The derivative of ``|d|^p``, zero at ``d = 0``."""
    if p == 1:
        return xp.sign(d)
    if p == 2:
        return 2 * d
    return p * xp.abs(d) ** (p - 1) * xp.sign(d)


def _cdf_vjp(xp, g, cdf, total):
    """Pulls ``g = dW/dcdf`` back to the sorted weights (cdf = cumsum / total)."""
    rev_cumsum = xp.flip(xp.cumsum(xp.flip(g, axis=-1), axis=-1), axis=-1)
    return (rev_cumsum - xp.sum(g * cdf, axis=-1, keepdims=True)) / total


def _transport(xp, u, v, u_weights, v_weights, *, p, want):
    """``W_p^p`` between the rows of ``u`` and ``v`` (same batch shape).

    ``want`` is ``"value"``, ``"grad"`` (also the gradients with respect to
    ``u``, ``v`` and the weights given) or ``"coupling"`` (also the coupling's
    indices and masses).
    """
    n, m = u.shape[-1], v.shape[-1]
    uniform = u_weights is None and v_weights is None
    if uniform and n == m and want == "value":
        # Equal uniform weights: the quantile functions share their steps.
        su, sv = _pair(xp, functools.partial(xp.sort, axis=-1), (u,), (v,))
        return xp.mean(_cost(xp, su - sv, p), axis=-1)

    def sort(x, w):  # the permutation, sorted samples, their CDF and total
        perm = _argsort(xp, x)
        return perm, _take(xp, x, perm), *_cdf(xp, w, perm, x.dtype)

    (pu, su, cu, total_u), (pv, sv, cv, total_v) = _pair(
        xp, sort, (u, u_weights), (v, v_weights)
    )
    if uniform and n == m and want == "grad":
        d = su - sv
        g = _dcost(xp, d, p) / n
        grads = (_unsort(xp, g, pu), _unsort(xp, -g, pv))
        return xp.mean(_cost(xp, d, p), axis=-1), grads

    # The breakpoints of the two CDFs split (0, 1] into intervals on which both
    # quantile functions are constant. The interval ending at cu[i] pairs su[i]
    # with sv[j], j = #(cv < cu[i]), and starts at the previous breakpoint
    # max(cu[i-1], cv[j-1]); symmetrically for cv[j] with i = #(cu <= cv[j]).
    # The last one, ending at cv[m-1] = 1 = cu[n-1], is empty.
    j, i = _merge_ranks(xp, cu, cv)
    cu0, cv0 = _prepend_zero(xp, cu), _prepend_zero(xp, cv)
    cv0_j, cu0_i = _take(xp, cv0, j), _take(xp, cu0, i)
    # Under XLA the CDFs may be recomputed in several fusions (with FMA
    # contraction), their last bits differing from those the ranks saw: clip.
    mass_u = xp.maximum(cu - xp.maximum(cu0[..., :n], cv0_j), 0)
    mass_v = xp.maximum(cv - xp.maximum(cv0[..., :m], cu0_i), 0)
    jc, ic = xp.minimum(j, m - 1), xp.minimum(i, n - 1)  # the atoms paired
    d_u, d_v = su - _take(xp, sv, jc), _take(xp, su, ic) - sv
    cost_u, cost_v = _cost(xp, d_u, p), _cost(xp, d_v, p)
    # An empty interval adds nothing, even at an infinite atom (0 * inf).
    live_u = mass_u * xp.where(mass_u > 0, cost_u, 0)
    live_v = mass_v * xp.where(mass_v > 0, cost_v, 0)
    w_pow = xp.sum(live_u, axis=-1) + xp.sum(live_v, axis=-1)
    if want == "value":
        return w_pow
    if want == "coupling":
        u_index = xp.concatenate([pu, _take(xp, pu, ic)[..., :-1]], axis=-1)
        v_index = xp.concatenate([_take(xp, pv, jc), pv[..., :-1]], axis=-1)
        mass = xp.concatenate([mass_u, mass_v[..., :-1]], axis=-1)
        return w_pow, (u_index.astype(np.int32), v_index.astype(np.int32), mass)

    # Positions: each interval's mass times the cost's slope, summed per atom.
    g_u, g_v = mass_u * _dcost(xp, d_u, p), mass_v * _dcost(xp, d_v, p)
    grads = [
        _unsort(xp, g_u + _segment_sum(xp, g_v, ic, n), pu),
        _unsort(xp, -g_v - _segment_sum(xp, g_u, jc, m), pv),
    ]
    # CDFs: an interval's mass is its end minus the larger of the two previous
    # breakpoints (ties go to the first), so each breakpoint gains the cost of
    # the interval it ends and loses that of the interval it starts.
    u_first = cu0[..., :n] >= cv0_j
    v_first = cv0[..., :m] >= cu0_i
    zero = xp.zeros_like(cost_u[..., :1])
    starts_u = xp.where(u_first, cost_u, 0)
    starts_v = xp.where(v_first, cost_v, 0)
    g_cu = cost_u - xp.concatenate([starts_u[..., 1:], zero], axis=-1)
    g_cu -= _segment_sum(xp, xp.where(v_first, 0, cost_v), i, n + 1)[..., 1:]
    g_cv = cost_v - xp.concatenate([starts_v[..., 1:], zero], axis=-1)
    g_cv -= _segment_sum(xp, xp.where(u_first, 0, cost_u), j, m + 1)[..., 1:]
    if u_weights is not None:
        grads.append(_unsort(xp, _cdf_vjp(xp, g_cu, cu, total_u), pu))
    if v_weights is not None:
        grads.append(_unsort(xp, _cdf_vjp(xp, g_cv, cv, total_v), pv))
    return w_pow, tuple(grads)


def _is_wide(x) -> bool:
    return x is not None and x.dtype == np.float64


def _callback(fn, out_shapes, *args):
    """``jax.pure_callback(fn, ...)`` with NumPy arguments (``None`` kept).

    float64 arrays cross as pairs of uint32: ``jax.enable_x64`` is thread-local,
    and a callback running on an XLA thread would otherwise have its float64
    inputs and outputs cast down to float32. Under ``shard_map`` the outputs
    vary over the inputs' manual mesh axes, as the XLA branch's do.
    """
    wide_in = [_is_wide(a) for a in args]
    wide_out = jax.tree.map(_is_wide, out_shapes)
    to_bits = lambda x, wide: lax.bitcast_convert_type(x, jnp.uint32) if wide else x
    bits_like = lambda s, wide: (
        jax.ShapeDtypeStruct((*s.shape, 2), jnp.uint32) if wide else s
    )

    def host_fn(*args):
        args = [
            None
            if a is None
            else np.asarray(a).view(np.float64)[..., 0]
            if wide
            else np.asarray(a)
            for a, wide in zip(args, wide_in, strict=True)
        ]

        def encode(r, s, wide):  # r has more leading axes than s under vmap
            r = np.asarray(r, dtype=s.dtype)
            if not wide:
                return r
            return np.ascontiguousarray(r).view(np.uint32).reshape(*r.shape, 2)

        return jax.tree.map(encode, fn(*args), out_shapes, wide_out)

    out = jax.pure_callback(
        host_fn,
        jax.tree.map(bits_like, out_shapes, wide_out),
        *(
            to_bits(a, w) if a is not None else None
            for a, w in zip(args, wide_in, strict=True)
        ),
        vmap_method="broadcast_all",
    )
    out = jax.tree.map(
        lambda o, wide: lax.bitcast_convert_type(o, jnp.float64) if wide else o,
        out,
        wide_out,
    )
    leaves = jax.tree.leaves(args)
    varying = set().union(*(jax.typeof(a).mat.varying for a in leaves))
    return lax.pcast(out, tuple(sorted(varying)), to="varying")


def _on_host(sort: str, size: int) -> bool:
    """The sort strategy: whether a CPU call of ``size`` elements goes to NumPy."""
    if sort == "auto":
        return size >= _HOST_MIN_SIZE
    return sort == "host"


def _host_or_xla(want, p, sort, out_shapes, *args):
    """``_transport`` on the host (NumPy) on CPU (see :func:`_on_host`), else XLA.

    The callback sees values only: derivatives come from ``_w_pow``'s rule.
    """
    args = lax.stop_gradient(args)
    xla_fn = functools.partial(_transport, jnp, p=p, want=want)
    if not _on_host(sort, sum(a.size for a in jax.tree.leaves(args))):
        return xla_fn(*args)
    host_fn = functools.partial(_transport, np, p=p, want=want)
    on_host = functools.partial(_callback, host_fn, out_shapes)
    return lax.platform_dependent(*args, cpu=on_host, default=xla_fn)


def _like(x, dtype=None, shape=None):
    return jax.ShapeDtypeStruct(
        x.shape if shape is None else shape, x.dtype if dtype is None else dtype
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _w_pow(u, v, u_weights, v_weights, p, sort):
    """``W_p^p`` over the last axis of ``u`` and ``v`` (same batch shape)."""
    out = _like(u, shape=u.shape[:-1])
    return _host_or_xla("value", p, sort, out, u, v, u_weights, v_weights)


@_w_pow.defjvp
def _w_pow_jvp(p, sort, primals, tangents):
    primals_given = [x for x in primals if x is not None]
    tangents_given = [t for t in tangents if t is not None]
    out = (
        _like(primals[0], shape=primals[0].shape[:-1]),
        tuple(map(_like, primals_given)),
    )
    w_pow, grads = _host_or_xla("grad", p, sort, out, *primals)
    tangent = sum(
        jnp.sum(g * t, axis=-1) for g, t in zip(grads, tangents_given, strict=True)
    )
    return w_pow, tangent


def _root(s: jax.Array, p: int | float) -> jax.Array:
    """``s^(1/p)`` with a zero (not NaN) gradient at ``s = 0``."""
    if p == 1:
        return s
    positive = s > 0
    return jnp.where(positive, jnp.where(positive, s, 1) ** (1 / p), 0 * s)  # NaN stays


@functools.partial(jax.jit, static_argnames=("p", "coupling", "sort"))
def _wasserstein_1d_pow(u, v, u_weights, v_weights, p, coupling, sort="auto"):
    """``W_p^p`` over the last axis (and the coupling if ``coupling``)."""
    n, m = u.shape[-1], v.shape[-1]
    given = [x for x in (u, v, u_weights, v_weights) if x is not None]
    batch = jnp.broadcast_shapes(*(x.shape[:-1] for x in given))
    u, v = jnp.broadcast_to(u, (*batch, n)), jnp.broadcast_to(v, (*batch, m))
    if u_weights is not None:
        u_weights = jnp.broadcast_to(u_weights, u.shape)
    if v_weights is not None:
        v_weights = jnp.broadcast_to(v_weights, v.shape)
    w_pow = _w_pow(u, v, u_weights, v_weights, p, sort)
    if not coupling:
        return w_pow
    k = (*batch, n + m - 1)
    shapes = (
        _like(u, shape=batch),
        (_like(u, jnp.int32, k), _like(u, jnp.int32, k), _like(u, shape=k)),
    )
    _, plan = _host_or_xla("coupling", p, sort, shapes, u, v, u_weights, v_weights)
    return w_pow, Coupling1D(*plan)


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
    a: Any = None,
    b: Any = None,
    p: float = 1,
    return_coupling: bool = False,
    sort: str = "auto",
    validate: bool = True,
) -> jax.Array | tuple[jax.Array, Coupling1D]:
    """Exact p-Wasserstein distance between two weighted samples on the line.

    Computes ``W_p = (∫_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p dt)^(1/p)`` between
    the empirical measures ``Σ_i a_i δ_{u_i}`` and ``Σ_j b_j δ_{v_j}`` (weights
    normalised to sum to one), along the last axis; leading axes are batch
    axes and broadcast. Differentiable with respect to the samples and the
    weights (the derivative at ties and at ``W = 0`` is a subgradient, never
    NaN); the coupling carries no derivative. First derivatives only: the
    closed-form gradient is not itself differentiated, so a Hessian comes out
    as zero.

    Args:
      u: [..., n] samples of the first measure.
      v: [..., m] samples of the second measure.
      a: [..., n] non-negative weights of ``u`` (any positive total);
        uniform when ``None``.
      b: [..., m] weights of ``v``; uniform when ``None``.
      p: the order, a Python number >= 1 (static).
      return_coupling: also return the optimal coupling, a
        :class:`Coupling1D` with ``n + m - 1`` entries.
      sort: where the sorts run (static; the numbers are the same up to
        rounding). ``"auto"`` (default): on a CPU, calls of at least 2048
        elements sort on the host in NumPy through ``jax.pure_callback``
        (several times faster than XLA's CPU sort), smaller ones with XLA;
        ``"host"``: on a CPU, always on the host; ``"xla"``: never. Other
        platforms always use XLA. A host sort cannot run inside a
        multi-device program whose collectives wait on it: use ``"xla"``
        there.
      validate: check the weights' values (finite, non-negative, positive
        total) on an eager call. Under ``jit`` invalid weights give NaN. NaN
        in a sample is not an error: it makes that batch element NaN.

    Returns:
      [...] the distances ``W_p`` in the inputs' floating dtype, and the
      coupling when ``return_coupling``. A sample holding ``inf`` or
      ``-inf`` (with positive weight) gives ``inf``, as SciPy's
      ``wasserstein_distance`` does; NaN only where two infinite atoms of the
      same sign meet (``inf - inf``), as in SciPy.

    Raises:
      TypeError: non-numeric inputs or a non-number ``p``.
      ValueError: empty samples, shapes that do not match or broadcast,
        ``p < 1``, or (eagerly) invalid weights.

    References:
      Peyré and Cuturi (2019), Computational Optimal Transport, §2.6 (the
      1D case: quantile functions).

    Example:
      >>> import jax.numpy as jnp
      >>> u = jnp.array([0.0, 1.0, 3.0])
      >>> v = jnp.array([5.0, 6.0])
      >>> round(float(wasserstein_1d(u, v)), 4)
      4.1667
      >>> w, plan = wasserstein_1d(u, v, p=2, return_coupling=True)
      >>> plan.mass.shape
      (4,)
      >>> dense = jnp.zeros((3, 2)).at[plan.u_index, plan.v_index].add(plan.mass)
      >>> dense.sum(axis=1).round(4).tolist()
      [0.3333, 0.3333, 0.3333]
    """
    p = _check_p(p)
    _validate.check_choice(sort, "sort", _SORTS)
    arrays = _as_floats(u=u, v=v, a=a, b=b)
    u, v = arrays["u"], arrays["v"]
    n, m = _check_samples(u, "u", -1), _check_samples(v, "v", -1)
    for x, name in ((u, "u"), (v, "v")):  # inf is allowed: W_p is then inf
        if validate and _validate.is_concrete(x):
            _validate.value_check(True, ~jnp.any(jnp.isnan(x)), f"{name} contains NaN")
    a = _check_weights(arrays["a"], "a", n, "u", validate)
    b = _check_weights(arrays["b"], "b", m, "v", validate)
    _broadcast_batch(
        ("u", u.shape[:-1]),
        ("v", v.shape[:-1]),
        *(("a", w.shape[:-1]) for w in [a] if w is not None),
        *(("b", w.shape[:-1]) for w in [b] if w is not None),
    )
    dtype = u.dtype
    work = _validate.compute_dtype(dtype)
    if work != dtype:  # half precision: computed in float32
        u, v, a, b = _validate.cast_floats((u, v, a, b), work)
    scale = _power_of_two_scale(u, v) if p > 1 else None
    if scale is not None:  # W_p^p may overflow where W_p does not
        u, v = u / scale, v / scale  # exact: a power of two
    out = _wasserstein_1d_pow(u, v, a, b, p=p, coupling=return_coupling, sort=sort)
    w_pow, plan = out if return_coupling else (out, None)
    w = _root(w_pow, p) if scale is None else _root(w_pow, p) * scale[..., 0]
    if work != dtype:
        w, plan = w.astype(dtype), _validate.cast_floats(plan, dtype)
    return (w, plan) if return_coupling else w


def _power_of_two_scale(u: jax.Array, v: jax.Array) -> jax.Array:
    """Per problem [*batch, 1]: a power of two >= the largest finite |u|, |v|.

    Dividing by it is exact (no rounding) and keeps ``|u_i - v_j|^p`` finite
    wherever ``W_p`` itself is representable (float32: W_2 up to ~1e38).
    """
    big = jnp.maximum(_finite_abs_max(u), _finite_abs_max(v))
    scale = jnp.exp2(jnp.ceil(jnp.log2(jnp.where(big > 0, big, 1))))
    return jax.lax.stop_gradient(scale).astype(u.dtype)


def _finite_abs_max(x: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(jnp.isfinite(x), jnp.abs(x), 0), axis=-1, keepdims=True)
