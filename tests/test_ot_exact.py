"""Tests of densax.ot.exact: exact OT against POT, SciPy and the 1D solution.

Few distinct shapes (each compiles the simplex once): most problems are
12 x 9, the assignments 10 x 10.
"""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
import scipy.optimize
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from ott.geometry import costs

from densax import ot
from densax.ot import exact

N, M = 12, 9


def _problem(seed, kind, dtype=np.float64, n=N, m=M):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = rng.normal(size=(m, 2)) + 0.5
    a, b = rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, m)
    if kind == "ties":  # integer grid: many equal costs, degenerate optimum
        x = rng.integers(0, 3, size=(n, 2)).astype(float)
        y = rng.integers(0, 3, size=(m, 2)).astype(float)
        a, b = np.ones(n), np.ones(m)
    if kind == "uniform":
        a, b = np.ones(n), np.ones(m)
    if kind == "zeros":
        a[::3], b[::4] = 0, 0
    a, b = a / a.sum(), b / b.sum()
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    return [np.asarray(v, dtype) for v in (x, y, a, b, cost)]


def _check_certified(out, a, b, cost, rtol):
    assert bool(out.converged)
    plan = np.asarray(out.plan_dense())
    np.testing.assert_allclose(plan.sum(1), a, atol=rtol)
    np.testing.assert_allclose(plan.sum(0), b, atol=rtol)
    assert np.all(plan >= 0)
    assert np.count_nonzero(plan) <= len(a) + len(b) - 1
    assert float(out.gap) <= rtol
    assert float(out.dual_infeasibility) <= rtol * np.abs(cost).max()
    # The certificate recomputed here from the returned duals.
    f, g = np.asarray(out.f, np.float64), np.asarray(out.g, np.float64)
    assert np.max(f[:, None] + g[None] - cost) <= rtol * np.abs(cost).max()
    dual = a @ f + b @ g
    np.testing.assert_allclose(dual, float(out.cost), rtol=rtol)


@pytest.mark.parametrize("kind", ["weighted", "uniform", "ties", "zeros"])
def test_emd_matches_pot(x64, kind):
    for seed in range(3):
        x, y, a, b, cost = _problem(seed, kind)
        out = exact.emd(cost_matrix=cost, a=a, b=b)
        ref = pot.emd2(a, b, cost)
        np.testing.assert_allclose(float(out.cost), ref, rtol=1e-9)
        _check_certified(out, a, b, cost, 1e-9)
        assert out.rows.shape == out.cols.shape == out.mass.shape == (N + M - 1,)
        if kind == "weighted":  # generic data: the optimal plan is unique
            np.testing.assert_allclose(
                out.plan_dense(), pot.emd(a, b, cost), atol=1e-12
            )
        # Points with the default squared Euclidean cost: the same problem.
        from_points = exact.emd(x, y, a=a, b=b)
        np.testing.assert_allclose(float(from_points.cost), ref, rtol=1e-9)


def test_emd_one_point_and_zero_masses(x64):
    # One source (or sink) and zero masses at the ends of the start's orders.
    rng = np.random.default_rng(8)
    for n, m in [(1, 5), (5, 1)]:
        a, b = rng.uniform(size=n), rng.uniform(size=m)
        a[-1:] = 0 if n > 1 else 1
        b[:1] = 0 if m > 1 else 1
        a, b = a / a.sum(), b / b.sum()
        cost = rng.uniform(size=(n, m))
        out = exact.emd(cost_matrix=cost, a=a, b=b)
        np.testing.assert_allclose(float(out.cost), pot.emd2(a, b, cost), rtol=1e-9)
        _check_certified(out, a, b, cost, 1e-9)


def test_emd_dtype(dtype):
    x, y, a, b, cost = _problem(7, "weighted", dtype)
    out = exact.emd(x, y, a=a, b=b)
    ref = pot.emd2(a.astype(np.float64), b.astype(np.float64), cost.astype(np.float64))
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    for field in ("mass", "cost", "f", "g", "gap", "dual_infeasibility"):
        assert getattr(out, field).dtype == dtype, field
    np.testing.assert_allclose(float(out.cost), ref, rtol=rtol)
    _check_certified(out, a, b, cost, rtol)


def test_emd_cost_functions(x64):
    x, y, a, b, _ = _problem(3, "weighted")
    for cost_fn, cost in [
        (costs.Euclidean(), np.linalg.norm(x[:, None] - y[None], axis=-1)),
        (costs.PNormP(1.5), (np.abs(x[:, None] - y[None]) ** 1.5).sum(-1) / 1.5),
    ]:
        out = exact.emd(x, y, a=a, b=b, cost_fn=cost_fn)
        np.testing.assert_allclose(float(out.cost), pot.emd2(a, b, cost), rtol=1e-9)


def test_assignment_matches_scipy(x64):
    rng = np.random.default_rng(0)
    for _ in range(3):
        cost = rng.uniform(size=(10, 10))
        out = exact.assignment(cost_matrix=cost)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        np.testing.assert_array_equal(out.perm, cols[np.argsort(rows)])
        assert out.perm.dtype == jnp.int32 and bool(out.converged)
        np.testing.assert_allclose(float(out.cost), cost[rows, cols].sum(), rtol=1e-12)
    x = rng.normal(size=(10, 3))
    perm = rng.permutation(10)
    out = exact.assignment(x, x[perm] + 1e-3)  # each point finds its copy
    np.testing.assert_array_equal(out.perm, np.argsort(perm))


