"""Tests of the binned (linear binning + FFT) KDE: densax._binned and its public API.

The public API (``kde.grid_log_prob``, ``kde.interpolate``, ``kde.log_prob``
with ``method="binned"``/``"auto"``) is what the accuracy, derivative and
transformation tests go through; ``densax._binned`` is called directly only
for its rule and its sharded binning.

References: the exact KDE of densax.kde (``exact_log_density``) and KDEpy's
``FFTKDE`` (same algorithm; optional).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from densax import _binned, kde

# KDEpy's name and the 1D variance of its unit kernel for each densax kernel:
# KDEpy scales a kernel to standard deviation ``bw``, densax's radius by h, so
# the same kernel is KDEpy's ``bw = h sqrt(var)``.
KDEPY = {
    "gaussian": ("gaussian", 1.0),
    "tophat": ("box", 1 / 3),
    "epanechnikov": ("epa", 1 / 5),
    "exponential": ("exponential", 2.0),
    "linear": ("tri", 1 / 6),
    "cosine": ("cosine", 1 - 8 / np.pi**2),
}
SHAPES = {1: (256,), 2: (48, 40), 3: (20, 18, 16)}


def exact_log_density(x, data, bandwidth, kernel, sample_weight=None):
    """The exact KDE (the only call of densax.kde's API in this file)."""
    model = kde.fit(
        data, bandwidth=bandwidth, kernel=kernel, sample_weight=sample_weight
    )
    return kde.log_prob(model, x, method="exact")


def _bandwidth(d):
    """Scalar in 1D and 2D (KDEpy compares there), a full [3, 3] matrix in 3D."""
    if d == 3:
        return np.array([[0.2, 0.05, 0.0], [0.05, 0.3, -0.05], [0.0, -0.05, 0.25]])
    return 0.3 if d == 1 else 0.4


@functools.cache
def _case(d, kernel):
    """Binned grid, exact values at its nodes and at off-grid queries (float64)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(d)
        data = rng.standard_normal((600, d))
        w = rng.uniform(0.5, 2.0, len(data))
        bw = _bandwidth(d)
        shape = SHAPES[d]
        model = kde.fit(data, bandwidth=bw, kernel=kernel, sample_weight=w)
        grid = kde.grid_log_prob(model, shape)
        lo, hi = grid.lower, grid.upper
        nodes = np.array(grid.points.reshape(-1, d))
        queries = rng.uniform(-1.5, 1.5, (200, d))
        both = np.concatenate([nodes, queries])
        exact = np.exp(np.asarray(kde.log_prob(model, both, method="exact")))
        binned = kde.interpolate(grid, queries)
        return dict(
            data=data,
            w=w,
            bw=bw,
            shape=shape,
            lo=np.asarray(lo),
            hi=np.asarray(hi),
            nodes=nodes,
            grid=np.exp(np.asarray(grid.log_density)).ravel(),
            exact=exact[: len(nodes)],
            at_queries=np.exp(np.asarray(binned)),
            exact_queries=exact[len(nodes) :],
            bound=float(grid.error_bound),
            bound_off=float(grid.interp_error_bound),
        )


@pytest.mark.parametrize("kernel", kde.KERNELS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_binned_within_documented_bound(d, kernel):
    c = _case(d, kernel)
    err = np.abs(c["grid"] - c["exact"])
    if kernel == "tophat":  # the integrated bound
        cell = np.prod((c["hi"] - c["lo"]) / (np.array(c["shape"]) - 1))
        assert err.sum() * cell <= c["bound"]
    else:
        assert err.max() <= c["bound"]
        off = np.abs(c["at_queries"] - c["exact_queries"])
        assert off.max() <= c["bound_off"]
    # Not vacuous: the grid is a good approximation where the density matters
    # (except the exponential kernel, whose automatic grid spans +-36 h in
    # float64, coarse at these test sizes).
    # In 3D the grid has 16 to 20 nodes per axis.
    if kernel != "exponential":
        worst = (0.25 if kernel == "tophat" else 0.1) * (4 if d == 3 else 1)
        assert err.max() < worst * c["exact"].max()


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
def test_binned_converges_to_exact(kernel):
    """Halving the spacing cuts the error (first order at least)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        data = rng.standard_normal((400, 1))
        lo, hi = np.array([-5.0]), np.array([5.0])
        # The coarse grid's nodes are every other node of the fine one.
        nodes = np.linspace(-5.0, 5.0, 257)[:, None]
        exact = np.exp(np.asarray(exact_log_density(nodes, data, 0.4, kernel)))
        errs = []
        for n, ex in ((129, exact[::2]), (257, exact)):
            logp, _, _ = _binned.grid_log_density(
                data, 0.4, (n,), kernel=kernel, lower=lo, upper=hi
            )
            errs.append(np.abs(np.exp(np.asarray(logp)) - ex).mean())
        assert errs[1] < 0.7 * errs[0]


@pytest.mark.parametrize("kernel", kde.KERNELS)
@pytest.mark.parametrize("d", [1, 2])
def test_error_at_most_kdepys(d, kernel):
    kdepy = pytest.importorskip("KDEpy")
    c = _case(d, kernel)
    name, var = KDEPY[kernel]
    h, nodes, ours, exact = c["bw"], c["nodes"], c["grid"], c["exact"]
    fft = kdepy.FFTKDE(kernel=name, bw=h * np.sqrt(var))
    theirs = fft.fit(c["data"], weights=c["w"]).evaluate(nodes)
    ours_err = np.abs(ours - exact).max()
    theirs_err = np.abs(theirs - exact).max()
    if kernel == "gaussian":
        # densax removes linear binning's smoothing bias (Sheppard's
        # correction); KDEpy does not (and truncates the kernel).
        assert ours_err <= 0.5 * theirs_err
    elif kernel == "exponential":
        # The same binning; KDEpy truncates the kernel at a "practical
        # support", densax does not: the two differ by ~1e-5 of the peak,
        # which moves the largest error either way by a few percent.
        assert ours_err <= 1.05 * theirs_err
    else:  # the same algorithm: equal to round-off
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * ours.max())
        assert ours_err <= theirs_err * (1 + 1e-6) + 1e-12


