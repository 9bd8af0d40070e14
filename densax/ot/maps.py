r"""Transport maps from couplings: barycentric projection, entropic map, 1D map.

A coupling ``P`` between ``mu`` and ``nu`` moves each source point to a
distribution over targets; its **barycentric projection** ``T(x_i) = sum_j
P_ij y_j / sum_j P_ij`` is the map that best summarises it (for the squared
Euclidean cost it is the optimal map when one exists). From a Sinkhorn
solution it extends to any new point through the dual potential ``g``
(the **entropic map**, Pooladian and Niles-Weed 2021):

.. math::
   T_\varepsilon(x) = \sum_j \operatorname{softmax}_j
   \Big(\frac{g_j - c(x, y_j)}{\varepsilon}\Big)\, y_j,

which equals the barycentric projection at the source points. On the line the
optimal map is monotone, ``T = F_nu^{-1} o F_mu`` (:func:`monotone_map_1d`).
:func:`push_forward` applies a map to a sample (or an affine map to a
Gaussian, exactly).

References:
  Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, §2.2 and
  Remark 4.11.
  Pooladian, A.-A. and Niles-Weed, J. (2021). Entropic estimation of optimal
  transport maps. arXiv:2109.12004.
  Santambrogio, F. (2015). Optimal Transport for Applied Mathematicians, §2.2.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from densax import ot
  >>> from densax.ot import maps
  >>> x = jax.random.normal(jax.random.key(0), (64, 2))
  >>> y = x + 3.0
  >>> out = ot.sinkhorn(x, y, epsilon=0.05)
  >>> t = maps.entropic_map(out, jnp.zeros((1, 2)))
  >>> t.shape
  (1, 2)
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from ott.geometry import costs

from densax import _validate
from densax.ot.gaussian import AffineMap

__all__ = [
    "barycentric_projection",
    "entropic_map",
    "monotone_map_1d",
    "push_forward",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def _pairwise(cost_fn, x, y):
    """``[n, m]`` costs; one matrix product for the squared Euclidean cost."""
    if type(cost_fn) is costs.SqEuclidean:
        cross = jnp.matmul(x, y.T, precision=_HIGHEST)
        sq = jnp.sum(x * x, 1)[:, None] + jnp.sum(y * y, 1)[None, :] - 2.0 * cross
        return jnp.maximum(sq, 0.0)
    return cost_fn.all_pairs(x, y)


def barycentric_projection(plan: Any, y: Any, *, validate: bool = True) -> jax.Array:
    """Barycentric projection ``T(x_i) = sum_j P_ij y_j / sum_j P_ij`` of a plan.

    Works for any dense coupling, exact (``densax.ot.emd``) or entropic
    (``densax.ot.transport_plan``). Only the ratios within a row matter.

    Args:
      plan: [n, m] non-negative coupling.
      y: [m, d] target points.
      validate: check on the eager path that the plan is finite and
        non-negative with no empty row.

    Returns:
      [n, d] the images of the source points. A row of zero mass (a source
      point that receives no mass) has no image: its row is NaN (rejected
      eagerly when ``validate``).

    Raises:
      ValueError: shapes that do not match; eagerly, a negative or non-finite
        entry or an empty row.

    Example:
      >>> import jax.numpy as jnp
      >>> plan = jnp.array([[0.25, 0.25], [0.0, 0.5]])
      >>> barycentric_projection(plan, jnp.array([[0.0], [2.0]])).tolist()
      [[1.0], [2.0]]
    """
    dtype = _validate.common_float_dtype(plan, y)
    plan = _validate.as_float(plan, "plan", ndim=2, dtype=dtype)
    y = _validate.as_float(y, "y", ndim=2, dtype=dtype)
    if plan.shape[1] != y.shape[0]:
        raise ValueError(
            f"plan has {plan.shape[1]} columns but y has {y.shape[0]} points"
        )
    if validate and _validate.is_concrete(plan):
        _validate.check_finite(plan, "plan", True)
        _validate.value_check(True, jnp.all(plan >= 0), "plan must be non-negative")
        _validate.value_check(
            True, jnp.all(jnp.sum(plan, 1) > 0), "plan has a row of zero mass"
        )
    return _barycentric(plan, y)


@jax.jit
def _barycentric(plan, y):
    mass = jnp.sum(plan, axis=1, keepdims=True)
    safe = jnp.where(mass > 0, mass, 1.0)
    out = jnp.matmul(plan / safe, y, precision=_HIGHEST)
    return jnp.where(mass > 0, out, jnp.nan)


def entropic_map(result: Any, x: Any, *, inverse: bool = False) -> jax.Array:
    r"""The out-of-sample entropic map of a Sinkhorn solution, at new points.

    ``T(x) = sum_j softmax_j((g_j - c(x, y_j)) / epsilon) y_j``: the
    conditional mean of the target under the entropic plan extended to ``x``
    by the soft c-transform of ``g``. At the source points it is the
    barycentric projection of the plan; for Gaussian measures it tends, with
    many samples, to ``densax.ot.gaussian.entropic_gaussian_map``. It is the
    ``out_of_sample_map="continuous"`` rule of POT's ``SinkhornTransport``.
    Differentiable in ``x`` and in the solution.

    Args:
      result: a ``densax.ot.SinkhornOutput`` (it holds ``f``, ``g``,
        ``epsilon``, the points ``x``, ``y`` and ``cost_fn``).
      x: [k, d] points where to evaluate the map (source side; target side
        when ``inverse``).
      inverse: map target points back to the source, with ``f``.

    Returns:
      [k, d] the images, in the dtype of the solution.

    Raises:
      ValueError: ``x`` is not ``[k, d]`` with the solution's dimension.

    References:
      Pooladian and Niles-Weed (2021), Definition 2; Seguy et al. (2018),
      Large-scale optimal transport and mapping estimation, ICLR.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from densax import ot
      >>> x = jnp.array([[0.0], [1.0]])
      >>> out = ot.sinkhorn(x, x + 5.0, epsilon=0.01)
      >>> entropic_map(out, jnp.array([[0.0]])).round(3).tolist()
      [[5.0]]
    """
    pts, pot = (result.x, result.f) if inverse else (result.y, result.g)
    x = _validate.as_float(x, "x", ndim=2, dtype=pts.dtype)
    _validate.check_same_last_dim(x, pts, "x", "the solution's points")
    return _entropic_map(x, pts, pot, result.epsilon, result.cost_fn)


@jax.jit
def _entropic_map(x, pts, pot, eps, cost_fn):
    logits = (pot[None, :] - _pairwise(cost_fn, x, pts)) / eps
    return jnp.matmul(jax.nn.softmax(logits, axis=1), pts, precision=_HIGHEST)


def push_forward(transport: Any, measure: Any) -> Any:
    """The push-forward ``T # mu`` of a sample or of a Gaussian by a map.

    Args:
      transport: the map: any callable on ``[n, d]`` points (e.g. a
        ``functools.partial`` of :func:`entropic_map`), or an
        ``densax.ot.gaussian.AffineMap``.
      measure: ``[n, d]`` sample points (pushed point by point; weights are
        unchanged), or, with an ``AffineMap``, a Gaussian (an object with
        ``mean`` and ``cov``), pushed exactly to ``N(A m + b, A S A^T)`` of the
        same type.

    Returns:
      ``[n, d]`` points, or the pushed Gaussian.

    Raises:
      TypeError: ``transport`` is not callable, or a Gaussian is given with a
        map that is not an ``AffineMap``.

    Example:
      >>> import jax.numpy as jnp
      >>> from densax.gaussian import Gaussian
      >>> t = AffineMap(2.0 * jnp.eye(2), jnp.ones(2))
      >>> g = push_forward(t, Gaussian(jnp.zeros(2), jnp.eye(2)))
      >>> g.mean.tolist(), g.cov.tolist()
      ([1.0, 1.0], [[4.0, 0.0], [0.0, 4.0]])
    """
    if not callable(transport):
        raise TypeError(f"transport must be callable, got {type(transport).__name__}")
    if hasattr(measure, "mean") and hasattr(measure, "cov"):
        if not isinstance(transport, AffineMap):
            raise TypeError(
                "a Gaussian is pushed forward exactly only by an AffineMap; "
                "push a sample of it instead"
            )
        lin = transport.linear
        mean = lin @ measure.mean + transport.offset
        cov = jnp.matmul(lin @ measure.cov, lin.T, precision=_HIGHEST)
        return measure._replace(mean=mean, cov=0.5 * (cov + cov.T))
    return transport(_validate.as_float(measure, "measure", ndim=2))


def monotone_map_1d(
    x: Any,
    u: Any,
    v: Any,
    *,
    a: Any = None,
    b: Any = None,
    validate: bool = True,
) -> jax.Array:
    r"""The monotone (optimal) map ``T = F_v^{-1} o F_u`` on the line, at ``x``.

    ``F_u`` and ``F_v^{-1}`` are the piecewise-linear interpolations of the
    weighted empirical CDF and quantile function through the mid-mass points
    (the sorted ``u_(i)`` sits at cumulative weight ``A_i - a_i / 2``). So the
    map is non-decreasing and continuous; for equal sizes and uniform weights
    it sends ``u_(i)`` to ``v_(i)``, the optimal coupling of ``wasserstein_1d``.
    Beyond the extreme sample points it is a translation (slope one).

    Args:
      x: [k] points where to evaluate the map.
      u: [n] source samples.
      v: [m] target samples.
      a: [n] non-negative weights of ``u`` (uniform by default).
      b: [m] weights of ``v``.
      validate: check the weights on the eager path.

    Returns:
      [k] the images ``T(x)``.

    Raises:
      ValueError: inputs that are not 1D; eagerly, invalid weights.

    References:
      Santambrogio (2015), Theorem 2.5; Peyré and Cuturi (2019), §2.6.

    Example:
      >>> import jax.numpy as jnp
      >>> monotone_map_1d(jnp.array([2.0, 0.5]), jnp.array([0.0, 1.0, 2.0]),
      ...                 jnp.array([10.0, 30.0, 20.0])).tolist()
      [30.0, 15.0]
    """
    dtype = _validate.common_float_dtype(x, u, v)
    x = _validate.as_float(x, "x", ndim=1, dtype=dtype)
    u = _validate.as_float(u, "u", ndim=1, dtype=dtype)
    v = _validate.as_float(v, "v", ndim=1, dtype=dtype)
    for arr, name in ((u, "u"), (v, "v")):
        if arr.shape[0] == 0:
            raise ValueError(f"{name} must not be empty")
    a = _weights(a, "a", u, validate)
    b = _weights(b, "b", v, validate)
    return _monotone(x, u, v, a, b)


def _weights(w, name, pts, validate):
    if w is None:
        return jnp.ones_like(pts)
    return _validate.check_weights(
        w, name, pts.shape, dtype=pts.dtype, validate=validate
    )


def _mid_cdf(pts, w):
    order = jnp.argsort(pts)
    s, ws = pts[order], w[order] / jnp.sum(w)
    return s, jnp.cumsum(ws) - 0.5 * ws


@functools.partial(jax.jit)
def _monotone(x, u, v, a, b):
    su, tu = _mid_cdf(u, a)
    sv, tv = _mid_cdf(v, b)
    t = jnp.interp(x, su, tu)
    out = jnp.interp(t, tv, sv)
    out = jnp.where(x < su[0], sv[0] + (x - su[0]), out)
    return jnp.where(x > su[-1], sv[-1] + (x - su[-1]), out)
