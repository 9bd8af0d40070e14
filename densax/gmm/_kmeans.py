"""k-means helpers shared by the initialisation and the EM engine's cells."""

import math

import jax
import jax.numpy as jnp

from densax.gmm._model import _psum

__all__ = []

_HIGHEST = jax.lax.Precision.HIGHEST
_LLOYD_ITERATIONS = 10  # Lloyd iterations of the "kmeans" initialisation


def _gather(tree, axis_name):
    """Every shard's rows (invariant across the mapped axis), or ``tree`` itself."""
    if axis_name is None:
        return tree
    return jax.lax.all_gather(tree, axis_name, tiled=True, to="invarying")


def _sq_distances(x, centres):
    """[n, m] squared distances between ``x`` [n, d] and ``centres`` [m, d]."""
    cross = jnp.matmul(x, centres.T, precision=_HIGHEST)
    sq = jnp.sum(x**2, 1)[:, None] - 2 * cross + jnp.sum(centres**2, 1)[None, :]
    return jnp.maximum(sq, 0)


def _kmeans_plusplus(key, x, w, k):
    """k-means++ seeds [k, d]: D² sampling with greedy local trials.

    References:
      Arthur and Vassilvitskii (2007), k-means++: the advantages of careful
      seeding, SODA.
    """
    n_trials = 2 + int(math.log(k))
    u = jax.random.uniform(key, (k, n_trials), x.dtype)  # all the randomness
    first = x[_sample_index(u[0, :1], w)[0]]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    closest = _sq_distances(x, first[None])[:, 0]  # [n]

    def add_centre(i, carry):
        centres, closest = carry
        mass = w * closest
        # Every sample on a centre already (fewer distinct points than K):
        # sample by weight alone.
        cand = _sample_index(u[i], jnp.where(jnp.sum(mass) > 0, mass, w))
        new_closest = jnp.minimum(closest[:, None], _sq_distances(x, x[cand]))
        best = jnp.argmin(w @ new_closest)  # the trial that most reduces the cost
        return centres.at[i].set(x[cand[best]]), new_closest[:, best]

    centres, _ = jax.lax.fori_loop(1, k, add_centre, (centres, closest))
    return centres


def _sample_index(u, mass):
    """Indices drawn with probability proportional to ``mass``, by inverse CDF.

    Args:
      u: [m] uniform numbers in [0, 1).
      mass: [n] non-negative masses.
    """
    cdf = jnp.cumsum(mass)
    index = jnp.searchsorted(cdf, u * cdf[-1], side="right", method="compare_all")
    return jnp.minimum(index, mass.shape[0] - 1)


def _lloyd(x, w, centres, axis_name=None):
    """Weighted Lloyd iterations; an emptied cluster keeps its centre."""
    k = centres.shape[0]

    def step(_, centres):
        labels = jnp.argmin(_sq_distances(x, centres), axis=1)
        counts = _psum(jax.ops.segment_sum(w, labels, k), axis_name)[:, None]
        sums = _psum(jax.ops.segment_sum(w[:, None] * x, labels, k), axis_name)
        return jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), centres)

    return jax.lax.fori_loop(0, _LLOYD_ITERATIONS, step, centres)
