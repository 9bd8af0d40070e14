"""Closed-form OT between Gaussians: Bures W2, Monge map, entropic plan."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from jax.test_util import check_grads
from scipy.linalg import sqrtm
from scipy.stats import norm

from densax import gaussian
from densax import ot as dot
from densax.ot import gaussian as og
from densax.ot import maps


def _spd(key, d, dtype, ridge=0.3):
    a = jax.random.normal(key, (d, d), dtype)
    return a @ a.T + ridge * jnp.eye(d, dtype=dtype)


def _pair(dtype, d=3):
    k1, k2 = jax.random.split(jax.random.key(3))
    p = gaussian.Gaussian(jnp.array([1.0, 0.0, 2.0][:d], dtype), _spd(k1, d, dtype))
    q = (jnp.array([0.0, -1.0, 0.5][:d], dtype), _spd(k2, d, dtype, 0.5))
    return p, q


def test_bures_matches_pot_and_dtype(dtype):
    p, q = _pair(dtype)
    w2 = og.bures_wasserstein(p, q)
    assert w2.dtype == dtype
    size = og._bures_sq._cache_size()
    og.bures_wasserstein(q, p)  # same shapes: no new compilation
    assert og._bures_sq._cache_size() == size
    ref = pot.gaussian.bures_wasserstein_distance(
        *(np.asarray(v, np.float64) for v in (p.mean, q[0], p.cov, q[1]))
    )
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(w2, ref, rtol=tol)
    np.testing.assert_allclose(
        og.bures_wasserstein(p, q, squared=True), ref**2, rtol=tol
    )


def test_bures_1d_vs_wasserstein_1d(x64):
    # The monotone map of N(m, s^2) is affine: quantiles of a huge regular
    # grid of each Gaussian give W2 to O(1/n).
    n = 20000
    t = (np.arange(n) + 0.5) / n
    u, v = norm.ppf(t, 0.5, 1.3), norm.ppf(t, -1.0, 0.4)
    ref = dot.wasserstein_1d(jnp.asarray(u), jnp.asarray(v), p=2)
    w2 = og.bures_wasserstein(
        (jnp.array([0.5]), jnp.array([[1.69]])),
        (jnp.array([-1.0]), jnp.array([[0.16]])),
    )
    np.testing.assert_allclose(w2, ref, rtol=1e-3)
    np.testing.assert_allclose(w2, np.sqrt(1.5**2 + 0.9**2), rtol=1e-12)


def test_bures_vs_exact_ot_on_samples(x64):
    p, q = _pair(np.float64, d=2)
    n = 600
    k1, k2 = jax.random.split(jax.random.key(0))
    xs, ys = gaussian.sample(k1, p, n), gaussian.sample(k2, gaussian.Gaussian(*q), n)
    emp = pot.emd2([], [], pot.dist(np.asarray(xs), np.asarray(ys)))
    # W2^2 of empirical measures converges like n^(-1/2) in d = 2.
    np.testing.assert_allclose(og.bures_wasserstein(p, q, squared=True), emp, rtol=0.1)


def test_monge_map_pushes_gaussian_exactly(dtype):
    p, q = _pair(dtype)
    t = og.gaussian_monge_map(p, q)
    pushed = maps.push_forward(t, p)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(pushed.mean, q[0], atol=tol)
    np.testing.assert_allclose(pushed.cov, q[1], atol=tol)
    np.testing.assert_allclose(t.linear, t.linear.T, atol=tol)
    assert np.all(np.linalg.eigvalsh(np.asarray(t.linear, np.float64)) > 0)
    a_ref, b_ref = pot.gaussian.bures_wasserstein_mapping(
        *(np.asarray(v, np.float64) for v in (p.mean, q[0], p.cov, q[1]))
    )
    np.testing.assert_allclose(t.linear, a_ref, atol=tol)
    np.testing.assert_allclose(t.offset, np.ravel(b_ref), atol=tol)
    # The map's transport cost is W2^2.
    x = gaussian.sample(jax.random.key(1), p, 4)
    assert t(x).shape == (4, 3) and t(x).dtype == dtype


def test_entropic_closed_form_consistency(x64):
    p, q = _pair(np.float64)
    eps = 0.7
    out = og.entropic_gaussian(p, q, eps)
    # Janati et al. (2020), Theorem 1, term by term.
    m1, s1, m2, s2 = p.mean, p.cov, q[0], q[1]
    r = np.real(sqrtm(np.asarray(s1)))
    s = eps / 2
    dmat = np.real(sqrtm(4 * r @ s2 @ r + s**2 * np.eye(3)))
    janati = (
        np.sum((m1 - m2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - np.trace(dmat)
        + 3 * s * (1 - np.log(2 * s))
        + s * np.linalg.slogdet(dmat + s * np.eye(3))[1]
    )
    np.testing.assert_allclose(out.cost, janati, rtol=1e-12)
    # The plan's covariance is positive definite and has the right marginals.
    joint = np.block([[s1, out.cross_cov], [out.cross_cov.T, s2]])
    assert np.all(np.linalg.eigvalsh(joint) > 0)
    mi = 0.5 * (
        np.linalg.slogdet(s1)[1]
        + np.linalg.slogdet(s2)[1]
        - np.linalg.slogdet(joint)[1]
    )
    np.testing.assert_allclose(out.mutual_information, mi, rtol=1e-10)
    # epsilon -> 0: the Monge problem.
    small = og.entropic_gaussian(p, q, 1e-9)
    np.testing.assert_allclose(
        small.transport_cost, og.bures_wasserstein(p, q, squared=True), rtol=1e-7
    )
    np.testing.assert_allclose(
        og.entropic_gaussian_map(p, q, 1e-9).linear,
        og.gaussian_monge_map(p, q).linear,
        atol=1e-7,
    )


def test_entropic_potentials_are_optimal_1d(x64):
    # The plan exp((f + g - c) / eps) d(mu x nu) has first marginal mu:
    # int exp((f(x) + g(y) - |x - y|^2) / eps) dnu(y) = 1 for every x.
    p, q = (
        (jnp.array([0.3]), jnp.array([[1.5]])),
        (jnp.array([-1.0]), jnp.array([[0.7]])),
    )
    eps = 0.8
    f, g = og.entropic_gaussian_potentials(p, q, eps)
    y = np.linspace(-12, 12, 8001)
    dy = y[1] - y[0]
    nu = norm.pdf(y, -1.0, np.sqrt(0.7))
    for x in (-1.0, 0.0, 2.0):
        k = np.exp((f(jnp.array([[x]]))[0] + g(y[:, None]) - (x - y) ** 2) / eps)
        np.testing.assert_allclose(np.sum(k * nu) * dy, 1.0, rtol=1e-10)
    mu = norm.pdf(y, 0.3, np.sqrt(1.5))
    total = np.sum(f(y[:, None]) * mu) * dy + np.sum(g(y[:, None]) * nu) * dy
    np.testing.assert_allclose(total, og.entropic_gaussian(p, q, eps).cost, rtol=1e-10)


def test_entropic_vs_discrete_sinkhorn_on_grid(x64):
    # The discretised problem on a fine 1D grid (weights = densities) tends to
    # the continuous one: KL(P | a x b) does not depend on the grid.
    t = np.linspace(-7, 7, 400)
    a, b = norm.pdf(t, 0.3, 1.2), norm.pdf(t, -1.0, 0.8)
    eps = 0.5
    out = dot.sinkhorn(
        jnp.asarray(t[:, None]),
        jnp.asarray(t[:, None]),
        a=jnp.asarray(a),
        b=jnp.asarray(b),
        epsilon=eps,
        tol=1e-10,
        max_iter=5000,
    )
    ref = og.entropic_gaussian(
        (jnp.array([0.3]), jnp.array([[1.44]])),
        (jnp.array([-1.0]), jnp.array([[0.64]])),
        eps,
    )
    np.testing.assert_allclose(out.reg_cost, ref.cost, rtol=1e-5)
    np.testing.assert_allclose(out.transport_cost, ref.transport_cost, rtol=1e-5)


def test_bures_cost_matrix_and_vmap_jit_grad(x64):
    p, q = _pair(np.float64)
    c = og.bures_cost_matrix(
        jnp.stack([p.mean, q[0]]), jnp.stack([p.cov, q[1]]), q[0][None], q[1][None]
    )
    np.testing.assert_allclose(
        c[:, 0], [og.bures_wasserstein(p, q, squared=True), 0.0], atol=1e-10
    )
    jitted = jax.jit(lambda m: og.bures_wasserstein((m, p.cov), q, squared=True))
    np.testing.assert_allclose(jitted(p.mean), c[0, 0], rtol=1e-12)
    # d/dm1 W2^2 = 2 (m1 - m2); the covariance gradient by finite differences.
    np.testing.assert_allclose(
        jax.grad(jitted)(p.mean), 2 * (p.mean - q[0]), rtol=1e-10
    )
    check_grads(
        lambda s: og.entropic_gaussian((p.mean, s @ s.T), q, 0.5).cost,
        (p.cov,),
        order=1,
        modes=["rev"],
    )
    means = jnp.stack([p.mean, p.mean + 1.0])
    batched = jax.vmap(lambda m: og.gaussian_monge_map((m, p.cov), q).offset)(means)
    assert batched.shape == (2, 3)


def test_input_errors():
    with pytest.raises(TypeError, match="source"):
        og.bures_wasserstein(1.0, (jnp.zeros(2), jnp.eye(2)))
    with pytest.raises(ValueError, match=r"target\.cov"):
        og.bures_wasserstein((jnp.zeros(2), jnp.eye(2)), (jnp.zeros(2), jnp.eye(3)))
    with pytest.raises(ValueError, match="epsilon"):
        og.entropic_gaussian(
            (jnp.zeros(2), jnp.eye(2)), (jnp.zeros(2), jnp.eye(2)), 0.0
        )
