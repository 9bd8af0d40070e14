"""The starts of the fixed-point loop: zero, Gaussian and warm potentials.

A start is a pair ``(f0, g0)`` with ``f0_i + g0_j <= C_ij``: the invariant
"every exponent is ``<= 0`` after a g-update" then holds from the first pass
(see ``densax/ot/README.md``). ``f0`` is ``eps0 log a`` (the zero start),
plus the entropic potential between Gaussian fits of the clouds
(:func:`gaussian_start`, closed form, squared Euclidean cost), or a user's
``f_init`` (warm). ``g0`` is the c-transform of ``f0``
(``_geometry.hard_transform``), or a cheaper lower bound of it
(``_geometry.ball_transform``, the Gaussian ``g0``) where a pass over the
costs would cost as much as building the cached kernel
(:func:`bounded_start`); a warm ``g_init`` is capped by it.

References:
  Janati, Muzellec, Peyré & Cuturi, "Entropic Optimal Transport between
  Unbalanced Gaussian Measures has a Closed Form", NeurIPS 2020. Thornton &
  Cuturi, "Rethinking Initialization of the Sinkhorn Algorithm", AISTATS 2023.
"""

import dataclasses

import jax.numpy as jnp
from jax import lax

from densax.ot._geometry import (
    ball_transform,
    caches_kernel,
    gather,
    hard_transform,
    is_sq_euclidean,
    pmax,
    psum,
    reduce,
)

__all__ = ["bounded_start", "gaussian_start", "start_potentials"]


def gaussian_start(geom, mean_x, mean_y, covs, eps):
    """Potentials of the entropic problem between Gaussian fits of the clouds.

    For ``N(mu, S)`` and ``N(nu, T)`` and the squared Euclidean cost the
    potentials are quadratics in closed form (Janati et al. 2020): with
    ``s = eps / 2``, ``K = S^(1/2) T S^(1/2)``, ``D = (4 K + s^2 I)^(1/2)``
    and ``Q = S^(-1/2) (D - s I) S^(-1/2) / 2``,

        f(x) = u^T (I - Q) u + 2 u . (mu - nu),   u = x - mu,

    up to a constant (``(D - s I) / 2 = 2 K (D + s I)^(-1)`` is evaluated in
    ``K``'s eigenbasis, without cancellation). Returns ``(f0 [n], g0 [m])``:
    ``f0`` at ``x``, and ``g0`` its exact c-transform over all of ``R^d``,

        g0(y) = |y - mu|^2 - (y - nu)^T Q^(-1) (y - nu),

    a lower bound of ``min_i (C_ij - f0_i)``: every exponent of the first
    kernel is ``<= 0``. Both covariances get a ridge of ``sqrt(u)`` (``u``
    the unit roundoff) times their mean variance plus ``s``, so that one
    point or a flat cloud still gives a finite, positive definite ``Q``.

    Args:
      geom: the problem's points (``x`` local rows, ``y`` columns).
      mean_x: ``[d]`` mean of ``x`` under ``a`` (all devices).
      mean_y: ``[d]`` mean of ``y`` under ``b``.
      covs: ``([d, d], [d, d])`` covariances of ``x`` and ``y``.
      eps: ``[]`` the epsilon of the first iteration.
    """
    cov_x, cov_y = covs
    dim = cov_x.shape[0]
    s = 0.5 * eps
    ridge = jnp.sqrt(jnp.finfo(cov_x.dtype).eps) * (
        (jnp.trace(cov_x) + jnp.trace(cov_y)) / (2 * dim) + s
    )
    eye = jnp.eye(dim, dtype=cov_x.dtype)
    w_s, v_s = jnp.linalg.eigh(cov_x + ridge * eye)
    w_s = jnp.maximum(w_s, ridge)
    root = (v_s * jnp.sqrt(w_s)) @ v_s.T
    inv_root = (v_s / jnp.sqrt(w_s)) @ v_s.T
    w_k, v_k = jnp.linalg.eigh(root @ (cov_y + ridge * eye) @ root)
    w_k = jnp.maximum(w_k, ridge * ridge)
    h = 2.0 * w_k / (jnp.sqrt(4.0 * w_k + s * s) + s)
    q = inv_root @ ((v_k * h) @ v_k.T) @ inv_root
    q_inv = root @ ((v_k / h) @ v_k.T) @ root
    u = geom.x - mean_x
    f0 = jnp.sum(u * (u - u @ q), 1) + 2.0 * (u @ (mean_x - mean_y))
    w = geom.y - mean_y
    g0 = jnp.sum((geom.y - mean_x) ** 2, 1) - jnp.sum(w * (w @ q_inv), 1)
    return f0, g0


