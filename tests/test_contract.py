"""The density contract (CONTRIBUTING.md), checked on every family by one table.

Adding a family is adding one row to ``FAMILIES``: how to fit it, the tolerance
of its "sample then refit" check, its Gaussian (for the closed-form KL), if it
is one, and the data dimensions it models.
"""

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from densax import density, divergences, gaussian, gmm, kde
from densax.generative import flows


class Family(NamedTuple):
    module: Any  # the family's module: log_prob(model, x), sample(key, model, n)
    model_type: type  # the registered pytree type of its models
    fit: Any  # fit(key, x [n, d]) -> model
    # KL(model || refit on N of its samples) stays below this (nats): the
    # sampling error of the refit (2 N KL ~ chi2(n_params) for a parametric
    # family: this bound is its 1 - 2e-4 quantile), plus the smoothing bias of
    # a KDE refitted to its own samples.
    refit_kl: float
    gaussian_of: Any  # model -> (mean, cov) if the model is a Gaussian, else None
    dims: tuple[int, ...] = (1, 2)  # data dimensions of the integration check
    extent: float = 9.0  # the integration grid covers [-extent, extent]^d


@functools.cache
def _fixed_flow(d, dtype, transform):
    """A small flow of fixed random maps (couplings, LU), ActNorm at identity."""
    flow = flows.Flow(
        d,
        layers=1,
        transform=transform,
        hidden=(8,),
        knots=5,
        param_dtype=dtype,
        rngs=nnx.Rngs(0),
    )
    model = flows.FlowDensity.from_module(flow)
    rng = np.random.default_rng(4)
    # Moderate parameters (0.1): bins wide enough for the integration grid.
    params = jax.tree.map(
        lambda p: p + (0.1 * rng.normal(size=p.shape)).astype(dtype), model.params
    )
    params["norm"] = {"loc": jnp.zeros(d, dtype), "log_scale": jnp.zeros(d, dtype)}
    return flows.FlowDensity(model.graphdef, params)


@jax.jit
def _match_moments(model, x):
    flow = model.module()
    z = jax.random.normal(jax.random.key(5), (4096, x.shape[1]), x.dtype)
    y = flow.forward(z)[0]
    scale = jnp.std(x, axis=0) / jnp.std(y, axis=0)
    flow.norm.loc[...] = jnp.mean(x, axis=0) - scale * jnp.mean(y, axis=0)
    flow.norm.log_scale[...] = jnp.log(scale)
    return flows.FlowDensity.from_module(flow)


def _fit_flow(key, x, transform="spline"):
    """A small fixed flow whose data-side ActNorm matches ``x``'s moments.

    The contract, not training, is under test: the couplings and LU layers are
    fixed random maps (the same for every ``x``; ``key`` is unused) and only
    the ActNorm depends on the data, set so that the model's mean and
    standard deviation per coordinate are those of ``x`` (measured on a fixed
    base draw). A moment estimator of 4 parameters: its refit on the model's
    own samples is as close as a Gaussian's.
    """
    del key
    return _match_moments(_fixed_flow(x.shape[1], np.dtype(x.dtype).name, transform), x)


FAMILIES = {
    "gaussian": Family(
        gaussian,
        gaussian.Gaussian,
        lambda key, x: gaussian.fit(x),
        0.04,  # 5 parameters
        lambda m: (m.mean, m.cov),
    ),
    "gmm": Family(
        gmm,
        gmm.GaussianMixture,
        lambda key, x: gmm.fit(key, x, 2, tol=1e-6).model,
        0.06,  # 11 parameters
        lambda m: (m.means[0], m.covariances[0]) if m.weights.shape == (1,) else None,
    ),
    "kde": Family(
        kde,
        kde.KDE,
        lambda key, x: kde.fit(x),
        0.15,  # Scott's smoothing applied twice: a bias of ~0.05 nats here
        lambda m: None,
    ),
    "flow": Family(
        flows,
        flows.FlowDensity,
        _fit_flow,
        0.04,  # 4 parameters (the ActNorm's)
        lambda m: None,
        dims=(2,),  # a coupling flow needs d >= 2
    ),
    # The same contract where sampling inverts a CDF by bisection.
    "flow_logistic_mixture": Family(
        flows,
        flows.FlowDensity,
        functools.partial(_fit_flow, transform="logistic_mixture"),
        0.04,
        lambda m: None,
        dims=(2,),
        # Its random maps stretch one tail (linear there, slope up to e^4):
        # 6e-4 of the mass lies beyond 9, 2e-6 beyond 30.
        extent=30.0,
    ),
}
NAMES = list(FAMILIES)
N = 300  # one data size everywhere: each new shape compiles the fits again


