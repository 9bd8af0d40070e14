"""Tests of densax.gmm's EM on a stream of chunks (fit_stream, fit_online).

Reference: densax.gmm.fit on the concatenated data (itself tested against
scikit-learn in tests/test_gmm.py), from the same start.
"""

import jax
import numpy as np
import pytest

from densax import gmm
from densax.gmm import _stream


def _mixture(rng, n, d=2):
    """Three separated clusters of different sizes and shapes, shuffled."""
    centres = np.array([[4.0, 0.0, 1.0], [-3.0, 2.0, 0.0], [0.0, -4.0, -1.0]])[:, :d]
    scales = np.array([0.5, 1.0, 1.5])[:, None]
    labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    return centres[labels] + scales[labels] * rng.standard_normal((n, d))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_fit_stream_equals_fit(x64, covariance_type):
    """Same start: each iteration's log-likelihood and the model, to rounding."""
    rng = np.random.default_rng(0)
    x = _mixture(rng, 1100, 3)
    w = rng.uniform(0.5, 2.0, len(x))
    p0 = gmm.init(jax.random.key(0), x, 3, covariance_type=covariance_type)
    opts = dict(covariance_type=covariance_type, tol=1e-8, max_iter=25)
    ref = gmm.fit(jax.random.key(0), x, 3, init_params=p0, sample_weight=w, **opts)
    # A list of (x, w) chunks, the last one ragged (1100 = 4 x 256 + 76).
    chunks = [(x[i : i + 256], w[i : i + 256]) for i in range(0, len(x), 256)]
    before = _stream._chunk_statistics._cache_size()
    res = gmm.fit_stream(jax.random.key(1), chunks, 3, init_params=p0, **opts)
    assert _stream._chunk_statistics._cache_size() == before + 1  # one shape
    assert int(res.n_iter) == int(ref.n_iter) > 5
    assert bool(res.converged) == bool(ref.converged)
    # The same map computed in other coordinates (one cell instead of the
    # engine's six): rounding-level differences, amplified a little by EM.
    np.testing.assert_allclose(res.trace, ref.trace, rtol=1e-12)
    assert np.isnan(res.trace[int(res.n_iter) :]).all()
    for a, b in zip(
        jax.tree.leaves(res.model), jax.tree.leaves(ref.model), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # A function of the chunk index gives the same fit.
    by_index = gmm.fit_stream(
        jax.random.key(1),
        lambda i: chunks[i],
        3,
        init_params=p0,
        n_chunks=len(chunks),
        **opts,
    )
    np.testing.assert_array_equal(by_index.trace, res.trace)


def test_fit_online_approaches_batch():
    """One pass of online EM lands near the batch fit (float32, shuffled chunks)."""
    rng = np.random.default_rng(1)
    x = _mixture(rng, 24_000).astype(np.float32)
    chunks = np.split(x, 48)
    batch = gmm.fit_stream(jax.random.key(0), chunks, 3, tol=1e-5)
    online = gmm.fit_online(jax.random.key(0), chunks, 3)
    assert online.model.means.dtype == np.float32
    assert int(online.n_iter) == 48 and bool(online.converged)
    order_b = np.argsort(batch.model.means[:, 0])
    order_o = np.argsort(online.model.means[:, 0])
    np.testing.assert_allclose(
        online.model.means[order_o], batch.model.means[order_b], atol=0.05
    )
    np.testing.assert_allclose(
        online.model.weights[order_o], batch.model.weights[order_b], atol=0.02
    )
    ll_batch = float(gmm.log_prob(batch.model, x).mean())
    ll_online = float(gmm.log_prob(online.model, x).mean())
    assert ll_batch - 5e-3 <= ll_online <= ll_batch + 1e-4


def test_stream_bad_input():
    x = np.random.default_rng(2).standard_normal((40, 2))
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="re-iterable"):
        gmm.fit_stream(key, (c for c in np.split(x, 4)), 2)
    with pytest.raises(ValueError, match="n_chunks"):
        gmm.fit_stream(key, lambda i: x, 2)
    with pytest.raises(ValueError, match="columns"):
        gmm.fit_stream(key, [x, x[:, :1]], 2)
    with pytest.raises(ValueError, match="empty"):
        gmm.fit_stream(key, [], 2)
    with pytest.raises(ValueError, match="covariance_type"):
        gmm.fit_stream(key, [x], 2, covariance_type="banded")
    with pytest.raises(ValueError, match="chunk"):
        gmm.fit_stream(key, [x, np.full((3, 2), np.nan)], 2)
    with pytest.raises(ValueError, match="step_exponent"):
        gmm.fit_online(key, [x], 2, step_exponent=0.4)