def start_potentials(cfg, cost_fn, geom, a, b, eps0, covs, symmetric, init=None):
    """``(f0, g0)`` that start a loop, with ``f0_i + g0_j <= C_ij``.

    ``f0 = eps0 log a``, plus the Gaussian potential (:func:`gaussian_start`)
    when ``cfg.initializer == "gaussian"``; with ``"warm"``, ``init[0]`` (the
    user's ``f_init``, ``-inf`` where ``a_i = 0``), and ``g0`` at most
    ``init[1]`` when that is given. ``g0`` is a lower bound of
    ``min_i (C_ij - f0_i)`` in ``O((n + m) d^2)`` where the loop caches the
    kernel online (:func:`bounded_start`), else that minimum, by one pass.
    For a symmetric problem (``geom.y`` all the points, ``b`` unused) the
    bound ``h_i <= min_j (C_ij - f0_j)`` is returned at the rows.
    """
    axis_name = cfg.axis_name
    if cfg.initializer == "warm":
        f_init, g_init = init
        f0 = jnp.where(a > 0, f_init, -jnp.inf)
        cfg = dataclasses.replace(cfg, initializer="zero")
        f0, g0 = start_potentials(cfg, cost_fn, geom, a, b, eps0, covs, False, f0)
        return f0, g0 if g_init is None else jnp.minimum(g0, g_init)
    f0 = eps0 * jnp.log(a) if init is None else init
    bounded = bounded_start(cfg, cost_fn, geom)
    if cfg.initializer == "gaussian":
        top = pmax(jnp.max(f0), axis_name)
        mean_x = psum(a @ geom.x, axis_name)
        mean_y = mean_x if symmetric else b @ geom.y
        cols = geom._replace(y=geom.x) if symmetric else geom
        f_q, g_q = lax.stop_gradient(
            gaussian_start(cols, mean_x, mean_y, covs, lax.stop_gradient(eps0))
        )
        f0 = f0 + f_q
        if bounded:
            return f0, g_q - top
    if bounded:
        if symmetric:
            # C >= 0 and C_ii = 0: -max_j f0_j bounds the minimum from below,
            # and equals it for uniform weights.
            return f0, jnp.full_like(f0, -pmax(jnp.max(f0), axis_name))
        return f0, ball_transform(geom, a, f0, axis_name)
    if symmetric:
        g0 = -reduce(
            cost_fn,
            geom,
            jnp.zeros_like(f0),
            gather(f0, axis_name),
            1.0,
            transpose=False,
            block_size=cfg.block_size,
            op="max",
        )
        return f0, g0
    kw = dict(block_size=cfg.block_size, axis_name=axis_name)
    return f0, hard_transform(cost_fn, geom, f0, **kw)


def bounded_start(cfg, cost_fn, geom) -> bool:
    """Whether a loop starts from bounds instead of a pass over the costs.

    Online with a cached kernel and the squared Euclidean cost: the pass
    would cost about as much as the kernel's build (see
    :func:`ball_transform`).
    """
    return caches_kernel(cfg, geom) and geom.cost is None and is_sq_euclidean(cost_fn)
