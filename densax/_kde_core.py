"""The kernels of :mod:`densax.kde` and its blocked, differentiable core.

Kernel constants (exact for every dimension), the radii of the kernels'
exact samplers, log-profiles and their derivatives, and
``lse[i] = log sum_j w_j k(|z_i - y_j|)`` over query blocks with a custom JVP
whose per-block work is rematerialised (see the docstring of
:mod:`densax.kde`).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

__all__ = []

# The kernels (densax.kde.KERNELS; here so that densax._binned needs no densax.kde).
KERNELS = ("gaussian", "tophat", "epanechnikov", "exponential", "linear", "cosine")
_HIGHEST = lax.Precision.HIGHEST
# Reverse mode keeps only the [m] log-sums of the forward pass; the [B, n]
# blocks are recomputed.
_SAVE_LSE = jax.checkpoint_policies.save_only_these_names("lse")
# The gaussian kernel's squared distances are a matmul above this dimension;
# at or below it, direct differences are as fast (exp dominates) and 5 to 20x
# more accurate in float32.
_MATMUL_MIN_DIM = 9


# --------------------------------------------------------------------------
# Kernel constants (Python floats, exact for every d).


def _log_ball_volume(d: int) -> float:
    """The log-volume of the unit ball in R^d."""
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)


def _log_sphere_area(d: int) -> float:
    """The log-area of the unit sphere in R^d, 2 pi^(d/2) / Gamma(d/2)."""
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)


def _cosine_moment(k: int) -> float:
    """int_0^1 r^k cos(pi r / 2) dr, by its alternating power series."""
    a2 = (0.5 * math.pi) ** 2
    return math.fsum(
        (-a2) ** i / (math.factorial(2 * i) * (k + 2 * i + 1)) for i in range(40)
    )


def _log_kernel_integral(kernel: str, d: int) -> float:
    """The log of Z_d, the integral of the profile k(|u|) over R^d."""
    if kernel == "gaussian":
        return 0.5 * d * math.log(2 * math.pi)
    if kernel == "tophat":
        return _log_ball_volume(d)
    if kernel == "epanechnikov":
        return _log_ball_volume(d) + math.log(2.0 / (d + 2.0))
    if kernel == "exponential":
        return _log_sphere_area(d) + math.lgamma(d)
    if kernel == "linear":
        return _log_ball_volume(d) - math.log(d + 1.0)
    return _log_sphere_area(d) + math.log(_cosine_moment(d - 1))


def _kernel_variance(kernel: str, d: int) -> float:
    """Variance of one coordinate of the standard kernel, E[r^2] / d."""
    if kernel == "gaussian":
        return 1.0
    if kernel == "tophat":
        return 1.0 / (d + 2)
    if kernel == "epanechnikov":
        return 1.0 / (d + 4)
    if kernel == "exponential":
        return d + 1.0
    if kernel == "linear":
        return (d + 1.0) / ((d + 2) * (d + 3))
    return _cosine_moment(d + 1) / (d * _cosine_moment(d - 1))


# --------------------------------------------------------------------------
# Radii of the kernels (exact samplers for densax.kde.sample).


def _radius(key, kernel, n, d, dtype):
    """[n] radii of the standard radial kernel in R^d (exact samplers)."""
    if kernel == "tophat":
        return jax.random.uniform(key, (n,), dtype) ** (1.0 / d)
    if kernel == "epanechnikov":  # r^2 ~ Beta(d/2, 2)
        return jnp.sqrt(jax.random.beta(key, 0.5 * d, 2.0, (n,), dtype))
    if kernel == "linear":  # density ~ r^(d-1) (1 - r): Beta(d, 2)
        return jax.random.beta(key, float(d), 2.0, (n,), dtype)
    if kernel == "exponential":  # density ~ r^(d-1) exp(-r): Gamma(d)
        return jax.random.gamma(key, float(d), (n,), dtype)
    return _cosine_radius(key, n, d, dtype)


def _cosine_radius(key, n, d, dtype):
    """Rejection sampling: propose r^(d-1) on [0, 1), accept w.p. cos(pi r/2)."""

    def missing(carry):
        return ~jnp.all(carry[2])

    def draw(carry):
        key, radius, accepted = carry
        key, k_prop, k_acc = jax.random.split(key, 3)
        proposal = jax.random.uniform(k_prop, (n,), dtype) ** (1.0 / d)
        accept = jax.random.uniform(k_acc, (n,), dtype) < jnp.cos(
            0.5 * jnp.pi * proposal
        )
        radius = jnp.where(accept & ~accepted, proposal, radius)
        return key, radius, accepted | accept

    init = (key, jnp.zeros(n, dtype), jnp.zeros(n, bool))
    return lax.while_loop(missing, draw, init)[1]


# --------------------------------------------------------------------------
# Kernel profiles as functions of the squared scaled distance t = r^2.


def _log_profile(kernel: str, t: jax.Array) -> jax.Array:
    """The log-profile log k(sqrt(t)); -inf outside a compact support; NaN stays NaN."""
    if kernel == "gaussian":
        return -0.5 * t
    if kernel == "exponential":
        return -jnp.sqrt(t)
    outside = t >= 1
    t_in = jnp.where(outside, 0, t)
    if kernel == "tophat":
        value = 0 * t_in
    elif kernel == "epanechnikov":
        value = jnp.log1p(-t_in)
    elif kernel == "linear":
        value = jnp.log1p(-jnp.sqrt(t_in))
    else:
        value = jnp.log(jnp.cos(0.5 * jnp.pi * jnp.sqrt(t_in)))
    return jnp.where(outside, -jnp.inf, value)


def _dlog_profile(kernel: str, t: jax.Array) -> jax.Array:
    """The derivative d log k(sqrt(t)) / dt; 0 off the support and at r = 0 cusps.

    The exponential and linear profiles have a cusp at r = 0; there the
    derivative is set to 0, the symmetric subgradient.
    """
    if kernel == "tophat":
        return jnp.zeros_like(t)
    if kernel == "exponential":
        positive = t > 0
        r = jnp.sqrt(jnp.where(positive, t, 1))
        return jnp.where(positive, -0.5 / r, 0)
    inside = t < 1
    if kernel == "epanechnikov":
        return jnp.where(inside, -1 / (1 - jnp.where(inside, t, 0)), 0)
    if kernel == "linear":
        ok = inside & (t > 0)
        r = jnp.sqrt(jnp.where(ok, t, 0.25))
        return jnp.where(ok, -0.5 / (r * (1 - r)), 0)
    # cosine: -(pi / 4) tan(pi r / 2) / r = -(pi^2 / 8) tan(a) / a, a = pi r / 2.
    a = 0.5 * jnp.pi * jnp.sqrt(jnp.where(inside, t, 0))
    a_safe = jnp.where(a > 0, a, 1)
    ratio = jnp.where(a > 0, jnp.tan(a_safe) / a_safe, 1)
    return jnp.where(inside, -(jnp.pi**2 / 8) * ratio, 0)


# --------------------------------------------------------------------------
# The blocked core: lse[i] = log sum_j w_j k(|z_i - y_j|), with a custom JVP.


def _row_logsumexp(s: jax.Array) -> jax.Array:
    """A logsumexp over the last axis; -inf for an all -inf row, NaN for NaN."""
    top = jnp.max(s, axis=-1)
    top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))
    return top + jnp.log(jnp.sum(jnp.exp(s - top[..., None]), axis=-1))


def _scores(zb, rows, y, yt, y_sq, offset, kernel, exclude_self):
    """Scores log k(|z_i - y_j|) of one query block and t = |z_i - y_j|^2, [B, n]."""
    if kernel == "gaussian" and zb.shape[1] >= _MATMUL_MIN_DIM:
        # -|z - y|^2 / 2 = z.y - |z|^2 / 2 - |y|^2 / 2, absolute error
        # ~ eps (|z|^2 + |y|^2) in bandwidth units on centred data.
        cross = jnp.matmul(zb, yt, precision=_HIGHEST)
        u = cross - 0.5 * jnp.sum(zb * zb, axis=1)[:, None] - 0.5 * y_sq
        t = jnp.maximum(-2 * u, 0)
    else:
        t = sum((zb[:, k, None] - yt[k]) ** 2 for k in range(zb.shape[1]))
        u = _log_profile(kernel, t)
    if exclude_self:
        same = rows[:, None] == jnp.arange(y.shape[0]) + offset
        u = jnp.where(same, -jnp.inf, u)
    return u, t


def _map_blocks(body, z, block_size, *extra):
    """Applies ``body(zb, rows, *extra_b)`` to query blocks; outputs [m] each."""
    m = z.shape[0]
    n_blocks = -(-m // block_size)
    pad = n_blocks * block_size - m

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(n_blocks, block_size, *a.shape[1:])

    rows = jnp.arange(n_blocks * block_size).reshape(n_blocks, block_size)
    outs = lax.map(lambda args: body(*args), (split(z), rows, *map(split, extra)))
    return jax.tree.map(lambda o: o.reshape(-1)[:m], outs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7))
def _kernel_logsumexp(z, y, w, scale, offset, kernel, block_size, exclude_self):
    """lse[i] = log sum_j w_j k(|z_i - y_j| / scale), z [m, d], y [n, d].

    ``scale`` is the scalar bandwidth (1 for data already whitened by a
    matrix one); with ``exclude_self`` the pairs ``i == j + offset`` are left
    out (the leave-one-out sum; ``offset`` is the global index of ``y[0]``).
    """
    z, y = z / scale, y / scale
    yt, y_sq, log_w = y.T, jnp.sum(y * y, axis=1), jnp.log(w)

    def body(zb, rows):
        u, _ = _scores(zb, rows, y, yt, y_sq, offset, kernel, exclude_self)
        return _row_logsumexp(u + log_w)

    return _map_blocks(body, z, block_size)


@functools.partial(_kernel_logsumexp.defjvp, symbolic_zeros=True)
def _kernel_logsumexp_jvp(kernel, block_size, exclude_self, primals, tangents):
    # In bandwidth units (z / scale, y / scale), with P = softmax_j(s_ij),
    # G = P * dlog k/dt and t_ij = |z_i - y_j|^2:
    #   d lse_i = 2 sum_j G_ij (z_i - y_j).(dz_i - dy_j)
    #             - 2 (dscale / scale) sum_j G_ij t_ij + sum_j P_ij dw_j / w_j,
    # where P_ij / w_j = exp(u_ij - lse_i) is finite even for a zero weight.
    # The sums over j are matmuls or reductions on the [B, n] block,
    # recomputed in the backward pass (jax.checkpoint), so reverse mode stays
    # O(B n) in memory; a scalar bandwidth needs no matmul at all.
    z, y, w, scale, offset = primals
    dz, dy, dw, dscale = (
        None if isinstance(t, SymbolicZero) else t for t in tangents[:4]
    )
    z, y = z / scale, y / scale
    yt, y_sq, log_w = y.T, jnp.sum(y * y, axis=1), jnp.log(w)
    d = y.shape[1]
    # One matmul each: g @ [y, 1] = [G y, G 1] and g @ [y.dy, dy].
    y_one = jnp.concatenate([y, jnp.ones_like(y[:, :1])], axis=1)
    if dz is not None:
        dz = dz / scale
    if dy is not None:
        dy = dy / scale
        dy_aug = jnp.concatenate([jnp.sum(y * dy, axis=1)[:, None], dy], axis=1)

    def body(zb, rows, *dzb):
        u, t = _scores(zb, rows, y, yt, y_sq, offset, kernel, exclude_self)
        s = u + log_w
        lse = checkpoint_name(_row_logsumexp(s), "lse")
        finite = jnp.isfinite(lse)[:, None]
        lse0 = jnp.where(finite[:, 0], lse, 0)[:, None]
        tangent = jnp.zeros_like(lse)
        if dz is not None or dy is not None or dscale is not None:
            p = jnp.where(finite, jnp.exp(s - lse0), 0)
            g = -0.5 * p if kernel == "gaussian" else p * _dlog_profile(kernel, t)
            if dz is not None:
                g_y = jnp.matmul(g, y_one, precision=_HIGHEST)
                g_diff = g_y[:, d:] * zb - g_y[:, :d]  # sum_j G_ij (z_i - y_j)
                tangent += 2 * jnp.sum(dzb[0] * g_diff, axis=1)
            if dy is not None:
                g_dy = jnp.matmul(g, dy_aug, precision=_HIGHEST)
                tangent += 2 * (g_dy[:, 0] - jnp.sum(zb * g_dy[:, 1:], axis=1))
            if dscale is not None:
                g_t = jnp.sum(jnp.where(p > 0, g * t, 0), axis=1)
                tangent -= 2 * (dscale / scale) * g_t
        if dw is not None:
            k = jnp.where(finite, jnp.exp(u - lse0), 0)
            tangent += jnp.matmul(k, dw, precision=_HIGHEST)
        return lse, tangent

    extra = () if dz is None else (dz,)
    body = jax.checkpoint(body, policy=_SAVE_LSE)
    lse, tangent = _map_blocks(body, z, block_size, *extra)
    return lse, tangent


def _combine_shards(lse: jax.Array, axis_name: str) -> jax.Array:
    """The log of the sum of exp(lse) over devices (pmax shift, then psum)."""
    top = lax.pmax(lax.stop_gradient(lse), axis_name)
    top = jnp.where(jnp.isfinite(top), top, 0)
    return top + jnp.log(lax.psum(jnp.exp(lse - top), axis_name))
