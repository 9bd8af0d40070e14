"""Weighted k-means against scikit-learn; optimal quantization of densities."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from sklearn.cluster import KMeans

from densax import cluster


def _data(dtype, n=240):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [4.0, 0.5], [1.0, 4.0], [5.0, 5.0]])
    x = centres[rng.integers(0, 4, n)] + rng.normal(size=(n, 2))
    w = rng.uniform(0.2, 2.0, n)
    return x.astype(dtype), w.astype(dtype)


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_matches_sklearn_from_same_centres(weighted, x64):
    x, w = _data(np.float64)
    init = x[[0, 1, 2, 3]]
    sw = w if weighted else None
    ref = KMeans(4, init=init, n_init=1, tol=0.0, max_iter=300, algorithm="lloyd")
    ref.fit(x, sample_weight=sw)
    res = cluster.kmeans(jax.random.key(0), x, 4, init=init, sample_weight=sw, tol=0.0)
    np.testing.assert_allclose(
        res.centres, ref.cluster_centers_, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(res.inertia, ref.inertia_, rtol=1e-10)
    np.testing.assert_array_equal(res.labels, ref.labels_)
    assert res.converged and int(res.n_iter) == ref.n_iter_
    trace = np.asarray(res.trace)
    assert np.all(np.diff(trace[: int(res.n_iter)]) <= 1e-9)  # Lloyd never goes up
    assert np.all(np.isnan(trace[int(res.n_iter) :]))


def test_kmeans_dtype(dtype):
    x, w = _data(dtype)
    res = cluster.kmeans(jax.random.key(1), x, 4, sample_weight=w, init=x[:4])
    # A second call with the same shapes compiles nothing new.
    size = cluster._kmeans._cache_size()
    cluster.kmeans(jax.random.key(2), x + 1, 4, sample_weight=w, init=x[4:8])
    assert cluster._kmeans._cache_size() == size
    assert res.centres.dtype == dtype and res.inertia.dtype == dtype
    assert res.labels.shape == (240,) and res.converged


def test_kmeans_plusplus_vmap_and_errors():
    x, w = _data(np.float32)
    res = cluster.kmeans(jax.random.key(1), x, 4, sample_weight=w)
    assert res.converged
    # k-means++ finds the four blobs: inertia close to scikit-learn's best of 10.
    ref = KMeans(4, n_init=10, random_state=0).fit(x, sample_weight=w)
    assert float(res.inertia) <= 1.01 * ref.inertia_
    seeds = cluster.kmeans_plusplus(jax.random.key(2), x, 4)
    assert all(np.any(np.all(x == s, axis=1)) for s in np.asarray(seeds))
    # vmap over keys; only the weights' ratios matter.
    batch = jax.vmap(lambda k: cluster.kmeans(k, x, 4, sample_weight=w).inertia)(
        jax.random.split(jax.random.key(3), 3)
    )
    assert batch.shape == (3,)
    scaled = cluster.kmeans(jax.random.key(1), x, 4, sample_weight=5 * w)
    np.testing.assert_allclose(scaled.centres, res.centres, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="init"):
        cluster.kmeans(jax.random.key(0), x, 4, init=x[:3])
    with pytest.raises(ValueError, match="init must be one of"):
        cluster.kmeans(jax.random.key(0), x, 4, init="random")
    with pytest.raises(ValueError, match="sample_weight"):
        cluster.kmeans(jax.random.key(0), x, 4, sample_weight=-w)
    with pytest.raises(TypeError, match="k must be an int"):
        cluster.kmeans(jax.random.key(0), x, 2.0)


def test_kmeans_shard_map(mesh, x64):
    x, w = _data(np.float64)
    init = x[:4]
    ref = cluster.kmeans(jax.random.key(0), x, 4, sample_weight=w, init=init)

    def fn(xs, ws):
        out = cluster.kmeans(
            jax.random.key(0), xs, 4, sample_weight=ws, init=init, axis_name="data"
        )
        return out.centres, out.inertia, out.labels

    sharded = jax.shard_map(
        fn, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), P(), P("data"))
    )
    centres, inertia, labels = sharded(x, w)
    np.testing.assert_allclose(centres, ref.centres, rtol=1e-12)
    np.testing.assert_allclose(inertia, ref.inertia, rtol=1e-12)
    np.testing.assert_array_equal(labels, ref.labels)


class _Normal1D(NamedTuple):
    loc: jax.Array

    def sample(self, key, n):
        return self.loc + jax.random.normal(key, (n, 1), self.loc.dtype)


class _Uniform(NamedTuple):
    low: jax.Array

    def sample(self, key, n):
        return self.low + jax.random.uniform(
            key, (n, self.low.shape[0]), self.low.dtype
        )


def test_quantize_known_optima():
    # Uniform on [0, 1]: the k-point optimum is (2i - 1) / 2k, cells of 1/k,
    # distortion 1 / (12 k^2).
    k = 4
    q = cluster.quantize(jax.random.key(0), _Uniform(jnp.zeros(1)), k, max_iter=1000)
    np.testing.assert_allclose(
        np.sort(q.centres[:, 0]), (2 * np.arange(1, k + 1) - 1) / (2 * k), atol=0.01
    )
    np.testing.assert_allclose(q.weights, 0.25, atol=0.01)
    np.testing.assert_allclose(q.distortion, 1 / (12 * k**2), rtol=0.03)
    assert q.converged and q.trace.shape == (1000,)
    # Standard normal, two points: +-sqrt(2 / pi), distortion 1 - 2 / pi.
    q2 = cluster.quantize(jax.random.key(1), _Normal1D(jnp.zeros(1)), 2, max_iter=1000)
    np.testing.assert_allclose(
        np.sort(q2.centres[:, 0]), [-np.sqrt(2 / np.pi), np.sqrt(2 / np.pi)], atol=0.02
    )
    assert (
        abs(float(q2.distortion) - (1 - 2 / np.pi))
        < 4 * float(q2.distortion_se) + 0.005
    )


def test_quantize_not_converged_and_errors():
    q = cluster.quantize(
        jax.random.key(0),
        _Uniform(jnp.zeros(1)),
        4,
        max_iter=1,
        batch_size=8,
        init=jnp.array([[0.0], [0.01], [0.02], [0.03]]),
        n_eval=4096,
    )
    assert not q.converged and q.stationarity > 0.05
    with pytest.raises(TypeError, match="sample"):
        cluster.quantize(jax.random.key(0), object(), 3)
    with pytest.raises(ValueError, match="init"):
        cluster.quantize(
            jax.random.key(0), _Uniform(jnp.zeros(1)), 3, init=jnp.zeros((2, 1))
        )
