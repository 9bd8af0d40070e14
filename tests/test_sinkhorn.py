"""Tests for densax.ot.sinkhorn and densax.ot.divergence (exported by densax.ot).

References: ott-jax (dense Sinkhorn, Sinkhorn divergence), POT (``sinkhorn``
with ``method="sinkhorn_log"``, ``sinkhorn2``, ``emd2``) and densax's exact
``wasserstein_1d``. Reference comparisons run in float64 with every solver
converged to an L1 marginal error of 1e-11 or less, so agreement is limited
by rounding (~1e-12 relative), and 1e-9 tolerances are used where the issue
asks for 1e-6.

Shapes are few on purpose (n=24, m=18 and d=2 for most tests): each shape and
option set compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from _sinkhorn_data import (
    EPS,
    TIGHT,
    D,
    M,
    N,
    gauge,
    large_problem,
    sample_problem,
    sq_cost,
    storage_options,
)
from jax.sharding import PartitionSpec as P
from ott.geometry import costs, pointcloud
from ott.solvers import linear
from ott.tools import sinkhorn_divergence as ott_divergence

import densax

# ---------------------------------------------------------------------------
# References (float64)


def test_matches_ott_and_pot(x64):
    x, y, a, b = sample_problem()
    out = densax.ot.sinkhorn(x, y, a=a, b=b, epsilon=EPS, tol=TIGHT)
    assert bool(out.converged)
    cost = sq_cost(x, y)

    ott_out = linear.solve(
        pointcloud.PointCloud(x, y, epsilon=EPS),
        a=a,
        b=b,
        threshold=TIGHT,
        max_iterations=20_000,
    )
    np.testing.assert_allclose(out.reg_cost, ott_out.reg_ot_cost, rtol=1e-9)
    np.testing.assert_allclose(out.transport_cost, ott_out.primal_cost, rtol=1e-9)
    f_ott, g_ott = gauge(np.asarray(ott_out.f), np.asarray(ott_out.g), a, b)
    np.testing.assert_allclose(out.f, f_ott, atol=1e-9)
    np.testing.assert_allclose(out.g, g_ott, atol=1e-9)

    # POT regularises with the entropy of P; on couplings it differs from
    # KL(P | a ⊗ b) by the constant H(a) + H(b): same plan, same potentials.
    plan, log = pot.sinkhorn(
        a,
        b,
        cost,
        EPS,
        method="sinkhorn_log",
        stopThr=1e-14,
        numItermax=100_000,
        log=True,
    )
    np.testing.assert_allclose(densax.ot.transport_plan(out), plan, atol=1e-12)
    f_pot, g_pot = gauge(EPS * log["log_u"], EPS * log["log_v"], a, b)
    np.testing.assert_allclose(out.f, f_pot, atol=1e-9)
    np.testing.assert_allclose(out.g, g_pot, atol=1e-9)
    cost2 = pot.sinkhorn2(
        a, b, cost, EPS, method="sinkhorn_log", stopThr=1e-14, numItermax=100_000
    )
    np.testing.assert_allclose(out.transport_cost, cost2, rtol=1e-9)
    kl = np.sum(plan * np.log(plan / np.outer(a, b)))
    np.testing.assert_allclose(out.reg_cost, np.sum(plan * cost) + EPS * kl, rtol=1e-9)


def test_divergence_matches_ott(x64):
    x, y, a, b = sample_problem()
    out = densax.ot.sinkhorn_divergence(x, y, a=a, b=b, epsilon=EPS, tol=TIGHT)
    ref, _ = ott_divergence.sinkhorn_divergence(
        pointcloud.PointCloud,
        x,
        y,
        a=a,
        b=b,
        epsilon=EPS,
        solve_kwargs={"threshold": TIGHT, "max_iterations": 20_000},
    )
    assert bool(out.converged)
    np.testing.assert_allclose(out.divergence, ref, rtol=1e-9)
    # The symmetric potential solves the self-problem: P 1 = a.
    p_xx = np.exp((out.f_xx[:, None] + out.f_xx[None] - sq_cost(x, x)) / EPS)
    np.testing.assert_allclose(p_xx.sum(1), a, atol=1e-10)
    # Zero iff the measures are equal (and positive otherwise).
    same = densax.ot.sinkhorn_divergence(x, x, a=a, b=a, epsilon=EPS, tol=TIGHT)
    assert abs(float(same.divergence)) < 1e-10
    assert float(out.divergence) > 0.1


def test_transport_objective_matches_pot_divergence(x64):
    # objective="transport": POT's empirical_sinkhorn_divergence (transport
    # costs <P, C> of the three problems, clipped at 0), not the
    # regularised costs of ott-jax and GeomLoss (the default).
    x, y, a, b = sample_problem()
    kw = dict(a=a, b=b, epsilon=EPS, tol=TIGHT)
    out = densax.ot.sinkhorn_divergence(x, y, objective="transport", **kw)
    ref = pot.bregman.empirical_sinkhorn_divergence(
        x, y, EPS, a=a, b=b, stopThr=1e-13, numIterMax=100_000
    )
    assert bool(out.converged)
    np.testing.assert_allclose(out.divergence, ref, rtol=1e-9)
    default = densax.ot.sinkhorn_divergence(x, y, **kw)
    assert abs(float(default.divergence) - float(ref)) > 1e-3  # not the same
    with pytest.raises(ValueError, match="objective"):
        densax.ot.sinkhorn_divergence(x, y, objective="reg")


def test_epsilon_to_zero_approaches_emd(x64):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, D)), rng.normal(size=(10, D)) + 0.5
    cost = sq_cost(x, y)
    exact = pot.emd2(np.full(10, 0.1), np.full(10, 0.1), cost)
    gaps = []
    for rel in (1e-1, 3e-2, 1e-2):
        eps = rel * cost.mean()
        out = densax.ot.sinkhorn(x, y, epsilon=eps, tol=1e-9)
        assert bool(out.converged)
        gap = float(out.transport_cost) - exact
        # 0 <= <P_eps, C> - OT <= eps (H(a) + H(b)) = 2 eps log 10 (up to the
        # marginal error, 1e-9 x max cost).
        assert -1e-8 <= gap <= 2 * eps * np.log(10)
        gaps.append(gap)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-2 * exact


def test_1d_matches_exact_wasserstein(x64):
    rng = np.random.default_rng(4)
    u = np.linspace(-2, 2, 16) + rng.uniform(-0.1, 0.1, 16)
    v = 0.7 * np.linspace(-2, 2, 16) + 1 + rng.uniform(-0.1, 0.1, 16)
    rng.shuffle(u)
    rng.shuffle(v)
    exact = densax.ot.wasserstein_1d(u, v, p=2)
    errors = []
    for eps in (0.1, 0.03):
        out = densax.ot.sinkhorn_divergence(
            u[:, None], v[:, None], epsilon=eps, tol=1e-10
        )
        assert bool(out.converged)
        errors.append(abs(np.sqrt(out.divergence) - exact) / exact)
    # Equal sizes and uniform weights: the optimal plan is a permutation, the
    # debiasing cancels the O(eps) term (eps log n in OT(a, b) and OT(a, a))
    # and the rest vanishes exponentially in 1/eps (measured: 1.5e-3 at
    # eps = 0.1, 2.3e-5 at eps = 0.03, for a cost scale of 2.3).
    assert errors[0] < 3e-3 and errors[1] < 5e-5
    np.testing.assert_allclose(
        densax.ot.wasserstein_entropic(u[:, None], v[:, None], epsilon=0.03, tol=1e-10),
        np.sqrt(out.divergence),
        rtol=1e-12,
    )


def test_general_cost_function(x64):
    x, y, a, b = sample_problem()
    cost_fn = costs.Euclidean()
    ref = linear.solve(
        pointcloud.PointCloud(x, y, cost_fn=cost_fn, epsilon=0.1),
        a=a,
        b=b,
        threshold=TIGHT,
        max_iterations=20_000,
    )
    for block in (None, 7):
        out = densax.ot.sinkhorn(
            x,
            y,
            a=a,
            b=b,
            epsilon=0.1,
            cost_fn=cost_fn,
            tol=TIGHT,
            **storage_options(block),
        )
        np.testing.assert_allclose(out.reg_cost, ref.reg_ot_cost, rtol=1e-9)
        np.testing.assert_allclose(out.transport_cost, ref.primal_cost, rtol=1e-9)


# ---------------------------------------------------------------------------
# Gradients (float64, directional finite differences)


def _directional_check(fun, args, scales, rtol, h=1e-5, seed=0):
    """Central difference along a random direction (relative for weights and
    epsilon): truncation O(h^2) ~1e-10, solver noise threshold / h ~1e-6."""
    rng = np.random.default_rng(seed)
    dirs = [rng.normal(size=np.shape(t)) * s for t, s in zip(args, scales, strict=True)]
    grads = jax.grad(fun, argnums=tuple(range(len(args))))(*args)
    analytic = sum(
        np.sum(np.asarray(g) * dv) for g, dv in zip(grads, dirs, strict=True)
    )
    plus = fun(*[t + h * dv for t, dv in zip(args, dirs, strict=True)])
    minus = fun(*[t - h * dv for t, dv in zip(args, dirs, strict=True)])
    numeric = (plus - minus) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol)


@pytest.mark.parametrize("mode", ["envelope", "implicit", "unroll"])
def test_gradients_match_finite_differences(x64, mode):
    x, y, a, b = sample_problem()
    rng = np.random.default_rng(1)
    w = rng.normal(size=N)
    kw = dict(tol=TIGHT, differentiation=mode, max_iter=400)

    def loss(x, y, a, b, eps):
        # Random combination of the outputs: one compilation checks them all.
        out = densax.ot.sinkhorn_divergence(x, y, a=a, b=b, epsilon=eps, **kw)
        value = out.divergence - 0.7 * out.xy.reg_cost
        if mode != "envelope":  # the potentials are differentiable
            value += (
                0.3 * out.xy.transport_cost
                + 0.05 * jnp.dot(w, out.xy.f)
                - 0.02 * jnp.dot(w, out.f_xx)
            )
        return value

    _directional_check(loss, (x, y, a, b, EPS), (1, 1, a, b, EPS), rtol=1e-7)


def test_envelope_refuses_potential_gradients():
    x, y, _, _ = sample_problem(np.float32)
    with pytest.raises(ValueError, match="differentiation='implicit'"):
        jax.grad(lambda x: densax.ot.sinkhorn(x, y, epsilon=EPS).transport_cost)(x)


def test_implicit_gradient_float32_small_epsilon():
    x, y, _, _ = sample_problem(np.float32)
    # epsilon = 0.01 x the mean cost: ott-jax 0.6's float32 implicit gradient
    # already fails here (its linear solve returns non-finite values).
    eps = 0.01 * float(np.mean(sq_cost(x, y)))

    def loss(x, dtype):
        out = densax.ot.sinkhorn(
            x.astype(dtype),
            y.astype(dtype),
            epsilon=eps,
            tol=1e-5,
            differentiation="implicit",
        )
        return out.transport_cost + jnp.sum(out.f**2)

    g32 = jax.grad(loss)(x, np.float32)
    assert np.all(np.isfinite(g32))
    with jax.enable_x64(True):
        g64 = jax.grad(loss)(x.astype(np.float64), np.float64)
    # Potentials in float32 carry ~1e-7 x |f| / eps ~ 1e-4 relative noise,
    # amplified by the (well-conditioned) solve: 1e-2 of the largest entry.
    np.testing.assert_allclose(g32, g64, atol=1e-2 * np.abs(g64).max())


# ---------------------------------------------------------------------------
# Transformations


def test_vmap_loop_shapes():
    # jit, vmap, no retracing, float64 of every function: test_ot_api.py.
    # Here: a vmapped while_loop runs each member to its own stop; a fixed
    # number of iterations (min_iter == max_iter) is a scan.
    x, y, _, _ = sample_problem(np.float32)
    ys = jnp.stack([y, y + 0.5, y * 2.0])
    eps = jnp.asarray([0.3, 0.5, 0.8], np.float32)
    batched = jax.vmap(lambda y, e: densax.ot.sinkhorn(x, y, epsilon=e))(ys, eps)
    fixed = jax.vmap(
        lambda y, e: densax.ot.sinkhorn(x, y, epsilon=e, min_iter=80, max_iter=80)
    )(ys, eps)
    online = jax.vmap(
        lambda y, e: densax.ot.sinkhorn(x, y, epsilon=e, storage="online", block_size=5)
    )
    online = online(ys, eps)
    assert np.all(np.asarray(fixed.n_iter) == 80)
    for k in range(3):
        single = densax.ot.sinkhorn(x, ys[k], epsilon=eps[k])
        assert int(batched.n_iter[k]) == int(single.n_iter)
        alone = densax.ot.sinkhorn(
            x, ys[k], epsilon=eps[k], storage="online", block_size=5
        )
        assert int(online.n_iter[k]) == int(alone.n_iter)
        np.testing.assert_allclose(online.reg_cost[k], alone.reg_cost, rtol=1e-6)
        np.testing.assert_allclose(batched.reg_cost[k], single.reg_cost, rtol=1e-6)
        # Fixed iterations: more than needed, converged, the same solution.
        assert bool(fixed.converged[k])
        np.testing.assert_allclose(fixed.reg_cost[k], single.reg_cost, rtol=1e-4)


def test_sharded_equals_single_device(mesh):
    x, y, a, _ = sample_problem(np.float32)  # N = 24 points split over 4 devices
    specs = (P("data"), P("data"), P())

    u = np.linspace(-1.0, 1.0, N, dtype=np.float32)  # split like x
    v = np.linspace(0.0, 2.0, M, dtype=np.float32)  # replicated like y

    def local(x, a, y, u, v):
        out = densax.ot.sinkhorn(x, y, a=a, epsilon=EPS, axis_name="data")
        plan = densax.ot.transport_plan(out, axis_name="data")  # local rows
        pv = densax.ot.apply_plan(out, v, axis_name="data")  # local rows
        ptu = densax.ot.apply_plan(out, u, transpose=True, axis_name="data")
        return out.f, out.g, out.reg_cost, out.n_iter, plan, pv, ptu

    f, g, reg, n_iter, plan, pv, ptu = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(*specs, P("data"), P()),
        out_specs=(P("data"), P(), P(), P(), P("data"), P("data"), P()),
    )(x, a, y, u, v)
    ref = densax.ot.sinkhorn(x, y, a=a, epsilon=EPS)
    assert int(n_iter) == int(ref.n_iter)
    np.testing.assert_allclose(reg, ref.reg_cost, rtol=1e-5)
    np.testing.assert_allclose(f, ref.f, atol=1e-4)
    np.testing.assert_allclose(g, ref.g, atol=1e-4)
    ref_plan = densax.ot.transport_plan(ref)
    # Potentials agree to 1e-4 / EPS relative: so do the plan's entries.
    np.testing.assert_allclose(plan, ref_plan, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(pv, ref_plan @ v, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ptu, ref_plan.T @ u, rtol=1e-3, atol=1e-6)

    # The divergence and its gradient, online (blocks of 4 rows) and sharded,
    # against the dense single-device computation.
    div = lambda x, a, y: (
        densax.ot.sinkhorn_divergence(
            x, y, a=a, epsilon=EPS, axis_name="data", storage="online", block_size=4
        ).divergence
    )
    value, (gx, gy) = jax.shard_map(
        jax.value_and_grad(div, argnums=(0, 2)),
        mesh=mesh,
        in_specs=specs,
        out_specs=(P(), (P("data"), P())),
    )(x, a, y)
    ref_fn = lambda x, y: (
        densax.ot.sinkhorn_divergence(x, y, a=a, epsilon=EPS).divergence
    )
    ref_value, (rx, ry) = jax.value_and_grad(ref_fn, argnums=(0, 1))(x, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(gx, rx, atol=1e-5)
    np.testing.assert_allclose(gy, ry, atol=1e-5)


def test_sharded_cached_kernel_equals_single_device(mesh):
    # Above 2^16 entries a device, "auto" caches the kernel online; with x
    # split over 4 devices, the start bound (_ball_transform: psum'd centre,
    # pmax'd radius) and the symmetric start (-max f0 over all points) must
    # be global. Then the divergence's x-x problem gathers its columns.
    x, y, a, b = large_problem(np.float32, n=1200)  # 300 rows x 260 columns a device
    specs = (P("data"), P("data"), P(), P())
    eps = 0.05 * float(np.mean(sq_cost(x, y)))

    def local(x, a, y, b):
        out = densax.ot.sinkhorn(x, y, a=a, b=b, epsilon=eps, axis_name="data")
        div = densax.ot.sinkhorn_divergence(
            x, y, a=a, b=b, epsilon=eps, axis_name="data"
        )
        return out.f, out.g, out.reg_cost, out.n_iter, div.divergence

    f, g, reg, n_iter, value = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=specs,
        out_specs=(P("data"), P(), P(), P(), P()),
    )(x, a, y, b)
    ref = densax.ot.sinkhorn(x, y, a=a, b=b, epsilon=eps)
    assert int(n_iter) == int(ref.n_iter)
    np.testing.assert_allclose(reg, ref.reg_cost, rtol=1e-5)
    np.testing.assert_allclose(f, ref.f, atol=1e-4)
    np.testing.assert_allclose(g, ref.g, atol=1e-4)
    ref_div = densax.ot.sinkhorn_divergence(x, y, a=a, b=b, epsilon=eps)
    np.testing.assert_allclose(value, ref_div.divergence, rtol=1e-4)


# ---------------------------------------------------------------------------
# Bad input, non-convergence, extreme regularisation


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(a=-np.ones(N)), ValueError, "non-negative"),
        (dict(a=np.zeros(N)), ValueError, "positive sum"),
        (dict(a=np.ones(N + 1)), ValueError, "shape"),
        (dict(epsilon=0.0), ValueError, "epsilon"),
        (dict(epsilon=-1.0), ValueError, "epsilon"),
        (dict(epsilon=np.ones(2)), ValueError, "epsilon"),
        (dict(tol=-1.0), ValueError, "tol"),
        (dict(relaxation=2.5), ValueError, "relaxation"),
        (dict(relaxation="fast"), ValueError, "relaxation"),
        (dict(relaxation=None), TypeError, "relaxation"),
        (dict(epsilon_scaling=1.5), ValueError, "epsilon_scaling"),
        (dict(epsilon_scaling="fast"), ValueError, "epsilon_scaling"),
        (dict(initializer="normal"), ValueError, "initializer"),
        (dict(storage="online", block_size=0), ValueError, "block_size"),
        (dict(block_size="big"), TypeError, "block_size"),
        (dict(storage="big"), ValueError, "storage"),
        (dict(storage="kernel", cost_fn=costs.Euclidean()), ValueError, "kernel"),
        (dict(config=dict(max_iter=3)), TypeError, "config"),
        (dict(differentiation="magic"), ValueError, "differentiation"),
        (dict(fixed_iterations=1), TypeError, "fixed_iterations"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(min_iter=10, max_iter=5), ValueError, "min_iter"),
        (dict(cost_fn="sqeuclidean"), TypeError, "cost_fn"),
    ],
)
def test_bad_input(kwargs, error, match):
    x, y, _, _ = sample_problem(np.float32)
    with pytest.raises(error, match=match):
        densax.ot.sinkhorn(x, y, **kwargs)


def test_bad_shapes():
    x, y, _, _ = sample_problem(np.float32)
    with pytest.raises(ValueError, match="same dimension"):
        densax.ot.sinkhorn(x, y[:, :1])
    with pytest.raises(ValueError, match="rank"):
        densax.ot.sinkhorn(x[:, 0], y)
    with pytest.raises(ValueError, match="give points x and y"):
        densax.ot.sinkhorn(x)
    with pytest.raises(ValueError, match="must be None"):
        densax.ot.sinkhorn(pointcloud.PointCloud(x, y), y)
    with pytest.raises(TypeError, match="numeric"):
        densax.ot.sinkhorn(x, np.ones((M, D), bool))
    with pytest.raises(ValueError, match="p must be"):
        densax.ot.wasserstein_entropic(x, y, p=0.5)
    out = densax.ot.sinkhorn(x, y, epsilon=EPS)
    with pytest.raises(ValueError, match="rows"):
        densax.ot.apply_plan(out, np.ones(N))


def test_traced_invalid_values_are_reported():
    x, y, _, _ = sample_problem(np.float32)
    run = jax.jit(lambda x, e: densax.ot.sinkhorn(x, y, epsilon=e))
    bad = run(x, -1.0)
    assert not bool(bad.converged) and np.isnan(bad.reg_cost)
    nan_x = run(jnp.asarray(x).at[0, 0].set(np.nan), 0.5)
    assert not bool(nan_x.converged)
    # Eagerly, the same values are errors.
    with pytest.raises(ValueError, match="NaN"):
        densax.ot.sinkhorn(np.where(np.arange(N)[:, None] == 0, np.nan, x), y)


def test_non_convergence_is_flagged_and_finite():
    x, y, _, _ = sample_problem(np.float32)
    out = densax.ot.sinkhorn(x, y, epsilon=0.005, max_iter=5)
    assert not bool(out.converged) and int(out.n_iter) == 5
    assert np.all(np.isfinite(out.f)) and np.isfinite(out.reg_cost)


@pytest.mark.parametrize("block", ["auto", 5])  # cached kernel, online
def test_tiny_epsilon_float32_stays_finite(block):
    x, y, _, _ = sample_problem(np.float32)
    scale = float(np.mean(sq_cost(x, y)))
    out = densax.ot.sinkhorn_divergence(
        x, y, epsilon=1e-4 * scale, max_iter=1000, **storage_options(block)
    )
    for leaf in (out.divergence, out.xy.f, out.xy.g, out.f_xx, out.xy.transport_cost):
        assert np.all(np.isfinite(leaf))
    errors = np.asarray(out.xy.trace)[: int(out.xy.n_iter)]
    assert np.all(np.isfinite(errors)) and errors[-1] < 1e-2 * errors[0]
    # The float32 rounding floor (see the tol argument) is reported.
    assert bool(out.xy.converged) == (errors[-1] <= 1e-3)
    # Near the exact OT cost (the marginals are off by at most the error).
    exact = pot.emd2(np.full(N, 1 / N), np.full(M, 1 / M), sq_cost(x, y))
    np.testing.assert_allclose(
        out.xy.transport_cost, exact, atol=errors[-1] * sq_cost(x, y).max() + 1e-3
    )


# ---------------------------------------------------------------------------
# Problems given as cost matrices, warm starts


def test_cost_matrix_equals_pot_sinkhorn_log_and_points(x64):
    x, y, a, b = sample_problem()
    c = sq_cost(x, y)
    out = densax.ot.sinkhorn(cost_matrix=c, a=a, b=b, epsilon=EPS, tol=TIGHT)
    assert out.config.storage == "dense" and out.config.initializer == "zero"
    assert out.x is None and out.cost_matrix.shape == (N, M)
    plan_ref = pot.sinkhorn(
        a, b, c, EPS, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000
    )
    plan = densax.ot.transport_plan(out)
    np.testing.assert_allclose(plan, plan_ref, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(
        densax.ot.apply_plan(out, b, transpose=False), plan_ref @ b, rtol=1e-8
    )
    points = densax.ot.sinkhorn(x, y, a=a, b=b, epsilon=EPS, tol=TIGHT)
    for key in ("f", "g", "reg_cost", "transport_cost"):
        np.testing.assert_allclose(
            getattr(out, key), getattr(points, key), rtol=1e-9, atol=1e-9
        )
    # Envelope gradient in the cost matrix: d reg_cost / dC = P.
    grad = jax.grad(
        lambda c: (
            densax.ot.sinkhorn(cost_matrix=c, a=a, b=b, epsilon=EPS, tol=TIGHT).reg_cost
        )
    )(c)
    np.testing.assert_allclose(grad, plan_ref, atol=1e-7)
    assert densax.ot.to_ott(out).matrix.shape == (N, M)


def test_cost_matrix_vmap_over_histograms(x64):
    # Many pairs of histograms on one grid, one cost: the batch equals the
    # problems solved one by one.
    grid = np.linspace(0.0, 1.0, 12)
    c = (grid[:, None] - grid[None]) ** 2
    rng = np.random.default_rng(7)
    hists = rng.uniform(0.1, 1.0, (3, 2, 12))
    solve = lambda a, b: (
        densax.ot.sinkhorn(cost_matrix=c, a=a, b=b, epsilon=0.01, tol=1e-9).reg_cost
    )
    batch = jax.vmap(solve)(hists[:, 0], hists[:, 1])
    one = [solve(h[0], h[1]) for h in hists]
    np.testing.assert_allclose(batch, one, rtol=1e-10)
    # The Sinkhorn divergence of histograms on one support: one matrix serves
    # the three problems; it equals the divergence of the grid's points.
    a, b = hists[0]
    tight = dict(epsilon=0.01, tol=1e-10)
    div = densax.ot.sinkhorn_divergence(cost_matrix=c, a=a, b=b, **tight)
    pts = densax.ot.sinkhorn_divergence(grid[:, None], grid[:, None], a=a, b=b, **tight)
    np.testing.assert_allclose(div.divergence, pts.divergence, rtol=1e-8)
    three = densax.ot.sinkhorn_divergence(
        cost_matrix=c, cost_matrix_xx=c, cost_matrix_yy=c, a=a, b=b, **tight
    )
    np.testing.assert_allclose(three.divergence, div.divergence, rtol=1e-12)
    with pytest.raises(ValueError, match="n = m"):
        densax.ot.sinkhorn_divergence(cost_matrix=c[:, :5], epsilon=0.01)
    with pytest.raises(ValueError, match="must be None"):
        densax.ot.sinkhorn(grid[:, None], grid[:, None], cost_matrix=c)
    with pytest.raises(ValueError, match="storage"):
        densax.ot.sinkhorn(cost_matrix=c, storage="online")


def test_warm_start(x64):
    x, y, a, b = sample_problem()
    kw = dict(a=a, b=b, tol=1e-9)
    cold = densax.ot.sinkhorn(x, y, epsilon=EPS, **kw)
    again = densax.ot.sinkhorn(x, y, epsilon=EPS, f_init=cold.f, g_init=cold.g, **kw)
    assert again.config.initializer == "warm" and int(again.n_iter) <= 2
    np.testing.assert_allclose(again.f, cold.f, atol=1e-8)
    # Epsilon continuation: from the solution at 2 epsilon, fewer iterations.
    coarse = densax.ot.sinkhorn(x, y, epsilon=2 * EPS, **kw)
    plain = dict(relaxation=1.0, **kw)
    warm = densax.ot.sinkhorn(x, y, epsilon=EPS, f_init=coarse.f, **plain)
    zero = densax.ot.sinkhorn(
        x, y, epsilon=EPS, initializer="zero", epsilon_scaling=None, **plain
    )
    assert bool(warm.converged) and int(warm.n_iter) < int(zero.n_iter)
    np.testing.assert_allclose(warm.f, cold.f, atol=1e-7)
    # A wild g_init is capped by the c-transform of f_init: no overflow.
    wild = densax.ot.sinkhorn(
        x, y, epsilon=EPS, f_init=cold.f, g_init=cold.g + 1e3, **kw
    )
    assert bool(wild.converged)
    with pytest.raises(ValueError, match="f_init"):
        densax.ot.sinkhorn(x, y, g_init=cold.g)
    with pytest.raises(ValueError, match="shape"):
        densax.ot.sinkhorn(x, y, f_init=cold.g)
    with pytest.raises(ValueError, match="initializer"):
        densax.ot.sinkhorn(x, y, f_init=cold.f, initializer="gaussian")


# ---------------------------------------------------------------------------
# Fixes found by other libraries' test suites


def test_acceleration_never_fails_where_plain_converges(x64):
    for n, accelerations in ((10, ({}, dict(initializer="zero"))), (16, ({},))):
        _check_fallback(n, accelerations)


def _check_fallback(n, accelerations):
    # n points 0..n-1 against a circularly shifted copy (the same points),
    # tol 1e-9 (POT's test, at n = 10, shift 3, epsilon 0.1): plain Sinkhorn
    # from the zero start converges in one iteration, while the accelerated
    # paths stall (the Gaussian start near 8e-6, adaptive relaxation raises
    # the error, annealing from the zero start crawls). A stalled path falls
    # back to the plain iteration within the budget: the same solution.
    # A family of shifts and epsilons, under vmap (each member falls back on
    # its own), against the plain solve of each problem.
    x = np.arange(float(n))[:, None]
    shifts, eps = [1, 3, n // 2], [0.1, 0.05]
    ys = np.stack([np.roll(x, s, axis=0) for s in shifts for _ in eps])
    es = np.asarray([e for _ in shifts for e in eps])
    kw = dict(tol=1e-9, max_iter=300)
    plain_kw = dict(initializer="zero", epsilon_scaling=None, relaxation=1.0)
    solve = lambda opts: jax.vmap(
        lambda y, e: densax.ot.sinkhorn(x, y, epsilon=e, **kw, **opts)
    )(ys, es)
    plain = solve(plain_kw)
    assert np.all(plain.converged) and not np.any(plain.fallback)
    for opts in accelerations:  # Gaussian start; annealing from zero
        out = solve(opts)
        assert np.all(out.converged), (opts, np.asarray(out.n_iter))
        assert np.any(out.fallback) and np.all(out.n_iter < kw["max_iter"])
        # (Potentials: this dual is flat to exp(-1 / epsilon) along some
        # directions, so converged ones differ; the costs agree to the
        # marginal error times the largest cost.)
        np.testing.assert_allclose(out.reg_cost, plain.reg_cost, rtol=1e-8)
        atol = kw["tol"] * (n - 1) ** 2
        np.testing.assert_allclose(out.transport_cost, plain.transport_cost, atol=atol)
    # The record of the path: a problem the accelerations solve keeps them.
    xs, ys_, _, _ = sample_problem()
    assert not bool(densax.ot.sinkhorn(xs, ys_, epsilon=EPS, tol=1e-9).fallback)


def test_unrolled_gradients_under_shard_map(mesh):
    x, y, a, _ = sample_problem(np.float32)
    x, a = x[:20], a[:20] / a[:20].sum()
    loss = lambda x, a, axis_name=None: (
        densax.ot.sinkhorn(
            x,
            y,
            a=a,
            epsilon=EPS,
            differentiation="unroll",
            max_iter=30,
            axis_name=axis_name,
        ).transport_cost
    )
    sharded = jax.shard_map(
        jax.grad(functools.partial(loss, axis_name="data")),
        mesh=mesh,
        in_specs=(P("data"), P("data")),
        out_specs=P("data"),
    )
    np.testing.assert_allclose(sharded(x, a), jax.grad(loss)(x, a), atol=2e-5)
    # Default weights (a=None) are split like x: the zero start under
    # shard_map (its f = eps log a) has the rows' sharding.
    zero = lambda x, axis_name=None: (
        densax.ot.sinkhorn(
            x, y, epsilon=EPS, initializer="zero", axis_name=axis_name
        ).reg_cost
    )
    value = jax.shard_map(
        functools.partial(zero, axis_name="data"),
        mesh=mesh,
        in_specs=P("data"),
        out_specs=P(),
    )(x)
    np.testing.assert_allclose(value, zero(x), rtol=1e-5)


def test_half_precision_is_computed_in_float32():
    # float16 / bfloat16 in: computed in float32 (the Gaussian start's eigh
    # has no half-precision kernel), returned in the input dtype. The values
    # are the float32 solve's of the same (exactly representable) inputs.
    x, y, _, _ = sample_problem(np.float32)
    for dt in (jnp.float16, jnp.bfloat16):
        xh, yh = jnp.asarray(x, dt), jnp.asarray(y, dt)
        x32, y32 = xh.astype(np.float32), yh.astype(np.float32)
        out = densax.ot.sinkhorn(xh, yh, epsilon=EPS, tol=1e-2)
        ref = densax.ot.sinkhorn(x32, y32, epsilon=EPS, tol=1e-2)
        assert out.config.initializer == "gaussian" and out.f.dtype == dt
        np.testing.assert_array_equal(out.f, ref.f.astype(dt))
        np.testing.assert_array_equal(out.reg_cost, ref.reg_cost.astype(dt))
        # The plan of the (half-precision) potentials, formed in float32.
        plan = densax.ot.transport_plan(out)
        assert plan.dtype == dt
        np.testing.assert_allclose(np.asarray(plan, np.float32).sum(), 1.0, rtol=1e-2)
        div = densax.ot.sinkhorn_divergence(xh, yh, epsilon=EPS, tol=1e-2)
        ref_div = densax.ot.sinkhorn_divergence(x32, y32, epsilon=EPS, tol=1e-2)
        assert div.divergence.dtype == dt
        np.testing.assert_array_equal(div.divergence, ref_div.divergence.astype(dt))
        w = densax.ot.wasserstein_entropic(xh, yh, epsilon=EPS, tol=1e-2)
        ref_w = densax.ot.wasserstein_entropic(x32, y32, epsilon=EPS, tol=1e-2)
        assert w.dtype == dt
        np.testing.assert_array_equal(w, ref_w.astype(dt))
        theta = jnp.asarray([[1.0, 0.0], [0.6, 0.8]], dt)
        sw = densax.ot.sliced_wasserstein(None, xh, yh, projections=theta)
        ref_sw = densax.ot.sliced_wasserstein(
            None, x32, y32, projections=theta.astype(np.float32)
        )
        assert sw.dtype == dt
        np.testing.assert_array_equal(sw, ref_sw.astype(dt))
        w1 = densax.ot.wasserstein_1d(xh[:, 0], yh[:, 0])
        assert w1.dtype == dt
        np.testing.assert_array_equal(
            w1, densax.ot.wasserstein_1d(x32[:, 0], y32[:, 0]).astype(dt)
        )


def test_to_ott_keeps_a_uniform_problem_uniform():
    x, y, _, _ = sample_problem(np.float32)
    out = densax.ot.to_ott(densax.ot.sinkhorn(x, y, epsilon=EPS))
    assert out.ot_prob.is_uniform
