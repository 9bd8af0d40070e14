from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from scipy import stats

from densax import gaussian

N, D = 200, 3
RNG = np.random.default_rng(0)
MEAN = np.array([1.0, -2.0, 5.0])
COV = np.array([[2.0, 0.6, 0.3], [0.6, 1.0, -0.2], [0.3, -0.2, 0.5]])
X = RNG.multivariate_normal(MEAN, COV, size=N)
W = RNG.random(N)

# float64 agrees with SciPy/NumPy to rounding; float32 to a few eps times the
# condition number of COV (about 10): 1e-5 relative.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def test_fit_matches_scipy_and_numpy(dtype):
    x = X.astype(dtype)
    g = gaussian.fit(x)
    mean, cov = stats.multivariate_normal.fit(X)  # the MLE
    np.testing.assert_allclose(g.mean, mean, RTOL[dtype], RTOL[dtype])
    np.testing.assert_allclose(g.cov, cov, RTOL[dtype], RTOL[dtype])
    gw = gaussian.fit(x, sample_weight=W.astype(dtype), reg_covar=0.1)
    np.testing.assert_allclose(gw.mean, np.average(X, 0, W), RTOL[dtype], RTOL[dtype])
    expected = np.cov(X.T, aweights=W, bias=True) + 0.1 * np.eye(D)
    np.testing.assert_allclose(gw.cov, expected, RTOL[dtype], RTOL[dtype])
    assert g.mean.dtype == g.cov.dtype == gw.cov.dtype == dtype


def test_log_prob_matches_scipy(dtype):
    g = gaussian.Gaussian(MEAN.astype(dtype), COV.astype(dtype))
    x = X.astype(dtype)
    expected = stats.multivariate_normal(MEAN, COV).logpdf(X)
    lp = gaussian.log_prob(g, x)
    assert lp.shape == (N,) and lp.dtype == dtype
    np.testing.assert_allclose(lp, expected, RTOL[dtype], RTOL[dtype])
    # Any batch shape [..., d], and a single point.
    lp = gaussian.log_prob(g, x.reshape(4, N // 4, D))
    np.testing.assert_allclose(lp.reshape(-1), expected, RTOL[dtype], RTOL[dtype])
    np.testing.assert_allclose(gaussian.log_prob(g, x[0]), expected[0], RTOL[dtype])


def test_sample_moments(key):
    g = gaussian.Gaussian(jnp.asarray(MEAN, jnp.float32), jnp.asarray(COV, jnp.float32))
    n = 40_000
    x = np.asarray(gaussian.sample(key, g, n), np.float64)
    assert x.shape == (n, D)
    sd = np.sqrt(np.diag(COV))
    # 5 standard errors: mean sd / sqrt(n), covariance sd_i sd_j sqrt(2 / n).
    assert np.all(np.abs(x.mean(0) - MEAN) < 5 * sd / np.sqrt(n))
    assert np.all(np.abs(np.cov(x.T) - COV) < 5 * np.outer(sd, sd) * np.sqrt(2 / n))
    assert gaussian.sample(key, g, 0).shape == (0, D)


def test_fit_recovers_the_sampled_gaussian(key, x64):
    g = gaussian.Gaussian(jnp.asarray(MEAN), jnp.asarray(COV))
    fitted = gaussian.fit(gaussian.sample(key, g, 50_000))
    np.testing.assert_allclose(fitted.mean, MEAN, atol=0.03)
    np.testing.assert_allclose(fitted.cov, COV, atol=0.05)


def test_sharded_fit_equals_single_device(mesh, x64):
    @jax.jit
    @partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
    def sharded(x, w):
        return gaussian.fit(x, sample_weight=w, axis_name="data")

    ref = gaussian.fit(X, sample_weight=W)
    for a, b in zip(sharded(X, W), ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    pmapped = jax.pmap(partial(gaussian.fit, axis_name="i"), axis_name="i")(
        X.reshape(4, N // 4, D)
    )
    for a, b in zip(pmapped, gaussian.fit(X), strict=True):
        np.testing.assert_allclose(a[0], b, rtol=1e-12)


def test_vmap_jit_and_no_retracing():
    xs = jnp.asarray(X.reshape(4, N // 4, D), jnp.float32)
    fits = jax.vmap(gaussian.fit)(xs)
    lps = jax.jit(jax.vmap(gaussian.log_prob))(fits, xs)
    for i in range(4):
        g = gaussian.fit(xs[i])
        np.testing.assert_allclose(fits.cov[i], g.cov, rtol=1e-6)
        np.testing.assert_allclose(lps[i], gaussian.log_prob(g, xs[i]), 1e-5, 1e-5)
    sizes = [f._cache_size() for f in (gaussian._fit, gaussian._log_prob)]
    gaussian.log_prob(gaussian.fit(xs[0] + 1), xs[1])
    assert [f._cache_size() for f in (gaussian._fit, gaussian._log_prob)] == sizes


def test_log_prob_gradients(x64):
    x = X[:10]
    log_prob = jax.jit(
        lambda mean, cov, x: gaussian.log_prob(gaussian.Gaussian(mean, cov), x)
    )
    check_grads(log_prob, (MEAN, COV, x), order=1, modes=["fwd", "rev"])
    # The fit is differentiable too (the MLE of the data).
    check_grads(jax.jit(lambda x: gaussian.fit(x).cov), (x,), order=1, modes=["rev"])


def test_degenerate_cases():
    # A constant feature: the MLE covariance is singular; reg_covar fixes it.
    x = X.astype(np.float32)
    x[:, 1] = 4.0
    g = gaussian.fit(x)
    assert float(g.cov[1, 1]) == 0.0
    with pytest.raises(ValueError, match="not positive definite"):
        gaussian.log_prob(g, x)
    assert np.all(np.isnan(np.asarray(gaussian.log_prob(g, x, validate=False))))
    g = gaussian.fit(x, reg_covar=1e-3)
    assert np.all(np.isfinite(np.asarray(gaussian.log_prob(g, x))))
    # A single sample: zero covariance plus reg_covar.
    np.testing.assert_allclose(gaussian.fit(x[:1], reg_covar=0.5).cov, 0.5 * np.eye(D))
    # NaN: an error on the eager path, NaN for that point only otherwise.
    x[5, 0] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        gaussian.fit(x)
    g = gaussian.fit(X.astype(np.float32))
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        gaussian.log_prob(g, x)
    lp = np.asarray(jax.jit(gaussian.log_prob)(g, x))
    assert np.isnan(lp[5]) and np.all(np.isfinite(np.delete(lp, 5)))


def test_bad_input_errors():
    g = gaussian.fit(X.astype(np.float32))
    with pytest.raises(ValueError, match="x must have rank 2"):
        gaussian.fit(X[:, 0])
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(200,\)"):
        gaussian.fit(X, sample_weight=W[:10])
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        gaussian.fit(X, sample_weight=-W)
    with pytest.raises(ValueError, match="reg_covar must be >= 0"):
        gaussian.fit(X, reg_covar=-1.0)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 3\]"):
        gaussian.log_prob(g, X[:, :2])
    with pytest.raises(ValueError, match=r"model.cov must have shape \(3, 3\)"):
        gaussian.log_prob(gaussian.Gaussian(g.mean, g.cov[:2]), X)
    with pytest.raises(TypeError, match="x must have a real numeric dtype"):
        gaussian.fit(X > 0)
    with pytest.raises(TypeError, match="n must be an int"):
        gaussian.sample(jax.random.key(0), g, 2.5)
