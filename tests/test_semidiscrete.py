"""Semi-discrete OT from a sampling model to a weighted point cloud."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from densax import gaussian
from densax import ot as dot
from densax.ot import semidiscrete as sd


class _Model(NamedTuple):
    """The density contract's ``sample(key, n)``, around ``gaussian.sample``."""

    params: gaussian.Gaussian

    def sample(self, key, n):
        return gaussian.sample(key, self.params, n)


def _problem(dtype):
    model = _Model(
        gaussian.Gaussian(
            jnp.zeros(2, dtype), jnp.array([[1.0, 0.3], [0.3, 0.5]], dtype)
        )
    )
    y = jax.random.uniform(jax.random.key(5), (8, 2), dtype, -2.0, 2.0)
    b = jax.random.uniform(jax.random.key(6), (8,), dtype) + 0.5
    return model, y, b / b.sum()


@pytest.fixture(scope="module")
def reference():
    """A finely sampled source: exact (POT) and entropic (densax) discrete solves."""
    with jax.enable_x64(True):
        model, y, b = _problem(np.float64)
        n = 4000
        xs = np.asarray(model.sample(jax.random.key(9), n))
        cost = pot.dist(xs, np.asarray(y))
        val, log = pot.emd2(np.full(n, 1 / n), np.asarray(b), cost, log=True)
        ent = dot.sinkhorn(jnp.asarray(xs), y, b=b, epsilon=0.5, tol=1e-8)
        yield val, log["v"], float(ent.reg_cost), np.asarray(ent.g)


def test_unregularised_vs_exact_discrete(reference, x64):
    val, v, _, _ = reference
    model, y, b = _problem(np.float64)
    out = sd.solve(jax.random.key(0), model, y, b=b, max_iter=1000)
    assert out.converged and out.mass_error < 0.03
    assert out.g.dtype == jnp.float64 and out.trace.shape == (1000,)
    # The semi-dual is a lower bound; the n = 4000 discrete problem estimates
    # the same cost up to its own sampling error (about 1%).
    assert abs(float(out.cost) - val) < 3 * float(out.cost_se) + 0.02 * val
    np.testing.assert_allclose(b @ out.g, 0.0, atol=1e-12)
    np.testing.assert_allclose(out.g, v - np.asarray(b) @ v, atol=0.25)
    # Laguerre cells: the map sends x to y[assign(x)], cell masses are b.
    x = model.sample(jax.random.key(1), 20000)
    idx = sd.assign(out, x)
    np.testing.assert_array_equal(sd.transport_map(out, x[:50]), y[idx[:50]])
    mass = np.bincount(np.asarray(idx), minlength=8) / 20000
    np.testing.assert_allclose(mass, b, atol=0.03)
    # Envelope gradient: d cost / d y_j = 2 mu(L_j) (y_j - mean of L_j).
    grad = jax.grad(lambda yy: sd.solve(jax.random.key(0), model, yy, b=b).cost)(y)
    onehot = np.eye(8)[np.asarray(idx)]
    cell_sum = onehot.T @ np.asarray(x) / 20000
    expected = 2 * (mass[:, None] * np.asarray(y) - cell_sum)
    np.testing.assert_allclose(grad, expected, atol=0.03)


def test_entropic_vs_sinkhorn_on_samples(reference, x64):
    _, _, reg_cost, g_ref = reference
    model, y, b = _problem(np.float64)
    out = sd.solve(jax.random.key(0), model, y, b=b, epsilon=0.5, max_iter=1000)
    assert out.converged
    assert abs(float(out.cost) - reg_cost) < 3 * float(out.cost_se) + 0.01 * reg_cost
    # Same convention as sinkhorn's g (weights absorbed), up to a constant.
    np.testing.assert_allclose(out.g - out.g.mean(), g_ref - g_ref.mean(), atol=0.3)
    t = sd.transport_map(out, y)
    assert t.shape == (8, 2) and np.all(np.isfinite(t))


def test_float32_jit_and_errors():
    model, y, b = _problem(np.float32)
    solve = jax.jit(
        lambda k, bb, tol: sd.solve(
            k, model, y, b=bb, max_iter=400, n_eval=4096, tol=tol
        )
    )
    out = solve(jax.random.key(0), b, 0.05)
    assert out.g.dtype == jnp.float32 and out.cost.dtype == jnp.float32
    assert np.isfinite(out.cost) and out.mass_error < 0.2
    # Zero weight: the point gets no cell.
    out0 = solve(jax.random.key(0), b.at[0].set(0.0), 0.05)
    assert out0.g[0] == -np.inf
    assert not np.any(sd.assign(out0, model.sample(jax.random.key(2), 500)) == 0)
    # A tolerance under the sampling floor is reported as not converged.
    strict = solve(jax.random.key(0), b, 1e-4)
    assert not strict.converged and strict.mass_error > 1e-4
    with pytest.raises(TypeError, match="sample"):
        sd.solve(jax.random.key(0), object(), y)
    with pytest.raises(ValueError, match="epsilon"):
        sd.solve(jax.random.key(0), model, y, epsilon=-1.0)
    with pytest.raises(ValueError, match="b must"):
        sd.solve(jax.random.key(0), model, y, b=-b)
