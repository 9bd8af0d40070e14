import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import (
    _compute_precision_cholesky_from_precisions,
)
from sklearn.utils._array_api import get_namespace

from densax import gmm

K, D, N = 3, 3, 240  # one data shape for most tests: fewer compilations
MAX_ITER = 12


def _data(n=N, seed=0):
    """Three anisotropic clusters, away from the origin (float64)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-1.0, 5.0, 3.0]]) + 5.0
    scales = [
        np.diag([1.0, 0.5, 0.3]),
        np.array([[1.0, 0.6, 0], [0, 0.8, 0.2], [0, 0, 0.4]]),
    ]
    scales.append(0.7 * np.eye(3))
    labels = np.arange(n) % K
    z = rng.normal(size=(n, D))
    return np.stack([centres[k] + z[i] @ scales[k] for i, k in enumerate(labels)])


X = _data()


def _precisions(params):
    """The precision matrices of a GMMParams, as scikit-learn's precisions_init."""
    u = np.asarray(params.precisions_cholesky, np.float64)
    if params.covariance_type in ("full", "tied"):
        return u @ np.swapaxes(u, -1, -2)
    return u**2


def _normalised(w):
    return w / w.sum()


def _sklearn(params, **kwargs):
    return GaussianMixture(
        params.weights.shape[0],
        covariance_type=params.covariance_type,
        weights_init=_normalised(np.asarray(params.weights, np.float64)),
        means_init=np.asarray(params.means, np.float64),
        precisions_init=_precisions(params),
        **kwargs,
    )


