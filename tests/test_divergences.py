import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.spatial.distance
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.scipy.stats import norm
from jax.test_util import check_grads

from densax import divergences as dv

LOG2 = math.log(2.0)
# float64 sums of a few terms of size ~1: rounding only.
TOL64 = dict(rtol=1e-10, atol=1e-12)
# float32: each log carries ~1e-7 relative error.
TOL32 = dict(rtol=1e-5, atol=1e-6)


def _probabilities(shape, seed=0, zeros=True):
    rng = np.random.default_rng(seed)
    p = rng.random(shape)
    if zeros:
        p[rng.random(shape) < 0.25] = 0.0
        p[..., 0] = 0.5  # no all-zero row
    return p / p.sum(-1, keepdims=True)


def _kl_reference(p, q, axis=-1):
    return scipy.special.rel_entr(p, q).sum(axis)


def _js_reference(p, q, axis=-1, base=None):
    return scipy.spatial.distance.jensenshannon(p, q, axis=axis, base=base) ** 2


# ---------------------------------------------------------------------------
# Discrete: references.


def test_kl_and_js_match_scipy(x64):
    p, q = _probabilities((4, 6), 0), _probabilities((4, 6), 1, zeros=False)
    np.testing.assert_allclose(dv.kl_divergence(p, q), _kl_reference(p, q), **TOL64)
    np.testing.assert_allclose(dv.js_divergence(p, q), _js_reference(p, q), **TOL64)
    np.testing.assert_allclose(
        dv.js_divergence(p, q, base=2), _js_reference(p, q, base=2), **TOL64
    )
    np.testing.assert_allclose(
        dv.kl_divergence(p, q, base=2), _kl_reference(p, q) / LOG2, **TOL64
    )
    # The support along axis 0, and broadcasting of a single q.
    np.testing.assert_allclose(
        dv.kl_divergence(p.T, q[0][:, None], axis=0), _kl_reference(p, q[0]), **TOL64
    )


