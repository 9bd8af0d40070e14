import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from densax import ot
from densax.ot import univariate

# Sizes: SMALL runs the XLA path; LARGE (n + m >= 2048) runs the NumPy host
# path on CPU with sort="auto". Few distinct shapes keep compilation short.
SMALL = (7, 5)
LARGE = (1500, 1100)
SIZES = pytest.mark.parametrize("size", [SMALL, LARGE], ids=["xla", "host"])
# float64 references agree to rounding: sums of n terms of size ~1.
TOL64 = dict(rtol=1e-10, atol=1e-12)
# float32: the CDFs carry ~1e-7 relative error, the sorted differences too.
TOL32 = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture(params=["xla", "host"])
def path(request):
    """The ``sort`` strategy: the XLA path or the NumPy host path at any size."""
    return request.param


def _data(size, seed=0, zeros=True):
    rng = np.random.default_rng(seed)
    n, m = size
    u = rng.standard_normal(n)
    v = 1.5 * rng.standard_normal(m) + 0.7
    a = rng.random(n) + 0.5
    b = rng.random(m) + 0.5
    if zeros:  # zero weights exercise ties of the CDFs
        a[rng.random(n) < 0.2] = 0.0
    return u, v, a / a.sum(), b / b.sum()


def _dense(plan, n, m):
    dense = np.zeros((n, m))
    np.add.at(dense, (np.asarray(plan.u_index), np.asarray(plan.v_index)), plan.mass)
    return dense


def test_sort_strategy_picks_the_host_path():
    def jaxpr(size, sort="auto"):
        u, v, a, b = _data(size)
        f = lambda u, v: ot.wasserstein_1d(u, v, a=a, b=b, sort=sort)
        return str(jax.make_jaxpr(f)(u, v))

    # "auto": on the host on CPU for large inputs only.
    assert "pure_callback" in jaxpr(LARGE)
    assert "pure_callback" not in jaxpr(SMALL)
    assert "pure_callback" in jaxpr(SMALL, "host")
    assert "pure_callback" not in jaxpr(LARGE, "xla")
    with pytest.raises(ValueError, match="sort"):
        ot.wasserstein_1d(jnp.ones(3), jnp.ones(2), sort="numpy")


# ---------------------------------------------------------------------------
# References.


@SIZES
def test_matches_scipy_weighted_p1(x64, size):
    u, v, a, b = _data(size)
    got = ot.wasserstein_1d(u, v, a=a, b=b)
    want = scipy.stats.wasserstein_distance(u, v, a, b)
    np.testing.assert_allclose(got, want, **TOL64)


@SIZES
@pytest.mark.parametrize("p", [1, 2, 3])
def test_matches_pot(x64, size, p):
    u, v, a, b = _data(size)
    got = ot.wasserstein_1d(u, v, a=a, b=b, p=p)
    want = pot.wasserstein_1d(u, v, a, b, p=p) ** (1 / p)
    np.testing.assert_allclose(got, want, **TOL64)
    # Uniform weights, different sizes and (fast path) equal sizes.
    got = ot.wasserstein_1d(u, v, p=p)
    np.testing.assert_allclose(got, pot.wasserstein_1d(u, v, p=p) ** (1 / p), **TOL64)
    got = ot.wasserstein_1d(u, v[::-1] - 0.3, p=p)
    want = pot.wasserstein_1d(u, v[::-1] - 0.3, p=p) ** (1 / p)
    np.testing.assert_allclose(got, want, **TOL64)


