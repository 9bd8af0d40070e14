"""Binned kernel density estimates on a regular grid (d <= 3): the private core.

The KDE ``p(y) = sum_j w_j q_H(y - x_j) / sum_j w_j`` of :mod:`densax.kde`
(same kernels, same normalisation, same bandwidth: a scalar ``h`` or a
``[d, d]`` kernel covariance ``H``, diagonal or full) is approximated in three
steps, each ``jit``-able and differentiable:

1. **Linear binning** (:func:`bin_data`): each point's weight is split between
   the ``2^d`` nodes of its grid cell in proportion to the multilinear
   interpolation weights, one scatter-add. The grid counts are linear in the
   weights, so weights act only through their ratios.
2. **FFT convolution** (:func:`grid_density`): the counts are convolved with
   the kernel evaluated at every node offset (``-(n_k - 1)..(n_k - 1)`` per
   axis, so nothing is truncated: for every node of the grid the sum over the
   binned mass is exact), by a zero-padded real FFT of size ``>= 2 n_k - 1``
   per axis (no wrap-around).
3. **Multilinear interpolation** (:func:`interpolate`) of the grid density at
   arbitrary points; ``0`` (log ``-inf``) outside the grid.

The functional interface (``shape`` is a static tuple of grid sizes, every
other argument may be traced; ``H`` means the bandwidth, a scalar or
``[d, d]`` matrix):

* ``grid_bounds(data, bandwidth, kernel, sample_weight=None, axis_name=None)
  -> (lower [d], upper [d])``: the automatic grid, the data's bounding box
  widened by :func:`kernel_cutoff` times the kernel's half-width along each
  axis (constants for autodiff).
* ``grid_points(lower, upper, shape) -> [*shape, d]``: the nodes.
* ``bin_data(data, lower, upper, shape, sample_weight=None, axis_name=None)
  -> (counts [*shape], total [])``: binned weights and the total weight of all
  points (points outside the grid are dropped from ``counts`` but counted in
  ``total``, so their mass is missing rather than moved).
* ``grid_density(counts, total, lower, upper, bandwidth, kernel) -> [*shape]``
  the binned density at the nodes.
* ``interpolate(values, lower, upper, x) -> [m]``: multilinear interpolation.
* ``grid_log_density(data, bandwidth, shape, ...) -> (log p [*shape], lower,
  upper)`` and ``log_density(x, data, bandwidth, shape, ...) -> [m]``: the
  whole pipeline.
* ``error_bound(kernel, bandwidth, lower, upper, shape, on_grid=True) -> []``
  and ``use_grid(...) -> bool`` (``relative_error_bound``, jit-able, and
  ``grid_is_cheaper``): the documented error and the rule that picks the
  exact path where the grid is less accurate.

Error (``s_k = delta_k / sigma_k`` is the grid spacing along axis ``k`` in
bandwidths, ``sigma_k = (H^-1)_kk^(-1/2)``, ``h`` for a scalar bandwidth, and
``q0 = q_H(0) = 1 / (Z_d |H|^(1/2))`` is the kernel's peak height, an upper
bound of the density): binning replaces, for every query ``y``, the kernel
``x -> q_H(y - x)`` by its multilinear interpolant between the nodes around
each data point, and interpolation does the same to the grid density, so each
step adds at most the multilinear interpolation error of one kernel:

* gaussian (smooth): the FFT uses the covariance ``H' = H - diag(delta^2 /
  6)`` (Sheppard's correction: linear binning adds that variance on average;
  capped at half of ``H``'s smallest eigenvalue), which removes the binning's
  smoothing bias; with ``s_k``, ``q0`` taken at ``H'``, ``|error| <= q0
  sum_k s_k^2 (1/8 + 1/12)`` at the nodes (binning, then the shift from ``H'``
  to ``H``) and ``1/8`` more between them (interpolation);
* epanechnikov, linear, exponential, cosine (Lipschitz, with kinks):
  ``|error| <= q0 L sum_k s_k / 2`` per step (binning; interpolation), ``L =
  sup |k'(r)|`` (2, 1, 1 and pi / 2); the error is ``O(s^2)`` away from the
  kinks, so this first-order bound is pessimistic for most queries;
* tophat (a jump): no pointwise bound below ``q0``; the integrated error is
  ``int |p_binned - p| <= 2 (V_{d-1} / V_d) sum_k s_k`` at the nodes (``V_d``
  the volume of the unit ball).

Round-off: the FFT adds an absolute error of a few ``eps * max(p)``; grid
densities below ``8 eps max(p)`` (``eps`` of the dtype) are set to ``0``, so
compact kernels give ``-inf`` where no binned mass is near, and the log-density
of the far tails of the gaussian and exponential kernels is not resolved (use
the exact :func:`densax.kde.log_prob` there). Outside the automatic grid
the gaussian and exponential kernels are below ``eps q0``.

Derivatives: with respect to the bandwidth (through the kernel lattice and
the FFT), the weights (the counts are linear in them) and the data and query
positions (piecewise linear), for a grid held fixed: the automatic bounds are
constants for autodiff, so pass ``lower``/``upper`` explicitly to compare
with finite differences, or to ``vmap`` over bandwidths on one grid (with the
automatic grid each bandwidth gets its own).

Cost: ``O(n 2^d)`` for the binning, ``O(P log P)`` for the FFT with
``P = prod_k (2 n_k)``, ``O(m 2^d)`` for ``m`` queries, against ``O(n m)``
for the exact sums. :func:`use_grid` picks the grid when ``d <= 3``, the
bound above relative to ``q0`` is at most ``rtol`` and the grid is cheaper.

References:
  Wand, "Fast computation of multivariate kernel estimators", J. Comput.
  Graph. Statist. 3 (1994). Silverman, "Algorithm AS 176: Kernel density
  estimation using the fast Fourier transform", Appl. Statist. 31 (1982).
  Fan & Marron, "Fast implementations of nonparametric curve estimators",
  J. Comput. Graph. Statist. 3 (1994).

Example:
  >>> data = jax.random.normal(jax.random.key(0), (1000, 1))
  >>> logp, lower, upper = grid_log_density(data, 0.3, (256,))
  >>> logp.shape, lower.shape
  ((256,), (1,))
  >>> print(f"{float(log_density(jnp.zeros((1, 1)), data, 0.3, (256,))[0]):.2f}")
  -0.91
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from densax import _parallel
from densax._kde_core import KERNELS, _log_kernel_integral

__all__ = [
    "bin_data",
    "error_bound",
    "grid_bounds",
    "grid_density",
    "grid_log_density",
    "grid_points",
    "interpolate",
    "kernel_cutoff",
    "grid_is_cheaper",
    "log_density",
    "relative_error_bound",
    "use_grid",
]

MAX_DIM = 3
# sup |k'(r)| of the Lipschitz kernels (the first-order error bound).
_LIPSCHITZ = {"epanechnikov": 2.0, "linear": 1.0, "exponential": 1.0}
_LIPSCHITZ["cosine"] = 0.5 * math.pi
# Grid densities below this many eps of the maximum are FFT round-off.
_ROUND_OFF = 8.0


# --------------------------------------------------------------------------
# The kernel on the grid offsets.


def kernel_cutoff(kernel: str, dtype: Any) -> float:
    """The radius (in bandwidths) beyond which ``k(r) < eps`` of the dtype.

    1 for the compact kernels; ``sqrt(-2 log eps)`` for the gaussian and
    ``-log eps`` for the exponential kernel.
    """
    if kernel not in ("gaussian", "exponential"):
        return 1.0
    log_eps = math.log(float(jnp.finfo(dtype).eps))
    return math.sqrt(-2.0 * log_eps) if kernel == "gaussian" else -log_eps


def _profile(kernel: str, t: jax.Array) -> jax.Array:
    """The profile k(sqrt(t)) of :mod:`densax.kde`, finite derivatives at t = 0."""
    if kernel == "gaussian":
        return jnp.exp(-0.5 * t)
    positive = t > 0
    r = jnp.where(positive, jnp.sqrt(jnp.where(positive, t, 1)), 0)
    if kernel == "exponential":
        return jnp.exp(-r)
    inside = t < 1
    if kernel == "tophat":
        value = jnp.ones_like(t)
    elif kernel == "epanechnikov":
        value = 1 - t
    elif kernel == "linear":
        value = 1 - r
    else:
        value = jnp.cos(0.5 * jnp.pi * jnp.where(inside, r, 0))
    return jnp.where(inside, value, 0)


def _chol(bandwidth: jax.Array, d: int) -> jax.Array:
    """The Cholesky factor L of H (h I for a scalar bandwidth)."""
    if bandwidth.ndim == 0:
        return bandwidth * jnp.eye(d, dtype=bandwidth.dtype)
    return jnp.linalg.cholesky(0.5 * (bandwidth + bandwidth.T))


def _binning_corrected(kernel, bandwidth, spacing):
    """The gaussian's covariance less the binning's variance (Sheppard).

    Linear binning spreads a point at fraction ``f`` of its cell over the two
    nodes around it with mean 0 and variance ``delta^2 f (1 - f)``, whose
    average over ``f`` is ``delta^2 / 6``: to second order the binned estimate
    is the KDE with covariance ``H + diag(delta^2 / 6)``, plus a term that
    averages out over the points' positions in their cells. Convolving with
    ``H - diag(delta^2 / 6)`` removes that smoothing bias for the gaussian
    kernel, whose covariance composes exactly; the correction is capped at
    half of ``H``'s smallest eigenvalue so the kernel stays positive-definite.
    Other kernels are returned unchanged.
    """
    if kernel != "gaussian":
        return bandwidth
    d = spacing.shape[0]
    if bandwidth.ndim == 0:
        cov = bandwidth**2 * jnp.eye(d, dtype=spacing.dtype)
    else:
        cov = 0.5 * (bandwidth + bandwidth.T)
    shrink = spacing**2 / 6
    # The cap is a constant for autodiff (no eigenvector derivatives).
    smallest = jnp.linalg.eigvalsh(lax.stop_gradient(cov))[0]
    scale = jnp.minimum(1, 0.5 * smallest / lax.stop_gradient(jnp.max(shrink)))
    return cov - scale * jnp.diag(shrink)


def _log_peak(kernel: str, chol: jax.Array) -> jax.Array:
    """Log q_H(0) = -log Z_d - log |det L|."""
    d = chol.shape[0]
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -_log_kernel_integral(kernel, d) - log_det


def _fft_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per axis the smallest 2^a 3^b 5^c >= 2 n - 1 (no wrap-around)."""

    def fast(n):
        best = 1 << max(0, (n - 1).bit_length())
        for p3 in (1, 3, 9, 27):
            for p5 in (1, 5, 25):
                m = p3 * p5
                while m < n:
                    m *= 2
                best = min(best, m)
        return best

    return tuple(fast(max(2 * n - 1, 1)) for n in shape)