def test_gradients_by_finite_differences(x64):
    """d/d(bandwidth) and d/d(weights) on a fixed grid, scalar and matrix H."""
    rng = np.random.default_rng(7)
    data = rng.standard_normal((300, 2))
    w = rng.uniform(0.5, 2.0, 300)
    lo, hi = np.array([-5.0, -5.0]), np.array([5.0, 5.0])
    queries = rng.uniform(-2, 2, (50, 2))
    probe = rng.standard_normal(50)

    @jax.jit
    def f(bw, w):
        model = kde.fit(data, bandwidth=bw, sample_weight=w, validate=False)
        grid = kde.grid_log_prob(model, 32, lower=lo, upper=hi)
        return jnp.dot(probe, kde.interpolate(grid, queries))

    for bw, dbw in [
        (0.5, 1.0),
        (np.array([[0.3, 0.1], [0.1, 0.4]]), np.array([[1.0, -0.5], [-0.5, 0.7]])),
    ]:
        g_bw, g_w = jax.grad(f, argnums=(0, 1))(jnp.asarray(bw), jnp.asarray(w))
        dw = rng.standard_normal(300)
        eps = 1e-6
        fd_bw = (f(bw + eps * dbw, w) - f(bw - eps * dbw, w)) / (2 * eps)
        fd_w = (f(bw, w + eps * dw) - f(bw, w - eps * dw)) / (2 * eps)
        np.testing.assert_allclose(np.sum(g_bw * dbw), fd_bw, rtol=1e-6)
        np.testing.assert_allclose(np.dot(g_w, dw), fd_w, rtol=1e-6, atol=1e-9)


def test_jit_and_vmap_over_bandwidths(dtype):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((500, 1)).astype(dtype)
    lo, hi = np.array([-6.0], dtype), np.array([6.0], dtype)
    hs = jnp.asarray([0.2, 0.3, 0.5], dtype)

    @jax.jit
    def grid(h):
        model = kde.fit(data, bandwidth=h, kernel="epanechnikov", validate=False)
        return kde.grid_log_prob(model, 128, lower=lo, upper=hi).log_density

    batched = jax.vmap(grid)(hs)
    assert batched.shape == (3, 128)
    assert batched.dtype == dtype
    for i, h in enumerate(hs):
        np.testing.assert_allclose(
            batched[i], grid(h), rtol=1e-5 if dtype == np.float32 else 1e-12
        )
    # The automatic grid under vmap too (one grid per bandwidth), through
    # log_prob's one-call form.
    q = data[:50]

    def binned(h):
        model = kde.fit(data, bandwidth=h, validate=False)
        return kde.log_prob(model, q, method="binned", grid_size=64)

    auto = jax.vmap(binned)(hs)
    np.testing.assert_allclose(
        auto[1], binned(hs[1]), rtol=1e-4 if dtype == np.float32 else 1e-12
    )


def test_weights_act_through_their_ratio(x64):
    rng = np.random.default_rng(2)
    data = rng.standard_normal((200, 2))
    w = rng.integers(1, 4, 200).astype(float)
    lo, hi = np.array([-6.0, -6.0]), np.array([6.0, 6.0])

    def run(d, sw):
        return _binned.grid_log_density(
            d, 0.5, (32, 32), lower=lo, upper=hi, sample_weight=sw
        )[0]

    base = np.exp(run(data, w))
    tol = dict(rtol=1e-10, atol=1e-13 * base.max())  # FFT round-off in the tails
    np.testing.assert_allclose(np.exp(run(data, 3.7 * w)), base, **tol)
    repeated = np.repeat(data, w.astype(int), axis=0)
    np.testing.assert_allclose(np.exp(run(repeated, None)), base, **tol)