def _fit_sklearn(params, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _sklearn(params, **kwargs).fit(x)


def _assert_close(actual, desired, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol, atol)


# Tolerances against scikit-learn in float64 with the same data and initial
# parameters. float64: the 1e-8 relative (we measure ~1e-14). float32:
# eps = 1.2e-7, and the expanded quadratic form of the E-step cancels terms of
# size kappa ~ 1e2 on this data (see densax.gmm's docstring), amplified over
# MAX_ITER iterations: 2e-5 relative on the log-likelihood, 1e-4 on parameters.
RTOL = {np.float64: 1e-8, np.float32: 2e-5}
PARAM_TOL = {np.float64: 1e-8, np.float32: 1e-4}


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_fit_matches_sklearn(covariance_type, dtype):
    x = X.astype(dtype)
    p0 = gmm.init(jax.random.key(0), x, K, covariance_type=covariance_type)
    sk = _fit_sklearn(p0, x.astype(np.float64), max_iter=MAX_ITER, tol=0)
    res = gmm.fit(
        None, x, K, covariance_type=covariance_type, init_params=p0,
        max_iter=MAX_ITER, tol=0.0,
    )  # fmt: skip
    rtol, ptol = RTOL[dtype], PARAM_TOL[dtype]
    # Log-likelihood at every iteration, the final lower bound, no convergence
    # with tol=0, and EM never decreases the log-likelihood.
    _assert_close(res.log_likelihood_trace, sk.lower_bounds_, rtol)
    _assert_close(res.log_likelihood, sk.lower_bound_, rtol)
    assert int(res.n_iter) == MAX_ITER and not bool(res.converged)
    trace = np.asarray(res.log_likelihood_trace, np.float64)
    assert np.all(np.diff(trace) >= -10 * np.finfo(dtype).eps * np.abs(trace[1:]))
    # Final parameters, scaled by their size.
    p = res.params
    for ours, theirs in [
        (p.weights, sk.weights_),
        (p.means, sk.means_),
        (p.covariances, sk.covariances_),
        (p.precisions_cholesky, sk.precisions_cholesky_),
    ]:
        _assert_close(ours, theirs, ptol, ptol * np.abs(theirs).max())
    # Evaluation functions on the fitted parameters.
    _assert_close(gmm.bic(p, x), sk.bic(x), rtol)
    _assert_close(gmm.aic(p, x), sk.aic(x), rtol)
    _assert_close(gmm.log_prob(p, x), sk.score_samples(x), ptol, ptol)
    _assert_close(gmm.predict_proba(p, x), sk.predict_proba(x), ptol, ptol)
    assert np.mean(np.asarray(gmm.predict(p, x)) == sk.predict(x)) > 0.99
    leaves = [*jax.tree.leaves(res), gmm.log_prob(p, x), gmm.bic(p, x)]
    assert {a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {
        np.dtype(dtype)
    }
    # scikit-learn's stopping rule: the same number of iterations with tol > 0.
    res = gmm.fit(
        None, x, K, covariance_type=covariance_type, init_params=p0,
        max_iter=MAX_ITER, tol=0.05,
    )  # fmt: skip
    sk = _fit_sklearn(p0, x.astype(np.float64), max_iter=MAX_ITER, tol=0.05)
    assert int(res.n_iter) == sk.n_iter_ and bool(res.converged) == sk.converged_
    _assert_close(res.log_likelihood, sk.lower_bound_, rtol)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_steps_match_sklearn(covariance_type, x64):
    p = gmm.init(jax.random.key(1), X, K, covariance_type=covariance_type)
    # from_precisions gives scikit-learn's factors of precisions_init.
    precisions = _precisions(p)
    sk_prec_chol = _compute_precision_cholesky_from_precisions(
        precisions, covariance_type, xp=get_namespace(precisions)[0]
    )
    q = gmm.from_precisions(p.weights, p.means, precisions, covariance_type)
    _assert_close(q.precisions_cholesky, sk_prec_chol, 1e-12, 1e-12)
    _assert_close(q.covariances, np.asarray(p.covariances), 1e-12, 1e-12)
    sk = GaussianMixture(K, covariance_type=covariance_type)
    sk.weights_, sk.means_ = np.asarray(p.weights), np.asarray(p.means)
    sk.precisions_cholesky_ = sk_prec_chol
    log_norm, log_resp_sk = sk._e_step(X)
    log_resp, ll = gmm.e_step(p, X)
    _assert_close(ll, log_norm, 1e-10)
    _assert_close(log_resp, log_resp_sk, 1e-8, 1e-10)
    sk._m_step(X, log_resp_sk)
    new = gmm.m_step(X, log_resp, covariance_type=covariance_type)
    stepped, ll_step = gmm.em_step(p, X)
    _assert_close(ll_step, log_norm, 1e-10)
    for params in (new, stepped):
        for ours, theirs in [
            (params.weights, sk.weights_),
            (params.means, sk.means_),
            (params.covariances, sk.covariances_),
            (params.precisions_cholesky, sk.precisions_cholesky_),
        ]:
            _assert_close(ours, theirs, 1e-9, 1e-12)


def test_float32_inputs_stay_float32_with_x64(x64):
    x = X.astype(np.float32)
    res = gmm.fit(jax.random.key(0), x, K, max_iter=3)
    assert {a.dtype for a in jax.tree.leaves(res.params)} == {np.dtype(np.float32)}
    assert res.log_likelihood.dtype == np.float32


def test_integer_data_takes_default_float():
    res = gmm.fit(jax.random.key(0), np.round(X * 10).astype(np.int32), K, max_iter=3)
    assert res.params.means.dtype == jnp.float32


@pytest.mark.parametrize("method", gmm.INIT_METHODS)
def test_every_init_method_reaches_the_optimum(method, x64):
    # Well-separated clusters: every initialisation finds scikit-learn's
    # best-of-five optimum (in the best of three restarts).
    sk = GaussianMixture(K, n_init=5, tol=1e-10, max_iter=500, random_state=0).fit(X)
    res = gmm.fit(
        jax.random.key(3), X, K, init=method, n_init=3, tol=1e-10, max_iter=500
    )
    assert bool(res.converged)
    _assert_close(res.log_likelihood, sk.lower_bound_, 1e-8)
    order = np.argsort(np.asarray(res.params.means[:, 0]))
    _assert_close(res.params.means[order], sk.means_[np.argsort(sk.means_[:, 0])], 1e-6)


def test_init_takes_user_parameters(x64):
    key = jax.random.key(0)
    ref = gmm.init(key, X, K)
    means = ref.means + 1.0
    partial_init = gmm.init(key, X, K, means=means)
    _assert_close(partial_init.means, np.asarray(means), 0)
    _assert_close(partial_init.covariances, np.asarray(ref.covariances), 0)
    precisions = _precisions(ref)
    full = gmm.init(
        key, X, K, weights=2 * ref.weights, means=means, precisions=precisions
    )
    other_key = gmm.init(
        jax.random.key(5), X, K, weights=ref.weights, means=means, precisions=precisions
    )
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(other_key), strict=True):
        _assert_close(a, np.asarray(b), 0)  # the key is unused; weights normalised
    _assert_close(full.precisions_cholesky, np.asarray(ref.precisions_cholesky), 1e-10)
    _assert_close(full.covariances, np.asarray(ref.covariances), 1e-10)


def test_restarts_run_in_parallel_and_keep_the_best(x64):
    key = jax.random.key(7)
    x = _data(N, seed=3)[:, :2]  # a 2-D problem with several local optima
    kw = dict(covariance_type="diag", max_iter=40, init="random_from_data")
    best = gmm.fit(key, x, 5, n_init=4, **kw)
    singles = [
        gmm.fit(None, x, 5, init_params=gmm.init(k, x, 5, method=kw["init"],
                covariance_type="diag"), max_iter=40, covariance_type="diag")
        for k in jax.random.split(key, 4)
    ]  # fmt: skip
    lls = [float(r.log_likelihood) for r in singles]
    _assert_close(best.log_likelihood, max(lls), 1e-12)
    _assert_close(
        best.params.means, np.asarray(singles[np.argmax(lls)].params.means), 1e-10
    )


def test_sample_weight_equals_repeated_samples(x64):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, N)
    p0 = gmm.init(jax.random.key(0), X, K)
    weighted = gmm.fit(None, X, K, init_params=p0, sample_weight=counts, tol=1e-8)
    repeated = gmm.fit(None, np.repeat(X, counts, 0), K, init_params=p0, tol=1e-8)
    assert int(weighted.n_iter) == int(repeated.n_iter)
    for a, b in zip(jax.tree.leaves(weighted), jax.tree.leaves(repeated), strict=True):
        _assert_close(a, np.asarray(b), 1e-9, 1e-12)
    _assert_close(
        gmm.bic(weighted.params, X, sample_weight=counts),
        gmm.bic(weighted.params, np.repeat(X, counts, 0)),
        1e-12,
    )


