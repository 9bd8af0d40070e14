r"""Optimal transport for domain adaptation.

A classifier trained on a labelled **source** sample ``(xs, ys)`` often fails
on a **target** sample ``xt`` drawn from a shifted distribution. Domain
adaptation by optimal transport (Courty et al. 2017) moves the source onto the
target with a transport map, then trains (or evaluates) the classifier on the
transported source, or carries the labels to the target through the plan:

* :func:`fit_sinkhorn`: the entropic plan between the two samples (through
  ``densax.ot.sinkhorn``), optionally with a **class-based regulariser**: the
  group-sparsity penalty ``eta sum_{j, c} (sum_{i in class c} P_ij)^(1/2)``
  that keeps each target point fed by one class (Courty et al. 2017, solved by
  majorisation-minimisation: a sequence of Sinkhorn problems with a reweighted
  cost), and a cost for pairs whose known labels differ (for targets with a
  few labels). The same problems as POT's ``ot.da.SinkhornTransport`` and
  ``SinkhornLpl1Transport``.
* :func:`fit_exact`: the exact (unregularised) plan between the two samples,
  by ``densax.ot.exact.emd``, with the same label cost for semi-supervised
  targets as POT's ``ot.da.EMDTransport`` (``limit_max``).
* :func:`fit_linear`: the affine Monge map between the Gaussians fitted to
  the two samples (POT's ``ot.da.LinearTransport``).
* :func:`transform`: transported source points, at the training points
  (barycentric projection) and out of sample: ``"ferradans"`` (the training
  point's displacement applied to its nearest training neighbour, Ferradans et
  al. 2014) or ``"continuous"`` (the entropic map of the dual potential).
* :func:`transfer_labels`: soft target labels ``P^T onehot(ys)``, normalised
  per target point (Redko et al. 2019).

Any other dense plan between the two samples plugs into
:func:`transform` and :func:`transfer_labels` as a :class:`CouplingTransport`
with ``g=None``.

References:
  Courty, N., Flamary, R., Tuia, D. and Rakotomamonjy, A. (2017). Optimal
  transport for domain adaptation. IEEE TPAMI 39, 1853–1865.
  Ferradans, S., Papadakis, N., Peyré, G. and Aujol, J.-F. (2014). Regularized
  discrete optimal transport. SIAM J. Imaging Sci. 7, 1853–1882.
  Redko, I., Courty, N., Flamary, R. and Tuia, D. (2019). Optimal transport
  for multi-source domain adaptation under target shift. AISTATS.
  Flamary, R. et al. (2021). POT: Python Optimal Transport. JMLR 22, 1–8.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from densax.ot import da
  >>> xs = jax.random.normal(jax.random.key(0), (40, 2))
  >>> xt = xs[:30] * 0.5 + 3.0
  >>> tr = da.fit_sinkhorn(xs, xt, epsilon=0.1)
  >>> da.transform(tr, xs).shape, bool(tr.converged)
  ((40, 2), True)
  >>> lin = da.fit_linear(xs, xt)
  >>> da.transform(lin, xs[:2]).shape
  (2, 2)
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import costs

from densax import _validate
from densax import gaussian as _gaussian
from densax.ot import exact as _exact
from densax.ot.gaussian import AffineMap, gaussian_monge_map
from densax.ot.maps import _pairwise

__all__ = [
    "CouplingTransport",
    "fit_exact",
    "fit_linear",
    "fit_sinkhorn",
    "transfer_labels",
    "transform",
]

_HIGHEST = jax.lax.Precision.HIGHEST
# The group-lasso majorisation of POT's sinkhorn_lpl1_mm: p = 1/2 and a floor.
_LPL1_P = 0.5
_LPL1_FLOOR = 1e-3


class CouplingTransport(NamedTuple):
    """A coupling between a source and a target sample, and its potential."""

    xs: jax.Array  # [n, d] source points
    xt: jax.Array  # [m, d] target points
    plan: jax.Array  # [n, m] the coupling (sums to 1)
    g: jax.Array | None  # [m] target potential of the entropic problem, or None
    epsilon: jax.Array  # [] regularisation of the (last) Sinkhorn solve; 0: exact
    converged: jax.Array  # [] bool: the (last) solve converged
    n_iter: jax.Array  # [] int32 Sinkhorn iterations (all solves) or simplex pivots


@jax.tree_util.register_pytree_node_class
class _LabelCost(costs.CostFn):
    """``|x - y|^2 + <h, v>`` on augmented points ``[x, h]`` and ``[y, v]``.

    ``h`` [k] (a one-hot class indicator of a source point) and ``v`` [k]
    (the per-class penalty of a target point) are the last ``k`` coordinates.
    This lets a label-dependent cost matrix ride on sinkhorn's point clouds.
    """

    def __init__(self, k: int):
        self.k = k

    def __call__(self, x, y):
        d = x.shape[-1] - self.k
        return jnp.sum((x[:d] - y[:d]) ** 2) + x[d:] @ y[d:]

    def all_pairs(self, x, y):
        d = x.shape[-1] - self.k
        base = _pairwise(costs.SqEuclidean(), x[:, :d], y[:, :d])
        return base + jnp.matmul(x[:, d:], y[:, d:].T, precision=_HIGHEST)

    def tree_flatten(self):
        return (), self.k

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        del children
        return cls(aux_data)


def _sinkhorn(x, y, a, b, epsilon, cost_fn, tol, max_iter):
    """The only call of ``densax.ot.sinkhorn`` in this module: ``(out, plan)``."""
    from densax import ot  # the package finishes importing before any call

    out = ot.sinkhorn(
        x,
        y,
        a=a,
        b=b,
        epsilon=epsilon,
        cost_fn=cost_fn,
        tol=tol,
        max_iter=max_iter,
        differentiation="implicit",  # the plan and g are differentiated
        validate=False,
    )
    return out, ot.transport_plan(out)


def _weights(w, name, n, dtype, validate):
    if w is None:
        return jnp.full(n, 1.0 / n, dtype)
    w = _validate.check_weights(w, name, (n,), dtype=dtype, validate=validate)
    return w / jnp.sum(w)


def _labels(labels, name, n, n_classes, validate):
    labels = jnp.asarray(labels)
    if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be an int array of shape ({n},)")
    _validate.value_check(
        validate,
        (labels >= -1) & (labels < n_classes),
        f"{name} must hold classes in [0, {n_classes}) or -1 (unlabelled)",
    )
    return labels


@functools.partial(jax.jit, static_argnames=("n_classes", "n_outer", "max_iter"))
def _fit_classes(
    xs, xt, a, b, ys, yt, eps, eta, label_cost, tol, *, n_classes, n_outer, max_iter
):
    dtype = xs.dtype
    hs = jax.nn.one_hot(ys, n_classes, dtype=dtype)  # -1 gives a zero row
    if yt is None:
        fixed = jnp.zeros((xt.shape[0], n_classes), dtype)
    else:
        mismatch = (yt[:, None] >= 0) & (yt[:, None] != jnp.arange(n_classes))
        fixed = jnp.where(mismatch, label_cost, 0.0).astype(dtype)
    cost_fn = _LabelCost(n_classes)
    src = jnp.concatenate([xs, hs], axis=1)

    def solve(penalty):
        tgt = jnp.concatenate([xt, fixed + penalty], axis=1)
        return _sinkhorn(src, tgt, a, b, eps, cost_fn, tol, max_iter)

    def reweight(_, carry):
        penalty, n_iter = carry
        out, plan = solve(penalty)
        mass = jnp.matmul(plan.T, hs, precision=_HIGHEST)  # [m, classes]
        penalty = eta * _LPL1_P * (mass + _LPL1_FLOOR) ** (_LPL1_P - 1.0)
        return penalty, n_iter + out.n_iter

    zeros = jnp.zeros((xt.shape[0], n_classes), dtype)
    penalty, n_iter = jax.lax.fori_loop(0, n_outer - 1, reweight, (zeros, 0))
    out, plan = solve(penalty)
    return CouplingTransport(
        xs, xt, plan, None, out.epsilon, out.converged, n_iter + out.n_iter
    )


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit_plain(xs, xt, a, b, eps, tol, *, max_iter):
    out, plan = _sinkhorn(xs, xt, a, b, eps, costs.SqEuclidean(), tol, max_iter)
    return CouplingTransport(
        xs, xt, plan, out.g, out.epsilon, out.converged, out.n_iter
    )


def fit_sinkhorn(
    xs: Any,
    xt: Any,
    *,
    ys: Any = None,
    yt: Any = None,
    a: Any = None,
    b: Any = None,
    epsilon: float = 1.0,
    class_reg: float = 0.0,
    n_classes: int | None = None,
    label_cost: float | None = None,
    n_outer: int = 10,
    tol: float | None = None,
    max_iter: int = 1000,
    validate: bool = True,
) -> CouplingTransport:
    r"""Entropic transport from a (labelled) source sample to a target sample.

    Without labels: the plan of ``densax.ot.sinkhorn(xs, xt, epsilon=...)``
    for the squared Euclidean cost, the plan of POT's
    ``ot.da.SinkhornTransport(reg_e=epsilon)``. With ``class_reg = eta > 0``
    and source labels ``ys``: the plan of

    .. math::
       \min_P \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P | a \otimes b)
       + \eta \sum_{j, c} \Big(\sum_{i: y_i = c} P_{ij}\Big)^{1/2},

    by ``n_outer`` majorisation steps (each a Sinkhorn solve with the
    linearised penalty added to the cost), POT's
    ``ot.da.SinkhornLpl1Transport(reg_e=epsilon, reg_cl=eta)``. Target labels
    ``yt`` (``-1`` where unknown) add ``label_cost`` to every pair of known,
    different labels (POT's ``limit_max``).

    Args:
      xs: [n, d] source points.
      xt: [m, d] target points.
      ys: [n] int source labels in ``[0, n_classes)`` (``-1``: unlabelled);
        required with ``class_reg > 0`` or ``yt``.
      yt: [m] int target labels, ``-1`` where unknown.
      a: [n] source weights (uniform by default; normalised).
      b: [m] target weights.
      epsilon: entropic regularisation, in the units of the squared distances
        (no normalisation of the cost, as POT's default ``norm=None``).
      class_reg: ``eta >= 0``, the weight of the group-sparsity penalty.
      n_classes: number of classes (a Python int); default ``max(ys) + 1``
        read eagerly.
      label_cost: the cost added to a pair with known, different labels;
        default the largest squared distance plus ``50 epsilon``, so such a
        pair gets at most ``exp(-50)`` times the mass of any allowed one
        (POT's ``limit_max=inf`` gives it exactly 0; an infinite cost here
        would stall the convergence test in floating point).
      n_outer: majorisation steps with ``class_reg > 0`` (static; POT's
        ``max_iter``).
      tol: Sinkhorn's tolerance on the L1 marginal error; default ``1e-8``
        in float64 and ``1e-4`` in float32 (whose rounding floor is near
        ``1e-7 x max cost / epsilon``).
      max_iter: Sinkhorn's iteration budget, per solve.
      validate: eager value checks.

    Returns:
      A :class:`CouplingTransport`; its ``g`` (for the ``"continuous"``
      out-of-sample map) is ``None`` when labels entered the cost.

    Raises:
      ValueError: shapes, labels or options that do not fit.

    References:
      Courty et al. (2017), §4.2 (the l_p-l_1 regulariser, p = 1/2);
      Cuturi (2013), Sinkhorn distances, NeurIPS.
    """
    dtype = _validate.common_float_dtype(xs, xt)
    xs = _validate.as_float(xs, "xs", ndim=2, dtype=dtype)
    xt = _validate.as_float(xt, "xt", ndim=2, dtype=dtype)
    _validate.check_same_last_dim(xs, xt, "xs", "xt")
    _validate.check_finite(xs, "xs", validate)
    _validate.check_finite(xt, "xt", validate)
    n, m = xs.shape[0], xt.shape[0]
    a = _weights(a, "a", n, dtype, validate)
    b = _weights(b, "b", m, dtype, validate)
    if not isinstance(epsilon, (int, float)) or epsilon <= 0:
        raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}")
    if class_reg < 0:
        raise ValueError(f"class_reg must be >= 0, got {class_reg}")
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=1)
    eps = jnp.asarray(epsilon, dtype)
    if tol is None:
        tol = 1e-8 if dtype == jnp.float64 else 1e-4
    if class_reg == 0 and yt is None:
        return _fit_plain(xs, xt, a, b, eps, jnp.asarray(tol, dtype), max_iter=max_iter)
    if ys is None:
        raise ValueError("ys is required with class_reg > 0 or yt")
    if n_classes is None:
        n_classes = int(jnp.max(jnp.asarray(ys))) + 1
    n_classes = _validate.check_int(n_classes, "n_classes", minimum=1)
    ys = _labels(ys, "ys", n, n_classes, validate)
    if yt is not None:
        yt = _labels(yt, "yt", m, n_classes, validate)
    n_outer = _validate.check_int(n_outer, "n_outer", minimum=1) if class_reg else 1
    if label_cost is None:
        label_cost = jnp.max(_pairwise(costs.SqEuclidean(), xs, xt)) + 50 * epsilon
    return _fit_classes(
        xs,
        xt,
        a,
        b,
        ys,
        yt,
        eps,
        jnp.asarray(class_reg, dtype),
        jnp.asarray(label_cost, dtype),
        jnp.asarray(tol, dtype),
        n_classes=n_classes,
        n_outer=n_outer,
        max_iter=max_iter,
    )


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _fit_exact(xs, xt, a, b, ys, yt, label_cost, *, max_iter, tol):
    cost = _pairwise(costs.SqEuclidean(), xs, xt)
    # Without labels ys = yt = -1: no pair is known, and one compiled program
    # serves both cases.
    known = (ys[:, None] >= 0) & (yt[None, :] >= 0)
    mismatch = known & (ys[:, None] != yt[None, :])
    cost = jnp.where(mismatch, jnp.maximum(cost, label_cost), cost)
    out = _exact.emd(
        a=a, b=b, cost_matrix=cost, max_iter=max_iter, tol=tol, validate=False
    )
    plan = out.plan_dense(cost.shape)
    zero = jnp.zeros((), xs.dtype)
    return CouplingTransport(xs, xt, plan, None, zero, out.converged, out.n_iter)


def fit_exact(
    xs: Any,
    xt: Any,
    *,
    ys: Any = None,
    yt: Any = None,
    a: Any = None,
    b: Any = None,
    label_cost: float | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    validate: bool = True,
) -> CouplingTransport:
    r"""Exact optimal transport from a source sample to a target sample.

    The plan of ``densax.ot.exact.emd(xs, xt, a=a, b=b)`` for the squared
    Euclidean cost: the coupling of POT's ``ot.da.EMDTransport`` (Courty et al.
    2017, without regularisation). Its barycentric projection moves each source
    point to a weighted mean of at most a few target points (the plan has at
    most ``n + m - 1`` non-zero entries), and :func:`transform` (rule
    ``"ferradans"``) extends it to new points; :func:`transfer_labels` carries
    the source labels to the target.

    Semi-supervised targets: with both ``ys`` and ``yt`` (``-1`` for an
    unknown label), a pair of known, different labels costs ``max(C_ij,
    label_cost)``, as POT's ``EMDTransport(limit_max=...)`` with ``label_cost
    = limit_max * max C``.

    Args:
      xs: [n, d] source points.
      xt: [m, d] target points.
      ys: [n] int source labels (``-1``: unlabelled); used only with ``yt``.
      yt: [m] int target labels, ``-1`` where unknown.
      a: [n] source weights (uniform by default; normalised).
      b: [m] target weights (uniform by default; normalised).
      label_cost: the cost of a pair with known, different labels; default
        ``10 max_ij |xs_i - xt_j|^2`` (POT's default ``limit_max=10``).
      max_iter: most block searches of the simplex (default: ``emd``'s).
      tol: its pricing tolerance (default: ``emd``'s).
      validate: eager value checks (finite points, valid weights and labels).

    Returns:
      A :class:`CouplingTransport` with the dense ``[n, m]`` plan, ``g=None``
      (no entropic potential: out of sample use ``"ferradans"``),
      ``epsilon=0``, ``converged`` (the simplex certified optimality) and
      ``n_iter`` (its pivots).

    Raises:
      ValueError: shapes or labels that do not fit, ``yt`` without ``ys``;
        eagerly, non-finite points or invalid weights.

    References:
      Courty et al. (2017); Ferradans et al. (2014).

    Example:
      >>> import jax.numpy as jnp
      >>> xs = jnp.array([[0.0], [1.0], [2.0]])
      >>> tr = fit_exact(xs, xs + 5.0)
      >>> transform(tr, xs).tolist(), bool(tr.converged)
      ([[5.0], [6.0], [7.0]], True)
      >>> transform(tr, jnp.array([[0.5]])).tolist()  # nearest source: 0 or 1
      [[5.5]]
    """
    dtype = _validate.common_float_dtype(xs, xt)
    xs = _validate.as_float(xs, "xs", ndim=2, dtype=dtype)
    xt = _validate.as_float(xt, "xt", ndim=2, dtype=dtype)
    _validate.check_same_last_dim(xs, xt, "xs", "xt")
    _validate.check_finite(xs, "xs", validate)
    _validate.check_finite(xt, "xt", validate)
    n, m = xs.shape[0], xt.shape[0]
    a = _weights(a, "a", n, dtype, validate)
    b = _weights(b, "b", m, dtype, validate)
    if yt is None:
        ys = jnp.full((n,), -1, jnp.int32)
        yt = jnp.full((m,), -1, jnp.int32)
        label_cost = jnp.zeros((), dtype)
    else:
        if ys is None:
            raise ValueError("yt needs the source labels ys")
        big = jnp.iinfo(jnp.int32).max
        ys = _labels(ys, "ys", n, big, validate).astype(jnp.int32)
        yt = _labels(yt, "yt", m, big, validate).astype(jnp.int32)
        if label_cost is None:
            label_cost = 10.0 * jnp.max(_pairwise(costs.SqEuclidean(), xs, xt))
        label_cost = _validate.as_float(label_cost, "label_cost", ndim=0, dtype=dtype)
    return _fit_exact(xs, xt, a, b, ys, yt, label_cost, max_iter=max_iter, tol=tol)


def fit_linear(
    xs: Any,
    xt: Any,
    *,
    a: Any = None,
    b: Any = None,
    reg: float = 1e-8,
    validate: bool = True,
) -> AffineMap:
    """The affine Monge map between the Gaussians fitted to the two samples.

    Fits ``N(ms, Ss)`` and ``N(mt, St)`` (weighted means and covariances,
    ``reg`` added to the diagonals) and returns
    ``densax.ot.gaussian.gaussian_monge_map`` between them: the map of POT's
    ``ot.da.LinearTransport(reg=reg)`` (Flamary et al. 2019, "linear"
    mapping), exact when both samples are Gaussian.

    Args:
      xs: [n, d] source points.
      xt: [m, d] target points.
      a: [n] source sample weights (default: ones).
      b: [m] target sample weights.
      reg: non-negative ridge added to both covariances.
      validate: eager value checks.

    Returns:
      The :class:`densax.ot.gaussian.AffineMap`.

    References:
      Knott and Smith (1984); Flamary, R., Lounici, K. and Ferrari, A. (2019).
      Concentration bounds for linear Monge mapping estimation and optimal
      transport domain adaptation. arXiv:1905.10155.
    """
    src = _gaussian.fit(xs, sample_weight=a, reg_covar=reg, validate=validate)
    tgt = _gaussian.fit(xt, sample_weight=b, reg_covar=reg, validate=validate)
    return gaussian_monge_map(src, tgt, validate=validate)


def transform(
    transport: CouplingTransport | AffineMap,
    x: Any,
    *,
    out_of_sample: str = "ferradans",
) -> jax.Array:
    """Transports source points (training points or new ones) to the target.

    For an :class:`~densax.ot.gaussian.AffineMap`: the map itself. For a
    :class:`CouplingTransport`, two rules that both give the barycentric
    projection ``T(xs_i) = sum_j P_ij xt_j / sum_j P_ij`` at the training
    points:

    * ``"ferradans"`` (default; POT's ``out_of_sample_map="ferradans"``):
      ``T(x) = T(xs_k) + x - xs_k`` with ``xs_k`` the nearest training point;
    * ``"continuous"`` (POT's ``SinkhornTransport`` default): the entropic map
      ``sum_j softmax_j((g_j - |x - xt_j|^2) / epsilon) xt_j`` (see
      ``densax.ot.maps.entropic_map``); needs ``g``, so only for a plan fitted
      without labels.

    Args:
      transport: the output of :func:`fit_sinkhorn` / :func:`fit_linear` (or a
        ``CouplingTransport`` built from an exact plan).
      x: [k, d] source-domain points.
      out_of_sample: ``"ferradans"`` or ``"continuous"``.

    Returns:
      [k, d] transported points.

    Raises:
      ValueError: an unknown rule, ``"continuous"`` without ``g``, or a
        dimension that does not match.
    """
    _validate.check_choice(out_of_sample, "out_of_sample", ("ferradans", "continuous"))
    if isinstance(transport, AffineMap):
        return transport(_validate.as_float(x, "x", ndim=2))
    x = _validate.as_float(x, "x", ndim=2, dtype=transport.xs.dtype)
    _validate.check_same_last_dim(x, transport.xs, "x", "transport.xs")
    if out_of_sample == "continuous":
        if transport.g is None:
            raise ValueError(
                "out_of_sample='continuous' needs the potential g of an unlabelled "
                "Sinkhorn fit; use 'ferradans'"
            )
        return _continuous(x, transport.xt, transport.g, transport.epsilon)
    return _ferradans(x, transport.xs, transport.xt, transport.plan)


@jax.jit
def _continuous(x, xt, g, eps):
    logits = (g[None, :] - _pairwise(costs.SqEuclidean(), x, xt)) / eps
    return jnp.matmul(jax.nn.softmax(logits, axis=1), xt, precision=_HIGHEST)


@jax.jit
def _ferradans(x, xs, xt, plan):
    mass = jnp.sum(plan, axis=1, keepdims=True)
    bary = jnp.matmul(plan / jnp.where(mass > 0, mass, 1.0), xt, precision=_HIGHEST)
    bary = jnp.where(mass > 0, bary, xs)  # a source point with no mass stays
    nearest = jnp.argmin(_pairwise(costs.SqEuclidean(), x, xs), axis=1)
    return bary[nearest] + x - xs[nearest]


def transfer_labels(transport: CouplingTransport, ys: Any, n_classes: int) -> jax.Array:
    """Soft target labels: the class proportions of the mass each target gets.

    ``L_jc = sum_{i: ys_i = c} P_ij / sum_i P_ij``, POT's
    ``BaseTransport.transform_labels`` (Redko et al. 2019). ``argmax`` over
    classes gives hard labels.

    Args:
      transport: a :class:`CouplingTransport`.
      ys: [n] int source labels in ``[0, n_classes)``.
      n_classes: number of classes (a Python int).

    Returns:
      [m, n_classes] rows summing to 1 (0 for a target point with no mass).

    Example:
      >>> import jax.numpy as jnp
      >>> plan = jnp.array([[0.5, 0.0], [0.1, 0.4]])
      >>> tr = CouplingTransport(jnp.zeros((2, 1)), jnp.zeros((2, 1)), plan,
      ...                        None, jnp.float32(1), jnp.bool_(True), 0)
      >>> transfer_labels(tr, jnp.array([0, 1]), 2).round(3).tolist()
      [[0.833, 0.167], [0.0, 1.0]]
    """
    n_classes = _validate.check_int(n_classes, "n_classes", minimum=1)
    ys = _labels(ys, "ys", transport.plan.shape[0], n_classes, True)
    return _transfer(transport.plan, ys, n_classes)


@functools.partial(jax.jit, static_argnames=("n_classes",))
def _transfer(plan, ys, n_classes):
    onehot = jax.nn.one_hot(ys, n_classes, dtype=plan.dtype)
    mass = jnp.sum(plan, axis=0)[:, None]
    votes = jnp.matmul(plan.T, onehot, precision=_HIGHEST)
    return votes / jnp.where(mass > 0, mass, 1.0)