def test_wasserstein_exact_matches_1d(x64):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=N), rng.normal(size=M) * 2 + 1
    for p in (1, 2):
        got = exact.wasserstein_exact(u[:, None], v[:, None], p=p)
        np.testing.assert_allclose(got, ot.wasserstein_1d(u, v, p=p), rtol=1e-9)
    # In 2D against POT, p = 1 (Euclidean) and p = 3.
    x, y, a, b, _ = _problem(2, "weighted")
    for p in (1, 3):
        cost = np.linalg.norm(x[:, None] - y[None], axis=-1) ** p
        ref = pot.emd2(a, b, cost) ** (1 / p)
        got = exact.wasserstein_exact(x, y, p=p, a=a, b=b)
        np.testing.assert_allclose(got, ref, rtol=1e-9)


def _batch(k):
    probs = [_problem(s, "weighted") for s in range(k)]
    return [np.stack([pr[i] for pr in probs]) for i in range(5)]


def test_jit_and_vmap_equal_a_loop(x64):
    x, y, a, b, _cost = _batch(4)
    batched = jax.jit(jax.vmap(lambda x, y, a, b: exact.emd(x, y, a=a, b=b)))(
        x, y, a, b
    )
    for k in range(4):
        one = exact.emd(x[k], y[k], a=a[k], b=b[k])
        for got, want in zip(batched, one, strict=True):
            np.testing.assert_allclose(got[k], want, rtol=1e-12, atol=1e-15)


def test_shard_map_over_a_batch(x64, mesh):
    _x, _y, a, b, cost = _batch(4)
    solve = jax.vmap(lambda a, b, c: exact.emd2(cost_matrix=c, a=a, b=b))
    sharded = jax.jit(
        jax.shard_map(
            solve, mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False
        )
    )
    got = sharded(a, b, cost)
    refs = [pot.emd2(a[k], b[k], cost[k]) for k in range(4)]
    np.testing.assert_allclose(got, refs, rtol=1e-9)


def test_emd2_gradients(x64):
    x, y, a, b, _cost = _problem(5, "weighted")

    def value(x, y, a, b):
        return exact.emd2(x, y, a=a, b=b, validate=False)

    check_grads(value, (x, y, a, b), order=1, modes=("rev",), eps=1e-5)
    # The weights' gradient: centred potentials, invariant to the dual constant.
    ga, gb = jax.grad(value, argnums=(2, 3))(x, y, a, b)
    out = exact.emd(x, y, a=a, b=b)
    np.testing.assert_allclose(ga, out.f - a @ out.f, atol=1e-12)
    np.testing.assert_allclose(gb, out.g - b @ out.g, atol=1e-12)
    # Positions: the plan contracted with the cost's derivative.
    gx = jax.grad(value)(x, y, a, b)
    plan = np.asarray(out.plan_dense())
    want = 2 * (a[:, None] * x - plan @ y)
    np.testing.assert_allclose(gx, want, atol=1e-12)


def test_sinkhorn_tends_to_the_exact_cost(x64):
    x, y, _, _, _cost = _problem(4, "uniform")
    exact_cost = float(exact.emd2(x, y))
    errors = [
        abs(float(ot.sinkhorn(x, y, epsilon=eps).transport_cost) - exact_cost)
        for eps in (1.0, 0.1, 0.01)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02 * exact_cost


def test_not_converged_is_reported(x64):
    _, _, a, b, cost = _problem(0, "weighted")
    out = exact.emd(cost_matrix=cost, a=a, b=b, max_iter=3)
    assert not bool(out.converged)
    # The start basis is a coupling: the plan stays feasible, the duals do not.
    assert float(out.dual_infeasibility) > 1e-6
    plan = np.asarray(out.plan_dense())
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-12)
    assert float(out.cost) > pot.emd2(a, b, cost) * (1 + 1e-9)
    assert np.isnan(exact.emd2(cost_matrix=cost, a=a, b=b, max_iter=3))


def test_bad_inputs():
    x, y = np.zeros((3, 2)), np.ones((4, 2))
    cost = np.ones((3, 4))
    with pytest.raises(ValueError, match="same total mass"):
        exact.emd(x, y, a=np.ones(3), b=np.ones(4))
    with pytest.raises(ValueError, match="cost_matrix"):
        exact.emd(x, y, cost_matrix=cost)
    with pytest.raises(ValueError, match="cost_matrix"):
        exact.emd()
    with pytest.raises(ValueError, match="a must have shape"):
        exact.emd(x, y, a=np.ones(4) / 4)
    with pytest.raises(ValueError, match="non-negative"):
        exact.emd(cost_matrix=cost, a=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        exact.emd(cost_matrix=np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="dimension"):
        exact.emd(x, np.ones((4, 3)))
    with pytest.raises(TypeError, match="cost_fn"):
        exact.emd(x, y, cost_fn=lambda u, v: 0.0)
    with pytest.raises(ValueError, match="as many"):
        exact.assignment(cost_matrix=cost)
    with pytest.raises(ValueError, match="p must be"):
        exact.wasserstein_exact(x, y, p=0.5)
    with pytest.raises(ValueError, match="max_iter"):
        exact.emd(x, y, max_iter=0)