def test_sharded_fit_equals_single_device_fit(mesh, x64):
    key = jax.random.key(0)
    w = np.random.default_rng(1).random(N)

    @partial(
        jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P()
    )
    def sharded(key, x, w):
        res = gmm.fit(key, x, K, sample_weight=w, n_init=2, axis_name="data")
        step = gmm.em_step(res.params, x, sample_weight=w, axis_name="data")
        return res, step

    res, step = sharded(key, X, w)
    ref = gmm.fit(key, X, K, sample_weight=w, n_init=2)
    assert int(res.n_iter) == int(ref.n_iter)
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(ref), strict=True):
        _assert_close(a, np.asarray(b), 1e-10, 1e-12)
    ref_step = gmm.em_step(ref.params, X, sample_weight=w)
    for a, b in zip(jax.tree.leaves(step), jax.tree.leaves(ref_step), strict=True):
        _assert_close(a, np.asarray(b), 1e-10, 1e-12)


def test_pmap_em_step_equals_single_device(x64):
    p = gmm.init(jax.random.key(0), X, K, covariance_type="tied")
    stepped = jax.pmap(lambda x: gmm.em_step(p, x, axis_name="i"), axis_name="i")(
        X.reshape(4, N // 4, D)
    )
    ref = gmm.em_step(p, X)
    for a, b in zip(jax.tree.leaves(stepped), jax.tree.leaves(ref), strict=True):
        _assert_close(a[0], np.asarray(b), 1e-10, 1e-12)


def test_vmap_over_datasets_equals_a_loop():
    xs = np.stack([_data(120, seed=s) for s in range(6)]).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), 6)
    fit = partial(gmm.fit, n_components=K, covariance_type="spherical", max_iter=30)
    batched = jax.vmap(lambda k, x: fit(k, x))(keys, xs)
    for i in range(6):
        single = fit(keys[i], xs[i])
        assert int(batched.n_iter[i]) == int(single.n_iter)
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            _assert_close(a[i], np.asarray(b), 1e-5, 1e-5)


def test_jit_and_no_retracing():
    x = X.astype(np.float32)
    res = jax.jit(lambda k, x: gmm.fit(k, x, K, max_iter=5))(jax.random.key(0), x)
    assert res.params.means.shape == (K, D)
    gmm.fit(jax.random.key(0), x, K, max_iter=5)
    gmm.log_prob(res.params, x)
    gmm.em_step(res.params, x)
    sizes = [f._cache_size() for f in (gmm._fit, gmm._log_prob, gmm._em_step)]
    gmm.fit(jax.random.key(1), x + 1, K, max_iter=5)
    gmm.log_prob(res.params, x - 1)
    gmm.em_step(res.params, x * 2)
    assert [f._cache_size() for f in (gmm._fit, gmm._log_prob, gmm._em_step)] == sizes


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_log_prob_gradients(covariance_type, x64):
    p = gmm.init(jax.random.key(0), X, K, covariance_type=covariance_type)
    x = X[:20]

    def f(weights, means, covariances, x):
        params = gmm.from_covariances(weights, means, covariances, covariance_type)
        return gmm.log_prob(params, x)

    check_grads(f, (p.weights, p.means, p.covariances, x), order=1, modes=["rev"])


