"""The binned KDE behind :mod:`densax.kde`'s public API (d <= 3).

:func:`grid_log_prob` (the density of a :class:`densax.kde.KDE` on a regular
grid, with its error bound), :func:`interpolate` (a grid's log-density at
arbitrary points) and the ``method="binned"`` / ``"auto"`` paths of
:func:`densax.kde.log_prob`. The engine is the private :mod:`densax._binned`
(linear binning, a zero-padded FFT convolution, multilinear interpolation);
its module docstring states the error bounds this API reports.

Why this shape. KDEpy's ``FFTKDE().fit(data).evaluate(n)`` returns the grid
and the densities on it (for a plot); ``jax.scipy.stats.gaussian_kde`` has
only the exact ``evaluate``. Here the grid is a value, :class:`Grid` (its
nodes, log-densities, bounds and the documented error bound), computed once
by :func:`grid_log_prob` and read as often as needed by :func:`interpolate`;
``kde.log_prob(model, x, method="binned")`` is the one-call form of the two.
Both are ``jit``/``vmap``-able (over bandwidths too) and differentiable
w.r.t. the model's bandwidth and weights for a fixed grid (``lower``/
``upper`` given: the automatic bounds are constants for autodiff).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from densax import _binned, _validate
from densax._validate import (
    as_float,
    check_int,
    check_same_last_dim,
    common_float_dtype,
    is_concrete,
)

__all__ = ["DEFAULT_GRID_SIZE", "Grid", "grid_log_prob", "interpolate"]

MAX_DIM = _binned.MAX_DIM
# Nodes per axis by default: 4096 in 1D, 256 x 256 in 2D, 64^3 in 3D.
DEFAULT_GRID_SIZE = {1: 4096, 2: 256, 3: 64}


class Grid(NamedTuple):
    """A KDE's binned log-density on a regular grid (:func:`grid_log_prob`)."""

    points: jax.Array  # [*shape, d] float: the nodes
    log_density: jax.Array  # [*shape] float: log p_grid at the nodes (-inf: 0)
    lower: jax.Array  # [d] float: the first node
    upper: jax.Array  # [d] float: the last node
    # [] float: bound on |p_grid - p| at the nodes (tophat: on the integrated
    # error int |p_grid - p|).
    error_bound: jax.Array
    # [] float: the same between the nodes (interpolate); tophat: as above.
    interp_error_bound: jax.Array


def _grid_shape(grid_size, d):
    """The static grid shape from an int, a sequence of d ints or None."""
    if grid_size is None:
        return (DEFAULT_GRID_SIZE[d],) * d
    if isinstance(grid_size, (int, np.integer)) and not isinstance(grid_size, bool):
        sizes = (grid_size,) * d
    else:
        sizes = tuple(grid_size)
        if len(sizes) != d:
            raise ValueError(
                f"grid_size must be an int or {d} ints (one per axis), got "
                f"{grid_size!r}"
            )
    return tuple(check_int(n, "grid_size", minimum=2) for n in sizes)


def _check_dim(d, what):
    if d > MAX_DIM:
        raise ValueError(
            f"{what} needs data of dimension d <= {MAX_DIM}, got d = {d} "
            "(use method='exact')"
        )


@functools.partial(jax.jit, static_argnames=("shape", "kernel", "axis_name"))
def _grid(data, w, bandwidth, lower, upper, *, shape, kernel, axis_name):
    if lower is None:
        lower, upper = _binned.grid_bounds(data, bandwidth, kernel, w, axis_name)
    counts, total = _binned.bin_data(data, lower, upper, shape, w, axis_name)
    dens = _binned.grid_density(counts, total, lower, upper, bandwidth, kernel)
    bound = _binned.error_bound(kernel, bandwidth, lower, upper, shape)
    between = _binned.error_bound(kernel, bandwidth, lower, upper, shape, False)
    return Grid(
        _binned.grid_points(lower, upper, shape),
        _binned._safe_log(dens),
        lower,
        upper,
        bound.astype(data.dtype),
        between.astype(data.dtype),
    )