def _kernel_lattice(kernel, bandwidth, spacing, shape, fft_shape):
    """q_H at every node offset, laid out for a circular convolution.

    Offsets ``0..n-1`` sit at indices ``0..n-1`` and ``-(n-1)..-1`` at the
    end; the indices between never reach a node of the grid.
    """
    d = len(shape)
    chol = _chol(bandwidth, d)
    axes = []
    for k, p in enumerate(fft_shape):
        idx = np.arange(p)
        offset = np.where(idx <= p // 2, idx, idx - p).astype(np.float64)
        axes.append(jnp.asarray(offset, spacing.dtype) * spacing[k])
    u = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)  # [*P, d]
    chol_inv = lax.linalg.triangular_solve(
        chol, jnp.eye(d, dtype=chol.dtype), left_side=True, lower=True
    )
    z = jnp.einsum("...k,jk->...j", u, chol_inv, precision=lax.Precision.HIGHEST)
    t = jnp.sum(z * z, axis=-1)
    return _profile(kernel, t) * jnp.exp(_log_peak(kernel, chol))


# --------------------------------------------------------------------------
# The grid.


def grid_bounds(data, bandwidth, kernel="gaussian", sample_weight=None, axis_name=None):
    """The automatic grid: the data's box widened by the kernel's reach.

    Args:
      data: [n, d] points (the local shard with ``axis_name``).
      bandwidth: scalar ``h`` or [d, d] kernel covariance ``H``.
      kernel: one of :data:`densax.kde.KERNELS`.
      sample_weight: optional [n] weights; points of weight 0 are ignored.
      axis_name: mapped axis over which ``data`` is sharded.

    Returns:
      ``(lower [d], upper [d])``: ``min - c e``, ``max + c e`` with ``c =``
      :func:`kernel_cutoff` and ``e_k = sqrt(H_kk)`` the half-width of the
      kernel's unit ball along axis ``k``. Constants for autodiff.
    """
    data = lax.stop_gradient(jnp.asarray(data))
    bandwidth = lax.stop_gradient(jnp.asarray(bandwidth, data.dtype))
    d = data.shape[1]
    keep = jnp.ones(data.shape[:1], bool)
    if sample_weight is not None:
        keep = jnp.asarray(sample_weight) > 0
    big = jnp.finfo(data.dtype).max
    lo = jnp.min(jnp.where(keep[:, None], data, big), axis=0)
    hi = jnp.max(jnp.where(keep[:, None], data, -big), axis=0)
    lo = -_parallel.pmax(-lo, axis_name)
    hi = _parallel.pmax(hi, axis_name)
    if bandwidth.ndim == 0:
        half = bandwidth * jnp.ones(d, data.dtype)
    else:
        half = jnp.sqrt(jnp.diagonal(bandwidth))
    reach = kernel_cutoff(kernel, data.dtype) * half
    return lo - reach, hi + reach