def test_log_likelihood_after_em_steps_is_differentiable(x64):
    x = X[:60]
    p0 = gmm.init(jax.random.key(0), x, K, method="random")

    def ll_after_steps(params):
        params = jax.lax.fori_loop(0, 3, lambda i, p: gmm.em_step(p, x)[0], params)
        return gmm.e_step(params, x)[1]

    check_grads(ll_after_steps, (p0,), order=1, modes=["rev"], eps=1e-5)


def test_component_losing_all_points_stays_finite(x64):
    p0 = gmm.init(jax.random.key(0), X, K)
    far = p0.means.at[2].set(1e3)  # no sample is anywhere near
    p0 = gmm.from_covariances(p0.weights, far, p0.covariances)
    res = gmm.fit(None, X, K, init_params=p0)
    assert bool(res.converged)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(res.params))
    assert float(res.params.weights[2]) < 1e-12
    # The emptied component: mean at the data mean, covariance reg_covar I.
    _assert_close(res.params.means[2], X.mean(0), 1e-10)
    _assert_close(res.params.covariances[2], 1e-6 * np.eye(D), 1e-8)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_duplicates_and_more_components_than_distinct_points(covariance_type, dtype):
    # Five distinct points far from the origin, each repeated: K = 8 > 5.
    x = np.repeat(_data(5, seed=2) * 10, 24, axis=0).astype(dtype)
    res = gmm.fit(jax.random.key(0), x, 8, covariance_type=covariance_type)
    assert bool(res.converged)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(res.params))
    assert np.isfinite(float(res.log_likelihood))
    assert np.all(np.isfinite(np.asarray(gmm.log_prob(res.params, x))))


def test_constant_feature(x64):
    x = X.copy()
    x[:, 1] = 7.0
    res = gmm.fit(jax.random.key(0), x, K)
    assert bool(res.converged)
    _assert_close(res.params.covariances[:, 1, 1], np.full(K, 1e-6), 1e-6)
    _assert_close(res.params.means[:, 1], np.full(K, 7.0), 1e-12)
    assert np.all(np.isfinite(np.asarray(gmm.log_prob(res.params, x))))


def test_collapse_without_regularisation_is_reported(x64):
    x = np.repeat(_data(5, seed=2), 24, axis=0)
    res = gmm.fit(
        jax.random.key(0), x, 8, covariance_type="diag", reg_covar=0.0, max_iter=50
    )
    assert not bool(res.converged)
    assert int(res.n_iter) < 50  # stopped at the non-finite log-likelihood


def test_non_finite_data():
    x = X.astype(np.float32).copy()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        gmm.fit(jax.random.key(0), x, K)
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        gmm.log_prob(gmm.init(jax.random.key(0), X, K), x)
    res = jax.jit(lambda x: gmm.fit(jax.random.key(0), x, K, init="random"))(x)
    assert not bool(res.converged) and int(res.n_iter) <= 1
    p = gmm.init(jax.random.key(0), X.astype(np.float32), K)
    lp = jax.jit(gmm.log_prob)(p, x)
    assert np.isnan(lp[3]) and np.all(np.isfinite(np.delete(np.asarray(lp), 3)))


