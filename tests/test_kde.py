"""Tests for densax.kde against scikit-learn, SciPy and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from scipy import integrate, stats
from scipy.special import logsumexp
from sklearn.model_selection import GridSearchCV, LeaveOneOut
from sklearn.neighbors import KernelDensity

from densax import kde

KERNELS = kde.KERNELS
COMPACT = ("tophat", "epanechnikov", "linear", "cosine")


def _log_profile(kernel, r):
    """scikit-learn's unnormalised log-kernels (_binary_tree.pxi.tp), in NumPy."""
    inside = r < 1
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {
            "gaussian": -0.5 * r**2,
            "tophat": np.where(inside, 0.0, -np.inf),
            "epanechnikov": np.where(inside, np.log(1 - r**2), -np.inf),
            "exponential": -r,
            "linear": np.where(inside, np.log(1 - r), -np.inf),
            "cosine": np.where(inside, np.log(np.cos(0.5 * np.pi * r)), -np.inf),
        }
    return values[kernel]


def _sklearn_log_norm(kernel, h, d):
    """scikit-learn's log normalisation: its KDE of one point, at that point."""
    model = KernelDensity(bandwidth=h, kernel=kernel).fit(np.zeros((1, d)))
    return model.score_samples(np.zeros((1, d)))[0]


def _brute_force(x, data, h, kernel, weights=None):
    """Exact float64 KDE with scikit-learn's kernels and normalisation."""
    w = np.ones(len(data)) if weights is None else np.asarray(weights)
    r = np.linalg.norm(x[:, None, :] - data[None], axis=-1) / h
    with np.errstate(divide="ignore"):
        terms = _log_profile(kernel, r) + np.log(w)
    return (
        logsumexp(terms, axis=1)
        - np.log(w.sum())
        + _sklearn_log_norm(kernel, h, data.shape[1])
    )


def _log_density(
    x,
    data,
    bandwidth,
    *,
    kernel="gaussian",
    sample_weight=None,
    block_size=None,
    axis_name=None,
    validate=True,
):
    """The one-call form of the tests: kde.fit, then kde.log_prob."""
    model = kde.fit(
        data,
        bandwidth=bandwidth,
        kernel=kernel,
        sample_weight=sample_weight,
        axis_name=axis_name,
        validate=validate,
    )
    return kde.log_prob(
        model, x, block_size=block_size, axis_name=axis_name, validate=validate
    )


