"""Tests for densax.ot.sinkhorn: plans, the online and cached kernels, the starts.

Split from ``test_sinkhorn.py`` (same data and conventions; see its docstring).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sinkhorn_data import (
    EPS,
    TIGHT,
    M,
    N,
    large_problem,
    sample_problem,
    sq_cost,
    storage_options,
)
from ott.geometry import costs, pointcloud

import densax
from densax.ot import _acceleration, _kernel, _starts
from densax.ot import _geometry as geometry
from densax.ot._config import resolve as _resolve

# ---------------------------------------------------------------------------
# Plans, online mode, dtypes


def test_plan_marginals_and_apply(dtype):
    x, y, a, b = sample_problem(dtype)
    out = densax.ot.sinkhorn(x, y, a=a, b=b, epsilon=EPS, tol=1e-4)
    for leaf in (out.f, out.g, out.reg_cost, out.transport_cost, out.trace):
        assert leaf.dtype == dtype
    plan = densax.ot.transport_plan(out)
    assert plan.shape == (N, M) and plan.dtype == dtype
    err = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    # The reported error is the L1 marginal error of the returned plan.
    k = int(out.n_iter)
    np.testing.assert_allclose(err, out.trace[k - 1], rtol=1e-3, atol=1e-6)
    assert err <= 1e-4 and np.all(np.isnan(np.asarray(out.trace[k:])))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        np.sum(plan * sq_cost(x, y)), out.transport_cost, rtol=tol * 10
    )
    v = np.linspace(-1, 1, 2 * M, dtype=dtype).reshape(M, 2)
    u = np.linspace(-1, 1, N, dtype=dtype)
    for store in (dict(storage="auto"), storage_options(5)):
        pv = densax.ot.apply_plan(out, v, **store)
        np.testing.assert_allclose(pv, plan @ v, rtol=tol, atol=tol)
        ptu = densax.ot.apply_plan(out, u, transpose=True, **store)
        np.testing.assert_allclose(ptu, plan.T @ u, rtol=tol, atol=tol)
    np.testing.assert_allclose(
        densax.ot.transport_plan(out, storage="online", block_size=5),
        plan,
        rtol=tol,
        atol=tol,
    )


def test_online_equals_dense(dtype):
    x, y, a, b = sample_problem(dtype)
    dense = densax.ot.sinkhorn_divergence(x, y, a=a, b=b, epsilon=EPS, storage="dense")
    online = densax.ot.sinkhorn_divergence(
        x, y, a=a, b=b, epsilon=EPS, storage="online", block_size=7
    )
    # Same iterations; only the summation order differs.
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.array_equal(dense.n_iter, online.n_iter)
    np.testing.assert_allclose(online.divergence, dense.divergence, rtol=rtol)
    np.testing.assert_allclose(online.xy.f, dense.xy.f, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(online.f_xx, dense.f_xx, rtol=rtol, atol=rtol)
    # (Online gradients: see test_sharded_equals_single_device.)


def test_cached_kernel_equals_online(x64):
    # float64: the algebra of the cached kernel (squared by levels, rebuilt,
    # scalings) equals the online passes to rounding. (float32 kernels:
    # test_kernel_rebuilds_when_scalings_drift, test_tiny_epsilon_*.)
    dtype = np.float64
    x, y, a, b = large_problem(dtype)
    eps = 0.02 * float(np.mean(sq_cost(x, y)))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    # Each exponent (f_i + g_j - C_ij) / eps carries a rounding error of
    # ~u max|C| / eps: potentials computed in a different order (a product
    # with a cached kernel instead of exponentials) differ by a few u max|C|.
    atol = 20 * np.finfo(dtype).eps * float(np.max(sq_cost(x, y)))
    for opts in (
        {},  # annealing by squaring the kernel (1 / q = 2)
        dict(epsilon_scaling=0.3),  # non-integer 1 / q: rebuilt at each level
        dict(epsilon_scaling=None),
        dict(max_iter=2),  # stopped while annealing: outputs by passes
    ):
        kw = dict(a=a, b=b, epsilon=eps, **opts)
        online = densax.ot.sinkhorn(
            x, y, storage="online", block_size=64, **kw
        )  # no kernel
        # The kernel built online; from the dense C (the same loop) for the
        # first and last options.
        dense = ("dense",) if opts in ({}, dict(max_iter=2)) else ()
        for storage in ("kernel", *dense):
            out = densax.ot.sinkhorn(x, y, storage=storage, **kw)
            assert int(out.n_iter) == int(online.n_iter), (opts, storage)
            assert bool(out.converged) == bool(online.converged)
            for key in ("reg_cost", "transport_cost", "f", "g"):
                np.testing.assert_allclose(
                    getattr(out, key), getattr(online, key), rtol=rtol, atol=atol
                )


def test_kernel_rebuilds_when_scalings_drift():
    # The documented interface of the cached kernel: built at (f0, g0, eps)
    # with zero rows at -inf potentials, and stale (the loop rebuilds it)
    # when epsilon changes or a finite potential drifts by more than
    # -eps log(tiny) / 4 (21.8 eps in float32) from where it was built.
    x, y, a, b = sample_problem(np.float32)
    cost_fn, eps = costs.SqEuclidean(), jnp.float32(EPS)
    geom = geometry.make_geom(cost_fn, x, y, None, None)
    f = jnp.log(jnp.asarray(a)).at[0].set(-jnp.inf)  # a zero weight
    g = geometry.hard_transform(cost_fn, geom, f, block_size=None, axis_name=None)
    kern = _kernel.build_kernel(cost_fn, geom, f, g, eps)
    ref = np.exp((np.asarray(f)[:, None] + np.asarray(g)[None] - geom.cost) / EPS)
    np.testing.assert_allclose(kern.k, ref, rtol=1e-5, atol=1e-30)
    assert np.all(np.asarray(kern.k)[0] == 0)
    bound = -0.25 * EPS * np.log(np.finfo(np.float32).tiny)
    stale = lambda f, g, e=eps: bool(_kernel.stale(kern, f, g, e, None))
    assert not stale(f, g) and not stale(f + 0.9 * bound, g - 0.9 * bound)
    assert stale(f.at[3].add(1.1 * bound), g) and stale(f, g.at[2].add(-1.1 * bound))
    assert stale(f, g, 0.5 * eps)
    # End to end: float32 at a small epsilon, where the potentials drift far
    # from every build, against a converged float64 reference.
    x, y, a, b = large_problem(np.float32)
    eps = 2e-3 * float(np.mean(sq_cost(x, y)))
    out = densax.ot.sinkhorn(x, y, a=a, b=b, epsilon=eps)
    assert out.config.storage == "kernel" and bool(out.converged)
    with jax.enable_x64(True):
        x64, y64, a64, b64 = large_problem(np.float64)
        ref = densax.ot.sinkhorn(
            x64,
            y64,
            a=a64,
            b=b64,
            epsilon=eps,
            tol=TIGHT,
            storage="online",
            block_size=64,
        )
        ref_cost = float(ref.reg_cost)
    # float32 against a converged float64 reference (2e-8 when written).
    np.testing.assert_allclose(out.reg_cost, ref_cost, rtol=1e-5)


def test_ball_transform_bounds_the_hard_transform(x64):
    # Loops that cache the kernel start from g_j = max(|y_j - c| - R, 0)^2 -
    # max f (c the weighted mean of x, R its radius), a lower bound of
    # min_i (C_ij - f_i) that needs no pass over the costs. y is moved so
    # that 12 of its 18 points lie outside the ball (the bound is not -max f).
    x, y, a, _ = sample_problem()
    y = y + np.array([1.0, 0.0])
    cost_fn = costs.SqEuclidean()
    geom = geometry.make_geom(cost_fn, x, y, 8, None)
    f = np.log(a)
    bound = geometry.ball_transform(geom, a, jnp.asarray(f), None)
    exact = np.min(sq_cost(x, y) - f[:, None], axis=0)
    assert np.all(np.asarray(bound) <= exact + 1e-12)
    outside = np.asarray(bound) > -np.max(f)
    assert 0 < outside.sum() < M  # both cases occur


def test_far_clouds_with_a_loose_start_bound_equal_online(dtype):
    # The zero start's bound. An outlier of x on the side away from y makes
    # the ball's radius large:
    # the start bound is ~136 below the true minimum, hundreds of epsilon,
    # so the first cached kernel underflows (float32) or is stale, and is
    # rebuilt. Converged tightly, the solve must match the online one, which
    # starts from the exact minimum.
    x, y, a, b = large_problem(dtype)
    x = 0.1 * x
    x[0] = [-10.0, 0.0]
    y = 0.1 * y + np.asarray([12.0, 0.0], dtype)
    tight, rtol = (1e-5, 1e-5) if dtype == np.float32 else (TIGHT, 1e-10)
    kw = dict(
        a=a, b=b, epsilon=0.5, epsilon_scaling=None, tol=tight, initializer="zero"
    )
    online = densax.ot.sinkhorn(x, y, storage="online", block_size=64, **kw)
    out = densax.ot.sinkhorn(x, y, storage="auto", **kw)
    assert bool(out.converged) and bool(online.converged)
    for key in ("reg_cost", "transport_cost"):
        np.testing.assert_allclose(getattr(out, key), getattr(online, key), rtol=rtol)


def _soft_transform(quad, lin, mean, cov, eps):
    """Quadratic part ``(F', l')`` of ``-eps log E exp((p(z) - |z - w|^2) / eps)``.

    ``p(z) = z^T F z + l . z`` and ``z ~ N(mean, cov)``: a Gaussian integral
    (constants dropped).
    """
    eye = np.eye(len(mean))
    prec = np.linalg.inv(cov)
    m_inv = np.linalg.inv(prec + 2.0 * (eye - quad) / eps)
    h0 = prec @ mean + lin / eps
    return eye - 2.0 / eps * m_inv, -2.0 * m_inv @ h0


def test_gaussian_start_is_the_entropic_fixed_point(x64):
    # Between two Gaussians the entropic potentials are quadratics: the
    # start's f must be a fixed point of the two soft c-transforms (Gaussian
    # integrals in closed form), and its g the hard c-transform of f over
    # R^d. Covariances that do not commute, and two epsilons.
    rng = np.random.default_rng(3)
    mu, nu = np.array([0.3, -1.0]), np.array([2.0, 0.5])
    root_s, root_t = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    cov_s = root_s @ root_s.T + 0.2 * np.eye(2)
    cov_t = root_t @ root_t.T + 0.1 * np.eye(2)
    pts = rng.normal(size=(12, 2)) * 2.0
    monomials = np.stack(
        [pts[:, 0] ** 2, pts[:, 0] * pts[:, 1], pts[:, 1] ** 2, *pts.T, np.ones(12)], 1
    )
    for eps in (0.3, 3.0):
        geom = geometry.Geom(jnp.asarray(pts), jnp.asarray(pts), None, None)
        f0, g0 = _starts.gaussian_start(
            geom, jnp.asarray(mu), jnp.asarray(nu), (cov_s, cov_t), eps
        )
        coef = np.linalg.lstsq(monomials, np.asarray(f0), rcond=None)[0]
        np.testing.assert_allclose(monomials @ coef, f0, atol=1e-10)  # quadratic
        quad = np.array([[coef[0], coef[1] / 2], [coef[1] / 2, coef[2]]])
        lin = coef[3:5]
        g_quad, g_lin = _soft_transform(quad, lin, mu, cov_s, eps)
        f_quad, f_lin = _soft_transform(g_quad, g_lin, nu, cov_t, eps)
        np.testing.assert_allclose(f_quad, quad, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(f_lin, lin, rtol=1e-6, atol=1e-7)
        # g0(y) = min_x |x - y|^2 - f0(x) = |y|^2 - (2y + l)^T (I - F)^-1 (2y + l) / 4
        # up to f0's constant.
        z = 2.0 * pts + lin
        hard = np.sum(pts**2, 1) - 0.25 * np.einsum(
            "ij,jk,ik->i", z, np.linalg.inv(np.eye(2) - quad), z
        )
        np.testing.assert_allclose(g0 + coef[5], hard, atol=1e-8)


@pytest.mark.parametrize(
    "n, m, d, spread",
    [(30, 20, 3, 1.0), (1, 20, 3, 1.0), (30, 20, 3, 0.0), (3, 4, 5, 1.0)],
    ids=["clouds", "one-point", "flat-x", "d>n"],
)
def test_gaussian_start_bounds_the_costs(dtype, n, m, d, spread):
    # f0_i + g0_j <= C_ij (every exponent of the first kernel <= 0), with
    # finite values for one point, a cloud of equal points, and d > n.
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(n, d)) * spread + 5.0).astype(dtype)
    y = (rng.normal(size=(m, d)) * 2.0).astype(dtype)
    a = np.full(n, 1.0 / n, dtype)
    b = np.full(m, 1.0 / m, dtype)
    geom = geometry.make_geom(costs.SqEuclidean(), x, y, 64, None)
    u = np.asarray(geom.x) - a @ np.asarray(geom.x)
    w = np.asarray(geom.y) - b @ np.asarray(geom.y)
    covs = (jnp.asarray((u * a[:, None]).T @ u), jnp.asarray((w * b[:, None]).T @ w))
    f0, g0 = _starts.gaussian_start(
        geom, a @ geom.x, b @ geom.y, covs, jnp.asarray(0.5, dtype)
    )
    assert np.all(np.isfinite(f0)) and np.all(np.isfinite(g0))
    excess = np.asarray(f0)[:, None] + np.asarray(g0)[None] - sq_cost(geom.x, geom.y)
    scale = np.max(sq_cost(geom.x, geom.y)) + np.max(np.abs(f0))
    tol = 1e-5 if dtype == np.float32 else 1e-12  # rounding of the expansion
    assert np.max(excess) <= tol * scale
    if dtype == np.float32:  # a solve from it (one compilation per shape)
        out = densax.ot.sinkhorn(x, y, epsilon=0.5, initializer="gaussian")
        assert bool(out.converged) and np.isfinite(float(out.reg_cost))


@pytest.mark.parametrize("block", [None, "kernel", 8])
def test_gaussian_and_zero_starts_agree(x64, block):
    # Same fixed point from both starts, cached kernel or not; on Gaussian
    # clouds the Gaussian start is far closer to it.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 3))
    y = rng.normal(size=(100, 3)) @ np.diag([0.5, 1.0, 2.0]) + 1.0
    kw = dict(epsilon=1.0, tol=TIGHT, **storage_options(block), epsilon_scaling=None)
    gauss = densax.ot.sinkhorn(x, y, initializer="gaussian", **kw)
    zero = densax.ot.sinkhorn(x, y, initializer="zero", **kw)
    assert bool(gauss.converged) and bool(zero.converged)
    np.testing.assert_allclose(gauss.reg_cost, zero.reg_cost, rtol=1e-10)
    np.testing.assert_allclose(gauss.f, zero.f, atol=1e-8)
    np.testing.assert_allclose(gauss.g, zero.g, atol=1e-8)
    assert gauss.trace[0] < zero.trace[0] / 5  # after the first iteration
    div = [
        densax.ot.sinkhorn_divergence(x, y, initializer=init, **kw)
        for init in ("gaussian", "zero")
    ]
    np.testing.assert_allclose(div[0].divergence, div[1].divergence, rtol=1e-9)
    np.testing.assert_allclose(div[0].f_xx, div[1].f_xx, atol=1e-8)


def test_initializer_options():
    # "auto": Gaussian for the squared Euclidean cost when d^3 <= n m, then
    # no annealing ("auto" epsilon_scaling); the zero start anneals. The one
    # resolver's choices are what the output records.
    resolve = lambda cost_fn, n, m, d, **kw: _resolve(
        densax.ot.SinkhornConfig(), cost_fn=cost_fn, n=n, m=m, d=d, **kw
    )[0]
    sq, l1 = costs.SqEuclidean(), costs.Euclidean()
    assert resolve(sq, 10, 10, 4).initializer == "gaussian"
    assert resolve(sq, 10, 10, 4).epsilon_scaling is None
    assert resolve(sq, 10, 10, 5).initializer == "zero"  # 125 > 100
    assert resolve(sq, 10, 10, 5).epsilon_scaling == 0.5
    assert resolve(l1, 10, 10, 2).initializer == "zero"
    assert resolve(None, 10, 10, 0, matrix=True).initializer == "zero"
    assert resolve(sq, 10, 10, 2, warm=True).initializer == "warm"
    assert resolve(sq, 10, 10, 2, warm=True).epsilon_scaling is None
    with pytest.raises(ValueError, match="initializer"):
        _resolve(
            densax.ot.SinkhornConfig(initializer="gaussian"),
            cost_fn=l1,
            n=10,
            m=10,
            d=2,
        )
    x, y, _, _ = sample_problem()
    kw = dict(epsilon=0.05, tol=1e-6)
    for init, scaling in (("gaussian", None), ("zero", 0.5)):
        auto = densax.ot.sinkhorn(x, y, initializer=init, **kw)
        explicit = densax.ot.sinkhorn(
            x, y, initializer=init, epsilon_scaling=scaling, **kw
        )
        np.testing.assert_array_equal(auto.trace, explicit.trace)
    with pytest.raises(ValueError, match="initializer"):
        densax.ot.sinkhorn(x, y, cost_fn=l1, initializer="gaussian")


def test_no_annealing_within_two_levels_of_the_start(x64):
    # Annealing runs only when epsilon is at least 1 / q^2 (4x) below the
    # start (the cost's spread): closer, a level's kernel squaring is not
    # repaid. Then the solve is the plain one, iteration for iteration.
    x, y, a, b = large_problem(np.float64)
    cost = sq_cost(x, y)
    w = a[:, None] * b[None, :]
    spread = np.sqrt(np.sum(w * (cost - np.sum(w * cost)) ** 2))
    for ratio, anneals in ((3.5, False), (4.5, True)):
        kw = dict(a=a, b=b, epsilon=spread / ratio, initializer="zero")
        out = densax.ot.sinkhorn(x, y, **kw)
        plain = densax.ot.sinkhorn(x, y, epsilon_scaling=None, **kw)
        same = np.array_equal(out.trace, plain.trace, equal_nan=True)
        assert same != anneals, ratio
        assert bool(out.converged)


def test_solve_stopped_while_annealing_reports_its_own_dual_value(x64):
    # Two iterations end above epsilon: the loop's last pass is at another
    # epsilon, so the plan's mass comes from a pass at the returned
    # potentials. Reference: the dual objective in closed form.
    x, y, a, b = large_problem(np.float64)
    eps = 0.02 * float(np.mean(sq_cost(x, y)))

    def dual(f, g, wa, wb, cost):
        plan_mass = np.exp((f[:, None] + g[None] - cost) / eps).sum()
        fa, gb = wa @ (f - eps * np.log(wa)), wb @ (g - eps * np.log(wb))
        return fa + gb - eps * (plan_mass - 1.0)

    kw = dict(a=a, b=b, epsilon=eps, max_iter=2)
    for block in ("auto", None, 64):  # cached kernel online, dense, no kernel
        out = densax.ot.sinkhorn(x, y, **storage_options(block), **kw)
        assert not bool(out.converged)
        ref = dual(np.asarray(out.f), np.asarray(out.g), a, b, sq_cost(x, y))
        np.testing.assert_allclose(out.reg_cost, ref, rtol=1e-12)
        div = densax.ot.sinkhorn_divergence(x, y, **storage_options(block), **kw)
        xy = dual(np.asarray(div.xy.f), np.asarray(div.xy.g), a, b, sq_cost(x, y))
        f_xx, g_yy = np.asarray(div.f_xx), np.asarray(div.g_yy)
        xx = dual(f_xx, f_xx, a, a, sq_cost(x, x))
        yy = dual(g_yy, g_yy, b, b, sq_cost(y, y))
        np.testing.assert_allclose(div.divergence, xy - 0.5 * (xx + yy), rtol=1e-10)


@pytest.mark.parametrize("cost_fn", [costs.SqEuclidean(), costs.Euclidean()])
def test_one_pass_iteration_keeps_tiny_columns(cost_fn):
    # An online iteration takes the column masses and, from the same stripe
    # rescaled, the row masses at the new g (_one_pass). In columns whose
    # mass is below float32's smallest normal, every entry would flush to 0,
    # yet after the step (from the mass floored at tiny, as in the two-pass
    # update) they hold a fair share of b_j. Exponents shifted by
    # -log(tiny) / 2 keep them. Reference: the same half-steps in float64.
    x, y, _, b = sample_problem(np.float32)
    eps = jnp.float32(EPS)
    geom = geometry.make_geom(cost_fn, x, y, 5, None)
    f = jnp.zeros(N, jnp.float32)
    g = geometry.hard_transform(cost_fn, geom, f, block_size=5, axis_name=None)
    g = g.at[::3].add(-92.0 * eps)  # column masses in [e^-92, 24 e^-92]
    step, col_err, r = geometry.one_pass(
        cost_fn,
        geom,
        f,
        g,
        eps,
        b,
        jnp.log(b),
        lambda step: _acceleration.relax(step, 1.3),
        block_size=5,
        axis_name=None,
    )
    sq = sq_cost(x, y)
    cost = sq if type(cost_fn) is costs.SqEuclidean else np.sqrt(sq)
    v = (np.asarray(g, np.float64)[None, :] - cost) / EPS
    t = np.exp(v).sum(0)
    tiny = np.finfo(np.float32).tiny
    assert np.all(t[::3] < tiny)
    ref_step = np.log(b) - np.log(np.maximum(t, tiny))
    ref_step = ref_step + 0.3 * np.clip(ref_step, -5.0, 5.0)  # omega = 1.3
    np.testing.assert_allclose(step, ref_step, rtol=1e-6, atol=1e-4)
    ref_err = np.sum(np.abs(t * np.exp(ref_step) - b))
    np.testing.assert_allclose(col_err, ref_err, rtol=1e-4)
    ref_r = np.exp(v + np.asarray(step, np.float64)[None, :]).sum(1)
    np.testing.assert_allclose(r, ref_r, rtol=1e-5)


@pytest.mark.parametrize("cost_fn", [costs.SqEuclidean(), costs.Euclidean()])
@pytest.mark.parametrize("block", [None, 5])
def test_cost_scale_and_spread(x64, cost_fn, block):
    # The mean cost (default epsilon) and its standard deviation under a ⊗ b
    # (annealing start): closed form from moments for the squared Euclidean
    # cost, a pass otherwise. y is moved away from x so that the closed
    # form's terms in the difference of the means matter.
    x, y, a, b = sample_problem()
    y = y + 3.0
    geom = geometry.make_geom(cost_fn, x, y, block, None)
    mean, spread, _ = geometry.cost_scale(
        cost_fn, geom, a, b, block_size=block, axis_name=None
    )
    sq = sq_cost(x, y)
    cost = sq if type(cost_fn) is costs.SqEuclidean else np.sqrt(sq)
    w = a[:, None] * b[None, :]
    ref_mean = np.sum(w * cost)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(
        spread, np.sqrt(np.sum(w * (cost - ref_mean) ** 2)), rtol=1e-10
    )


def test_auto_block_rows():
    # About 2^20 entries a block, at least 64 rows for the squared Euclidean
    # cost (narrower products are 4x slower an entry), 8 for other costs.
    sq, other = costs.SqEuclidean(), costs.Euclidean()

    def resolve(n, m, cost_fn, **kw):
        config = densax.ot.SinkhornConfig(**kw)
        return _resolve(config, cost_fn=cost_fn, n=n, m=m, d=2)[0]

    assert resolve(8192, 4096, sq).block_size == 128
    assert resolve(8192, 4096, sq).storage == "kernel"  # 2^25 entries
    assert resolve(10**5, 10**5, sq).block_size == 64
    assert resolve(10**5, 10**5, sq).storage == "online"
    assert resolve(10**5, 10**5, other).block_size == 10
    assert resolve(100, 100, sq).storage == "dense"
    assert resolve(100, 100, sq).block_size is None
    assert resolve(100, 100, sq, storage="online").block_size == 1024
    assert resolve(8192, 4096, sq, differentiation="unroll").storage == "online"


def test_defaults_and_output_fields(x64):
    x, y, a, b = sample_problem()
    out = densax.ot.sinkhorn(x, y, a=a * 3.0, b=b)  # weights are normalised
    mean_cost = np.sum(a[:, None] * b[None] * sq_cost(x, y))
    np.testing.assert_allclose(out.epsilon, 0.05 * mean_cost, rtol=1e-12)
    np.testing.assert_allclose(out.a, a, rtol=1e-12)
    # Gauge: <a, f> = <b, g>.
    np.testing.assert_allclose(np.dot(a, out.f), np.dot(b, out.g), atol=1e-12)
    # Plain Sinkhorn without annealing reaches the same solution, slower.
    plain = densax.ot.sinkhorn(
        x, y, a=a, b=b, tol=1e-10, relaxation=1.0, epsilon_scaling=None
    )
    fast = densax.ot.sinkhorn(x, y, a=a, b=b, tol=1e-10)
    np.testing.assert_allclose(fast.f, plain.f, atol=1e-9)
    assert int(fast.n_iter) < int(plain.n_iter)


def test_pointcloud_and_to_ott(x64):
    x, y, _, _ = sample_problem()
    geom = pointcloud.PointCloud(x, y, epsilon=EPS)
    out = densax.ot.sinkhorn(geom, tol=1e-9)
    ref = densax.ot.sinkhorn(x, y, epsilon=EPS, tol=1e-9)
    np.testing.assert_allclose(out.reg_cost, ref.reg_cost, rtol=1e-12)
    as_ott = densax.ot.to_ott(out)
    np.testing.assert_allclose(as_ott.matrix, densax.ot.transport_plan(out), rtol=1e-12)
    np.testing.assert_allclose(as_ott.primal_cost, out.transport_cost, rtol=1e-10)
    np.testing.assert_allclose(as_ott.reg_ot_cost, out.reg_cost, rtol=1e-12)
    assert int(as_ott.n_iters) == int(out.n_iter)


@pytest.mark.parametrize(
    "block, cost_fn",
    # Dense passes read the stored cost whatever the cost function; online
    # ones take the matrix-product path (squared Euclidean) or row_pass.
    [(None, costs.SqEuclidean()), (7, costs.SqEuclidean()), (7, costs.Euclidean())],
    ids=["dense", "online-sqeuclidean", "online-euclidean"],
)
def test_zero_weights(x64, block, cost_fn):
    x, y, a, b = sample_problem()
    a, b = a.copy(), b.copy()
    a[:3] = 0.0
    b[-2:] = 0.0
    kw = dict(epsilon=EPS, **storage_options(block), cost_fn=cost_fn)
    out = densax.ot.sinkhorn(x, y, a=a, b=b, tol=TIGHT, **kw)
    sub = densax.ot.sinkhorn(x[3:], y[:-2], a=a[3:], b=b[:-2], tol=TIGHT, **kw)
    assert out.converged and np.all(np.isneginf(out.f[:3]))
    assert np.all(np.isneginf(out.g[-2:]))
    np.testing.assert_allclose(out.reg_cost, sub.reg_cost, rtol=1e-10)
    np.testing.assert_allclose(out.transport_cost, sub.transport_cost, rtol=1e-10)
    np.testing.assert_allclose(out.f[3:], sub.f, atol=1e-9)
    np.testing.assert_allclose(out.g[:-2], sub.g, atol=1e-9)
    plan = densax.ot.transport_plan(out)
    assert np.all(plan[:3] == 0) and np.all(plan[:, -2:] == 0)
    for key, how in (("reg_cost", "envelope"), ("transport_cost", "implicit")):
        grad = jax.grad(
            lambda x, key=key, how=how: getattr(
                densax.ot.sinkhorn(x, y, a=a, b=b, differentiation=how, **kw), key
            )
        )(x)
        assert np.all(np.isfinite(grad)) and np.all(grad[:3] == 0)
    grad = jax.grad(
        lambda x: densax.ot.sinkhorn_divergence(x, y, a=a, b=b, **kw).divergence
    )(x)
    assert np.all(np.isfinite(grad)) and np.all(grad[:3] == 0)