def _check_model(model):
    from densax import kde  # here: densax.kde imports this module

    return kde._check_model(model)


@_validate.half_precision
def grid_log_prob(
    model: Any,
    grid_size: Any = None,
    *,
    lower: Any = None,
    upper: Any = None,
    axis_name: str | None = None,
) -> Grid:
    """The KDE's log-density on a regular grid, by linear binning and an FFT.

    Every data point's weight is split between the ``2^d`` nodes of its grid
    cell (linear binning) and the binned weights are convolved with the kernel
    by a zero-padded FFT: ``O(n 2^d + P log P)`` work for ``P ~ 2^d prod
    grid_size`` instead of the exact ``O(n prod grid_size)``. Every kernel of
    :data:`densax.kde.KERNELS`, scalar or matrix bandwidth, ``d <= 3``. The
    error against the exact KDE is at most ``grid.error_bound`` at the nodes
    (the bound is derived in :mod:`densax._binned`: second order in the grid
    spacing for the gaussian kernel, whose binning bias is removed, first
    order for the kinked kernels; for the tophat kernel a bound on the
    integrated error). Densities below a few ``eps`` of the maximum are FFT
    round-off and are set to 0 (log ``-inf``): the far tails of the gaussian
    and exponential kernels are not resolved (use :func:`densax.kde.log_prob`
    with ``method="exact"`` there).

    Differentiable w.r.t. the model's bandwidth and ``sample_weight`` (and its
    data, piecewise linearly); ``jit``- and ``vmap``-able, e.g. over
    bandwidths. The automatic grid is a constant for autodiff: pass ``lower``
    and ``upper`` for one grid shared by a ``vmap`` over bandwidths or for
    finite-difference checks.

    Args:
      model: a :class:`densax.kde.KDE` of data with ``d <= 3``.
      grid_size: nodes per axis: an int, d ints, or ``None`` for
        :data:`DEFAULT_GRID_SIZE` (4096 in 1D, 256 per axis in 2D, 64 in 3D).
        Static.
      lower: optional [d] first node (with ``upper``); by default the data's
        bounding box widened by the kernel's reach (where the gaussian and
        exponential kernels fall below ``eps``).
      upper: optional [d] last node.
      axis_name: with the model's data sharded over this mapped axis (fitted
        with the same ``axis_name``): the binned weights are ``psum``-ed and
        every device returns the whole grid.

    Returns:
      A :class:`Grid`: ``points`` ``[*shape, d]``, ``log_density`` ``[*shape]``,
      ``lower``/``upper`` [d], ``error_bound`` and ``interp_error_bound`` [].

    Raises:
      TypeError: ``model`` is not a KDE; a non-int ``grid_size``.
      ValueError: ``d > 3``; bad ``grid_size``; only one of ``lower``/``upper``.

    References:
      Wand, "Fast computation of multivariate kernel estimators", J. Comput.
      Graph. Statist. 3 (1994). Silverman, "Algorithm AS 176: Kernel density
      estimation using the fast Fourier transform", Appl. Statist. 31 (1982).

    Example:
      >>> from densax import kde
      >>> data = jax.random.normal(jax.random.key(0), (10_000, 1))
      >>> grid = kde.grid_log_prob(kde.fit(data, bandwidth=0.2), 1024)
      >>> grid.points.shape, grid.log_density.shape
      ((1024, 1), (1024,))
      >>> print(f"{float(jnp.exp(grid.log_density).max()):.2f}")
      0.38
    """
    model = _check_model(model)
    # One dtype, strongly typed (as kde.log_prob does): one compilation.
    model = jax.tree.map(lambda a: jnp.asarray(a).astype(model.data.dtype), model)
    data = model.data
    d = data.shape[1]
    _check_dim(d, "grid_log_prob")
    shape = _grid_shape(grid_size, d)
    if (lower is None) != (upper is None):
        raise ValueError("lower and upper must be given together")
    if lower is not None:
        lower = as_float(lower, "lower", ndim=1, dtype=data.dtype)
        upper = as_float(upper, "upper", ndim=1, dtype=data.dtype)
        for name, bound in (("lower", lower), ("upper", upper)):
            if bound.shape != (d,):
                raise ValueError(f"{name} must have shape ({d},), got {bound.shape}")
    return _grid(
        data,
        model.sample_weight,
        model.bandwidth,
        lower,
        upper,
        shape=shape,
        kernel=model.kernel,
        axis_name=axis_name,
    )