@pytest.fixture(scope="module")
def points():
    """Data [120, 3], queries inside the data [40, 3] and in the tails [20, 3]."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((120, 3)) * [1.0, 0.5, 2.0]
    inside = rng.standard_normal((40, 3)) * [1.0, 0.5, 2.0] * 0.8
    tails = rng.standard_normal((20, 3)) * 6
    return data, inside, tails


# --------------------------------------------------------------------------
# References.


@pytest.mark.parametrize("d", [1, 2, 3])
def test_matches_sklearn_all_kernels(x64, points, d):
    data, inside, tails = (a[:, :d] for a in points)
    queries = np.concatenate([inside, tails])
    h = 0.6
    for kernel in KERNELS:
        ours = np.asarray(_log_density(queries, data, h, kernel=kernel))
        # scikit-learn's cosine constant is wrong in even d (its 2D kernel
        # integrates to 1 - 2/pi); densax's integrates to one
        # (test_integrates_to_one).
        shift = -math.log(1 - 2 / math.pi) if (kernel, d) == ("cosine", 2) else 0.0
        # The exact log-sum-exp with scikit-learn's kernels and normalisation;
        # float64 sums of positive terms in log space: 1e-10 absolute is a
        # margin of ~1e5 ulps.
        exact = _brute_force(queries, data, h, kernel) + shift
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(exact))
        finite = np.isfinite(exact)
        np.testing.assert_allclose(ours[finite], exact[finite], rtol=0, atol=1e-10)
        assert finite.all() == (kernel not in COMPACT)
        # scikit-learn's tree itself (rtol = atol = 0) where it is exact: at
        # queries inside the data with a positive density. It returns the
        # midpoint of log-space bounds whose rounding is relative to the root
        # node's bound, so in the tails it is off (2e-8 in 2D, 3e-2 in 3D
        # here) and where the density is 0 it returns a finite value.
        tree = KernelDensity(
            bandwidth=h, kernel=kernel, algorithm="kd_tree", rtol=0, atol=0
        ).fit(data)
        ref = tree.score_samples(inside) + shift
        finite = finite[: len(inside)]
        np.testing.assert_allclose(
            ours[: len(inside)][finite], ref[finite], rtol=0, atol=1e-10
        )


def test_matches_scipy_gaussian_kde_weighted(x64, points):
    data, inside, tails = points
    queries = np.concatenate([inside, tails])
    w = np.random.default_rng(1).uniform(0.0, 2.0, len(data))
    for weights, rule in [(None, "scott"), (w, "scott"), (w, "silverman")]:
        ref = stats.gaussian_kde(data.T, bw_method=rule, weights=weights)
        rule_fn = kde.scott if rule == "scott" else kde.silverman
        cov = rule_fn(data, weights)
        np.testing.assert_allclose(cov, ref.covariance, rtol=1e-13, atol=0)
        out = _log_density(queries, data, rule, sample_weight=weights)
        np.testing.assert_allclose(out, ref.logpdf(queries.T), rtol=0, atol=1e-10)


def test_matrix_bandwidth_matches_scipy_mixture(x64, points):
    data, inside, tails = points
    queries = np.concatenate([inside, tails])
    a = np.array([[0.5, 0.0, 0.0], [0.3, 0.4, 0.0], [-0.2, 0.1, 0.9]])
    cov = a @ a.T
    w = np.random.default_rng(2).uniform(0.5, 1.5, len(data))
    logpdf = np.stack(
        [stats.multivariate_normal(mu, cov).logpdf(queries) for mu in data], axis=1
    )
    ref = logsumexp(logpdf, b=w / w.sum(), axis=1)
    out = _log_density(queries, data, cov, sample_weight=w)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10)
    # A scalar h is the matrix h^2 I, for every kernel.
    for kernel in KERNELS:
        np.testing.assert_allclose(
            _log_density(queries, data, 0.7, kernel=kernel),
            _log_density(queries, data, 0.49 * np.eye(3), kernel=kernel),
            rtol=0,
            atol=1e-12,
        )


def test_gaussian_matmul_path_high_dimension(dtype):
    # d > 8: the gaussian's squared distances come from a matmul on centred
    # data; float64 stays exact, float32 loses eps * |x - mean|^2 / h^2.
    rng = np.random.default_rng(11)
    data = rng.standard_normal((150, 10))
    x = np.concatenate([rng.standard_normal((30, 10)), data[:5]])
    h = 150 ** (-1 / 14)  # Scott's factor for whitened data
    out = _log_density(x.astype(dtype), data.astype(dtype), h)
    assert out.dtype == dtype
    ref = _brute_force(x, data, h, "gaussian")
    # float32: the distances' error is <= 4 eps max |x - mean|^2 / h^2, with
    # max |x - mean|^2 / h^2 = 33 here: 1.6e-5 (2.5e-6 observed).
    atol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
    if dtype == np.float64:
        f = jax.jit(lambda x, data, h: jnp.sum(jnp.sin(_log_density(x, data, h))))
        check_grads(f, (x[:4], data[:20], h), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("kernel", ["gaussian", "exponential"])
def test_far_queries_are_finite_and_exact(dtype, kernel):
    data = np.array([[0.0, 0.0], [0.5, -0.2], [1.0, 0.3]])
    far = np.array([[1000.0, 0.0], [-300.0, 800.0]])
    out = _log_density(far.astype(dtype), data.astype(dtype), 1.0, kernel=kernel)
    assert out.dtype == dtype
    ref = _brute_force(far, data, 1.0, kernel)
    # |log p| ~ 5e5 (gaussian) or 1e3: relative accuracy of the dtype.
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, ref, rtol=rtol)


def test_float32_accuracy_and_dtype(dtype, points):
    data, inside, tails = points
    queries = np.concatenate([inside, tails])
    w = np.random.default_rng(3).uniform(0.5, 1.5, len(data))
    for kernel in ("gaussian", "epanechnikov"):
        out = _log_density(
            queries.astype(dtype),
            data.astype(dtype),
            0.5,
            kernel=kernel,
            sample_weight=w,
        )
        assert out.dtype == dtype
        ref = _brute_force(queries, data, 0.5, kernel, w)
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(out), finite)
        # float32: inputs round at 6e-8 relative; the gaussian's matmul
        # distances lose eps * |x - mean|^2 / h^2 (<= ~1e-4 for these tails).
        atol = 3e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(out[finite], ref[finite], rtol=0, atol=atol)
    for fn in (kde.scott, kde.silverman):
        assert fn(data.astype(dtype)).dtype == dtype


# --------------------------------------------------------------------------
# Normalisation.


def _gauss_legendre(breaks, order=40):
    """Nodes and weights of piecewise Gauss-Legendre on sorted ``breaks``."""
    t, wt = np.polynomial.legendre.leggauss(order)
    lo, hi = breaks[:-1, None], breaks[1:, None]
    nodes = 0.5 * (hi - lo) * t + 0.5 * (hi + lo)
    return nodes.ravel(), (0.5 * (hi - lo) * wt).ravel()


@pytest.mark.parametrize("kernel", KERNELS)
def test_integrates_to_one(x64, kernel):
    # 1D, weighted mixture: exact piecewise quadrature between the kinks
    # (x_j and x_j +- h), so the tolerance is float64 rounding.
    data = np.array([-1.0, -0.2, 0.1, 1.5])
    w = np.array([0.5, 1.0, 2.0, 0.25])
    h = 0.4
    reach = h if kernel in COMPACT else 40 * h
    grid = np.arange(data.min() - reach, data.max() + reach + h / 2, h)
    nodes, wts = _gauss_legendre(
        np.unique(np.concatenate([data, data - h, data + h, grid]))
    )
    p = np.exp(
        _log_density(nodes[:, None], data[:, None], h, kernel=kernel, sample_weight=w)
    )
    assert abs(np.sum(wts * p) - 1) < 1e-10
    # 2D, matrix bandwidth: x = x0 + L r (cos a, sin a), dx = |L| r dr da; the
    # kernel is radial in r, so Gauss-Legendre in r and a periodic rule in a
    # are exact.
    chol = np.array([[0.6, 0.0], [0.4, 0.3]])
    x0 = np.array([[0.3, -0.7]])
    r, wr = _gauss_legendre(np.array([0.0, 1.0 if kernel in COMPACT else 60.0]), 80)
    a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    u = np.stack([np.cos(a)[:, None] * r, np.sin(a)[:, None] * r], -1).reshape(-1, 2)
    p = np.exp(_log_density(x0 + u @ chol.T, x0, chol @ chol.T, kernel=kernel))
    total = np.sum(p.reshape(16, -1) * (r * wr)) * (2 * np.pi / 16) * 0.18
    assert abs(total - 1) < 1e-10


# --------------------------------------------------------------------------
# Gradients.


def test_check_grads_gaussian(x64, points):
    data, inside, _ = points
    data, x = jnp.asarray(data[:30]), jnp.asarray(inside[:7])
    w = jnp.linspace(0.5, 1.5, 30)
    cov = jnp.array([[0.5, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.8]])

    def f(x, data, h, w, cov):
        scalar = _log_density(x, data, h, sample_weight=w)
        matrix = _log_density(x, data, 0.5 * (cov + cov.T), sample_weight=w)
        return jnp.sum(jnp.sin(scalar)) + jnp.sum(jnp.cos(matrix))

    check_grads(jax.jit(f), (x, data, 0.6, w, cov), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize(
    "kernel", ["tophat", "epanechnikov", "exponential", "linear", "cosine"]
)
def test_check_grads_other_kernels(x64, kernel):
    # Points on a lattice keep every pair distance away from the support
    # boundary (r = 1), where finite differences would straddle the kink.
    rng = np.random.default_rng(4)
    data = jnp.asarray(rng.permutation(np.arange(-5.0, 5.0))[:, None] * 0.37)
    x = jnp.asarray([[-0.75], [0.11], [0.52]])
    w = jnp.asarray(rng.uniform(0.5, 1.5, 10))

    def f(x, data, h, w):
        return jnp.sum(
            jnp.sin(_log_density(x, data, h, kernel=kernel, sample_weight=w))
        )

    check_grads(jax.jit(f), (x, data, 1.3, w), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_gaussian_score_and_hessian_closed_form(x64, points):
    # grad log p = E_P[x_j - q] / h^2 and hess log p = Cov_P[x_j] / h^4 - I / h^2
    # with P_j the softmax of the kernel terms (forward-over-reverse through
    # the custom JVP).
    data, inside, _ = points
    q, h = inside[0], 0.8
    score = jax.grad(lambda q: _log_density(q, data, h))(jnp.asarray(q))
    hess = jax.hessian(lambda q: _log_density(q, data, h))(jnp.asarray(q))
    p = np.exp(-0.5 * np.sum((q - data) ** 2, axis=1) / h**2)
    p /= p.sum()
    mean = p @ (data - q)
    cov = (data - q).T @ ((data - q) * p[:, None]) - np.outer(mean, mean)
    np.testing.assert_allclose(score, mean / h**2, rtol=1e-12)
    np.testing.assert_allclose(hess, cov / h**4 - np.eye(3) / h**2, rtol=1e-11)


def test_gradient_at_zero_weight_and_cusp_is_finite(x64):
    data = jnp.array([[0.0], [1.0], [2.0]])
    w = jnp.array([1.0, 0.0, 1.0])
    g = jax.grad(lambda w: jnp.sum(_log_density(data, data, 0.7, sample_weight=w)))(w)
    assert np.all(np.isfinite(g))
    # d/dw_j of log p(x) = k_j(x) / sum_l w_l k_l(x) - 1 / sum w, at w_j = 0 too.
    k = np.exp(-0.5 * (np.asarray(data) - np.asarray(data).T) ** 2 / 0.49)
    ref = np.sum(k / (k @ np.asarray(w))[:, None] - 1 / 2.0, axis=0)
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-15)
    # A query on a data point sits on the exponential kernel's cusp: the
    # subgradient 0 is used for that pair, never NaN.
    gx = jax.grad(lambda x: jnp.sum(_log_density(x, data, 0.7, kernel="exponential")))(
        data
    )
    assert np.all(np.isfinite(gx))


def test_reverse_mode_memory_is_blocked(x64):
    m = n = 2000
    x = jnp.zeros((m, 2))
    f = jax.jit(
        jax.grad(
            lambda x, data, h: jnp.sum(_log_density(x, data, h, block_size=50)),
            argnums=(0, 1, 2),
        )
    )
    stats_ = f.lower(x, x, 1.0).compile().memory_analysis()
    # An unblocked [m, n] float64 score matrix alone would be 32 MB.
    assert stats_.temp_size_in_bytes < m * n * 8 / 4


# --------------------------------------------------------------------------
# Transformations.


def test_jit_vmap_and_no_retrace(points):
    data, inside, _ = (jnp.asarray(a, jnp.float32) for a in points)
    out = _log_density(inside, data, 0.5)
    size = kde._log_prob._cache_size()
    again = _log_density(inside + 0.1, data * 1.1, 0.6)
    assert kde._log_prob._cache_size() == size
    assert not np.allclose(again, out)
    assert _log_density(inside[:0], data, 0.5).shape == (0,)
    jitted = jax.jit(lambda x, d, h: _log_density(x, d, h))(inside, data, 0.5)
    np.testing.assert_allclose(jitted, out, rtol=1e-6)
    datasets = jnp.stack([data, data * 0.5, data + 1.0])
    hs = jnp.array([0.5, 0.3, 0.8])
    batched = jax.vmap(lambda d, h: _log_density(inside, d, h))(datasets, hs)
    for i in range(3):
        np.testing.assert_allclose(
            batched[i], _log_density(inside, datasets[i], hs[i]), rtol=1e-6
        )


def test_block_size_does_not_change_the_result(x64, points):
    data, inside, tails = points
    x = np.concatenate([inside, tails])
    full = _log_density(x, data, 0.5, kernel="linear", block_size=len(x))
    for block in (1, 7):
        np.testing.assert_allclose(
            _log_density(x, data, 0.5, kernel="linear", block_size=block),
            full,
            rtol=0,
            atol=1e-13,
        )


def test_shard_map_equals_unsharded(x64, mesh, points):
    data, inside, _ = points
    w = np.random.default_rng(5).uniform(0.5, 1.5, len(data))
    cov = np.diag([0.3, 0.2, 0.5])

    def sharded(fn):
        specs = (P(), P("data"), P("data"), P())
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P())

    @sharded
    def density(x, data, w, cov):
        return _log_density(x, data, cov, sample_weight=w, axis_name="data")

    np.testing.assert_allclose(
        density(inside, data, w, cov),
        _log_density(inside, data, cov, sample_weight=w),
        rtol=0,
        atol=1e-12,
    )

    @sharded
    def loo_and_rule(h, data, w, cov):
        loo = kde.loo_log_likelihood(data, h, sample_weight=w, axis_name="data")
        return loo, kde.scott(data, w, axis_name="data")

    (loo, rule), grad = jax.value_and_grad(loo_and_rule, has_aux=True)(
        0.5, data, w, cov
    )
    ref, ref_grad = jax.value_and_grad(
        lambda h: kde.loo_log_likelihood(data, h, sample_weight=w)
    )(0.5)
    np.testing.assert_allclose(loo, ref, rtol=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12)
    np.testing.assert_allclose(rule, kde.scott(data, w), rtol=1e-13)


def test_pmap_equals_unsharded(points):
    data, inside, _ = (np.asarray(a, np.float32) for a in points)
    out = jax.pmap(
        lambda d: _log_density(inside, d, 0.5, kernel="cosine", axis_name="i"),
        axis_name="i",
    )(data.reshape(4, 30, 3))
    ref = _log_density(inside, data, 0.5, kernel="cosine")
    np.testing.assert_allclose(out[0], ref, rtol=1e-5)


# --------------------------------------------------------------------------
# Leave-one-out likelihood and bandwidth fitting.


def test_loo_equals_brute_force_loop(x64, points):
    data = points[0][:40, :2]
    w = np.random.default_rng(6).uniform(0.0, 1.5, 40)
    for kernel, weights in [("gaussian", None), ("gaussian", w), ("exponential", w)]:
        wv = np.ones(40) if weights is None else w
        loo = [
            _brute_force(
                data[i : i + 1], np.delete(data, i, 0), 0.8, kernel, np.delete(wv, i)
            )[0]
            for i in range(40)
        ]
        ref = np.sum(wv * np.array(loo)) / wv.sum()
        out = kde.loo_log_likelihood(data, 0.8, kernel=kernel, sample_weight=weights)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def bimodal():
    rng = np.random.default_rng(7)
    return np.concatenate([rng.normal(-2, 0.5, (30, 1)), rng.normal(1, 1.0, (30, 1))])


def test_fit_bandwidth_matches_grid_search_loo(x64, bimodal):
    # With cv=LeaveOneOut, GridSearchCV's mean test score is exactly the mean
    # LOO log-likelihood (each fold's KDE has n - 1 points, normalised by
    # n - 1), so the scores agree to rounding and the fitted h lies within
    # one grid step of the grid's argmax.
    grid = np.geomspace(0.15, 1.2, 15)
    search = GridSearchCV(
        KernelDensity(algorithm="kd_tree", rtol=0, atol=0),
        {"bandwidth": grid},
        cv=LeaveOneOut(),
    ).fit(bimodal)
    scores = search.cv_results_["mean_test_score"]
    ours = np.array([kde.loo_log_likelihood(bimodal, h) for h in grid])
    np.testing.assert_allclose(ours, scores, rtol=0, atol=1e-10)
    fit = kde.fit(bimodal, bandwidth="loo")
    assert bool(fit.converged) and fit.grad_norm <= np.sqrt(np.finfo(float).eps)
    best = int(np.argmax(scores))
    assert grid[best - 1] < fit.model.bandwidth < grid[best + 1]
    assert fit.log_likelihood >= scores.max() - 1e-12
    np.testing.assert_allclose(
        fit.log_likelihood,
        kde.loo_log_likelihood(bimodal, fit.model.bandwidth),
        rtol=1e-14,
    )
    trace = np.asarray(fit.trace)
    assert np.isnan(trace[int(fit.n_iter) :]).all()
    np.testing.assert_allclose(trace[int(fit.n_iter) - 1], fit.log_likelihood)


def test_fit_full_bandwidth(x64, points):
    data = points[0][:, :2] @ np.array([[1.0, 0.8], [0.0, 0.6]])
    scalar = kde.fit(data, bandwidth="loo")
    full = kde.fit(data, bandwidth="loo", full=True, max_iter=100)
    assert bool(full.converged) and full.model.bandwidth.shape == (2, 2)
    assert full.log_likelihood > scalar.log_likelihood
    # A stationary point that is a maximum: random symmetric perturbations
    # of H only lower the LOO likelihood.
    rng = np.random.default_rng(8)
    for _ in range(3):
        e = rng.standard_normal((2, 2)) * 1e-3
        perturbed = full.model.bandwidth + e + e.T
        assert kde.loo_log_likelihood(data, perturbed) < full.log_likelihood


def test_fit_bandwidth_float32_and_other_kernel(bimodal):
    fit = kde.fit(bimodal.astype(np.float32), bandwidth="loo", kernel="epanechnikov")
    assert fit.model.bandwidth.dtype == np.float32 and bool(fit.converged)
    with jax.enable_x64(True):
        grid = np.linspace(0.9 * fit.model.bandwidth, 1.1 * fit.model.bandwidth, 21)
        loo = [kde.loo_log_likelihood(bimodal, h, kernel="epanechnikov") for h in grid]
    assert abs(grid[int(np.argmax(loo))] / fit.model.bandwidth - 1) <= 0.011


@pytest.mark.parametrize(
    "full", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["h", "H"]
)
def test_loo_fit_gradient_implicit_matches_central_differences(x64, points, full):
    # The LOO-optimal bandwidth as a function of the data and the weights
    # (implicit function theorem at grad LOO = 0), against central differences
    # of the converged fit along random directions. tol=1e-12 on the gradient
    # norm puts theta within ~1e-12 of the optimum, so the differences (step
    # 1e-5, truncation ~1e-10) check the derivative to ~1e-7.
    data = jnp.asarray(points[0][:40, :2])
    w = jnp.linspace(0.5, 1.5, 40)
    rng = np.random.default_rng(12)

    def f(data, w):
        res = kde.fit(
            data,
            bandwidth="loo",
            sample_weight=w,
            full=full,
            tol=1e-12,
            max_iter=100,
            validate=False,
        )
        h = res.model.bandwidth
        return jnp.sum(h * (1.0 + jnp.arange(h.size).reshape(h.shape)))

    f_jit = jax.jit(f)
    grads = jax.jit(jax.grad(f, argnums=(0, 1)))(data, w)
    for which, grad in enumerate(grads):
        v = jnp.asarray(rng.normal(size=grad.shape))

        def shifted(t, v=v, which=which):
            args = [data, w]
            args[which] = args[which] + t * v
            return f_jit(*args)

        fd = (shifted(1e-5) - shifted(-1e-5)) / 2e-5
        assert abs(jnp.vdot(grad, v) - fd) <= 1e-5 * abs(fd), which


# --------------------------------------------------------------------------
# Sampling.


@pytest.mark.parametrize("kernel", KERNELS)
def test_sample_radial_law_and_bandwidth(kernel):
    # One point at the origin in 3D: |L^-1 x| must follow the radial density
    # r^2 k(r) / Z, tested by Kolmogorov-Smirnov (fixed key, so deterministic;
    # a correct sampler fails with probability 1e-3).
    chol = np.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.4]])
    model = kde.fit(np.zeros((1, 3)), bandwidth=chol @ chol.T, kernel=kernel)
    x = kde.sample(jax.random.key(1), model, 4000)
    r = np.linalg.norm(np.linalg.solve(chol, np.asarray(x, np.float64).T), axis=0)
    top = 1.0 if kernel in COMPACT else 60.0

    def cdf(s):  # int_0^s r^2 k(r) dr / Z by Gauss-Legendre, exact to rounding
        s = np.minimum(s, top)[:, None]
        nodes, weights = _gauss_legendre(np.array([0.0, 1.0]), 60)
        radial = (s * nodes) ** 2 * np.exp(_log_profile(kernel, s * nodes))
        return np.sum(weights * radial, axis=1) * s[:, 0] / z

    z = integrate.quad(lambda s: s**2 * np.exp(_log_profile(kernel, s)), 0, top)[0]
    assert stats.kstest(r, cdf).pvalue > 1e-3
    if kernel in COMPACT:
        assert r.max() < 1


def test_sample_weights_and_scalar_bandwidth(key):
    data = jnp.array([[-10.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    w = jnp.array([0.2, 0.0, 0.8])
    model = kde.fit(data, bandwidth=0.5, kernel="tophat", sample_weight=w)
    x = kde.sample(key, model, 20000)
    assert x.shape == (20000, 2) and x.dtype == jnp.float32
    left = np.mean(np.asarray(x[:, 0]) < -5)
    # Binomial(20000, 0.2): standard error 0.0028; 5 standard errors.
    assert abs(left - 0.2) < 0.015
    assert np.all(np.abs(np.asarray(x[:, 0])) > 9.4)


# --------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises():
    data = np.random.default_rng(9).standard_normal((20, 2))
    x = data[:3]
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        _log_density(x, data, 0.0)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        _log_density(x, data, -1.0)
    with pytest.raises(ValueError, match="positive-definite"):
        _log_density(x, data, np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        _log_density(x, data, np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"bandwidth must be a scalar or a \[2, 2\]"):
        _log_density(x, data, np.eye(3))
    with pytest.raises(ValueError, match="bandwidth must have rank"):
        _log_density(x, data, np.ones(2))
    with pytest.raises(ValueError, match="bandwidth must be one of 'scott'"):
        _log_density(x, data, "silvermann")
    with pytest.raises(ValueError, match="same dimension"):
        _log_density(np.zeros((3, 3)), data, 1.0)
    with pytest.raises(ValueError, match="x must have rank"):
        _log_density(np.zeros((3, 2, 1)), data, 1.0)
    with pytest.raises(TypeError, match="x must have a real numeric dtype"):
        _log_density(x.astype(complex), data, 1.0)
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        _log_density(x, data, 1.0, sample_weight=-np.ones(20))
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        _log_density(x, data, 1.0, sample_weight=np.zeros(20))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(20,\)"):
        _log_density(x, data, 1.0, sample_weight=np.ones(19))
    with pytest.raises(ValueError, match="kernel must be one of 'gaussian'"):
        _log_density(x, data, 1.0, kernel="box")
    with pytest.raises(ValueError, match="data contains NaN"):
        _log_density(x, np.where(data > 1.5, np.nan, data), 1.0)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        _log_density(x, data, 1.0, block_size=0)
    with pytest.raises(ValueError, match="at least 2 points"):
        kde.loo_log_likelihood(data[:1], 1.0)
    with pytest.raises(ValueError, match="singular"):
        kde.scott(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"init must be a \[2, 2\] matrix"):
        kde.fit(data, bandwidth="loo", full=True, init=0.5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        kde.sample(jax.random.key(0), kde.fit(data, bandwidth=1.0), -1)
    with pytest.raises(TypeError, match="model must be a KDE"):
        kde.log_prob(data, x)


def test_nan_query_and_traced_bad_values():
    data = np.random.default_rng(10).standard_normal((20, 2)).astype(np.float32)
    x = np.array([[0.0, 0.0], [np.nan, 0.0], [0.5, 0.5]], np.float32)
    for kernel, bw in [("gaussian", 0.5), ("tophat", 0.9), ("cosine", np.eye(2))]:
        out = np.asarray(_log_density(x, data, bw, kernel=kernel))
        assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    # Under jit the value checks are skipped and the documented NaN applies.
    f = jax.jit(lambda h, w: _log_density(x, data, h, sample_weight=w))
    assert np.isnan(f(-0.5, np.ones(20))).all()
    assert np.isnan(f(0.5, -np.ones(20))).all()
    assert np.isnan(f(np.array([[1.0, 2.0], [2.0, 1.0]]), np.ones(20))).all()
