"""Derivatives of a converged EM fit by implicit differentiation.

At a fixed point ``p* = T(p*; x, w, r)`` of the EM map ``T = M o E`` (the
textbook :func:`densax.gmm.em_step`), the implicit function theorem gives the
tangent ``dp = (I - J)^-1 (dT/dx dx + dT/dw dw + dT/dr dr)`` with ``J =
dT/dp``, wherever ``I - J`` is invertible (EM converges linearly at rate the
spectral radius of ``J``, below one at a strict local maximum). The linear
system is solved by GMRES on the parameters' pytree inside
``lax.custom_linear_solve``: forward mode solves it, reverse mode solves the
transposed one (``(I - J)^T v = p_bar``), and no EM iteration is stored.

References:
  Dempster, Laird and Rubin (1977), Maximum likelihood from incomplete data
  via the EM algorithm, JRSS B 39(1) (the rate of convergence, section 3).
  Blondel et al. (2022), Efficient and modular implicit differentiation,
  NeurIPS.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import gmres

from densax.gmm._steps import _em_step

__all__ = ["at_fixed_point"]

_RESTART = 30  # GMRES's Krylov dimension between restarts
_MAX_RESTARTS = 20


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def at_fixed_point(params, x, w, reg_covar, axis_name):
    """``params`` (an EM fixed point), differentiated as the implicit function.

    Args:
      params: the converged :class:`GaussianMixture` (its own tangent is
        ignored: a fixed point does not depend on the start).
      x: [n, d] samples.
      w: [n] sample weights.
      reg_covar: [] the covariances' regularisation.
      axis_name: the mapped axis of sharded data, or None.

    Returns:
      ``params`` itself.
    """
    del x, w, reg_covar, axis_name
    return params


def _em_map(params, x, w, reg_covar, axis_name):
    return _em_step(params, x, w, reg_covar, axis_name=axis_name)[0]


@at_fixed_point.defjvp
def _at_fixed_point_jvp(axis_name, primals, tangents):
    params, x, w, reg_covar = primals
    _, dx, dw, dreg = tangents
    em = functools.partial(_em_map, axis_name=axis_name)
    _, rhs = jax.jvp(
        lambda x, w, r: em(params, x, w, r), (x, w, reg_covar), (dx, dw, dreg)
    )

    def matvec(v):  # (I - J) v
        jv = jax.jvp(lambda p: em(p, x, w, reg_covar), (params,), (v,))[1]
        return jax.tree.map(jnp.subtract, v, jv)

    dtype = x.dtype
    tol = float(np.finfo(dtype).eps) ** 0.75

    def solve(matvec, b):
        return gmres(
            matvec, b, tol=tol, atol=0.0, restart=_RESTART, maxiter=_MAX_RESTARTS
        )[0]

    dparams = jax.lax.custom_linear_solve(
        matvec, rhs, solve=solve, transpose_solve=solve
    )
    return params, dparams
