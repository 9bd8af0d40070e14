"""k-means helpers shared by the initialisation and the EM engine's cells.

The distances and the k-means++ seeding are :mod:`densax.cluster`'s; the
initialisation's Lloyd iterations here are a fixed number, with no stopping
test, so that they fit inside the EM programs.
"""

import jax
import jax.numpy as jnp

from densax.cluster import _sq_distances
from densax.gmm._model import _psum

__all__ = []

_LLOYD_ITERATIONS = 10  # Lloyd iterations of the "kmeans" initialisation


def _gather(tree, axis_name):
    """Every shard's rows (invariant across the mapped axis), or ``tree`` itself."""
    if axis_name is None:
        return tree
    return jax.lax.all_gather(tree, axis_name, tiled=True, to="invarying")


def _lloyd(x, w, centres, axis_name=None):
    """Weighted Lloyd iterations; an emptied cluster keeps its centre."""
    k = centres.shape[0]

    def step(_, centres):
        labels = jnp.argmin(_sq_distances(x, centres), axis=1)
        counts = _psum(jax.ops.segment_sum(w, labels, k), axis_name)[:, None]
        sums = _psum(jax.ops.segment_sum(w[:, None] * x, labels, k), axis_name)
        return jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), centres)

    return jax.lax.fori_loop(0, _LLOYD_ITERATIONS, step, centres)
