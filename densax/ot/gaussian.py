r"""Optimal transport between Gaussians, in closed form.

For the squared Euclidean cost the transport problems between two Gaussians
``N(m1, S1)`` and ``N(m2, S2)`` are solved exactly:

* :func:`bures_wasserstein`: the 2-Wasserstein distance,
  ``W2^2 = |m1 - m2|^2 + tr S1 + tr S2 - 2 tr (S1^(1/2) S2 S1^(1/2))^(1/2)``;
* :func:`gaussian_monge_map`: its optimal (Monge) map, the affine map
  ``T(x) = m2 + A (x - m1)`` with ``A = S1^(-1/2) (S1^(1/2) S2 S1^(1/2))^(1/2)
  S1^(-1/2)``;
* :func:`mixture_wasserstein`: the mixture-Wasserstein distance ``MW2``
  between two Gaussian mixtures (Delon and Desolneux 2020), exact discrete OT
  between the components with the squared Bures-Wasserstein ground cost, with
  its component coupling and its mean map (a :class:`GaussianMixtureMap`);
  :func:`mixture_random_map` draws from its random map;
* :func:`entropic_gaussian`: entropic OT ``min_P E|x - y|^2 + eps KL(P | mu x
  nu)``, whose optimal plan is a Gaussian (Janati et al. 2020): its cost, the
  cross-covariance of the plan, and through :func:`entropic_gaussian_map` and
  :func:`entropic_gaussian_potentials` its (affine) barycentric map and its
  (quadratic) Schrödinger potentials.

Every function takes the two measures as ``densax.gaussian.Gaussian`` models,
or anything with ``mean`` ``[d]`` and ``cov`` ``[d, d]`` fields, or a plain
``(mean, cov)`` pair. They act on one pair; use ``jax.vmap`` over stacked
means and covariances for many (:func:`bures_cost_matrix` does so for the
``K1 x K2`` component costs that a mixture-Wasserstein distance transports).

All matrix functions go through symmetric eigendecompositions: with ``K =
S1^(1/2) S2 S1^(1/2) = V diag(k) V^T`` and ``s = eps / 2``, the entropic plan's
cross-covariance is ``S1^(1/2) V diag(h) V^T S1^(-1/2)`` with ``h = 2 k / (sqrt(4
k + s^2) + s)``, written without cancellation (``h -> sqrt(k)`` as ``eps -> 0``,
the Monge case).

References:
  Dowson, D. C. and Landau, B. V. (1982). The Fréchet distance between
  multivariate normal distributions. J. Multivariate Anal. 12, 450–455.
  Knott, M. and Smith, C. S. (1984). On the optimal mapping of distributions.
  J. Optim. Theory Appl. 43, 39–49.
  Janati, H., Muzellec, B., Peyré, G. and Cuturi, M. (2020). Entropic optimal
  transport between unbalanced Gaussian measures has a closed form. NeurIPS.
  Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, Remark 2.31.
  Delon, J. and Desolneux, A. (2020). A Wasserstein-type distance in the space
  of Gaussian mixture models. SIAM J. Imaging Sci. 13, 936–970.

Example:
  >>> import jax.numpy as jnp
  >>> from densax.gaussian import Gaussian
  >>> from densax.ot import gaussian as og
  >>> p = Gaussian(jnp.zeros(2), jnp.eye(2))
  >>> q = Gaussian(jnp.array([3.0, 4.0]), 4.0 * jnp.eye(2))
  >>> round(float(og.bures_wasserstein(p, q)), 4)  # sqrt(25 + 2)
  5.1962
  >>> og.gaussian_monge_map(p, q)(jnp.zeros((1, 2))).tolist()
  [[3.0, 4.0]]
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from densax import _validate
from densax.ot import exact as _exact

__all__ = [
    "AffineMap",
    "EntropicGaussianOutput",
    "GaussianMixtureMap",
    "MixtureWassersteinOutput",
    "Quadratic",
    "bures_cost_matrix",
    "bures_wasserstein",
    "entropic_gaussian",
    "entropic_gaussian_map",
    "entropic_gaussian_potentials",
    "gaussian_monge_map",
    "mixture_random_map",
    "mixture_wasserstein",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class AffineMap(NamedTuple):
    """The affine map ``x -> linear @ x + offset``, applied row-wise.

    Calling it on ``[..., d]`` points returns ``[..., d]`` points; it is a
    pytree, so it can be returned from ``jit`` and batched with ``vmap``.
    """

    linear: jax.Array  # [d, d] float
    offset: jax.Array  # [d] float

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the map to ``[..., d]`` points."""
        x = jnp.asarray(x, self.offset.dtype)
        return jnp.matmul(x, self.linear.T, precision=_HIGHEST) + self.offset