def grid_points(lower, upper, shape):
    """The nodes of the grid: [*shape, d], ``lower + i (upper - lower) / (n - 1)``."""
    axes = [jnp.linspace(lower[k], upper[k], n) for k, n in enumerate(shape)]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def _spacing(lower, upper, shape):
    sizes = jnp.asarray([max(n - 1, 1) for n in shape], lower.dtype)
    return (upper - lower) / sizes


def _to_index(floor: jax.Array) -> jax.Array:
    """int32 of a non-negative integral float below 2^22, by a bit trick.

    XLA:CPU's float-to-int conversion (saturating) costs as much as the whole
    scatter-add; adding 2^52 (2^23 in float32) puts the integer in the low
    mantissa bits.
    """
    if floor.dtype == jnp.float64:
        magic = jnp.float64(2.0**52)
        bits = lax.bitcast_convert_type(floor + magic, jnp.int64)
        return (bits - lax.bitcast_convert_type(magic, jnp.int64)).astype(jnp.int32)
    floor = floor.astype(jnp.float32)
    magic = jnp.float32(2.0**23)
    bits = lax.bitcast_convert_type(floor + magic, jnp.int32)
    return bits - lax.bitcast_convert_type(magic, jnp.int32)


def _cells(points, lower, upper, shape):
    """Each point's cell (flat index of its lower corner), fractions and inside mask.

    Column by column: XLA:CPU runs reductions over a short trailing axis of an
    [n, d] array several times slower than the same work on d [n] columns.
    """
    spacing = _spacing(lower, upper, shape)
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    flat, inside, fracs = 0, True, []
    for k, n in enumerate(shape):
        s = (points[:, k] - lower[k]) * (1 / spacing[k])  # position in nodes
        inside = inside & (s >= 0) & (s <= n - 1)
        floor = jnp.clip(jnp.floor(lax.stop_gradient(s)), 0, max(n - 2, 0))
        fracs.append(s - floor)  # in [0, 1] inside the grid
        flat = flat + _to_index(floor) * int(strides[k])
    return flat, fracs, inside, strides