@pytest.mark.parametrize("p", [1, 1.5])
def test_matches_linear_program_and_coupling_is_optimal(x64, path, p):
    w1d = functools.partial(ot.wasserstein_1d, sort=path)
    u, v, a, b = _data((9, 6))
    cost = np.abs(u[:, None] - v[None, :]) ** p
    w, plan = w1d(u, v, a=a, b=b, p=p, return_coupling=True)
    np.testing.assert_allclose(w**p, pot.emd2(a, b, cost), **TOL64)
    assert plan.mass.shape == plan.u_index.shape == (9 + 6 - 1,)
    assert plan.u_index.dtype == plan.v_index.dtype == jnp.int32
    dense = _dense(plan, 9, 6)
    assert np.all(np.asarray(plan.mass) >= 0)
    np.testing.assert_allclose(dense.sum(1), a, atol=1e-15)
    np.testing.assert_allclose(dense.sum(0), b, atol=1e-15)
    np.testing.assert_allclose((dense * cost).sum(), w**p, **TOL64)
    # Uniform weights and equal sizes (the sorted-pairs fast path of the value).
    w, plan = w1d(u[:6], v, p=p, return_coupling=True)
    dense = _dense(plan, 6, 6)
    np.testing.assert_allclose(dense.sum(1), np.full(6, 1 / 6), atol=1e-15)
    np.testing.assert_allclose(dense.sum(0), np.full(6, 1 / 6), atol=1e-15)
    np.testing.assert_allclose((dense * cost[:6]).sum(), w**p, **TOL64)
    np.testing.assert_allclose(w**p, pot.emd2([], [], cost[:6]), **TOL64)


def test_float32_against_float64_reference():
    u, v, a, b = _data(LARGE)
    for p in (1, 2):
        want = pot.wasserstein_1d(u, v, a, b, p=p) ** (1 / p)
        f32 = [x.astype(np.float32) for x in (u, v, a, b)]
        got = ot.wasserstein_1d(f32[0], f32[1], a=f32[2], b=f32[3], p=p)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, **TOL32)


def test_dtype_follows_input(dtype):
    u, v, a, b = (x.astype(dtype) for x in _data(SMALL))
    w, plan = ot.wasserstein_1d(u, v, a=a, b=b, return_coupling=True)
    assert w.dtype == plan.mass.dtype == dtype
    assert ot.wasserstein_1d(np.arange(4), np.arange(3)).dtype == jnp.result_type(float)
    x = np.ones((20, 2), dtype)
    assert ot.sliced_wasserstein(jax.random.key(0), x, x).dtype == dtype


def test_known_value_and_translation():
    # u = {0, 1, 3} against v = {5, 6}: integral of the quantile gap.
    assert float(ot.wasserstein_1d([0.0, 1.0, 3.0], [5.0, 6.0])) == pytest.approx(
        25 / 6, rel=1e-6
    )
    u = jnp.array([0.3, -1.0, 2.0, 0.5])
    for p in (1, 2, 3):
        assert float(ot.wasserstein_1d(u, u + 2.5, p=p)) == pytest.approx(2.5, rel=1e-6)


# ---------------------------------------------------------------------------
# Metric properties (one shape, so hypothesis examples do not recompile).

_values = st.lists(st.floats(-10, 10, width=64), min_size=5, max_size=5)
_weights = st.lists(st.floats(0.01, 1.0, width=64), min_size=5, max_size=5)


@settings(max_examples=25, deadline=None)
@given(
    x=_values,
    y=_values,
    z=_values,
    wx=_weights,
    wy=_weights,
    wz=_weights,
    p=st.sampled_from([1, 2]),
)
def test_metric_properties(x, y, z, wx, wy, wz, p):
    with jax.enable_x64(True):
        x, y, z, wx, wy, wz = map(np.array, (x, y, z, wx, wy, wz))
        w = lambda u, v, a, b: float(ot.wasserstein_1d(u, v, a=a, b=b, p=p))
        xy, yx = w(x, y, wx, wy), w(y, x, wy, wx)
        assert xy == pytest.approx(yx, rel=1e-12, abs=1e-12)
        assert w(x, x, wx, wx) == 0.0
        assert w(x, y[::-1] * 0 + x, wx, wx) == 0.0  # a new array, equal values
        assert xy <= w(x, z, wx, wz) + w(z, y, wz, wy) + 1e-12


# ---------------------------------------------------------------------------
# Gradients.