def test_bad_input_errors():
    x = X.astype(np.float32)
    key = jax.random.key(0)
    p = gmm.init(key, x, K)
    with pytest.raises(ValueError, match="x must have rank 2"):
        gmm.fit(key, x[:, 0], K)
    with pytest.raises(ValueError, match=r"covariance_type must be one of 'full'"):
        gmm.fit(key, x, K, covariance_type="fool")
    with pytest.raises(ValueError, match=r"init must be one of 'kmeans', 'kmeans\+\+'"):
        gmm.fit(key, x, K, init="kmeans+")
    with pytest.raises(ValueError, match="method must be one of"):
        gmm.init(key, x, K, method="pca")
    with pytest.raises(ValueError, match="n_components=300 must be <= the number"):
        gmm.fit(key, x, 300)
    with pytest.raises(TypeError, match="n_components must be an int"):
        gmm.fit(key, x, 2.0)
    with pytest.raises(ValueError, match="max_iter must be >= 0"):
        gmm.fit(key, x, K, max_iter=-1)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        gmm.fit(key, x, K, tol=-1.0)
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        gmm.fit(key, x, K, sample_weight=-np.ones(N))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(240,\)"):
        gmm.fit(key, x, K, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="n_init must be 1 when init_params"):
        gmm.fit(key, x, K, init_params=p, n_init=2)
    with pytest.raises(ValueError, match="init_params has covariance_type 'full'"):
        gmm.fit(key, x, K, init_params=p, covariance_type="diag")
    with pytest.raises(ValueError, match="init_params has 3 components"):
        gmm.fit(key, x, 4, init_params=p)
    with pytest.raises(ValueError, match="params are for 3 features but x has 2"):
        gmm.log_prob(p, x[:, :2])
    with pytest.raises(TypeError, match="params must be a GMMParams"):
        gmm.predict((p.weights, p.means), x)
    with pytest.raises(ValueError, match=r"covariances of covariance_type 'diag'"):
        gmm.from_covariances(p.weights, p.means, p.covariances, "diag")
    with pytest.raises(ValueError, match="covariances must be positive definite"):
        gmm.from_covariances(p.weights, p.means, -p.covariances)
    with pytest.raises(ValueError, match="log_resp must have 240 rows"):
        gmm.m_step(x, jnp.zeros((10, K)))
    with pytest.raises(ValueError, match=r"means must have shape \(3, 3\)"):
        gmm.init(key, x, K, means=np.zeros((2, 3)))


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_sample_moments(covariance_type, key):
    p = gmm.init(
        jax.random.key(1), X.astype(np.float32), K, covariance_type=covariance_type
    )
    n = 30_000
    x, labels = gmm.sample(key, p, n)
    assert x.shape == (n, D) and x.dtype == jnp.float32 and labels.dtype == jnp.int32
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    full_cov = {
        "full": lambda c: c,
        "tied": lambda c: np.broadcast_to(c, (K, D, D)),
        "diag": lambda c: np.stack([np.diag(v) for v in c]),
        "spherical": lambda c: c[:, None, None] * np.eye(D),
    }[covariance_type](np.asarray(p.covariances, np.float64))
    weights = np.asarray(p.weights, np.float64)
    freq = np.bincount(labels, minlength=K) / n
    assert np.all(np.abs(freq - weights) < 5 * np.sqrt(weights * (1 - weights) / n))
    for k in range(K):
        xk = x[labels == k]
        sd = np.sqrt(np.diag(full_cov[k]))
        # 5 standard errors: mean ~ sd / sqrt(n_k), covariance ~ sd_i sd_j sqrt(2 / n_k)
        assert np.all(np.abs(xk.mean(0) - p.means[k]) < 5 * sd / np.sqrt(len(xk)))
        err = np.abs(np.cov(xk.T) - full_cov[k]) / np.outer(sd, sd)
        assert np.all(err < 5 * np.sqrt(2 / len(xk)))


@pytest.mark.parametrize("covariance_type", ["tied", "diag"])
def test_as_many_components_as_features(covariance_type, x64):
    # tied [d, d] and diag [K, d] have the same shape when K == d: the static
    # covariance_type keeps them apart.
    p0 = gmm.init(jax.random.key(0), X, D, covariance_type=covariance_type)
    res = gmm.fit(
        None, X, D, covariance_type=covariance_type, init_params=p0, max_iter=5, tol=0.0
    )
    sk = _fit_sklearn(p0, X, max_iter=5, tol=0)
    _assert_close(res.log_likelihood_trace, sk.lower_bounds_, 1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_em_never_decreases_the_log_likelihood(seed):
    # Exact EM (reg_covar=0) is monotone. With reg_covar > 0 it is a penalised
    # EM whose log-likelihood can dip slightly, in scikit-learn too.
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(3, 2)) * 3
        x = centres[np.arange(60) % 3] + rng.normal(size=(60, 2)) * rng.uniform(
            0.1, 3, size=2
        )
        res = gmm.fit(
            jax.random.key(seed), x, 3, init="random", max_iter=30, tol=0.0,
            reg_covar=0.0,
        )  # fmt: skip
        trace = np.asarray(res.log_likelihood_trace)[: int(res.n_iter)]
        trace = trace[np.isfinite(trace)]
        assert trace.size > 0
        assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[1:]))