class Quadratic(NamedTuple):
    """The quadratic function ``x -> x^T matrix x + vector . x + constant``."""

    matrix: jax.Array  # [d, d] float, symmetric
    vector: jax.Array  # [d] float
    constant: jax.Array  # [] float

    def __call__(self, x: jax.Array) -> jax.Array:
        """Evaluates the function at ``[..., d]`` points; returns ``[...]``."""
        x = jnp.asarray(x, self.vector.dtype)
        quad = jnp.sum(x * jnp.matmul(x, self.matrix, precision=_HIGHEST), axis=-1)
        return quad + x @ self.vector + self.constant


class EntropicGaussianOutput(NamedTuple):
    """Entropic OT between two Gaussians; the optimal plan is Gaussian.

    The plan is ``N((m1, m2), [[S1, cross_cov], [cross_cov^T, S2]])``.
    """

    cost: jax.Array  # [] E|x - y|^2 + epsilon KL(P | mu x nu), the entropic cost
    transport_cost: jax.Array  # [] E_P |x - y|^2
    mutual_information: jax.Array  # [] KL(P | mu x nu) >= 0
    cross_cov: jax.Array  # [d, d] Cov_P(x, y)
    epsilon: jax.Array  # [] regularisation


# ---------------------------------------------------------------------------
# Inputs.


def _mean_cov(p: Any, name: str) -> tuple[Any, Any]:
    if isinstance(p, tuple) and not hasattr(p, "mean"):
        if len(p) != 2:
            raise TypeError(f"{name} must be a Gaussian or a (mean, cov) pair")
        return p
    if not (hasattr(p, "mean") and hasattr(p, "cov")):
        raise TypeError(
            f"{name} must have mean and cov fields (e.g. densax.gaussian.Gaussian) "
            f"or be a (mean, cov) pair, got {type(p).__name__}"
        )
    return p.mean, p.cov


def _check_pair(source: Any, target: Any, validate: bool):
    """``(m1, S1, m2, S2)`` as arrays of one floating dtype, shapes checked."""
    m1, s1 = _mean_cov(source, "source")
    m2, s2 = _mean_cov(target, "target")
    dtype = _validate.common_float_dtype(m1, s1, m2, s2)
    out = []
    for v, name, ndim in (
        (m1, "source.mean", 1),
        (s1, "source.cov", 2),
        (m2, "target.mean", 1),
        (s2, "target.cov", 2),
    ):
        out.append(_validate.as_float(v, name, ndim=ndim, dtype=dtype))
    m1, s1, m2, s2 = out
    d = m1.shape[0]
    for v, name in ((s1, "source.cov"), (s2, "target.cov")):
        if v.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}), got {v.shape}")
    if m2.shape != (d,):
        raise ValueError(f"target.mean must have shape ({d},), got {m2.shape}")
    for v, name in ((m1, "source.mean"), (s1, "source.cov")):
        _validate.check_finite(v, name, validate)
    for v, name in ((m2, "target.mean"), (s2, "target.cov")):
        _validate.check_finite(v, name, validate)
    return m1, s1, m2, s2


def _check_epsilon(epsilon: Any, dtype, validate: bool) -> jax.Array:
    eps = _validate.as_float(epsilon, "epsilon", ndim=0, dtype=dtype)
    _validate.value_check(validate, eps > 0, f"epsilon must be > 0, got {epsilon}")
    return eps


# ---------------------------------------------------------------------------
# Matrix functions.


def _sym(m):
    return 0.5 * (m + m.T)


def _roots(cov):
    """``(cov^(1/2), cov^(-1/2))`` of a symmetric PSD matrix, by ``eigh``.

    Eigenvalues are clipped at the smallest normal number, so a singular
    covariance gives a finite square root and a huge (not NaN) inverse root.
    """
    w, v = jnp.linalg.eigh(_sym(cov))
    w = jnp.maximum(w, jnp.finfo(cov.dtype).tiny)
    root = (v * jnp.sqrt(w)) @ v.T
    inv_root = (v / jnp.sqrt(w)) @ v.T
    return root, inv_root


def _k_eigen(s1, s2):
    """``(S1^(1/2), S1^(-1/2), k, V)`` with ``S1^(1/2) S2 S1^(1/2) = V diag(k) V^T``."""
    root, inv_root = _roots(s1)
    k, v = jnp.linalg.eigh(_sym(jnp.matmul(root @ s2, root, precision=_HIGHEST)))
    return root, inv_root, jnp.maximum(k, 0.0), v


@jax.jit
def _bures_sq(m1, s1, m2, s2):
    _, _, k, _ = _k_eigen(s1, s2)
    diff = m1 - m2
    value = diff @ diff + jnp.trace(s1) + jnp.trace(s2) - 2.0 * jnp.sum(jnp.sqrt(k))
    return jnp.maximum(value, 0.0)