def test_float32(dtype):
    p, q = _probabilities((4, 6), 0), _probabilities((4, 6), 1, zeros=False)
    tol = TOL64 if dtype == np.float64 else TOL32
    for fn, ref in (
        (dv.kl_divergence, _kl_reference),
        (dv.js_divergence, _js_reference),
    ):
        got = fn(p.astype(dtype), q.astype(dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref(p, q), **tol)
    with np.errstate(divide="ignore"):  # log 0 = -inf: a zero probability
        log_p = np.log(p).astype(dtype)
    for fn in (dv.kl_divergence_from_log, dv.js_divergence_from_log):
        assert fn(log_p, np.log(q).astype(dtype)).dtype == dtype
    assert dv.kl_divergence([1, 1], [1, 3], normalize=True).dtype == jnp.result_type(
        float
    )


def test_normalize(x64):
    rng = np.random.default_rng(2)
    p, q = 5 * rng.random((3, 4)), 0.1 * rng.random((3, 4))
    pn, qn = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    got = dv.kl_divergence(p, q, normalize=True)
    np.testing.assert_allclose(got, _kl_reference(pn, qn), **TOL64)
    got = dv.js_divergence(p, q, normalize=True)  # SciPy normalises too
    np.testing.assert_allclose(got, _js_reference(p, q), **TOL64)
    got = dv.kl_divergence_from_log(np.log(p), np.log(q), normalize=True)
    np.testing.assert_allclose(got, _kl_reference(pn, qn), **TOL64)
    got = dv.js_divergence_from_log(np.log(p), np.log(q), normalize=True)
    np.testing.assert_allclose(got, _js_reference(p, q), **TOL64)


def test_log_space_variants(x64):
    p, q = _probabilities((4, 6), 0), _probabilities((4, 6), 1)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.log(p), np.log(q)
    np.testing.assert_allclose(
        dv.kl_divergence_from_log(log_p, log_q), dv.kl_divergence(p, q), **TOL64
    )
    np.testing.assert_allclose(
        dv.js_divergence_from_log(log_p, log_q), _js_reference(p, q), **TOL64
    )
    # Probabilities far below the smallest double: only log space can do it.
    log_p = np.array([0.0, -2000.0])
    log_q = np.array([-1e-300, -2001.0])
    want = np.exp(-2000.0) * 1.0  # underflows to 0: the first term is ~1e-300
    got = dv.kl_divergence_from_log(log_p, log_q)
    assert float(got) == pytest.approx(1e-300 + want, rel=1e-12)
    log_p = np.array([-1000.0, -1000.0]) - math.log(2) + 1000.0  # [-log 2, -log 2]
    log_q = np.array([-1000.0, -1e4])
    got = dv.js_divergence_from_log(log_p - 1000.0, log_q, normalize=True)
    np.testing.assert_allclose(got, _js_reference([0.5, 0.5], [1.0, 0.0]), **TOL64)


# ---------------------------------------------------------------------------
# Discrete: semantics at the edges of the simplex.


def test_zero_log_zero_and_infinite_kl(x64):
    assert float(dv.kl_divergence([1.0, 0.0], [1.0, 0.0])) == 0.0
    assert float(dv.kl_divergence([0.5, 0.5], [1.0, 0.0])) == np.inf
    assert float(dv.kl_divergence_from_log([0.0, -np.inf], [0.0, -np.inf])) == 0.0
    assert float(dv.kl_divergence_from_log([-LOG2, -LOG2], [0.0, -np.inf])) == np.inf
    # Disjoint supports: KL infinite both ways, JS exactly log 2 (1 bit).
    p, q = np.array([0.2, 0.8, 0.0, 0.0]), np.array([0.0, 0.0, 0.6, 0.4])
    assert float(dv.js_divergence(p, q)) == pytest.approx(LOG2, abs=1e-15)
    assert float(dv.js_divergence(p, q, base=2)) == pytest.approx(1.0, abs=1e-15)
    assert float(dv.js_divergence_from_log(np.log(p), np.log(q))) == pytest.approx(
        LOG2, abs=1e-15
    )


def test_gradients_are_never_nan(x64):
    # Row 0 has KL = inf (q = 0 < p), row 1 has zeros in p and q: no NaN anywhere.
    p = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.4, 0.6]])
    q = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    kl = dv.kl_divergence(p, q)
    assert kl[0] == np.inf and np.isfinite(kl[1])
    grads = lambda f: jax.jit(jax.grad(f, argnums=(0, 1)))
    for fn in (dv.kl_divergence, dv.js_divergence):
        for g in grads(lambda p, q, fn=fn: fn(p, q)[1])(p, q):
            assert np.all(np.isfinite(g))  # the other row's gradient
        for g in grads(lambda p, q, fn=fn: jnp.sum(fn(p, q)))(p, q):
            assert not np.any(np.isnan(g))
    with np.errstate(divide="ignore"):
        lp, lq = jnp.log(p), jnp.log(q)
    for fn in (dv.kl_divergence_from_log, dv.js_divergence_from_log):
        for g in grads(lambda p, q, fn=fn: jnp.sum(fn(p, q)))(lp, lq):
            assert not np.any(np.isnan(g))


def test_check_grads(x64):
    p, q = _probabilities((2, 5), 3, zeros=False), _probabilities((2, 5), 4, False)
    # Jitted, so that each transformation compiles once rather than op by op.
    both = lambda kl, js: jax.jit(
        lambda p, q: kl(p, q, normalize=True) + js(p, q, normalize=True)
    )
    f = both(dv.kl_divergence, dv.js_divergence)
    check_grads(f, (p, q), order=1, modes=("fwd", "rev"))
    f = both(dv.kl_divergence_from_log, dv.js_divergence_from_log)
    check_grads(f, (np.log(p), np.log(q)), order=1, modes=("fwd", "rev"))


# No subnormals: XLA's CPU flushes them to zero (and SciPy's m = (p + q) / 2
# underflows to 0 for them, returning inf).
_probability = st.floats(0.0, 1.0, width=64, allow_subnormal=False)
_simplex = st.lists(_probability, min_size=6, max_size=6).filter(
    lambda x: sum(x) > 1e-3
)