def _data(n, d, seed=0, dtype=np.float32):
    """Two overlapping anisotropic blobs in d dimensions (n points)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-1.5] + [0.0] * (d - 1), [1.5] + [0.5] * (d - 1)])
    x = centres[np.arange(n) % 2] + rng.normal(size=(n, d)) * np.linspace(0.6, 1.0, d)
    return jnp.asarray(x, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_model_is_a_pytree_through_jit_vmap_and_tree_map(name):
    fam = FAMILIES[name]
    x = _data(N, 2)
    model = fam.fit(jax.random.key(0), x)
    assert isinstance(model, fam.model_type)
    assert isinstance(model, density.Density)
    # Static configuration is metadata: every leaf is an array.
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model))
    same = jax.jit(lambda m: m)(model)
    assert type(same) is type(model)
    chex.assert_trees_all_equal(same, model)
    chex.assert_trees_all_equal_structs(jax.tree.map(jnp.negative, model), model)
    # A batch of two models under vmap equals each model.
    other = fam.fit(jax.random.key(1), x * 1.1)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), model, other)
    logp = jax.vmap(fam.module.log_prob, in_axes=(0, None))(both, x[:5])
    chex.assert_shape(logp, (2, 5))
    chex.assert_trees_all_close(logp[1], fam.module.log_prob(other, x[:5]), rtol=1e-5)
    # The methods delegate to the module functions.
    chex.assert_trees_all_close(model.log_prob(x[:5]), logp[0], rtol=1e-5)
    key = jax.random.key(2)
    chex.assert_trees_all_equal(model.sample(key, 3), fam.module.sample(key, model, 3))
    # Jitted consumers of a model do not retrace for another model of its shape.
    chex.clear_trace_counter()
    score = jax.jit(chex.assert_max_traces(lambda m, x: m.log_prob(x), n=1))
    score(model, x[:5])
    score(other, x[:5] + 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_and_sample_shapes_and_dtype(name, dtype):
    fam = FAMILIES[name]
    x = _data(N, 2, dtype=dtype)
    model = fam.fit(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(model)} == {np.dtype(dtype)}
    logp = fam.module.log_prob(model, x[:7])
    chex.assert_shape(logp, (7,))
    assert logp.dtype == dtype
    chex.assert_tree_all_finite(logp)
    draws = fam.module.sample(jax.random.key(1), model, 11)
    chex.assert_shape(draws, (11, 2))
    assert draws.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_sample_then_fit_recovers_the_model(name, x64):
    fam = FAMILIES[name]
    model = fam.fit(jax.random.key(0), _data(N, 2, dtype=np.float64))
    draws = fam.module.sample(jax.random.key(1), model, N)
    refit = fam.fit(jax.random.key(2), draws)
    kl = divergences.kl_monte_carlo(jax.random.key(3), model, refit, 4000)
    assert -4 * kl.std_error < kl.value < fam.refit_kl, (kl.value, kl.std_error)


def _trapezoid(values, step):
    """The trapezoidal rule over the last axes, one per grid dimension."""
    for _ in range(values.ndim):
        values = (values.sum(-1) - 0.5 * (values[..., 0] + values[..., -1])) * step
    return values


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_in_1d_and_2d(name, x64):
    # The densities are smooth and decay like Gaussians: the trapezoidal rule
    # on a grid of step ~h/10 over +-10 data standard deviations is accurate
    # to ~1e-6, so 1e-4 checks the normalisation, not the quadrature.
    fam = FAMILIES[name]
    for d, size in ((1, 4001), (2, 301)):
        if d not in fam.dims:
            continue
        model = fam.fit(jax.random.key(0), _data(N, d, seed=d, dtype=np.float64))
        size = round((size - 1) * fam.extent / 9.0) + 1  # the same step
        axis = np.linspace(-fam.extent, fam.extent, size)
        grid = np.stack(np.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)
        p = jnp.exp(fam.module.log_prob(model, jnp.asarray(grid)))
        total = _trapezoid(p.reshape((size,) * d), axis[1] - axis[0])
        assert abs(float(total) - 1) < 1e-4, (d, float(total))


@pytest.mark.parametrize("p_name", NAMES)
@pytest.mark.parametrize("q_name", NAMES)
def test_kl_monte_carlo_between_every_pair(p_name, q_name, x64):
    p_fam, q_fam = FAMILIES[p_name], FAMILIES[q_name]
    p = p_fam.fit(jax.random.key(0), _data(N, 2, seed=1, dtype=np.float64))
    q = q_fam.fit(jax.random.key(1), _data(N, 2, seed=2, dtype=np.float64) + 0.3)
    est = divergences.kl_monte_carlo(jax.random.key(2), p, q, 4000)
    assert np.isfinite(float(est.value)) and est.value > -4 * est.std_error
    closed = [fam.gaussian_of(m) for fam, m in ((p_fam, p), (q_fam, q))]
    if all(c is not None for c in closed):
        want = divergences.kl_gaussian(*closed[0], *closed[1])
        assert abs(est.value - want) < 4 * est.std_error


def test_kl_monte_carlo_gmm_of_one_component_against_closed_form(x64):
    # A one-component GMM is a Gaussian: the closed form applies across families.
    x = _data(N, 2, seed=3, dtype=np.float64)
    p = gmm.fit(jax.random.key(0), x, 1).model
    q = gaussian.fit(x * 1.3 + 0.2)
    est = divergences.kl_monte_carlo(jax.random.key(1), p, q, 4000)
    want = divergences.kl_gaussian(*FAMILIES["gmm"].gaussian_of(p), q.mean, q.cov)
    assert abs(est.value - want) < 4 * est.std_error