@jax.jit
def _monge(m1, s1, m2, s2):
    _, inv_root, k, v = _k_eigen(s1, s2)
    middle = (v * jnp.sqrt(k)) @ v.T
    lin = _sym(inv_root @ middle @ inv_root)
    return AffineMap(lin, m2 - lin @ m1)


def _entropic_parts(s1, s2, eps):
    """``(h, k, V, S1^(1/2), S1^(-1/2), D)`` of the entropic problem (see module)."""
    root, inv_root, k, v = _k_eigen(s1, s2)
    s = 0.5 * eps
    dk = jnp.sqrt(4.0 * k + s * s)
    h = 2.0 * k / (dk + s)  # (D - s) / 2, without cancellation
    return h, k, v, root, inv_root, dk


@jax.jit
def _entropic(m1, s1, m2, s2, eps):
    h, _, v, root, inv_root, dk = _entropic_parts(s1, s2, eps)
    s = 0.5 * eps
    diff = m1 - m2
    transport = diff @ diff + jnp.trace(s1) + jnp.trace(s2) - 2.0 * jnp.sum(h)
    # KL(P | mu x nu) = 1/2 sum log((D_i + s) / (2 s)), >= 0 since D_i >= s.
    mi = 0.5 * jnp.sum(jnp.log1p((dk - s) / (2.0 * s)))
    cross = root @ ((v * h) @ v.T) @ inv_root
    return EntropicGaussianOutput(transport + eps * mi, transport, mi, cross, eps)


def _entropic_linear(s1, s2, eps):
    """``(Q, tr H)``: the linear part ``Cov(x, y)^T S1^-1`` of the entropic map."""
    h, _, v, _, inv_root, _ = _entropic_parts(s1, s2, eps)
    return _sym(inv_root @ ((v * h) @ v.T) @ inv_root), jnp.sum(h)


@jax.jit
def _entropic_map(m1, s1, m2, s2, eps):
    q, _ = _entropic_linear(s1, s2, eps)
    return AffineMap(q, m2 - q @ m1)


@jax.jit
def _potentials(m1, s1, m2, s2, eps):
    cost = _entropic(m1, s1, m2, s2, eps).cost
    eye = jnp.eye(m1.shape[0], dtype=m1.dtype)

    def one(ma, sa, mb, sb):
        # f(x) = |x|^2 - u^T Q u - 2 u . mb + c, u = x - ma; gauge <mu, f> = cost/2.
        q, tr_h = _entropic_linear(sa, sb, eps)
        mean_f = jnp.trace(sa) + ma @ ma - tr_h  # <mu, f> without the constant
        c = 0.5 * cost - mean_f
        vector = 2.0 * (q @ ma) - 2.0 * mb
        constant = -(ma @ q @ ma) + 2.0 * (ma @ mb) + c
        return Quadratic(eye - q, vector, constant)

    return one(m1, s1, m2, s2), one(m2, s2, m1, s1)


# ---------------------------------------------------------------------------
# Public functions.


def bures_wasserstein(
    source: Any, target: Any, *, squared: bool = False, validate: bool = True
) -> jax.Array:
    r"""2-Wasserstein distance between two Gaussians (the Bures-Wasserstein).

    .. math::
       W_2^2 = \|m_1 - m_2\|^2 + \operatorname{tr} S_1 + \operatorname{tr} S_2
       - 2 \operatorname{tr}\big(S_1^{1/2} S_2 S_1^{1/2}\big)^{1/2}.

    Args:
      source: the first Gaussian: a ``densax.gaussian.Gaussian`` (or anything
        with ``mean`` [d] and ``cov`` [d, d]), or a ``(mean, cov)`` pair.
      target: the second Gaussian, likewise.
      squared: return ``W2^2`` instead of ``W2`` (``W2^2`` is differentiable
        at ``W2 = 0``, where ``W2`` is not).
      validate: check on the eager path that the parameters are finite.

    Returns:
      ``[]`` the distance (or its square), clipped at 0 against rounding, in
      the parameters' dtype. Covariances need only be positive semi-definite.

    Raises:
      TypeError: a measure is neither a Gaussian nor a ``(mean, cov)`` pair.
      ValueError: shapes that do not match; eagerly, non-finite parameters.

    References:
      Dowson and Landau (1982); Peyré and Cuturi (2019), Remark 2.31.

    Example:
      >>> import jax.numpy as jnp
      >>> p = (jnp.zeros(1), jnp.eye(1))
      >>> q = (jnp.ones(1), 4.0 * jnp.eye(1))
      >>> round(float(bures_wasserstein(p, q, squared=True)), 4)  # 1 + (2 - 1)^2
      2.0
    """
    m1, s1, m2, s2 = _check_pair(source, target, validate)
    value = _bures_sq(m1, s1, m2, s2)
    return value if squared else jnp.sqrt(value)