def _corner_weights(fracs):
    """The 2^d multilinear weights of each point, [m, 2^d], corner bits big-endian."""
    d = len(fracs)
    cols = []
    for corner in range(2**d):
        w = 1
        for k in range(d):
            bit = (corner >> (d - 1 - k)) & 1
            w = w * (fracs[k] if bit else 1 - fracs[k])
        cols.append(w)
    return jnp.stack(cols, axis=-1)


def bin_data(data, lower, upper, shape, sample_weight=None, axis_name=None):
    """Linear binning of weighted points onto the grid.

    Args:
      data: [n, d] points (the local shard with ``axis_name``).
      lower: [d] first node.
      upper: [d] last node.
      shape: static tuple of d grid sizes (each >= 2).
      sample_weight: optional [n] non-negative weights (default 1).
      axis_name: mapped axis over which ``data`` is sharded; the counts are
        summed over it.

    Returns:
      ``(counts [*shape], total [])``: the binned weights (points outside the
      grid dropped) and the total weight of all points.
    """
    data = jnp.asarray(data)
    n, d = data.shape
    w = jnp.ones(n, data.dtype) if sample_weight is None else sample_weight
    flat, frac, inside, strides = _cells(data, lower, upper, shape)
    corner = _corner_weights(frac) * jnp.where(inside, w, 0)[:, None]
    size = int(np.prod(shape))
    # One scatter of [n, 2^d] rows into per-cell accumulators; the 2^d corner
    # columns are then shifted onto their nodes.
    acc = jnp.zeros((size, 2**d), data.dtype)
    acc = acc.at[flat].add(corner, mode="promise_in_bounds")
    acc = acc.reshape(*shape, 2**d)
    counts = jnp.zeros(shape, data.dtype)
    for c in range(2**d):
        part = acc[..., c]
        for k in range(d):
            if (c >> (d - 1 - k)) & 1:
                pad = [(0, 0)] * d
                pad[k] = (1, 0)
                part = jnp.pad(part, pad)[tuple(slice(0, m) for m in shape)]
        counts = counts + part
    del strides
    total = jnp.sum(w)
    return _parallel.psum((counts, total), axis_name)


