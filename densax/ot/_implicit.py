"""Differentiation through the solution: envelope, implicit, unrolled.

:func:`potentials` returns the solution ``(f, g)`` of a problem and its
``_solve.Aux``. With ``differentiation="unroll"`` it is the loop itself
(reverse mode through a ``scan``). Otherwise the solve is a ``custom_vjp``
fixed point: ``"envelope"`` refuses cotangents on the potentials (the
objective is differentiated with them held fixed, Danskin's theorem, see
:func:`valued`), and ``"implicit"`` solves the adjoint of the fixed point
``P 1 = a, P^T 1 = b`` (implicit function theorem): a Schur complement with
the gauge's null vector deflated, by conjugate gradients or, dense and
small, a direct solve.

References:
  Luise, Rudi, Pontil & Ciliberto, "Differential Properties of Sinkhorn
  Approximation for Learning with Wasserstein Distance", NeurIPS 2018.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from densax.ot._geometry import apply, gather, pair_sum, psum, sums
from densax.ot._solve import Problem, solve_and_state

__all__ = ["potentials", "valued"]

_DIRECT_SOLVE_MAX = 1024  # implicit gradients: direct solve up to this size
_CG_MAX_ITER = 1000


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def valued(fn, value, args):
    """``fn(*args)``, whose value is known already: ``value``.

    Its derivatives are ``fn``'s; ``fn`` runs only when differentiated.
    """
    del fn, args
    return value


@valued.defjvp
def _valued_jvp(fn, primals, tangents):
    value, args = primals
    _, d_args = tangents
    return value, jax.jvp(lambda a: fn(*a), (args,), (d_args,))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _fixed_point(cfg, prob, sched, threshold, symmetric):
    s, aux = solve_and_state(cfg, prob, sched, threshold, symmetric)
    return (s.f_out, s.g), aux


def _unwrap(tree):
    is_primal = lambda p: isinstance(p, CustomVJPPrimal)
    return jax.tree.map(
        lambda p: p.value if is_primal(p) else p, tree, is_leaf=is_primal
    )


def _fixed_point_fwd(cfg, prob, sched, threshold, symmetric):
    prob, sched, threshold = _unwrap((prob, sched, threshold))
    out = _fixed_point(cfg, prob, sched, threshold, symmetric)
    return out, (prob, sched, threshold, out[0])


def _fixed_point_bwd(cfg, symmetric, res, ct):
    prob, sched, threshold, (f, g) = res
    (ct_f, ct_g), _ = ct
    nothing = (
        jax.tree.map(jnp.zeros_like, prob),
        jax.tree.map(jnp.zeros_like, sched),
        jnp.zeros_like(threshold),
    )
    if isinstance(ct_f, SymbolicZero) and isinstance(ct_g, SymbolicZero):
        return nothing
    if cfg.differentiation == "envelope":
        raise ValueError(
            "sinkhorn(..., differentiation='envelope') differentiates reg_cost "
            "only (envelope theorem); the potentials f, g and what depends on "
            "them (transport_cost, transport_plan, apply_plan) need "
            "differentiation='implicit' or 'unroll'"
        )
    if symmetric:
        grads = _implicit_vjp_sym(
            cfg, prob, f, _instantiate(ct_f, f) + _instantiate(ct_g, g)
        )
    else:
        grads = _implicit_vjp_xy(
            cfg, prob, f, g, _instantiate(ct_f, f), _instantiate(ct_g, g)
        )
    return (grads, *nothing[1:])


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd, symbolic_zeros=True)


def potentials(cfg, prob, sched, threshold, symmetric):
    """Solves; returns ``(f, g)`` and an :class:`Aux`."""
    if cfg.differentiation == "unroll":
        s, aux = solve_and_state(cfg, prob, sched, threshold, symmetric)
        return (s.f_out, s.g), jax.tree.map(lax.stop_gradient, aux)
    (f, g), aux = _fixed_point(cfg, prob, sched, threshold, symmetric)
    return (f, g), jax.tree.map(lax.stop_gradient, aux)


def _cg(matvec, rhs, dot, tol):
    """Conjugate gradients for an SPD operator.

    The inner product is a parameter, so that sharded vectors reduce across
    devices.
    """
    x = jnp.zeros_like(rhs)
    r = rhs
    p = r
    rr = dot(r, r)
    stop = (tol**2) * dot(rhs, rhs)

    def cond(c):
        return (c[4] < _CG_MAX_ITER) & (c[3] > stop)

    def body(c):
        x, r, p, rr, k = c
        ap = matvec(p)
        alpha = rr / dot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr) * p
        return x, r, p, rr_new, k + 1

    return lax.while_loop(cond, body, (x, r, p, rr, 0))[0]


def _cg_tol(dtype):
    return 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-10


def _implicit_vjp_xy(cfg, prob: Problem, f, g, ct_f, ct_g):
    """VJP of the fixed point ``P 1 = a, P^T 1 = b`` (implicit function theorem).

    With ``H = [[diag(P 1), P], [P^T, diag(P^T 1)]]`` (eps times the Jacobian in
    ``(f, g)``), the adjoint ``H lam = ct`` is solved through the Schur
    complement in ``g``: in the scaled variable ``w = diag(P^T 1)^(1/2) lam_g``
    it is ``(I - K^T K) w = rhs`` with ``K = D_r^(-1/2) P D_c^(-1/2)``, whose
    only null vector ``s = sqrt(P^T 1)`` (the gauge ``(f + c, g - c)``) is
    deflated: ``I - K^T K + s s^T`` is SPD with eigenvalues in
    ``[1 - sigma_2^2, 1]``, well conditioned in float32. The cotangent is then
    ``-eps d/dtheta [lam_f^T (P 1 - a) + lam_g^T (P^T 1 - b)]``.
    """
    geom, cost_fn, _, _, eps = prob
    kw = dict(block_size=cfg.block_size, axis_name=cfg.axis_name)
    ones = lambda v: v[:, None]
    p_apply = lambda v: apply(cost_fn, geom, f, g, eps, ones(v), transpose=False, **kw)[
        :, 0
    ]
    pt_apply = lambda u: apply(cost_fn, geom, f, g, eps, ones(u), transpose=True, **kw)[
        :, 0
    ]
    d_r = sums(cost_fn, geom, f, g, eps, transpose=False, **kw)
    d_c = sums(cost_fn, geom, f, g, eps, transpose=True, **kw)
    inv_r = jnp.where(d_r > 0, 1.0 / jnp.where(d_r > 0, d_r, 1.0), 0.0)
    isqrt_c = jnp.where(d_c > 0, lax.rsqrt(jnp.where(d_c > 0, d_c, 1.0)), 0.0)
    s = jnp.sqrt(d_c)
    s = s / jnp.linalg.norm(s)
    rhs = isqrt_c * (ct_g - pt_apply(inv_r * ct_f))
    rhs = rhs - (s @ rhs) * s

    m = g.shape[0]
    if geom.cost is not None and m <= _DIRECT_SOLVE_MAX:
        plan = jnp.where(
            (f[:, None] > -jnp.inf) & (g[None, :] > -jnp.inf),
            jnp.exp((f[:, None] + g[None, :] - geom.cost) / eps),
            0.0,
        )
        k_mat = plan * (jnp.sqrt(inv_r)[:, None] * isqrt_c[None, :])
        gram = psum(k_mat.T @ k_mat, cfg.axis_name)
        system = jnp.eye(m, dtype=g.dtype) - gram + jnp.outer(s, s)
        w = jax.scipy.linalg.solve(system, rhs, assume_a="pos")
    else:

        def matvec(w):
            u = inv_r * p_apply(isqrt_c * w)
            return w - isqrt_c * pt_apply(u) + (s @ w) * s

        w = _cg(matvec, rhs, jnp.dot, _cg_tol(g.dtype))
    lam_g = isqrt_c * w
    lam_f = inv_r * (ct_f - p_apply(lam_g))
    lam_f, lam_g = lax.stop_gradient((lam_f, lam_g))
    eps_c = lax.stop_gradient(eps)

    def residual(prob_):
        geom_, cost_fn_, a_, b_, eps_ = prob_
        mass = pair_sum(cost_fn_, geom_, f, g, eps_, lam_f, lam_g, **kw)
        return -eps_c * (mass - psum(lam_f @ a_, cfg.axis_name) - lam_g @ b_)

    _, vjp = jax.vjp(residual, prob)
    return vjp(jnp.ones((), g.dtype))[0]


def _implicit_vjp_sym(cfg, prob: Problem, f, ct):
    """VJP of the symmetric fixed point ``P 1 = a``.

    With ``P = exp((f_i + f_j - C_ij) / eps)`` the Jacobian is
    ``(diag(P 1) + P) / eps``, i.e. ``I + K`` after diagonal scaling, with
    eigenvalues in ``[1, 2]`` for a positive-definite kernel; solved by CG.
    """
    geom, cost_fn, _, _, eps = prob
    axis_name = cfg.axis_name
    gather_all = functools.partial(gather, axis_name=axis_name)
    kw = dict(block_size=cfg.block_size, axis_name=None)
    f_all = gather_all(f)
    d = sums(cost_fn, geom, f, f_all, eps, transpose=False, **kw)
    isqrt = jnp.where(d > 0, lax.rsqrt(jnp.where(d > 0, d, 1.0)), 0.0)

    def matvec(w):
        pv = apply(
            cost_fn,
            geom,
            f,
            f_all,
            eps,
            gather_all(isqrt * w)[:, None],
            transpose=False,
            **kw,
        )[:, 0]
        return w + isqrt * pv

    dot = lambda u, v: psum(u @ v, axis_name)
    w = _cg(matvec, isqrt * ct, dot, _cg_tol(f.dtype))
    lam = lax.stop_gradient(isqrt * w)
    eps_c = lax.stop_gradient(eps)

    def residual(prob_):
        geom_, cost_fn_, a_, _, eps_ = prob_
        # P 1 - a with f fixed: the cost depends on the points on both sides.
        mass = pair_sum(
            cost_fn_, geom_, f, f_all, eps_, lam, jnp.zeros_like(f_all), **kw
        )
        return -eps_c * (psum(mass, axis_name) - psum(lam @ a_, axis_name))

    _, vjp = jax.vjp(residual, prob)
    return vjp(jnp.ones((), f.dtype))[0]


def _instantiate(ct, like):
    return jnp.zeros_like(like) if isinstance(ct, SymbolicZero) else ct


# --------------------------------------------------------------------------
# Objectives and the jitted cores.