def bures_cost_matrix(
    source_means: Any,
    source_covs: Any,
    target_means: Any,
    target_covs: Any,
) -> jax.Array:
    """Squared Bures-Wasserstein distances between two families of Gaussians.

    The ``[K1, K2]`` ground cost of the mixture-Wasserstein distance between two
    Gaussian mixtures (Delon and Desolneux 2020).

    Args:
      source_means: [K1, d] means.
      source_covs: [K1, d, d] covariances.
      target_means: [K2, d] means.
      target_covs: [K2, d, d] covariances.

    Returns:
      [K1, K2] squared distances ``W2^2``.

    References:
      Delon, J. and Desolneux, A. (2020). A Wasserstein-type distance in the
      space of Gaussian mixture models. SIAM J. Imaging Sci. 13, 936–970.

    Example:
      >>> import jax.numpy as jnp
      >>> c = bures_cost_matrix(
      ...     jnp.zeros((2, 3)), jnp.tile(jnp.eye(3), (2, 1, 1)),
      ...     jnp.ones((4, 3)), jnp.tile(jnp.eye(3), (4, 1, 1)))
      >>> c.shape, round(float(c[0, 0]), 4)
      ((2, 4), 3.0)
    """
    dtype = _validate.common_float_dtype(
        source_means, source_covs, target_means, target_covs
    )
    m1 = _validate.as_float(source_means, "source_means", ndim=2, dtype=dtype)
    s1 = _validate.as_float(source_covs, "source_covs", ndim=3, dtype=dtype)
    m2 = _validate.as_float(target_means, "target_means", ndim=2, dtype=dtype)
    s2 = _validate.as_float(target_covs, "target_covs", ndim=3, dtype=dtype)
    d = m1.shape[1]
    if s1.shape != (m1.shape[0], d, d) or s2.shape != (m2.shape[0], d, d):
        raise ValueError(
            "source_covs/target_covs must have shape [K, d, d] matching the means, "
            f"got {s1.shape} and {s2.shape} for means {m1.shape} and {m2.shape}"
        )
    if m2.shape[1] != d:
        raise ValueError(f"target_means must have {d} columns, got {m2.shape}")
    rows = jax.vmap(_bures_sq, in_axes=(None, None, 0, 0))
    return jax.vmap(rows, in_axes=(0, 0, None, None))(m1, s1, m2, s2)


def gaussian_monge_map(source: Any, target: Any, *, validate: bool = True) -> AffineMap:
    r"""The optimal transport (Monge) map from one Gaussian to another.

    ``T(x) = m_2 + A (x - m_1)`` with the symmetric positive (semi-)definite

    .. math::
       A = S_1^{-1/2} \big(S_1^{1/2} S_2 S_1^{1/2}\big)^{1/2} S_1^{-1/2},

    the unique map of the form ``grad(convex)`` with ``T # N(m1, S1) = N(m2,
    S2)`` (so ``A S1 A = S2``). It is also the map of POT's
    ``ot.gaussian.bures_wasserstein_mapping`` (which returns ``A`` and the
    offset as a row vector) and of ``ot.da.LinearTransport``.

    Args:
      source: the source Gaussian (``Gaussian`` model or ``(mean, cov)``);
        its covariance must be positive definite.
      target: the target Gaussian.
      validate: check on the eager path that the parameters are finite.

    Returns:
      The :class:`AffineMap` ``(linear=A, offset=m2 - A m1)``.

    Raises:
      TypeError, ValueError: as :func:`bures_wasserstein`.

    References:
      Knott and Smith (1984); Peyré and Cuturi (2019), Remark 2.31.

    Example:
      >>> import jax.numpy as jnp
      >>> t = gaussian_monge_map((jnp.zeros(2), jnp.eye(2)),
      ...                        (jnp.ones(2), jnp.diag(jnp.array([4.0, 9.0]))))
      >>> t.linear.round(4).tolist(), t.offset.tolist()
      ([[2.0, 0.0], [0.0, 3.0]], [1.0, 1.0])
    """
    return _monge(*_check_pair(source, target, validate))