def test_shard_map_equals_unsharded(x64, mesh):
    rng = np.random.default_rng(4)
    data = rng.standard_normal((400, 2))
    w = rng.uniform(0.5, 1.5, 400)

    def grid(data, w):
        return _binned.grid_log_density(
            data, 0.4, (32, 32), sample_weight=w, axis_name="data"
        )

    sharded = jax.shard_map(
        grid, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()
    )
    out, lo, hi = sharded(data, w)
    ref, lo_ref, hi_ref = _binned.grid_log_density(data, 0.4, (32, 32), sample_weight=w)
    np.testing.assert_allclose(lo, lo_ref)
    np.testing.assert_allclose(hi, hi_ref)
    ref = np.exp(ref)
    np.testing.assert_allclose(np.exp(out), ref, rtol=1e-10, atol=1e-13 * ref.max())


def test_use_grid_rule(x64):
    lo, hi = np.array([-5.0]), np.array([5.0])
    # Fine grid (spacing 0.0024 h): the grid; coarse grid: exact.
    assert _binned.use_grid("gaussian", 1.0, lo, hi, (4096,), 10**6, 4096)
    assert not _binned.use_grid("gaussian", 0.01, lo, hi, (256,), 10**6, 256)
    # Few points: the exact sums are cheaper.
    assert not _binned.use_grid("gaussian", 1.0, lo, hi, (4096,), 10, 10)
    # Compact kernels converge at first order: a finer grid is needed.
    assert not _binned.use_grid("tophat", 0.1, lo, hi, (1024,), 10**6, 10**4)


def test_log_prob_methods(x64):
    """auto = binned (exact where the grid resolves nothing) on a large problem."""
    c = _case(1, "gaussian")  # 600 weighted points: n m is large enough
    data = c["data"]
    rng = np.random.default_rng(5)
    queries = np.concatenate([rng.uniform(-2, 2, (299, 1)), [[40.0]]])
    model = kde.fit(data, bandwidth=c["bw"], sample_weight=c["w"])
    exact = kde.log_prob(model, queries, method="exact")
    binned = kde.log_prob(model, queries, method="binned")
    auto = kde.log_prob(model, queries)
    grid = kde.grid_log_prob(model)
    assert grid.points.shape == (kde.DEFAULT_GRID_SIZE[1], 1)
    np.testing.assert_array_equal(auto[:-1], binned[:-1])
    err = np.abs(np.exp(binned[:-1]) - np.exp(exact[:-1]))
    assert err.max() <= grid.interp_error_bound
    # The far query: -inf on the grid, the exact (finite) value from auto.
    assert binned[-1] == -np.inf
    np.testing.assert_allclose(auto[-1], exact[-1], rtol=1e-12)
    # Small problems (one query: the exact sums are cheaper), and traced
    # inputs, take the exact sums.
    far = kde.log_prob(model, queries[-1:])
    np.testing.assert_array_equal(
        far, kde.log_prob(model, queries[-1:], method="exact")
    )
    np.testing.assert_array_equal(far, auto[-1:])  # the same compiled exact sums
    np.testing.assert_array_equal(jax.jit(kde.log_prob)(model, queries), exact)


def _model(d):
    """A KDE of 5 points, built without kde.fit (no computation to compile)."""
    one = jnp.ones(())
    return kde.KDE(jnp.zeros((5, d)), jnp.ones(5), one, one, one, "gaussian")


def test_binned_api_rejects_bad_input():
    model4 = _model(4)
    with pytest.raises(ValueError, match="d <= 3"):
        kde.log_prob(model4, np.zeros((2, 4)), method="binned")
    with pytest.raises(ValueError, match="d <= 3"):
        kde.grid_log_prob(model4)
    model = _model(2)
    with pytest.raises(ValueError, match="method"):
        kde.log_prob(model, np.zeros((2, 2)), method="fft")
    with pytest.raises(ValueError, match="grid_size"):
        kde.grid_log_prob(model, (16, 16, 16))
    with pytest.raises(ValueError, match="grid_size"):
        kde.grid_log_prob(model, 1)
    with pytest.raises(ValueError, match="together"):
        kde.grid_log_prob(model, 16, lower=np.zeros(2))
    with pytest.raises(TypeError, match="grid"):
        kde.interpolate(model, np.zeros((2, 2)))
    with pytest.raises(TypeError, match="model"):
        kde.grid_log_prob(np.zeros((5, 2)))