@_validate.half_precision
def interpolate(grid: Grid, x: Any) -> jax.Array:
    """A grid's log-density at arbitrary points, by multilinear interpolation.

    The density (not its log) is interpolated between the ``2^d`` nodes
    around each query, so the error against the exact KDE is at most
    ``grid.interp_error_bound``; queries outside the grid get ``-inf``.
    ``O(2^d)`` per query, whatever the number of data points.

    Args:
      grid: a :class:`Grid` from :func:`grid_log_prob`.
      x: [m, d] queries, or one [d] query.

    Returns:
      [m] log-densities (``[]`` for one query).

    Raises:
      TypeError: ``grid`` is not a Grid, non-numeric ``x``.
      ValueError: ``x`` of another dimension.

    Example:
      >>> from densax import kde
      >>> data = jax.random.normal(jax.random.key(0), (10_000, 2))
      >>> grid = kde.grid_log_prob(kde.fit(data, bandwidth=0.3), 128)
      >>> logp = kde.interpolate(grid, jnp.array([[0.0, 0.0], [50.0, 0.0]]))
      >>> print(f"{float(logp[0]):.2f}", float(logp[1]))
      -1.93 -inf
    """
    if not isinstance(grid, Grid):
        raise TypeError(
            f"grid must be a Grid (from kde.grid_log_prob), got {type(grid).__name__}"
        )
    dtype = common_float_dtype(x, grid.points)
    x = as_float(x, "x", ndim=(1, 2), dtype=dtype)
    check_same_last_dim(x, grid.points, "x", "grid.points")
    single = x.ndim == 1
    out = _interpolate(grid, x[None] if single else x)
    return out[0] if single else out


@jax.jit
def _interpolate(grid, x):
    dens = jnp.exp(grid.log_density.astype(x.dtype))
    lower, upper = grid.lower.astype(x.dtype), grid.upper.astype(x.dtype)
    return _binned._safe_log(_binned.interpolate(dens, lower, upper, x))


def binned_log_prob(model, x, grid_size, axis_name):
    """``method="binned"`` of :func:`densax.kde.log_prob` (checked inputs)."""
    _check_dim(model.data.shape[1], "method='binned'")
    return interpolate(grid_log_prob(model, grid_size, axis_name=axis_name), x)


@functools.partial(jax.jit, static_argnames=("shape", "kernel"))
def _relative_bound(data, w, bandwidth, *, shape, kernel):
    """:func:`densax._binned.relative_error_bound` on the automatic grid."""
    lower, upper = _binned.grid_bounds(data, bandwidth, kernel, w)
    return _binned.relative_error_bound(kernel, bandwidth, lower, upper, shape)


def auto_uses_grid(model, n_query, grid_size, rtol):
    """``method="auto"``: :func:`densax._binned.use_grid`'s rule, concrete inputs.

    False under a transformation (the rule needs the bandwidth's value), for
    ``d > 3``, where the exact sums are cheaper, and where the grid's
    interpolation bound exceeds ``rtol`` times the kernel's peak.
    """
    n, d = model.data.shape
    if d > MAX_DIM or not is_concrete(model):
        return False
    shape = _grid_shape(grid_size, d)
    if not _binned.grid_is_cheaper(shape, n, n_query):
        return False
    bound = _relative_bound(
        model.data,
        model.sample_weight,
        model.bandwidth,
        shape=shape,
        kernel=model.kernel,
    )
    return bool(bound <= rtol)