def entropic_gaussian(
    source: Any, target: Any, epsilon: Any, *, validate: bool = True
) -> EntropicGaussianOutput:
    r"""Entropic optimal transport between two Gaussians, in closed form.

    Solves ``min_P E_P |x - y|^2 + epsilon KL(P | mu x nu)`` over couplings of
    ``mu = N(m1, S1)`` and ``nu = N(m2, S2)`` (the problem of
    ``densax.ot.sinkhorn`` between samples, in the limit of many samples).
    With ``s = epsilon / 2`` and ``D = (4 S1^(1/2) S2 S1^(1/2) + s^2 I)^(1/2)``
    (Janati et al. 2020, with their ``sigma^2 = s``):

    .. math::
       \mathrm{OT}_\varepsilon = \|m_1 - m_2\|^2 + \operatorname{tr} S_1 +
       \operatorname{tr} S_2 - \operatorname{tr} D + d s (1 - \log 2s) + s \log
       \det(D + s I).

    Args:
      source: the source Gaussian (``Gaussian`` model or ``(mean, cov)``),
        positive definite covariance.
      target: the target Gaussian, positive definite covariance.
      epsilon: the regularisation, a positive scalar (no scaling by the cost).
      validate: check on the eager path that the parameters are finite and
        ``epsilon > 0``.

    Returns:
      An :class:`EntropicGaussianOutput`: the entropic cost, the transport
      cost ``E_P|x - y|^2``, ``KL(P | mu x nu)`` and ``Cov_P(x, y)``. As
      ``epsilon -> 0`` the transport cost tends to :func:`bures_wasserstein`
      squared.

    Raises:
      TypeError, ValueError: as :func:`bures_wasserstein`; eagerly,
      ``epsilon <= 0``.

    References:
      Janati, Muzellec, Peyré and Cuturi (2020), Theorem 1.

    Example:
      >>> import jax.numpy as jnp
      >>> out = entropic_gaussian((jnp.zeros(1), jnp.eye(1)),
      ...                         (jnp.zeros(1), jnp.eye(1)), 1.0)
      >>> round(float(out.cross_cov[0, 0]), 4)  # (sqrt(16 + 1) - 1) / 4
      0.7808
    """
    m1, s1, m2, s2 = _check_pair(source, target, validate)
    return _entropic(m1, s1, m2, s2, _check_epsilon(epsilon, m1.dtype, validate))


def entropic_gaussian_map(
    source: Any, target: Any, epsilon: Any, *, validate: bool = True
) -> AffineMap:
    r"""The barycentric map ``x -> E_P[y | x]`` of the entropic Gaussian plan.

    The plan of :func:`entropic_gaussian` is Gaussian, so its barycentric
    projection (the entropic map of Pooladian and Niles-Weed) is affine:
    ``T(x) = m2 + Q (x - m1)`` with ``Q = Cov_P(x, y)^T S1^(-1)``, symmetric.
    It tends to :func:`gaussian_monge_map` as ``epsilon -> 0``; it is the
    limit of ``densax.ot.maps.entropic_map`` on many samples.

    Args:
      source: the source Gaussian, as in :func:`entropic_gaussian`.
      target: the target Gaussian.
      epsilon: the regularisation, a positive scalar.
      validate: eager value checks.

    Returns:
      The :class:`AffineMap` ``(linear=Q, offset=m2 - Q m1)``.

    References:
      Janati et al. (2020); Pooladian, A.-A. and Niles-Weed, J. (2021).
      Entropic estimation of optimal transport maps. arXiv:2109.12004.

    Example:
      >>> import jax.numpy as jnp
      >>> t = entropic_gaussian_map((jnp.zeros(1), jnp.eye(1)),
      ...                           (jnp.zeros(1), jnp.eye(1)), 1.0)
      >>> round(float(t.linear[0, 0]), 4)
      0.7808
    """
    m1, s1, m2, s2 = _check_pair(source, target, validate)
    return _entropic_map(m1, s1, m2, s2, _check_epsilon(epsilon, m1.dtype, validate))


def entropic_gaussian_potentials(
    source: Any, target: Any, epsilon: Any, *, validate: bool = True
) -> tuple[Quadratic, Quadratic]:
    r"""The optimal potentials ``(f, g)`` of entropic OT between two Gaussians.

    The optimal plan is ``dP = exp((f(x) + g(y) - |x - y|^2) / epsilon) d(mu x
    nu)`` (the convention of ``densax.ot.sinkhorn`` and ott-jax), with
    quadratic ``f(x) = |x|^2 - u^T Q u - 2 u . m2 + c`` (``u = x - m1``, ``Q``
    the linear part of :func:`entropic_gaussian_map`) and ``g`` likewise with
    the roles swapped. The free constant is fixed as in ``sinkhorn``: ``E_mu f
    = E_nu g = OT_eps / 2``, so ``E_mu f + E_nu g`` is the entropic cost.

    Args:
      source: the source Gaussian, as in :func:`entropic_gaussian`.
      target: the target Gaussian.
      epsilon: the regularisation, a positive scalar.
      validate: eager value checks.

    Returns:
      ``(f, g)``, two :class:`Quadratic` functions of ``[..., d]`` points.

    References:
      Janati et al. (2020), Theorem 1 and Proposition 3.

    Example:
      >>> import jax.numpy as jnp
      >>> p = (jnp.zeros(2), jnp.eye(2))
      >>> f, g = entropic_gaussian_potentials(p, p, 0.5)
      >>> f(jnp.zeros((3, 2))).shape
      (3,)
    """
    m1, s1, m2, s2 = _check_pair(source, target, validate)
    return _potentials(m1, s1, m2, s2, _check_epsilon(epsilon, m1.dtype, validate))