@settings(max_examples=25, deadline=None)
@given(p=_simplex, q=_simplex)
def test_divergence_properties(p, q):
    with jax.enable_x64(True):
        p, q = np.array(p) / sum(p), np.array(q) / sum(q)
        js, sj = float(dv.js_divergence(p, q)), float(dv.js_divergence(q, p))
        assert 0.0 <= js <= LOG2 and js == pytest.approx(sj, abs=1e-15)
        assert js == pytest.approx(float(_js_reference(p, q)), rel=1e-9, abs=1e-14)
        # Every divergence is >= 0 (up to the rounding of a sum of terms of
        # either sign) and 0 between equal inputs (issue 20).
        with np.errstate(divide="ignore"):
            lp, lq = np.log(p), np.log(q)
        for fn, u, v in (
            (dv.kl_divergence, p, q),
            (dv.js_divergence, p, q),
            (dv.kl_divergence_from_log, lp, lq),
            (dv.js_divergence_from_log, lp, lq),
        ):
            assert float(fn(u, v)) >= -1e-15, fn.__name__
            assert float(fn(u, u)) == pytest.approx(0.0, abs=1e-15), fn.__name__
        cov = np.diag(1 + q[:3]) + 0.1
        assert float(dv.kl_gaussian(p[:3], cov, q[:3], np.eye(3) + 0.1)) >= 0
        assert float(dv.kl_gaussian(p[:3], cov, p[:3], cov)) == pytest.approx(
            0.0, abs=1e-12
        )
        # Gibbs' inequality, up to the rounding of the normalisation above.
        assert float(dv.kl_divergence(p, q)) >= -1e-15


# ---------------------------------------------------------------------------
# Discrete: transformations and bad input.


def test_jit_vmap_and_shard_map(mesh):
    from jax.sharding import PartitionSpec as P

    p, q = _probabilities((8, 5), 5), _probabilities((8, 5), 6, zeros=False)
    want = dv.kl_divergence(p, q)
    np.testing.assert_allclose(jax.jit(dv.kl_divergence)(p, q), want, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(dv.kl_divergence)(p, q), want, rtol=1e-6)
    f = jax.shard_map(
        dv.js_divergence, mesh=mesh, in_specs=P("data"), out_specs=P("data")
    )
    np.testing.assert_allclose(jax.jit(f)(p, q), dv.js_divergence(p, q), rtol=1e-6)


def test_nan_under_jit_propagates_to_its_row():
    p, q = _probabilities((3, 4), 7), _probabilities((3, 4), 8, zeros=False)
    p[1, 1] = np.nan
    for fn in (dv.kl_divergence, dv.js_divergence):
        out = np.asarray(jax.jit(fn)(p, q))
        assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))


