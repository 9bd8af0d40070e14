"""Initialisations of EM: k-means++, k-means, random, random from data."""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from densax import _validate
from densax.cluster import _plusplus, _sq_distances
from densax.gmm._engine import _blocks_for, _m_step_blocks, _to_blocks
from densax.gmm._kmeans import _gather, _lloyd
from densax.gmm._model import (
    COVARIANCE_TYPES,
    GaussianMixture,
    _check_data,
    _check_nonnegative,
    _check_values,
    _cov_shape,
    _from_precisions,
    from_precisions,
)

__all__ = ["INIT_METHODS", "init"]

INIT_METHODS = ("kmeans", "kmeans++", "random", "random_from_data")
_HIGHEST = jax.lax.Precision.HIGHEST


@_validate.public
def init(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    method: str = "kmeans++",
    mixture_weights: jax.Array | None = None,
    means: jax.Array | None = None,
    precisions: jax.Array | None = None,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    axis_name: str | None = None,
    validate: bool = True,
) -> GaussianMixture:
    """Initial mixture parameters for EM.

    The method assigns every sample to components (responsibilities) and the
    parameters are the M-step of that assignment:

    * ``"kmeans++"``: k-means++ seeding (D² sampling with
      ``2 + log K`` greedy trials per centre, as scikit-learn), each sample
      assigned to its nearest seed;
    * ``"kmeans"``: the same seeds refined by 10 weighted Lloyd iterations;
    * ``"random_from_data"``: ``K`` distinct samples drawn with probability
      proportional to ``sample_weight``, nearest-seed assignment;
    * ``"random"``: uniform random responsibilities (all means start near
      the data mean).

    For the seeding methods scikit-learn instead starts from the seeds alone
    (covariances ``reg_covar I``), which makes its first E-step a
    nearest-seed assignment anyway. Any of ``mixture_weights``, ``means``,
    ``precisions`` given replaces the computed one (scikit-learn's
    ``weights_init`` / ``means_init`` / ``precisions_init``); with all three
    given the data are not used.

    Args:
      key: a PRNG key.
      x: [n, d] samples, n >= n_components.
      n_components: the number of components K.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      method: one of :data:`INIT_METHODS`.
      mixture_weights: optional [K] initial mixture weights (normalised to sum
        to one).
      means: optional [K, d] initial means.
      precisions: optional initial precision matrices, shaped as the
        covariances of ``covariance_type``.
      reg_covar: non-negative value added to the covariances' diagonal.
      sample_weight: optional [n] non-negative sample weights.
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x``, the
        mapped axis: the shards are gathered (``all_gather``, memory n·d on
        every device, once) and every device computes the same
        initialisation as an unsharded call.
      validate: eager value checks of ``x``, ``sample_weight`` and the given
        parameters.

    Returns:
      The initial :class:`GaussianMixture`, in the dtype of ``x``.

    Raises:
      ValueError: unknown option, bad shapes, ``n < n_components``; eagerly,
        non-finite ``x``, invalid weights, or ``precisions`` that are not
        symmetric positive definite (under a transformation these give NaN
        precision factors, and :func:`fit` then stops with
        ``converged=False``).

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (400, 2))
      >>> p = init(jax.random.key(1), x, 2)
      >>> p.means.shape, p.covariances.shape
      ((2, 2), (2, 2, 2))
    """
    x, w, k = _check_data(x, n_components, sample_weight, validate, min_samples=-1)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    _validate.check_choice(method, "method", INIT_METHODS)
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    given = {
        "mixture_weights": mixture_weights,
        "means": means,
        "precisions": precisions,
    }
    shapes = {
        "mixture_weights": (k,),
        "means": (k, x.shape[1]),
        "precisions": _cov_shape(covariance_type, k, x.shape[1]),
    }
    for name, value in given.items():
        if value is not None:
            given[name] = _validate.as_float(value, name, dtype=x.dtype)
            if given[name].shape != shapes[name]:
                raise ValueError(
                    f"{name} must have shape {shapes[name]}, got {given[name].shape}"
                )
            _validate.check_finite(given[name], name, validate)
    if given["precisions"] is not None:  # scikit-learn's check too
        _check_values(
            jnp.ones(1, x.dtype),
            jnp.zeros((1, 1), x.dtype),
            given["precisions"],
            covariance_type,
            "precisions",
            validate,
        )
    if given["mixture_weights"] is not None:
        given["mixture_weights"] = _validate.check_weights(
            given["mixture_weights"],
            "mixture_weights",
            (k,),
            dtype=x.dtype,
            validate=validate,
        )
        given["mixture_weights"] /= jnp.sum(given["mixture_weights"])
    if all(value is not None for value in given.values()):
        return from_precisions(
            given["mixture_weights"],
            given["means"],
            given["precisions"],
            covariance_type,
            validate=validate,
        )
    w = _validate.normalize_weights(w, axis_name)  # only the ratios matter
    blocks = _blocks_for(x, w, k, covariance_type, axis_name)
    params = _init(
        key,
        x,
        w,
        blocks,
        reg_covar,
        n_components=k,
        covariance_type=covariance_type,
        method=method,
        axis_name=axis_name,
    )
    if given["precisions"] is not None:
        prec_chol, cov = _from_precisions(given["precisions"], covariance_type)
        params = dataclasses.replace(
            params, covariances=cov, precisions_cholesky=prec_chol
        )
    if given["mixture_weights"] is not None:
        params = dataclasses.replace(params, weights=given["mixture_weights"])
    if given["means"] is not None:
        params = dataclasses.replace(params, means=given["means"])
    return params


@functools.partial(
    jax.jit,
    static_argnames=("n_components", "covariance_type", "method", "axis_name"),
)
def _init(
    key, x, w, blocks, reg_covar, *, n_components, covariance_type, method, axis_name
):
    return _initial_params(
        key, x, w, blocks, reg_covar, n_components, covariance_type, method, axis_name
    )


def _initial_params(
    key, x, w, blocks, reg_covar, k, covariance_type, method, axis_name
):
    """The M-step of the initial responsibilities of ``method``."""
    n = x.shape[0]
    n_total = n if axis_name is None else n * jax.lax.axis_size(axis_name)
    if n_total < k:
        raise ValueError(f"n_components={k} must be <= the number of samples {n_total}")
    if method == "random":
        # The same numbers for a sample whether or not the data are sharded.
        resp = jax.random.uniform(key, (n_total, k), x.dtype)
        if axis_name is not None:
            offset = jax.lax.axis_index(axis_name) * n
            resp = jax.lax.dynamic_slice_in_dim(resp, offset, n)
        resp = resp / jnp.sum(resp, axis=1, keepdims=True)
    else:
        xg, wg = _gather((x, w), axis_name)  # seeding needs every sample
        centre = jnp.matmul(wg, xg, precision=_HIGHEST) / jnp.sum(wg)
        xg = xg - centre  # centred: precise squared distances
        if method == "random_from_data":
            idx = jax.random.choice(
                key, n_total, (k,), replace=False, p=wg / jnp.sum(wg)
            )
            centres = xg[idx]
        else:
            centres = _plusplus(key, xg, wg, k)
        if method == "kmeans":
            centres = _lloyd(xg, wg, centres)
        labels = jnp.argmin(_sq_distances(x - centre, centres), axis=1)
        resp = jax.nn.one_hot(labels, k, dtype=x.dtype)
    return _m_step_blocks(
        blocks, _to_blocks(resp, blocks), reg_covar, covariance_type, axis_name
    )
