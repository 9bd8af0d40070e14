"""Sliced Wasserstein: exact 1D transport averaged over random directions.

``SW_p = (E_θ W_p^p(θ#μ, θ#ν))^(1/p)`` with ``θ`` uniform on the sphere:
each projection's 1D distance is exact (``univariate.wasserstein_1d``, with
its ``sort`` strategy), the expectation a Monte Carlo mean over
:func:`random_directions`.

References:
  Bonneel, N., Rabin, J., Peyré, G. and Pfister, H. (2015). Sliced and Radon
  Wasserstein barycenters of measures. J. Math. Imaging Vis. 51, 22–45.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from densax import _validate
from densax.ot.univariate import (
    _SORTS,
    _as_floats,
    _check_p,
    _check_samples,
    _check_weights,
    _root,
    _wasserstein_1d_pow,
)

__all__ = ["random_directions", "sliced_wasserstein"]


def random_directions(
    key: jax.Array, n: int, d: int, *, dtype: Any = None
) -> jax.Array:
    """Directions drawn uniformly on the unit sphere of ``R^d`` (normed Gaussians).

    The same ``key`` gives the same directions as
    ``ott.tools.sliced.random_proj_sphere``.

    Args:
      key: a PRNG key.
      n: number of directions.
      d: dimension.
      dtype: floating dtype; JAX's default float when ``None``.

    Returns:
      [n, d] unit vectors.

    Example:
      >>> import jax
      >>> theta = random_directions(jax.random.key(0), 5, 3)
      >>> theta.shape, bool(jnp.allclose(jnp.linalg.norm(theta, axis=1), 1.0))
      ((5, 3), True)
    """
    n = _validate.check_int(n, "n", minimum=1)
    d = _validate.check_int(d, "d", minimum=1)
    dtype = _validate.common_float_dtype() if dtype is None else dtype
    z = jax.random.normal(key, (n, d), dtype=dtype)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("p", "sort"))
def _sliced_core(theta, x, y, a, b, p, sort="auto"):
    px = theta @ x.T  # [L, n]: one row per direction, sorted along the rows
    py = theta @ y.T
    w_pow = _wasserstein_1d_pow(px, py, a, b, p=p, coupling=False, sort=sort)
    return _root(jnp.mean(w_pow), p)


@_validate.public(optional_key=True)
def sliced_wasserstein(
    key: jax.Array | None,
    x: Any,
    y: Any,
    *,
    a: Any = None,
    b: Any = None,
    n_projections: int = 50,
    p: float = 2,
    projections: Any = None,
    sort: str = "auto",
    validate: bool = True,
) -> jax.Array:
    """Monte Carlo sliced p-Wasserstein distance between two weighted samples.

    ``SW_p = (E_θ W_p^p(θ#μ, θ#ν))^(1/p)`` with ``θ`` uniform on the sphere,
    estimated with ``n_projections`` random directions, each 1D distance
    computed exactly (:func:`wasserstein_1d`). Differentiable with respect to
    ``x``, ``y`` and the weights, e.g. as a generator's training loss.

    Args:
      key: PRNG key for the directions (ignored when ``projections`` is
        given, and may then be ``None``).
      x: [n, d] samples of the first measure.
      y: [m, d] samples of the second measure.
      a: [n] non-negative weights of ``x``; uniform when ``None``.
      b: [m] weights of ``y``; uniform when ``None``.
      n_projections: number of random directions (static).
      p: the order, a Python number >= 1 (static).
      projections: [L, d] directions to use instead of random ones, e.g.
        :func:`random_directions`; they need not be unit vectors.
      sort: where the sorts run, see :func:`wasserstein_1d`.
      validate: check the weights' values on an eager call (see
        :func:`wasserstein_1d`).

    Returns:
      [] the sliced distance, in the inputs' floating dtype.

    Raises:
      TypeError: non-numeric inputs, or a non-int ``n_projections``.
      ValueError: inputs that are not [n, d] / [m, d] with the same ``d``,
        weights of the wrong shape, ``p < 1``, ``n_projections < 1``, neither
        ``key`` nor ``projections``, or (eagerly) invalid weights.

    References:
      Bonneel, Rabin, Peyré and Pfister (2015), Sliced and Radon Wasserstein
      barycenters of measures, J. Math. Imaging Vis. 51.

    Example:
      >>> import jax
      >>> kx, ky, kp = jax.random.split(jax.random.key(0), 3)
      >>> x = jax.random.normal(kx, (256, 2))
      >>> y = jax.random.normal(ky, (256, 2)) + 3.0
      >>> loss = lambda x: sliced_wasserstein(kp, x, y, n_projections=100)
      >>> jax.jit(jax.grad(loss))(x).shape
      (256, 2)
    """
    p = _check_p(p)
    n_projections = _validate.check_int(n_projections, "n_projections", minimum=1)
    _validate.check_choice(sort, "sort", _SORTS)
    arrays = _as_floats(x=x, y=y, a=a, b=b)
    x, y = arrays["x"], arrays["y"]
    _validate.check_ndim(x, "x", 2)
    _validate.check_ndim(y, "y", 2)
    _validate.check_same_last_dim(x, y, "x", "y")
    n, m = _check_samples(x, "x", -2), _check_samples(y, "y", -2)
    for z, name in ((x, "x"), (y, "y")):
        if validate and _validate.is_concrete(z):
            _validate.value_check(True, ~jnp.any(jnp.isnan(z)), f"{name} contains NaN")
    a = _check_weights(arrays["a"], "a", n, "x", validate)
    b = _check_weights(arrays["b"], "b", m, "y", validate)
    for w, name in ((a, "a"), (b, "b")):
        if w is not None:
            _validate.check_ndim(w, name, 1)
    if projections is None:
        if key is None:
            raise ValueError("sliced_wasserstein needs a key or projections")
        theta = random_directions(key, n_projections, x.shape[1], dtype=x.dtype)
    else:
        theta = _validate.as_float(projections, "projections", ndim=2, dtype=x.dtype)
        _validate.check_same_last_dim(theta, x, "projections", "x")
    # Half precision arrives here as float32 (the public decorator's policy).
    return _sliced_core(theta, x, y, a, b, p=p, sort=sort)