def test_check_grads(x64, path):
    w1d = functools.partial(ot.wasserstein_1d, sort=path)
    # Samples well separated (relative to eps) keep the order fixed. p = 3 and
    # p = 1 here, p = 2 in the sliced test: the three forms of the cost.
    u, v, a, b = (jnp.asarray(x) for x in _data(SMALL, zeros=False))
    f = lambda u, v, a, b: w1d(u, v, a=a, b=b, p=3)
    check_grads(f, (u, v, a, b), order=1, modes=("fwd", "rev"), eps=1e-6)
    # Equal sizes and uniform weights: the sort-only fast path.
    g = lambda u, v: w1d(u, v, p=1)
    check_grads(g, (u, jnp.sin(3 * u) + 0.5), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_gradient_at_zero_distance_and_ties_is_finite(x64, path):
    w1d = functools.partial(ot.wasserstein_1d, sort=path)

    # W = 0 (the root's kink) with ties in the samples and in the CDFs.
    def f(u, v, w):
        return w1d(u, v, p=3) + w1d(u, v, a=w, b=w)

    u, w = jnp.array([0.0, 1.0, 1.0, 2.0]), jnp.full(4, 0.25)
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(u, u, w)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_weights_need_not_be_normalised(x64):
    u, v, a, b = _data(SMALL)
    w1 = ot.wasserstein_1d(u, v, a=a, b=b)
    w2 = ot.wasserstein_1d(u, v, a=7 * a, b=0.1 * b)
    np.testing.assert_allclose(w1, w2, **TOL64)


# ---------------------------------------------------------------------------
# Transformations.


def test_batching_broadcast_vmap_jit(x64, path):
    w1d = functools.partial(ot.wasserstein_1d, sort=path)
    rng = np.random.default_rng(3)
    n, m = SMALL
    u, v, a = rng.standard_normal((3, n)), rng.standard_normal(m), rng.random((3, n))
    want = [
        pot.wasserstein_1d(u[i], v, a[i] / a[i].sum(), p=2) ** 0.5 for i in range(3)
    ]
    batched = w1d(u, v, a=a, p=2)
    assert batched.shape == (3,)
    np.testing.assert_allclose(batched, want, **TOL64)
    f = jax.jit(lambda u, a: w1d(u, v, a=a, p=2))
    np.testing.assert_allclose(jax.vmap(f)(u, a), want, **TOL64)
    # Batch axes of samples and weights broadcast: shared weights, [2, 3] batch.
    shared = w1d(u, jnp.stack([v, v + 1])[:, None], a=a[0])
    assert shared.shape == (2, 3)
    np.testing.assert_allclose(shared[0], w1d(u, v, a=a[0]), **TOL64)


def test_shard_map_over_devices_matches_single_device(mesh, path):
    w1d = functools.partial(ot.wasserstein_1d, sort=path)
    # float32: jax.enable_x64 is thread-local, and shard_map runs the host
    # callbacks on other threads, where JAX would cast float64 results down.
    from jax.sharding import PartitionSpec as P

    rng = np.random.default_rng(4)
    n, m = SMALL
    u, v, a = (rng.random(s).astype(np.float32) for s in ((8, n), (8, m), (8, n)))
    f = lambda u, v, a: w1d(u, v, a=a, p=2)
    sharded = jax.jit(
        jax.shard_map(f, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    )
    np.testing.assert_allclose(sharded(u, v, a), f(u, v, a), rtol=1e-6)


def test_no_retracing():
    u, v, a, b = (x.astype(np.float32) for x in _data(SMALL))
    core = univariate._wasserstein_1d_pow
    ot.wasserstein_1d(u, v, a=a, b=b)
    size = core._cache_size()
    ot.wasserstein_1d(u + 1, v, a=2 * a, b=b)
    assert core._cache_size() == size


# ---------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises_clear_errors():
    u, v = np.zeros(4), np.ones(3)
    with pytest.raises(ValueError, match="a must have 4 entries"):
        ot.wasserstein_1d(u, v, a=np.ones(3))
    with pytest.raises(ValueError, match="b must be non-negative"):
        ot.wasserstein_1d(u, v, b=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="a must have a positive sum"):
        ot.wasserstein_1d(u, v, a=np.zeros(4))
    with pytest.raises(ValueError, match="p must be a finite number >= 1"):
        ot.wasserstein_1d(u, v, p=0.5)
    with pytest.raises(TypeError, match="p must be a real number"):
        ot.wasserstein_1d(u, v, p=jnp.array(2.0))
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        ot.wasserstein_1d(np.zeros((2, 4)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        ot.wasserstein_1d(np.zeros(0), v)
    with pytest.raises(TypeError, match="u must"):
        ot.wasserstein_1d(["a", "b"], v)
    key, x = jax.random.key(0), np.zeros((5, 2))
    with pytest.raises(ValueError, match="x and y must have the same dimension"):
        ot.sliced_wasserstein(key, x, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="x must have rank 2"):
        ot.sliced_wasserstein(key, np.zeros(5), x)
    with pytest.raises(ValueError, match="n_projections must be >= 1"):
        ot.sliced_wasserstein(key, x, x, n_projections=0)
    with pytest.raises(ValueError, match="needs a key or projections"):
        ot.sliced_wasserstein(None, x, x)
    with pytest.raises(ValueError, match="projections and x must have the same"):
        ot.sliced_wasserstein(None, x, x, projections=np.ones((3, 4)))
    with pytest.raises(ValueError, match="b must have 5 entries"):
        ot.sliced_wasserstein(key, x, x, b=np.ones(4))


def test_invalid_weights_under_jit_give_nan():
    u, v = jnp.arange(4.0), jnp.arange(3.0)
    f = jax.jit(lambda a: ot.wasserstein_1d(u, v, a=a))
    assert np.isnan(f(jnp.array([1.0, -1.0, 1.0, 1.0])))
    assert np.isnan(f(jnp.zeros(4)))
    assert np.isfinite(f(jnp.ones(4)))


def test_nan_propagates_to_its_batch_element_only(path):
    w1d = functools.partial(ot.wasserstein_1d, sort=path)
    rng = np.random.default_rng(5)
    n, m = SMALL
    u, v, a = (
        rng.standard_normal((3, n)),
        rng.standard_normal((3, m)),
        rng.random((3, n)),
    )
    u[1, 2] = np.nan
    f = jax.jit(lambda u: w1d(u, v, a=a, p=2))
    w = np.asarray(f(u))
    assert np.isnan(w[1]) and np.all(np.isfinite(w[[0, 2]]))
    g = np.asarray(jax.grad(lambda u: jnp.nansum(f(u)))(u))
    assert np.all(np.isfinite(g[[0, 2]]))
    # Eagerly, a NaN sample is a value error; without validation, NaN.
    with pytest.raises(ValueError, match="u contains NaN"):
        w1d(u[1], v[1], p=2)
    assert np.isnan(w1d(u[1], v[1], p=2, validate=False))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf, as SciPy
def test_infinite_samples_give_inf_as_scipy(x64, path):
    # A sample at +-inf: SciPy's wasserstein_distance is inf (NaN only for
    # inf - inf). Empty intervals of the quantile merge at an infinite atom
    # must add 0, not 0 * inf. One batch, one compilation per path.
    inf = np.inf
    u = np.array([[0.0, 1.0, inf], [0.0, 1.0, -inf], [-inf, 0.0, 0.5], [0.0, 1.0, 2.0]])
    v = np.array([[0.0, 2.0], [0.0, 2.0], [0.0, 1.0], [0.0, inf]])
    for p in (1, 2):
        w = ot.wasserstein_1d(u, v, p=p, sort=path)
        ref = [
            scipy.stats.wasserstein_distance(ui, vi)
            for ui, vi in zip(u, v, strict=True)
        ]
        assert np.all(np.isposinf(w)) and np.all(np.isposinf(ref))
    both = ot.wasserstein_1d(np.array([0.0, inf]), np.array([1.0, inf]), sort=path)
    assert np.isnan(both) and np.isnan(
        scipy.stats.wasserstein_distance([0, inf], [1, inf])
    )


# ---------------------------------------------------------------------------
# Sliced Wasserstein.


def _clouds(n=300, m=200, d=3, seed=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((m, d)) * 0.5 + 1.0
    return x, y, rng.random(n), rng.random(m)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_matches_pot_with_the_same_projections(x64, p):
    x, y, a, b = _clouds()
    theta = ot.random_directions(jax.random.key(1), 64, 3)
    got = ot.sliced_wasserstein(None, x, y, a=a, b=b, projections=theta, p=p)
    want = pot.sliced_wasserstein_distance(
        x, y, a / a.sum(), b / b.sum(), projections=np.asarray(theta).T, p=p
    )
    np.testing.assert_allclose(got, want, **TOL64)
    # The key draws exactly those directions.
    got_key = ot.sliced_wasserstein(
        jax.random.key(1), x, y, a=a, b=b, n_projections=64, p=p
    )
    np.testing.assert_allclose(got_key, got, **TOL64)


def test_sliced_matches_ott_with_the_same_key(x64):
    from ott.tools import sliced as ott_sliced

    x, y, a, _ = _clouds()
    key = jax.random.key(2)
    got = ot.sliced_wasserstein(key, x, y, a=a, n_projections=50)
    want, _ = ott_sliced.sliced_wasserstein(
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.asarray(a / a.sum()),
        None,
        n_proj=50,
        rng=key,
    )
    np.testing.assert_allclose(got**2, want, **TOL64)  # ott reports SW_2^2
    theta = ot.random_directions(key, 50, 3)
    np.testing.assert_allclose(
        theta.T, ott_sliced.random_proj_sphere(jnp.eye(3), 50, key), **TOL64
    )


def test_sliced_agrees_statistically_with_pot_random_projections(x64):
    # y is a translate of x, so each 1D W_2^2 is (θ·μ)² and SW_2^2 -> |μ|²/d.
    x = np.random.default_rng(7).standard_normal((500, 4))
    mu = np.array([1.0, -2.0, 0.5, 3.0])
    ours = float(
        ot.sliced_wasserstein(jax.random.key(3), x, x + mu, n_projections=2000)
    )
    theirs = pot.sliced_wasserstein_distance(x, x + mu, n_projections=2000, seed=0)
    # Var of (θ·μ)² over the sphere, for the Monte Carlo error of the mean.
    theta = np.asarray(ot.random_directions(jax.random.key(4), 20000, 4, dtype=float))
    sd = np.std((theta @ mu) ** 2) / np.sqrt(2000)
    exact = mu @ mu / 4
    assert abs(ours**2 - exact) < 4 * sd
    assert abs(theirs**2 - exact) < 4 * sd


def test_sliced_check_grads(x64):
    x, y, a, _ = _clouds(12, 9, 2)
    theta = ot.random_directions(jax.random.key(5), 16, 2)
    f = lambda x, a: ot.sliced_wasserstein(None, x, y, a=a, projections=theta, p=2)
    check_grads(f, (x, a), order=1, modes=("rev",), eps=1e-6)


def test_sliced_as_a_loss_in_a_jitted_scan():
    # The generators' use: grad of SW inside lax.scan, host sorting included.
    key = jax.random.key(6)
    y = jax.random.normal(key, (256, 2)) * 0.3 + jnp.array([2.0, -1.0])
    x0 = jax.random.normal(jax.random.key(7), (256, 2))

    @jax.jit
    def train(x, key):
        def step(x, key):
            loss, g = jax.value_and_grad(
                lambda x: ot.sliced_wasserstein(key, x, y, n_projections=64)
            )(x)
            return x - 0.5 * 256 * g, loss

        return jax.lax.scan(step, x, jax.random.split(key, 30))

    _, losses = train(x0, jax.random.key(8))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.2 * losses[0]
    assert "pure_callback" in str(
        jax.make_jaxpr(lambda x: ot.sliced_wasserstein(key, x, y, n_projections=64))(x0)
    )


def test_sliced_vmap_and_nan_isolated():
    x, y, _, _ = _clouds(40, 40, 2)
    xs = np.stack([x, x + 1.0, x])
    xs[2, 0, 0] = np.nan
    f = jax.jit(jax.vmap(lambda x: ot.sliced_wasserstein(jax.random.key(0), x, y)))
    out = f(xs)
    want0 = ot.sliced_wasserstein(jax.random.key(0), xs[0], y)
    np.testing.assert_allclose(out[0], want0, rtol=1e-6)
    assert np.isfinite(out[1]) and np.isnan(out[2])


def test_random_directions_are_unit_vectors(dtype):
    theta = ot.random_directions(jax.random.key(0), 100, 5, dtype=dtype)
    assert theta.shape == (100, 5) and theta.dtype == dtype
    np.testing.assert_allclose(np.linalg.norm(theta, axis=1), 1.0, rtol=1e-6)