def test_bad_input():
    with pytest.raises(ValueError, match="same length along axis"):
        dv.kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="do not broadcast"):
        dv.js_divergence(np.ones((2, 3)) / 3, np.ones((4, 3)) / 3)
    with pytest.raises(ValueError, match="p must be non-negative"):
        dv.kl_divergence([1.5, -0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="q contains NaN or inf"):
        dv.js_divergence([0.5, 0.5], [np.nan, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        dv.kl_divergence([0.0, 0.0], [0.5, 0.5], normalize=True)
    with pytest.raises(ValueError, match="log_p contains NaN or \\+inf"):
        dv.kl_divergence_from_log([np.inf, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        dv.kl_divergence(np.ones((2, 2)), np.ones((2, 2)), axis=2)
    with pytest.raises(ValueError, match="base must be positive"):
        dv.kl_divergence([0.5, 0.5], [0.5, 0.5], base=1)
    with pytest.raises(TypeError, match="base must be a positive number"):
        dv.kl_divergence([0.5, 0.5], [0.5, 0.5], base="e")
    with pytest.raises(ValueError, match="at least one axis"):
        dv.kl_divergence(1.0, 1.0)
    with pytest.raises(TypeError, match="p must"):
        dv.kl_divergence(["a"], [1.0])
    # validate=False skips the value checks; the result says so.
    assert np.isnan(dv.kl_divergence([1.5, -0.5], [0.5, 0.5], validate=False))


# ---------------------------------------------------------------------------
# Gaussians.


def _kl_gaussian_reference(mp, cp, mq, cq):
    d = len(mp)
    iq = np.linalg.inv(cq)
    delta = mq - mp
    return 0.5 * (
        np.trace(iq @ cp)
        + delta @ iq @ delta
        - d
        + np.linalg.slogdet(cq)[1]
        - np.linalg.slogdet(cp)[1]
    )


def _gaussians(batch, d, seed=9):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((*batch, d, d))
    return rng.standard_normal((*batch, d)), a @ np.swapaxes(a, -1, -2) + np.eye(d)


def test_kl_gaussian_matches_reference(dtype):
    (mp, cp), (mq, cq) = _gaussians((3,), 4, 9), _gaussians((3,), 4, 10)
    got = dv.kl_gaussian(*(x.astype(dtype) for x in (mp, cp, mq, cq)))
    assert got.dtype == dtype and got.shape == (3,)
    want = [_kl_gaussian_reference(mp[i], cp[i], mq[i], cq[i]) for i in range(3)]
    # float32: condition numbers of ~10-100 in the solves.
    tol = TOL64 if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, want, **tol)
    # Broadcasting: one q against a batch of p; 1D closed form.
    got = dv.kl_gaussian(mp, cp, mq[0], cq[0])
    want = [_kl_gaussian_reference(mp[i], cp[i], mq[0], cq[0]) for i in range(3)]
    np.testing.assert_allclose(got, want, **tol)
    s1, s2, mu = 1.5, 0.7, 0.4
    want = math.log(s2 / s1) + (s1**2 + mu**2) / (2 * s2**2) - 0.5
    got = dv.kl_gaussian([0.0], [[s1**2]], [mu], [[s2**2]])
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_kl_gaussian_grads_jit_and_errors(x64):
    (mp, cp), (mq, cq) = _gaussians((), 3, 11), _gaussians((), 3, 12)
    # The finite differences perturb the covariances in non-symmetric
    # directions, which the eager check would refuse.
    kl = functools.partial(dv.kl_gaussian, validate=False)
    check_grads(kl, (mp, cp, mq, cq), order=1, modes=("rev",))
    core = dv._kl_gaussian
    dv.kl_gaussian(mp, cp, mq, cq)
    size = core._cache_size()
    dv.kl_gaussian(mp + 1, cp, mq, cq)
    assert core._cache_size() == size  # no retracing
    bad = -np.eye(3)
    with pytest.raises(ValueError, match="cov_q must be positive definite"):
        dv.kl_gaussian(mp, cp, mq, bad)
    assert np.isnan(jax.jit(dv.kl_gaussian)(mp, cp, mq, bad))
    with pytest.raises(ValueError, match="must share the dimension"):
        dv.kl_gaussian(mp, cp, mq[:2], cq[:2, :2])
    with pytest.raises(ValueError, match=r"cov_p must have shape \[..., d, d\]"):
        dv.kl_gaussian(mp, cp[:2], mq, cq)


# ---------------------------------------------------------------------------
# Monte Carlo.


class _Density:
    """A user's own density (duck-typed: .log_prob and .sample), 1D samples [n]."""

    def __init__(self, log_prob, sample):
        self.log_prob, self._sample = log_prob, sample

    def sample(self, key, n):
        return self._sample(key, n)


def _normal(loc, scale):
    return _Density(
        lambda x: norm.logpdf(x, loc, scale),
        lambda key, n: loc + scale * jax.random.normal(key, (n,)),
    )


def test_kl_monte_carlo_matches_closed_form(x64):
    key = jax.random.key(0)
    est = dv.kl_monte_carlo(key, _normal(0.0, 1.5), _normal(0.4, 0.7), 20_000)
    want = dv.kl_gaussian([0.0], [[1.5**2]], [0.4], [[0.7**2]])
    assert abs(est.value - want) < 4 * est.std_error
    assert 0 < est.std_error < 0.05
    # Inside jit, with a q that vanishes where p has mass: inf, not NaN.
    uniform = _Density(
        lambda x: jnp.where(jnp.abs(x) < 1, -LOG2, -jnp.inf), lambda key, n: None
    )
    est = jax.jit(lambda key: dv.kl_monte_carlo(key, _normal(0.0, 1.0), uniform, 1000))(
        key
    )
    assert est.value == np.inf and est.std_error == np.inf


def _js_quadrature(logpdf_p, logpdf_q, lo, hi):
    def integrand(x):
        lp, lq = logpdf_p(x), logpdf_q(x)
        lm = np.logaddexp(lp, lq) - LOG2
        return 0.5 * (np.exp(lp) * (lp - lm) + np.exp(lq) * (lq - lm))

    return scipy.integrate.quad(integrand, lo, hi, limit=200)[0]


def test_js_monte_carlo_matches_quadrature(x64):
    est = dv.js_monte_carlo(
        jax.random.key(1), _normal(0.0, 1.0), _normal(1.0, 2.0), 20_000
    )
    want = _js_quadrature(
        scipy.stats.norm(0, 1).logpdf, scipy.stats.norm(1, 2).logpdf, -20, 20
    )
    assert abs(est.value - want) < 4 * est.std_error
    assert 0 <= want <= LOG2


def test_monte_carlo_with_a_gmm(x64):
    from densax import gaussian, gmm

    p = gmm.from_covariances(
        jnp.array([0.3, 0.7]),
        jnp.array([[-2.0], [1.0]]),
        jnp.array([0.25, 1.0]),
        "spherical",
    )
    q = gaussian.Gaussian(jnp.zeros(1), jnp.full((1, 1), 4.0))
    # The models are pytrees: arguments of the jitted function, n static.
    kl = jax.jit(dv.kl_monte_carlo, static_argnames="n")
    est = kl(jax.random.key(2), p, q, n=20_000)
    pdf_p = lambda x: (
        0.3 * scipy.stats.norm(-2, 0.5).pdf(x) + 0.7 * scipy.stats.norm(1, 1).pdf(x)
    )
    want = scipy.integrate.quad(
        lambda x: pdf_p(x) * (np.log(pdf_p(x)) - scipy.stats.norm(0, 2).logpdf(x)),
        -15,
        15,
    )[0]
    assert abs(est.value - want) < 4 * est.std_error


def test_js_monte_carlo_with_a_kde(x64):
    from densax import gaussian, kde

    data = jnp.array([[-1.5], [-0.2], [0.3], [2.0], [2.4]])
    h = 0.5
    p = kde.fit(data, bandwidth=h)
    q = gaussian.Gaussian(jnp.zeros(1), jnp.full((1, 1), 4.0))
    est = jax.jit(lambda key: dv.js_monte_carlo(key, p, q, 20_000))(jax.random.key(3))
    centres = np.asarray(data[:, 0])
    logpdf_p = lambda x: (
        scipy.special.logsumexp(scipy.stats.norm(centres, h).logpdf(x))
        - math.log(len(centres))
    )
    want = _js_quadrature(logpdf_p, scipy.stats.norm(0, 2).logpdf, -20, 20)
    assert abs(est.value - want) < 4 * est.std_error


def test_monte_carlo_bad_input():
    p = _normal(0.0, 1.0)
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="q must be a density model"):
        dv.kl_monte_carlo(key, p, None, 10)
    with pytest.raises(ValueError, match="n must be >= 2"):
        dv.kl_monte_carlo(key, p, p, 1)
    summed = _Density(lambda x: jnp.sum(x), p.sample)
    with pytest.raises(ValueError, match=r"q.log_prob must return one log-density"):
        dv.kl_monte_carlo(key, p, summed, 10)
    with pytest.raises(TypeError, match="p must be a density model"):
        dv.js_monte_carlo(key, norm.logpdf, p, 10)
