"""Maps from couplings: barycentric projection, entropic map, 1D monotone map."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from scipy.stats import norm

from densax import gaussian
from densax import ot as dot
from densax.ot import gaussian as og
from densax.ot import maps


@pytest.fixture(scope="module")
def problem():
    """One small Sinkhorn problem (float64), shared by the tests below."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(40, 2)))
        y = jnp.asarray(rng.normal(size=(30, 2)) * 0.7 + 2.0)
        out = dot.sinkhorn(x, y, epsilon=0.5, tol=1e-11, max_iter=5000)
        yield out, dot.transport_plan(out)


def test_barycentric_projection(problem, x64):
    out, plan = problem
    t = maps.barycentric_projection(plan, out.y)
    ref = (np.asarray(plan) / np.asarray(plan).sum(1, keepdims=True)) @ np.asarray(
        out.y
    )
    np.testing.assert_allclose(t, ref, rtol=1e-12)
    assert t.dtype == jnp.float64
    # Only ratios within a row matter; an exact (POT) plan works the same way.
    np.testing.assert_allclose(
        maps.barycentric_projection(7.0 * plan, out.y), t, rtol=1e-12
    )
    exact = pot.emd(
        np.full(40, 1 / 40),
        np.full(30, 1 / 30),
        pot.dist(np.asarray(out.x), np.asarray(out.y)),
    )
    ref = pot.da.EMDTransport().fit(Xs=np.asarray(out.x), Xt=np.asarray(out.y))
    np.testing.assert_allclose(
        maps.barycentric_projection(exact, out.y),
        ref.transform(Xs=np.asarray(out.x)),
        atol=1e-10,
    )
    with pytest.raises(ValueError, match="zero mass"):
        maps.barycentric_projection(plan.at[0].set(0.0), out.y)
    assert np.all(
        np.isnan(jax.jit(maps.barycentric_projection)(plan.at[0].set(0.0), out.y)[0])
    )


def test_entropic_map_matches_pot_and_plan(problem, x64):
    out, plan = problem
    # At the source points: the barycentric projection of the plan.
    np.testing.assert_allclose(
        maps.entropic_map(out, out.x),
        maps.barycentric_projection(plan, out.y),
        atol=1e-9,
    )
    # Elsewhere: POT's SinkhornTransport "continuous" out-of-sample map.
    xn = np.random.default_rng(1).normal(size=(5, 2)) * 2
    ref = pot.da.SinkhornTransport(reg_e=0.5, tol=1e-14, max_iter=100000).fit(
        Xs=np.asarray(out.x), Xt=np.asarray(out.y)
    )
    np.testing.assert_allclose(
        maps.entropic_map(out, xn), ref.transform(Xs=xn), atol=1e-8
    )
    back = maps.entropic_map(out, out.y, inverse=True)
    np.testing.assert_allclose(
        back, maps.barycentric_projection(plan.T, out.x), atol=1e-9
    )
    # jit, vmap over points and gradient in x (directional finite difference).
    f = jax.jit(lambda p: maps.entropic_map(out, p[None])[0, 0])
    p0, v = jnp.asarray(xn[0]), jnp.array([0.6, -0.8])
    h = 1e-6
    fd = (f(p0 + h * v) - f(p0 - h * v)) / (2 * h)
    np.testing.assert_allclose(jax.grad(f)(p0) @ v, fd, rtol=1e-6)
    rows = jax.vmap(lambda p: maps.entropic_map(out, p[None])[0])(jnp.asarray(xn))
    np.testing.assert_allclose(rows, maps.entropic_map(out, xn), atol=1e-12)