def grid_density(counts, total, lower, upper, bandwidth, kernel="gaussian"):
    """The binned KDE at the grid nodes, by a zero-padded FFT convolution.

    Args:
      counts: [*shape] binned weights (:func:`bin_data`).
      total: [] total weight (the normaliser).
      lower: [d] first node.
      upper: [d] last node.
      bandwidth: scalar ``h`` or [d, d] kernel covariance ``H``.
      kernel: one of :data:`densax.kde.KERNELS`.

    Returns:
      [*shape] densities, ``>= 0`` (round-off below ``8 eps max`` set to 0).
    """
    shape = counts.shape
    fft_shape = _fft_shape(shape)
    bandwidth = jnp.asarray(bandwidth, counts.dtype)
    spacing = _spacing(lower, upper, shape)
    bandwidth = _binning_corrected(kernel, bandwidth, spacing)
    lattice = _kernel_lattice(kernel, bandwidth, spacing, shape, fft_shape)
    axes = tuple(range(len(shape)))
    f_counts = jnp.fft.rfftn(counts, s=fft_shape, axes=axes)
    f_kernel = jnp.fft.rfftn(lattice, s=fft_shape, axes=axes)
    conv = jnp.fft.irfftn(f_counts * f_kernel, s=fft_shape, axes=axes)
    dens = conv[tuple(slice(0, n) for n in shape)].astype(counts.dtype) / total
    floor = _ROUND_OFF * jnp.finfo(dens.dtype).eps * lax.stop_gradient(jnp.max(dens))
    return jnp.where(dens > floor, dens, 0)


def interpolate(values, lower, upper, x):
    """Multilinear interpolation of grid values at points, 0 outside the grid.

    Args:
      values: [*shape] values at the nodes.
      lower: [d] first node.
      upper: [d] last node.
      x: [m, d] points.

    Returns:
      [m] interpolated values.
    """
    shape = values.shape
    d = len(shape)
    flat, frac, inside, strides = _cells(x, lower, upper, shape)
    table = values.reshape(-1)
    out = 0
    corners = _corner_weights(frac)
    for c in range(2**d):
        shift = sum(int(strides[k]) for k in range(d) if (c >> (d - 1 - k)) & 1)
        out = out + corners[:, c] * table[flat + shift]
    return jnp.where(inside, out, 0)


# --------------------------------------------------------------------------
# The pipeline.


def _check(data, bandwidth, shape, kernel):
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if data.ndim != 2 or not 1 <= data.shape[1] <= MAX_DIM:
        raise ValueError(
            f"data must be [n, d] with 1 <= d <= {MAX_DIM}, got shape {data.shape}"
        )
    d = data.shape[1]
    if len(shape) != d or any(int(n) < 2 for n in shape):
        raise ValueError(f"shape must be {d} grid sizes >= 2, got {shape}")
    if bandwidth.ndim not in (0, 2) or (
        bandwidth.ndim == 2 and bandwidth.shape != (d, d)
    ):
        raise ValueError(
            f"bandwidth must be a scalar or a [{d}, {d}] matrix, got shape "
            f"{bandwidth.shape}"
        )