# ---------------------------------------------------------------------------
# Gaussian mixtures: the mixture-Wasserstein distance and its mean map.

_LOG_2PI = 1.8378770664093453  # log(2 pi)


class GaussianMixtureMap(NamedTuple):
    r"""The mean map ``T_mean`` of a mixture-Wasserstein coupling.

    .. math::
       T(x) = \frac{\sum_{k,l} w_{kl}\, p_k(x)\, T_{kl}(x)}{\sum_k \pi_k p_k(x)},

    with ``p_k`` the source components, ``pi_k = sum_l w_kl`` their weights,
    ``w`` the optimal component coupling and ``T_kl`` the Gaussian Monge map
    from source component ``k`` to target component ``l`` (Delon and
    Desolneux 2020, §6; POT's ``ot.gmm.gmm_ot_apply_map(method="bary")``).
    Calling it on ``[..., d]`` points returns ``[..., d]`` points; the
    component posteriors are computed as a ``softmax`` in log space, so points
    far from every component are mapped without underflow.
    """

    weights: jax.Array  # [K1] source component weights (summing to one)
    means: jax.Array  # [K1, d] source component means
    chol: jax.Array  # [K1, d, d] lower Cholesky factors of the source covariances
    plan: jax.Array  # [K1, K2] component coupling (summing to one)
    linear: jax.Array  # [K1, K2, d, d] linear parts A_kl of the maps T_kl
    offset: jax.Array  # [K1, K2, d] offsets m_l - A_kl m_k of the maps T_kl

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the map to ``[..., d]`` points."""
        x = jnp.asarray(x, self.means.dtype)
        flat = x.reshape(-1, x.shape[-1])
        return _apply_mixture_map(self, flat).reshape(x.shape)


class MixtureWassersteinOutput(NamedTuple):
    """The mixture-Wasserstein distance between two Gaussian mixtures."""

    distance: jax.Array  # [] MW2 = sqrt(cost)
    cost: jax.Array  # [] MW2^2 = sum_kl plan_kl W2^2(N_k, N_l), differentiable
    plan: jax.Array  # [K1, K2] optimal coupling of the component weights
    cost_matrix: jax.Array  # [K1, K2] squared Bures-Wasserstein distances
    map: GaussianMixtureMap  # the mean map T_mean, callable on [..., d] points
    converged: jax.Array  # [] bool, the exact solver certified optimality
    gap: jax.Array  # [] relative duality gap of the exact solver


def _full_covariances(p: Any, name: str):
    """``(weights [K], means [K, d], covariances [K, d, d])`` of a mixture."""
    if hasattr(p, "covariance_type"):  # densax.gmm.GaussianMixture
        ctype = p.covariance_type
        w, m, cov = p.weights, jnp.asarray(p.means), jnp.asarray(p.covariances)
        k, d = m.shape[-2], m.shape[-1]
        if ctype == "tied":
            cov = jnp.broadcast_to(cov, (k, d, d))
        elif ctype == "diag":
            cov = cov[..., :, None] * jnp.eye(d, dtype=cov.dtype)
        elif ctype == "spherical":
            cov = cov[..., None, None] * jnp.eye(d, dtype=cov.dtype)
        elif ctype != "full":
            raise ValueError(f"{name}.covariance_type {ctype!r} is not supported")
        return w, m, cov
    if isinstance(p, (tuple, list)) and len(p) == 3:
        return tuple(p)
    raise TypeError(
        f"{name} must be a densax.gmm.GaussianMixture or a (weights [K], means [K, d], "
        f"covariances [K, d, d]) triple, got {type(p).__name__}"
    )


def _check_mixture(p: Any, name: str, dtype, validate: bool):
    w, m, cov = _full_covariances(p, name)
    w = _validate.as_float(w, f"{name}.weights", ndim=1, dtype=dtype)
    m = _validate.as_float(m, f"{name}.means", ndim=2, dtype=dtype)
    cov = _validate.as_float(cov, f"{name}.covariances", ndim=3, dtype=dtype)
    k, d = m.shape
    if w.shape != (k,):
        raise ValueError(f"{name}.weights must have shape ({k},), got {w.shape}")
    if cov.shape != (k, d, d):
        raise ValueError(
            f"{name}.covariances must have shape ({k}, {d}, {d}), got {cov.shape}"
        )
    w = _validate.check_weights(
        w, f"{name}.weights", (k,), dtype=dtype, validate=validate
    )
    _validate.check_finite(m, f"{name}.means", validate)
    _validate.check_finite(cov, f"{name}.covariances", validate)
    return w, m, cov


def _stop(x):
    return jax.lax.stop_gradient(x)


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _mixture_core(w1, m1, s1, w2, m2, s2, *, max_iter, tol):
    a, b = w1 / jnp.sum(w1), w2 / jnp.sum(w2)
    rows = jax.vmap(_bures_sq, in_axes=(None, None, 0, 0))
    cost_matrix = jax.vmap(rows, in_axes=(0, 0, None, None))(m1, s1, m2, s2)
    out = _exact.emd(
        a=_stop(a),
        b=_stop(b),
        cost_matrix=_stop(cost_matrix),
        max_iter=max_iter,
        tol=tol,
        validate=False,
    )
    plan = out.plan_dense(cost_matrix.shape)
    # Envelope theorem: d cost = <P, dC> + <f, da> + <g, db> at the optimum
    # (the normalisation of a and b projects out the duals' free constant).
    cost = (
        jnp.sum(plan * cost_matrix)
        + jnp.dot(out.f, a - _stop(a))
        + jnp.dot(out.g, b - _stop(b))
    )
    cost = jnp.maximum(cost, 0.0)
    maps = jax.vmap(jax.vmap(_monge, in_axes=(None, None, 0, 0)), (0, 0, None, None))
    lin, off = maps(m1, s1, m2, s2)
    chol = jnp.linalg.cholesky(jax.vmap(_sym)(s1))
    tmap = GaussianMixtureMap(a, m1, chol, plan, lin, off)
    safe = jnp.where(cost > 0, cost, 1.0)
    distance = jnp.where(cost > 0, jnp.sqrt(safe), 0.0)
    return MixtureWassersteinOutput(
        distance, cost, plan, cost_matrix, tmap, out.converged, out.gap
    )


def _pair_log_probs(tmap: GaussianMixtureMap, x):
    """``[K1, K2, n]`` log-probabilities ``log(w_kl p_k(x) / sum_k pi_k p_k(x))``."""
    d = x.shape[-1]

    def log_pdf(m, chol):
        z = jax.scipy.linalg.solve_triangular(chol, (x - m).T, lower=True)
        half_log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
        return -0.5 * jnp.sum(z * z, axis=0) - half_log_det - 0.5 * d * _LOG_2PI

    log_p = jax.vmap(log_pdf)(tmap.means, tmap.chol)  # [K1, n]
    log_w = jnp.where(tmap.weights > 0, jnp.log(tmap.weights), -jnp.inf)
    # Posterior of source component k, in log space (no underflow far away).
    log_resp = jax.nn.log_softmax(log_w[:, None] + log_p, axis=0)  # [K1, n]
    # Given component k, target l with probability w_kl / pi_k.
    cond = tmap.plan / jnp.where(tmap.weights > 0, tmap.weights, 1.0)[:, None]
    log_cond = jnp.where(cond > 0, jnp.log(jnp.where(cond > 0, cond, 1.0)), -jnp.inf)
    return log_resp[:, None, :] + log_cond[:, :, None]


def _images(tmap: GaussianMixtureMap, x):
    """``[K1, K2, n, d]``: every component map ``T_kl`` applied to every point."""
    lin = jnp.einsum("klij,nj->klni", tmap.linear, x, precision=_HIGHEST)
    return lin + tmap.offset[:, :, None, :]


@jax.jit
def _apply_mixture_map(tmap: GaussianMixtureMap, x):
    coef = jnp.exp(_pair_log_probs(tmap, x))  # [K1, K2, n]
    return jnp.einsum("kln,klni->ni", coef, _images(tmap, x), precision=_HIGHEST)


@jax.jit
def _random_mixture_map(key, tmap: GaussianMixtureMap, x):
    k1, k2 = tmap.plan.shape
    logits = _pair_log_probs(tmap, x).reshape(k1 * k2, -1).T  # [n, K1 K2]
    pair = jax.random.categorical(key, logits, axis=-1)  # [n]
    src, tgt = pair // k2, pair % k2
    lin = tmap.linear[src, tgt]  # [n, d, d]
    return jnp.einsum("nij,nj->ni", lin, x, precision=_HIGHEST) + tmap.offset[src, tgt]


def mixture_random_map(key: jax.Array, tmap: GaussianMixtureMap, x: Any) -> jax.Array:
    r"""The random map ``T_rand`` of a mixture-Wasserstein coupling.

    Each point ``x`` draws a pair of components ``(k, l)`` with probability
    ``w_kl p_k(x) / sum_k pi_k p_k(x)`` and goes to ``T_kl(x)`` (Delon and
    Desolneux 2020, §6; POT's ``gmm_ot_apply_map(method="rand")``). Unlike the
    mean map, it pushes the source mixture exactly onto the target mixture
    (given ``k``, ``x ~ N_k`` and ``T_kl # N_k = N'_l``). Averaged over draws
    it is the mean map ``tmap(x)``.

    Args:
      key: a PRNG key.
      tmap: the :class:`GaussianMixtureMap` of :func:`mixture_wasserstein`.
      x: [n, d] points.

    Returns:
      [n, d] images, each ``T_kl(x)`` for one drawn pair.

    Raises:
      ValueError: ``x`` is not ``[n, d]`` with the mixtures' dimension.

    References:
      Delon and Desolneux (2020), §6.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> eye = jnp.tile(jnp.eye(2), (2, 1, 1))
      >>> p = (jnp.ones(2), jnp.array([[0.0, 0.0], [4.0, 0.0]]), eye)
      >>> out = mixture_wasserstein(p, p)
      >>> mixture_random_map(jax.random.key(0), out.map, jnp.ones((3, 2))).shape
      (3, 2)
    """
    x = _validate.as_float(x, "x", ndim=2, dtype=tmap.means.dtype)
    _validate.check_same_last_dim(x, tmap.means, "x", "tmap.means")
    return _random_mixture_map(key, tmap, x)


def mixture_wasserstein(
    source: Any,
    target: Any,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    validate: bool = True,
) -> MixtureWassersteinOutput:
    r"""Mixture-Wasserstein distance and map between two Gaussian mixtures.

    Restricting the couplings of two Gaussian mixtures ``mu = sum_k pi_k N_k``
    and ``nu = sum_l pi'_l N'_l`` to Gaussian mixtures turns OT into a
    discrete problem between the components (Delon and Desolneux 2020):

    .. math::
       MW_2^2(\mu, \nu) = \min_{w \in \Pi(\pi, \pi')} \sum_{k,l} w_{kl}\,
       W_2^2(N_k, N'_l),

    solved exactly by ``densax.ot.exact.emd`` on :func:`bures_cost_matrix`.
    ``MW2 >= W2(mu, nu)``, with equality when both mixtures are single
    Gaussians. The output's ``map`` is the mean map ``T_mean`` (see
    :class:`GaussianMixtureMap`). The same problem and map as POT's
    ``ot.gmm.gmm_ot_loss``, ``gmm_ot_plan`` and ``gmm_ot_apply_map``.

    Args:
      source: the source mixture: a ``densax.gmm.GaussianMixture`` (any
        ``covariance_type``; tied, diagonal and spherical covariances are
        expanded to full ones) or a ``(weights [K1], means [K1, d],
        covariances [K1, d, d])`` triple. Weights act through their ratios.
        The map needs positive definite source covariances.
      target: the target mixture, likewise (``[K2]`` components).
      max_iter: most block searches of the exact solver (default: its own).
      tol: its pricing tolerance (default: its own).
      validate: eager checks of finite parameters and valid weights.

    Returns:
      A :class:`MixtureWassersteinOutput`: ``distance`` (``MW2``), ``cost``
      (``MW2^2``, differentiable in all parameters by the envelope theorem;
      prefer it to ``distance`` near 0, where the square root has an infinite
      slope), the component ``plan``, the ``cost_matrix``, the mean ``map``,
      and the solver's ``converged`` and ``gap``.

    Raises:
      TypeError: a measure that is neither a ``GaussianMixture`` nor a triple.
      ValueError: shapes that do not match; eagerly, non-finite parameters or
        invalid weights.

    References:
      Delon and Desolneux (2020), Definition 2 (MW2) and §6 (T_mean).

    Example:
      >>> import jax.numpy as jnp
      >>> eye = jnp.tile(jnp.eye(2), (2, 1, 1))
      >>> p = (jnp.array([0.5, 0.5]), jnp.array([[0.0, 0.0], [4.0, 0.0]]), eye)
      >>> q = (jnp.array([0.5, 0.5]), jnp.array([[0.0, 1.0], [4.0, 1.0]]), eye)
      >>> out = mixture_wasserstein(p, q)
      >>> round(float(out.distance), 4), out.plan.round(2).tolist()
      (1.0, [[0.5, 0.0], [0.0, 0.5]])
      >>> out.map(jnp.array([[0.0, 0.0]])).round(4).tolist()
      [[0.0, 1.0]]
    """
    if source is None or target is None:
        raise TypeError("source and target must be Gaussian mixtures, got None")
    parts = [*_full_covariances(source, "source"), *_full_covariances(target, "target")]
    dtype = _validate.common_float_dtype(*parts)
    w1, m1, s1 = _check_mixture(source, "source", dtype, validate)
    w2, m2, s2 = _check_mixture(target, "target", dtype, validate)
    if m2.shape[1] != m1.shape[1]:
        raise ValueError(
            f"source and target must have the same dimension, got {m1.shape[1]} "
            f"and {m2.shape[1]}"
        )
    return _mixture_core(w1, m1, s1, w2, m2, s2, max_iter=max_iter, tol=tol)