def test_entropic_map_tends_to_gaussian_closed_form(x64):
    # Many samples of two 1D Gaussians: the entropic map is nearly affine.
    n, eps = 800, 0.5
    t = (np.arange(n) + 0.5) / n
    x, y = norm.ppf(t, 0.0, 1.0)[:, None], norm.ppf(t, 1.0, 2.0)[:, None]
    out = dot.sinkhorn(jnp.asarray(x), jnp.asarray(y), epsilon=eps, tol=1e-9)
    closed = og.entropic_gaussian_map(
        (jnp.zeros(1), jnp.eye(1)), (jnp.ones(1), 4.0 * jnp.eye(1)), eps
    )
    pts = jnp.linspace(-1.5, 1.5, 7)[:, None]
    np.testing.assert_allclose(maps.entropic_map(out, pts), closed(pts), atol=0.02)


def test_push_forward(x64):
    dtype = np.float64
    p = gaussian.Gaussian(jnp.zeros(2, dtype), jnp.eye(2, dtype=dtype))
    q = gaussian.Gaussian(
        jnp.array([1.0, -1.0], dtype), jnp.array([[2.0, 0.5], [0.5, 1.0]], dtype)
    )
    t = og.gaussian_monge_map(p, q)
    pushed = maps.push_forward(t, p)
    assert isinstance(pushed, gaussian.Gaussian) and pushed.cov.dtype == dtype
    np.testing.assert_allclose(pushed.cov, q.cov, atol=1e-5)
    x = gaussian.sample(jax.random.key(0), p, 5)
    np.testing.assert_allclose(maps.push_forward(t, x), t(x), rtol=1e-6)
    with pytest.raises(TypeError, match="AffineMap"):
        maps.push_forward(lambda z: z, p)
    with pytest.raises(TypeError, match="callable"):
        maps.push_forward(3, x)


def test_monotone_map_1d():
    dtype = np.float32
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=50).astype(dtype), rng.exponential(size=50).astype(dtype)
    # Equal sizes, uniform weights: u_(i) -> v_(i), the coupling of wasserstein_1d.
    out = maps.monotone_map_1d(u, u, v)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.sort(out), np.sort(v), rtol=1e-6)
    np.testing.assert_array_equal(np.argsort(out), np.argsort(u))
    w2 = dot.wasserstein_1d(u, v, p=2)
    np.testing.assert_allclose(np.sqrt(np.mean((out - u) ** 2)), w2, rtol=1e-5)
    # Monotone, continuous, and a translation beyond the data.
    grid = jnp.linspace(-5, 5, 101, dtype=dtype)
    t = maps.monotone_map_1d(grid, u, v, a=rng.uniform(size=50) + 0.1)
    assert np.all(np.diff(np.asarray(t)) >= 0)
    np.testing.assert_allclose(t[-1] - t[-2], grid[-1] - grid[-2], rtol=1e-5)


def test_monotone_map_1d_gaussians_and_grad(x64):
    n = 4000
    q = (np.arange(n) + 0.5) / n
    u, v = norm.ppf(q, 0.0, 1.0), norm.ppf(q, 2.0, 3.0)
    x = jnp.linspace(-2.0, 2.0, 9)
    np.testing.assert_allclose(maps.monotone_map_1d(x, u, v), 2.0 + 3.0 * x, atol=2e-3)
    t = og.gaussian_monge_map(
        (jnp.zeros(1), jnp.eye(1)), (2 * jnp.ones(1), 9 * jnp.eye(1))
    )
    np.testing.assert_allclose(
        maps.monotone_map_1d(x, u, v), t(x[:, None])[:, 0], atol=2e-3
    )
    slope = jax.grad(lambda s: maps.monotone_map_1d(s[None], u, v)[0])(jnp.float64(0.3))
    np.testing.assert_allclose(slope, 3.0, rtol=1e-2)


def test_map_input_errors(problem):
    out, plan = problem
    with pytest.raises(ValueError, match="columns"):
        maps.barycentric_projection(plan, out.y[:3])
    with pytest.raises(ValueError, match="dimension"):
        maps.entropic_map(out, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="a must have"):
        maps.monotone_map_1d(jnp.zeros(2), jnp.zeros(3), jnp.ones(3), a=jnp.ones(2))