@functools.partial(jax.jit, static_argnames=("shape", "kernel", "axis_name"))
def _grid_log_density(
    data, bandwidth, lower, upper, sample_weight, *, shape, kernel, axis_name
):
    if lower is None:
        lower, upper = grid_bounds(data, bandwidth, kernel, sample_weight, axis_name)
    counts, total = bin_data(data, lower, upper, shape, sample_weight, axis_name)
    dens = grid_density(counts, total, lower, upper, bandwidth, kernel)
    return dens, lower, upper


def _safe_log(p):
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1)), -jnp.inf)


def grid_log_density(
    data,
    bandwidth,
    shape,
    *,
    kernel="gaussian",
    lower=None,
    upper=None,
    sample_weight=None,
    axis_name=None,
):
    """The binned KDE's log-density at the nodes of a grid.

    Args:
      data: [n, d] points, ``d <= 3`` (the local shard with ``axis_name``).
      bandwidth: scalar ``h`` or [d, d] kernel covariance ``H``.
      shape: d grid sizes (static).
      kernel: one of :data:`densax.kde.KERNELS`.
      lower: optional [d] first node; with ``upper``, a fixed grid (e.g. one
        grid for a ``vmap`` over bandwidths); default :func:`grid_bounds`.
      upper: optional [d] last node.
      sample_weight: optional [n] non-negative weights.
      axis_name: mapped axis over which ``data`` and ``sample_weight`` are
        sharded; every device returns the full grid.

    Returns:
      ``(log_p [*shape], lower [d], upper [d])``.
    """
    data = jnp.asarray(data)
    bandwidth = jnp.asarray(bandwidth, data.dtype)
    shape = tuple(int(n) for n in shape)
    _check(data, bandwidth, shape, kernel)
    if (lower is None) != (upper is None):
        raise ValueError("lower and upper must be given together")
    if lower is not None:
        lower = jnp.asarray(lower, data.dtype)
        upper = jnp.asarray(upper, data.dtype)
    dens, lower, upper = _grid_log_density(
        data,
        bandwidth,
        lower,
        upper,
        sample_weight,
        shape=shape,
        kernel=kernel,
        axis_name=axis_name,
    )
    return _safe_log(dens), lower, upper


def log_density(
    x,
    data,
    bandwidth,
    shape,
    *,
    kernel="gaussian",
    lower=None,
    upper=None,
    sample_weight=None,
    axis_name=None,
):
    """The binned KDE's log-density at arbitrary points (interpolated).

    Args:
      x: [m, d] queries.
      data: [n, d] points, ``d <= 3``.
      bandwidth: scalar ``h`` or [d, d] kernel covariance ``H``.
      shape: d grid sizes (static).
      kernel: one of :data:`densax.kde.KERNELS`.
      lower: optional [d] first node (with ``upper``).
      upper: optional [d] last node.
      sample_weight: optional [n] non-negative weights.
      axis_name: mapped axis over which ``data`` is sharded.

    Returns:
      [m] log-densities, ``-inf`` outside the grid.
    """
    data = jnp.asarray(data)
    bandwidth = jnp.asarray(bandwidth, data.dtype)
    shape = tuple(int(n) for n in shape)
    _check(data, bandwidth, shape, kernel)
    if lower is not None:
        lower = jnp.asarray(lower, data.dtype)
        upper = jnp.asarray(upper, data.dtype)
    dens, lower, upper = _grid_log_density(
        data,
        bandwidth,
        lower,
        upper,
        sample_weight,
        shape=shape,
        kernel=kernel,
        axis_name=axis_name,
    )
    return _safe_log(interpolate(dens, lower, upper, jnp.asarray(x, data.dtype)))


# --------------------------------------------------------------------------
# Error bound and the grid-or-exact rule.


def _bound_factor(kernel, d, scaled_spacing, on_grid):
    """The bound in units of q0 (tophat: L1 units, on the grid)."""
    if kernel == "gaussian":  # binning 1/8, Sheppard's shift 1/12, interpolation 1/8
        return jnp.sum(scaled_spacing**2) * (5 / 24 if on_grid else 1 / 3)
    if kernel == "tophat":
        log_ratio = (
            0.5 * math.log(math.pi)
            + math.lgamma(0.5 * d + 1)
            - math.lgamma(0.5 * d + 0.5)
        )
        return 2 * math.exp(log_ratio) * jnp.sum(scaled_spacing)
    steps = 1 if on_grid else 2
    return steps * _LIPSCHITZ[kernel] * jnp.sum(scaled_spacing) / 2


