"""Tests of densax.gmm's EM on a stream of chunks (fit_stream, fit_online).

Reference: densax.gmm.fit on the concatenated data (itself tested against
scikit-learn in tests/test_gmm.py), from the same start.
"""

import functools

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


def test_weights_chunk_forms_and_one_compilation(x64):
    """(x, w) chunks equal repeated rows; a function of the index equals a list.

    (The equality with gmm.fit, iteration by iteration, for every covariance
    type and both dtypes, is in tests/test_gmm.py::test_fit_matches_sklearn.)
    """
    rng = np.random.default_rng(0)
    x = _mixture(rng, 300, 3)
    w = rng.integers(1, 4, len(x))
    repeated = np.repeat(x, w, axis=0)
    p0 = gmm.from_covariances(np.ones(3) / 3, x[:3], np.ones((3, 3)), "diag")
    opts = dict(covariance_type="diag", init_params=p0, max_iter=15, tol=0.0)
    before = _stream._chunk_statistics._cache_size()
    # Chunks of 128 rows, the last ones ragged: one compiled step.
    weighted = [(x[i : i + 128], w[i : i + 128]) for i in range(0, len(x), 128)]
    res = gmm.fit_stream(None, weighted, 3, **opts)
    plain = [repeated[i : i + 128] for i in range(0, len(repeated), 128)]
    ref = gmm.fit_stream(None, lambda i: plain[i], 3, n_chunks=len(plain), **opts)
    assert _stream._chunk_statistics._cache_size() == before + 1
    np.testing.assert_allclose(res.trace, ref.trace, rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(res.model), jax.tree.leaves(ref.model), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_chunk_longer_than_a_block(x64):
    """A chunk longer than a block equals gmm.fit on the same rows.

    (The chunk step scans blocks of ``_BLOCK_ROWS`` rows, the last padded;
    gmm.fit is checked against scikit-learn in tests/test_gmm.py.)
    """
    rng = np.random.default_rng(1)
    rows = _stream._BLOCK_ROWS + 904
    x = _mixture(rng, rows)
    p0 = gmm.from_covariances(np.ones(3) / 3, x[:3], np.ones((3, 2, 2)) * np.eye(2))
    opts = dict(init_params=p0, max_iter=4, tol=0.0)
    one = gmm.fit_stream(None, [x], 3, **opts)
    ref = gmm.fit(None, x, 3, **opts)
    np.testing.assert_allclose(one.trace, ref.trace, rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(one.model), jax.tree.leaves(ref.model), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_fit_online_approaches_batch():
    """One pass of online EM lands near the batch fit (float32, shuffled chunks)."""
    rng = np.random.default_rng(1)
    x = _mixture(rng, 24_000).astype(np.float32)
    chunks = np.split(x, 48)
    # A rough start (three rows of the first chunk, unit covariances).
    p0 = gmm.from_covariances(np.ones(3) / 3, x[:3], np.ones(3), "spherical")
    opts = dict(covariance_type="spherical", init_params=p0)
    batch = gmm.fit_stream(None, chunks, 3, tol=1e-5, **opts).model
    online = gmm.fit_online(None, chunks, 3, **opts)
    assert online.model.means.dtype == np.float32
    assert int(online.n_iter) == 48 and bool(online.converged)
    assert online.trace.shape == (48,)
    ob, oo = np.argsort(batch.means[:, 0]), np.argsort(online.model.means[:, 0])
    np.testing.assert_allclose(online.model.means[oo], batch.means[ob], atol=0.05)
    np.testing.assert_allclose(online.model.weights[oo], batch.weights[ob], atol=0.02)
    np.testing.assert_allclose(
        online.model.covariances[oo], batch.covariances[ob], rtol=0.05
    )


def test_stream_bad_input():
    x = np.random.default_rng(2).standard_normal((40, 2))
    p0 = gmm.from_covariances(np.ones(2) / 2, x[:2], np.ones(2), "spherical")
    fit = functools.partial(gmm.fit_stream, None, covariance_type="spherical")
    with pytest.raises(TypeError, match="re-iterable"):
        fit((c for c in np.split(x, 4)), 2, init_params=p0)
    with pytest.raises(ValueError, match="n_chunks"):
        fit(lambda i: x, 2, init_params=p0)
    with pytest.raises(ValueError, match="columns"):
        fit([x, x[:, :1]], 2, init_params=p0)
    with pytest.raises(ValueError, match="empty"):
        fit([], 2)
    with pytest.raises(ValueError, match="covariance_type"):
        gmm.fit_stream(None, [x], 2, init_params=p0)
    with pytest.raises(ValueError, match="covariance_type"):
        fit([x], 2, covariance_type="banded")
    with pytest.raises(ValueError, match="chunk"):
        fit([x, np.full((3, 2), np.nan)], 2, init_params=p0)
    with pytest.raises(ValueError, match="n_components"):
        fit([x], 3, init_params=p0)
    with pytest.raises(ValueError, match="step_exponent"):
        gmm.fit_online(None, [x], 2, step_exponent=0.4)