def error_bound(kernel, bandwidth, lower, upper, shape, on_grid=True):
    """The documented bound of ``|p_binned - p|`` (see the module docstring).

    Args:
      kernel: one of :data:`densax.kde.KERNELS`.
      bandwidth: scalar ``h`` or [d, d] kernel covariance ``H``.
      lower: [d] first node.
      upper: [d] last node.
      shape: d grid sizes.
      on_grid: the bound at the nodes (binning only); False for interpolated
        points (twice the per-step bound).

    Returns:
      [] absolute bound on the density error; for the tophat kernel a bound
      on the integrated error ``int |p_binned - p|`` (``on_grid`` only).
    """
    lower = jnp.asarray(lower)
    d = lower.shape[0]
    spacing = _spacing(lower, jnp.asarray(upper, lower.dtype), shape)
    bandwidth = jnp.asarray(bandwidth, lower.dtype)
    chol = _chol(_binning_corrected(kernel, bandwidth, spacing), d)
    chol_inv = lax.linalg.triangular_solve(
        chol, jnp.eye(d, dtype=chol.dtype), left_side=True, lower=True
    )
    inv_sigma = jnp.sqrt(jnp.sum(chol_inv**2, axis=0))  # |L^-1 e_k|
    factor = _bound_factor(kernel, d, spacing * inv_sigma, on_grid)
    if kernel == "tophat":
        return factor
    return factor * jnp.exp(_log_peak(kernel, chol))


def relative_error_bound(kernel, bandwidth, lower, upper, shape):
    """The interpolated :func:`error_bound` relative to the kernel's peak ``q0``.

    For the tophat kernel the integrated bound itself. ``jit``-able (``shape``
    and ``kernel`` static): the accuracy half of :func:`use_grid`.
    """
    d = len(shape)
    lower = jnp.asarray(lower)
    bound = error_bound(kernel, bandwidth, lower, upper, shape, on_grid=False)
    if kernel == "tophat":
        return bound
    spacing = _spacing(lower, jnp.asarray(upper, lower.dtype), shape)
    bandwidth = jnp.asarray(bandwidth, lower.dtype)
    chol = _chol(_binning_corrected(kernel, bandwidth, spacing), d)
    return bound / jnp.exp(_log_peak(kernel, chol))


def grid_is_cheaper(shape, n_data, n_query):
    """The cost half of :func:`use_grid`: ``n 2^d + P log2 P + m 2^d < n m``."""
    d = len(shape)
    size = float(np.prod(_fft_shape(tuple(shape))))
    grid_work = (n_data + n_query) * 2**d + size * math.log2(size)
    return grid_work < float(n_data) * float(n_query)


def use_grid(kernel, bandwidth, lower, upper, shape, n_data, n_query, rtol=1e-3):
    """Whether the binned path should replace the exact one (concrete inputs).

    The grid is chosen when ``d <= 3``, the interpolated :func:`error_bound`
    is at most ``rtol`` times the kernel's peak height ``q0`` (for the tophat
    kernel, the integrated bound at most ``rtol``;
    :func:`relative_error_bound`), and the grid's work ``n 2^d + P log2 P +
    m 2^d`` is below the exact ``n m`` (:func:`grid_is_cheaper`). Call it
    outside ``jit`` (it returns a Python bool).

    Args:
      kernel: one of :data:`densax.kde.KERNELS`.
      bandwidth: scalar ``h`` or [d, d] kernel covariance ``H``.
      lower: [d] first node.
      upper: [d] last node.
      shape: d grid sizes.
      n_data: number of data points.
      n_query: number of query points (the grid's size for a grid evaluation).
      rtol: largest accepted bound relative to ``q0``.

    Returns:
      True for the grid, False for the exact sums.
    """
    if len(shape) > MAX_DIM or not grid_is_cheaper(shape, n_data, n_query):
        return False
    return bool(relative_error_bound(kernel, bandwidth, lower, upper, shape) <= rtol)
