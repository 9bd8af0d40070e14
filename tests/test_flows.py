"""Normalizing flows: bijectors, the flow density, maximum-likelihood training.

Also the probability-flow ODE likelihood of diffusion (an exact check with the
closed-form denoiser of Gaussian data) and the uniform latent of generators.
Training compiles a chunk of steps; the training tests share one tiny
configuration and its compiled chunk through module-scoped fixtures.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy import stats

from densax import datasets
from densax.generative import (
    FlowDensity,
    GeneratorOptions,
    density,
    diffusion,
    flows,
    gans,
    sample,
    train,
)
from densax.generative.method import draw_latent

MEAN = np.array([1.0, -2.0])
COV = np.array([[2.0, 1.2], [1.2, 1.0]])
TINY = dict(layers=2, hidden=(16,), knots=6, batch_size=64, chunk_size=50, eval_size=0)
STEPS = 100


def _raw(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _equal(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(_raw(x), _raw(y)) for x, y in pairs)


def _perturbed(module, key, scale=0.5):
    """``module`` with random parameters (couplings start at the identity)."""
    graphdef, state = nnx.split(module, nnx.Param)

    @jax.jit
    def perturb(state):
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(key, len(leaves))
        leaves = [
            p + scale * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, leaves)

    return nnx.merge(graphdef, perturb(state))


def _bijector(name, dtype):
    kw = dict(param_dtype=dtype, rngs=nnx.Rngs(0))
    if name == "affine":
        return flows.AffineCoupling(3, hidden=(8,), **kw)
    if name == "spline":
        return flows.SplineCoupling(3, hidden=(8,), knots=5, bound=2.0, **kw)
    if name == "logistic_mixture":
        return flows.LogisticMixtureCoupling(3, hidden=(8,), components=3, **kw)
    if name == "lu":
        return flows.LULinear(3, **kw)
    if name == "actnorm":
        return flows.ActNorm(3, **kw)
    return flows.Logit()


@pytest.mark.parametrize(
    "name", ["affine", "spline", "logistic_mixture", "lu", "actnorm", "logit"]
)
def test_bijector_inverts_and_log_det_is_the_jacobian(name, dtype):
    # Moderate random parameters: a spline with bins 1e3 times narrower than
    # others is as flat as exp(-15) in places, where no float32 inverse can
    # recover x; 0.2 gives log-derivatives within a few units.
    bij = _perturbed(_bijector(name, dtype), jax.random.key(1), scale=0.2)
    key = jax.random.key(2)
    if name == "logit":
        x = jax.random.uniform(key, (16, 3), dtype, 0.05, 0.95)
    else:
        # 1.5 x N(0, 1): about a fifth of the spline's inputs fall outside
        # [-2, 2], on its identity tails.
        x = 1.5 * jax.random.normal(key, (16, 3), dtype)

    @jax.jit
    def run(x):
        y, ld = bij.forward(x)
        jac = jax.vmap(jax.jacfwd(lambda u: bij.forward(u[None])[0][0]))(x)
        return y, ld, *bij.inverse(y), jac

    y, ld, back, ld_inv, jac = run(x)
    if name != "logit":
        assert float(jnp.std(ld)) > 0.01 or name in ("lu", "actnorm")
    assert y.dtype == ld.dtype == back.dtype == dtype
    assert ld.shape == ld_inv.shape == (16,)
    eps = np.finfo(dtype).eps
    # Float precision of the inverse: rounding y by eps |y| moves x by that
    # over the local slope dy_i/dx_i (the Jacobian's diagonal: every
    # bijector here is triangular up to the reversal of LULinear).
    slope = jnp.abs(jnp.diagonal(jac[:, ::-1] if name == "lu" else jac, 0, 1, 2))
    tol = 100 * eps * (1 + jnp.abs(y)) / jnp.minimum(slope, 1.0)
    assert bool(jnp.all(jnp.abs(back - x) <= tol)), float(jnp.max(jnp.abs(back - x)))
    np.testing.assert_allclose(ld_inv, -ld, rtol=100 * eps, atol=100 * eps)
    sign, logdet = jnp.linalg.slogdet(jac)
    np.testing.assert_array_equal(sign, 1.0 if name != "lu" else sign)
    np.testing.assert_allclose(ld, logdet, rtol=1e3 * eps, atol=1e3 * eps)
    if name == "spline":
        outside = jnp.abs(x) >= 2.0
        assert 0 < int(outside.sum()) < x.size
        np.testing.assert_array_equal(
            y[:, 1:][outside[:, 1:]], x[:, 1:][outside[:, 1:]]
        )


def test_spline_is_monotone_and_continuous_at_the_knots():
    raw = jax.random.normal(jax.random.key(3), (3 * 5 - 1,))
    x = jnp.linspace(-2.5, 2.5, 20001)
    w, h, d = (
        jnp.broadcast_to(r, (x.shape[0], r.shape[0]))
        for r in (raw[:5], raw[5:10], raw[10:])
    )
    y, ld = flows.rational_quadratic_spline(x, w, h, d, bound=2.0)
    assert bool(jnp.all(jnp.diff(y) > 0))
    # The derivative is continuous too (no jump at the knots or at +-2): the
    # slope of each chord equals the mean of the end derivatives to O(h^2).
    fd = jnp.diff(y) / jnp.diff(x)
    deriv = jnp.exp(ld)
    np.testing.assert_allclose(fd, (deriv[:-1] + deriv[1:]) / 2, rtol=1e-2)


def _mixture_parts(dtype):
    """A 2D logistic-mixture coupling with random parameters, and its parts."""
    bij = _perturbed(_bijector("logistic_mixture", dtype), jax.random.key(6), 0.3)
    x = 2.0 * jax.random.normal(jax.random.key(7), (32, 3), dtype)
    return bij, x


def test_logistic_mixture_of_one_component_is_the_affine_map(dtype):
    # K = 1: logit(sigmoid((x - mu) / s)) exp(a) + b is affine in x, with the
    # parameters the conditioner computes: a closed form of the whole map.
    bij = flows.LogisticMixtureCoupling(
        3, components=1, hidden=(8,), param_dtype=dtype, rngs=nnx.Rngs(0)
    )
    bij = _perturbed(bij, jax.random.key(8), 0.5)
    y = 3.0 * jax.random.normal(jax.random.key(9), (16, 3), dtype)
    raw = bij.net(y[:, :1]).reshape(16, 2, 5)
    mean, log_s = raw[..., 1], 3.0 * jnp.tanh(raw[..., 2] / 3.0)
    a, b = jnp.tanh(raw[..., 3]), raw[..., 4]
    expected = (y[:, 1:] - mean) * jnp.exp(a - log_s) + b
    x, ld = bij.inverse(y)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(x[:, 1:], expected, rtol=1e3 * eps, atol=1e3 * eps)
    np.testing.assert_array_equal(x[:, :1], y[:, :1])
    np.testing.assert_allclose(
        ld, jnp.sum(a - log_s, axis=-1), rtol=1e3 * eps, atol=1e3 * eps
    )


def test_logistic_mixture_is_smooth_with_linear_tails(dtype):
    bij, _ = _mixture_parts(dtype)
    xa = jnp.full((4001, 1), 0.3, dtype)
    t = jnp.linspace(-4.0, 4.0, 4001, dtype=dtype)[:, None]
    y = jnp.concatenate([xa, t, t], axis=-1)
    x, ld = bij.inverse(y)
    h = x[:, 1]
    assert bool(jnp.all(jnp.diff(h) > 0))
    # The log-derivative is smooth: its second differences are O(step^2), no
    # jump anywhere (a spline's density has a kink at every knot).
    slope = jnp.exp(ld / 2)  # both coordinates of x_b are the same map's input
    second = jnp.abs(jnp.diff(slope, 2))
    assert float(jnp.max(second)) < 1e-4 * float(jnp.max(slope)) + 1e3 * float(
        np.finfo(dtype).eps
    )
    # Far out, the map is linear (slope exp(a) / s_k of the outermost
    # component): equal steps in, equal steps out, in both tails.
    t = jnp.array([1e3, 2e3, 3e3], dtype)
    for side in (-1.0, 1.0):
        far = jnp.stack([jnp.full(3, 0.3, dtype), side * t, jnp.zeros(3, dtype)], -1)
        x, ld = bij.inverse(far)
        steps = jnp.diff(x[:, 1])
        assert bool(jnp.all(side * steps > 0))
        # Rounding: a few ulps of the outputs (|x| ~ 1e2 here).
        eps = float(np.finfo(dtype).eps)
        tol = 100 * eps * float(jnp.max(jnp.abs(x[:, 1])))
        np.testing.assert_allclose(steps[0], steps[1], rtol=0, atol=tol)
        np.testing.assert_allclose(ld[0], ld[2], rtol=0, atol=tol)


def test_logistic_mixture_sampling_inverts_far_in_the_tails(dtype):
    # The root finder starts inside a bracket that it shrinks: base values
    # far in the tails (z = +-30, 40 standard deviations out, where the
    # mixture CDF is within 1e-13 of 0 or 1) come back to float precision.
    bij, _ = _mixture_parts(dtype)
    z = jnp.array([[0.3, -30.0, 30.0], [-1.0, 1e-3, -8.0], [2.0, 8.0, 0.0]], dtype)
    y, ld = bij.forward(z)
    back, ld_back = bij.inverse(y)
    eps = np.finfo(dtype).eps
    # Rounding y moves z by eps |y| times the slope dz/dy <= e^4 (the bounds).
    tol = 100 * eps * (1 + jnp.abs(y)) * np.exp(4.0)
    assert bool(jnp.all(jnp.abs(back - z) <= tol)), float(jnp.max(jnp.abs(back - z)))
    np.testing.assert_allclose(ld_back, -ld, rtol=1e3 * eps, atol=1e3 * eps)


def test_logistic_mixture_samples_differentiate_as_the_implicit_function(x64):
    # Sampling inverts the CDF by bisection; its one Newton step carries the
    # implicit function's derivatives to the base draw and to the weights
    # (checked against finite differences, hence float64).
    bij, z = _mixture_parts(np.float64)
    graphdef, params = nnx.split(bij, nnx.Param)

    def draw(params, z):
        y, ld = nnx.merge(graphdef, params).forward(z)
        return jnp.sum(jnp.sin(y)) + jnp.sum(ld)

    # The map is strongly curved along a direction that moves every weight:
    # step 1e-6 (the default 1e-4 leaves a truncation error of 1e-3).
    check_grads(draw, (params, z), order=1, modes=["fwd", "rev"], eps=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def random_flows():
    flow = flows.Flow(
        2, layers=2, transform="spline", hidden=(8,), knots=5, rngs=nnx.Rngs(0)
    )
    # Moderate parameters (0.1): larger ones make splines with bins so thin
    # that the density has spikes no grid resolves.
    flow = _perturbed(flow, jax.random.key(4), 0.1)
    uniform = nnx.clone(flow)
    uniform.base = "uniform"  # the same bijectors over U(0, 1)^2 (logit first)
    return {
        "normal": FlowDensity.from_module(flow),
        "uniform": FlowDensity.from_module(uniform),
    }


def test_flow_density_integrates_to_one_over_a_uniform_base(random_flows):
    # The normal base is a row of tests/test_contract.py (integration on a
    # grid, with every other check of the density contract).
    model = random_flows["uniform"]
    # The uniform base's logistic tails (logit of U(0, 1), std 1.8) reach
    # further and its density is sharper: a wide and fine grid.
    grid = jnp.linspace(-25.0, 25.0, 2001)
    xx, yy = jnp.meshgrid(grid, grid)
    pts = jnp.stack([xx.ravel(), yy.ravel()], axis=-1)
    p = jnp.exp(model.log_prob(pts))
    mass = float(jnp.sum(p) * (grid[1] - grid[0]) ** 2)
    # Riemann sum, h = 0.025: 2e-4 from 1 (h = 0.05 gives 2e-3: not yet
    # converged).
    assert abs(mass - 1.0) < 1e-3, mass


@pytest.mark.parametrize("base", ["normal", "uniform"])
def test_log_prob_of_samples_is_the_change_of_variables(random_flows, base):
    model = random_flows[base]
    flow = model.module()
    z = draw_latent(jax.random.key(5), base, (64, 2), jnp.float32)
    x, ld = flow.forward(z)
    expected = flows.base_log_prob(z, base) - ld
    np.testing.assert_allclose(model.log_prob(x), expected, rtol=1e-4, atol=1e-4)
    # sample() draws exactly those points from the same key.
    drawn = model.sample(jax.random.key(5), 64)
    np.testing.assert_allclose(drawn, x, rtol=1e-6, atol=1e-6)


def test_flow_density_samples_under_vmap_and_rejects_bad_input(random_flows):
    # jit, vmap over models and the pytree round trip: tests/test_contract.py.
    model = random_flows["normal"]
    many = jax.vmap(lambda k: model.sample(k, 4))(
        jax.random.split(jax.random.key(0), 3)
    )
    assert many.shape == (3, 4, 2)
    with pytest.raises(ValueError, match="features"):
        model.log_prob(jnp.ones((3, 3)))
    with pytest.raises(TypeError, match="model"):
        flows.log_prob(object(), jnp.ones((3, 2)))


@pytest.fixture(scope="module")
def data():
    return jax.random.multivariate_normal(
        jax.random.key(10), jnp.asarray(MEAN), jnp.asarray(COV), (16_384,)
    ).astype(jnp.float32)


@pytest.fixture(scope="module")
def base_run(data):
    return train(jax.random.key(1), data, method="flow", num_steps=STEPS, **TINY)


def test_flow_trains_and_its_density_is_the_module(base_run, data):
    assert base_run.finite and int(base_run.state.step) == STEPS
    assert not base_run.diverged and base_run.message == ""
    nll = base_run.history.losses["nll"]
    assert nll.shape == (STEPS,) and nll[-10:].mean() < nll[:10].mean()
    model = density(base_run)
    np.testing.assert_allclose(
        model.log_prob(data[:8]), base_run.generator(data[:8]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="flow"):
        density(base_run._replace(method="ddpm"))
    # The generic sampler of train() results draws from the flow too.
    assert sample(jax.random.key(0), base_run, 5).shape == (5, 2)


def test_noise_regularisation_widens_the_fit_and_is_validated(base_run, data):
    # The same batches plus Gaussian noise of the data's own scale: the data
    # the flow sees have twice the variance, so its data-side scale grows.
    noisy = train(
        jax.random.key(1), data, method="flow", num_steps=STEPS, noise=1.0, **TINY
    )
    assert noisy.finite and not noisy.diverged
    grow = (
        noisy.state.params["flow"]["norm"]["log_scale"]
        - base_run.state.params["flow"]["norm"]["log_scale"]
    )
    assert np.all(grow > 0.05), grow
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="noise"):
            train(jax.random.key(1), data, method="flow", num_steps=1, noise=bad)


@pytest.mark.parametrize(
    "option, value",
    [
        ("transform", "glow"),
        ("linear", "shuffle"),
        ("base", "laplace"),
        ("layers", 0),
        ("knots", 1),
        ("components", 0),
    ],
)
def test_flow_options_are_checked_by_name(option, value):
    # The options of train(method="flow") and the Flow module check alike.
    with pytest.raises(ValueError, match=option):
        flows.FlowOptions(**{option: value})
    if option != "knots":  # Flow takes any knots >= 1 its spline accepts
        with pytest.raises(ValueError, match=option):
            flows.Flow(2, rngs=nnx.Rngs(0), **{option: value})


@pytest.mark.parametrize("transform", ["spline", "logistic_mixture"])
def test_flow_fitted_to_a_gaussian_recovers_its_log_density(data, transform):
    run = train(
        jax.random.key(1),
        data,
        method="flow",
        num_steps=1500,
        transform=transform,
        **TINY,
    )
    model = density(run)
    held_out = jax.random.multivariate_normal(
        jax.random.key(11), jnp.asarray(MEAN), jnp.asarray(COV), (4000,)
    )
    truth = stats.multivariate_normal(MEAN, COV).logpdf(np.asarray(held_out))
    diff = np.asarray(model.log_prob(held_out), np.float64) - truth
    # mean(diff) estimates -KL(p | q) <= 0. A maximum-likelihood fit with k
    # free parameters keeps an expected KL of about k / (2 n) (Akaike): for
    # these flows (k = 666 and 564) and n = 16384, 0.02 nats; 0.05 leaves room for the
    # optimisation gap of 1500 steps. (On 512 points the flow overfits: the
    # held-out gap grows with the steps.) The sampling error of the mean of
    # 4000 differences is < 0.005.
    assert -0.05 < diff.mean() < 0.02, diff.mean()
    corr = np.corrcoef(np.asarray(model.log_prob(held_out)), truth)[0, 1]
    assert corr > 0.95, corr


def test_noise_fits_the_gaussian_convolved_with_the_noise(data):
    # With noise s (in feature standard deviations), the flow fits the data
    # convolved with N(0, diag(s * std)^2): for Gaussian data, the closed form
    # N(MEAN, COV + diag(s * std)^2). Same budget and bounds as the test above.
    s = 0.5
    run = train(jax.random.key(1), data, method="flow", num_steps=1500, noise=s, **TINY)
    cov = COV + np.diag((s * np.std(np.asarray(data, np.float64), axis=0)) ** 2)
    held_out = jax.random.multivariate_normal(
        jax.random.key(12), jnp.asarray(MEAN), jnp.asarray(cov), (4000,)
    )
    truth = stats.multivariate_normal(MEAN, cov).logpdf(np.asarray(held_out))
    fitted = np.asarray(density(run).log_prob(held_out), np.float64)
    diff = fitted - truth
    assert -0.05 < diff.mean() < 0.02, diff.mean()
    assert np.corrcoef(fitted, truth)[0, 1] > 0.95
    # The plain Gaussian of the data is further off on these points.
    plain = stats.multivariate_normal(MEAN, COV).logpdf(np.asarray(held_out))
    assert np.mean(plain - truth) < diff.mean() - 0.05


class _Interrupt(Exception):
    pass


def test_resume_from_checkpoint_is_bit_identical(base_run, data, tmp_path):
    path = tmp_path / "flow.ckpt"

    def stop(progress):
        if progress.step == 50:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(
            jax.random.key(1),
            data,
            method="flow",
            num_steps=STEPS,
            checkpoint=path,
            callback=stop,
            **TINY,
        )
    resumed = train(
        jax.random.key(1),
        data,
        method="flow",
        num_steps=STEPS,
        checkpoint=path,
        resume=True,
        **TINY,
    )
    assert _equal(resumed.state, base_run.state)
    assert _equal(resumed.history.losses, base_run.history.losses)
    assert not resumed.diverged


def test_a_diverged_run_is_reported_even_when_resumed(tmp_path):
    # Affine couplings at a step size 30 times the default: Adam's first steps
    # throw the flow far from the data and it ends worse than its start (a
    # Gaussian fit), with every loss and parameter finite.
    x = datasets.two_moons(jax.random.key(0), 512)
    kw = dict(
        method="flow",
        num_steps=40,
        chunk_size=20,
        eval_size=0,
        transform="affine",
        layers=4,
        hidden=(16,),
        learning_rate=0.1,
    )
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad = train(jax.random.key(1), x, **kw)
    assert bad.finite and bad.diverged
    # The start is the flow at initialisation: identity couplings behind the
    # data-side ActNorm, i.e. the maximum-likelihood diagonal Gaussian.
    xs = np.asarray(x, np.float64)
    start = -stats.norm(xs.mean(0), xs.std(0)).logpdf(xs).sum(1).mean()
    assert f"rose from {start:.4g}" in bad.message, (start, bad.message)
    path = tmp_path / "bad.ckpt"

    def stop(progress):
        if progress.step == 20:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(jax.random.key(1), x, checkpoint=path, callback=stop, **kw)
    # The start is that of the fresh run, not of the checkpoint.
    with pytest.warns(RuntimeWarning, match="diverged"):
        resumed = train(jax.random.key(1), x, checkpoint=path, resume=True, **kw)
    assert resumed.diverged and resumed.message == bad.message


def test_sharded_training_equals_single_device(base_run, data, mesh):
    sharded = train(
        jax.random.key(1), data, method="flow", num_steps=STEPS, mesh=mesh, **TINY
    )
    # Same global batch on 4 devices; only the order of the float32 batch sums
    # differs (psum of 4 partial sums): a few ulps per step, carried by Adam's
    # normalised steps (<= lr = 1e-3) over 100 steps.
    for x, y in zip(
        jax.tree.leaves(sharded.state.params),
        jax.tree.leaves(base_run.state.params),
        strict=True,
    ):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(
        sharded.history.losses["nll"], base_run.history.losses["nll"], rtol=1e-4
    )


def _gaussian_denoiser(schedule, cov):
    """The exact noise predictor of ``N(0, cov)`` data at float timesteps."""
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype)

    def denoise(x, t):
        a = diffusion.alpha_bar_at(schedule, t)[:, None, None]
        c = a * cov + (1 - a) * eye
        eps = jnp.linalg.solve(c, x[..., None])[..., 0]
        return jnp.sqrt(1 - a[:, :, 0]) * eps

    return denoise


def test_ode_log_prob_of_the_exact_gaussian_denoiser(dtype):
    # Zero-mean data: the prior N(0, I) is then exact up to abar_T = 4e-5 in
    # the covariance, and the ODE with the exact score gives the true
    # log-density of N(0, cov + sigma_1^2 I) up to the integrator's error.
    schedule = diffusion.linear_schedule(1000, dtype=dtype)
    cov = jnp.asarray(COV, dtype)
    denoise = _gaussian_denoiser(schedule, cov)
    x = jax.random.multivariate_normal(
        jax.random.key(0), jnp.zeros(2, dtype), cov, (32,)
    ).astype(dtype)
    a0 = float(schedule.alpha_bars[0])
    truth = stats.multivariate_normal(np.zeros(2), COV + (1 - a0) / a0 * np.eye(2))
    truth = truth.logpdf(np.asarray(x, np.float64))

    def run(num_steps, solver):
        fn = lambda k, x: diffusion.ode_log_prob(
            k, denoise, x, schedule, num_steps=num_steps, solver=solver
        )
        return np.asarray(jax.jit(fn)(jax.random.key(1), x), np.float64)

    rk4 = run(50, "rk4")
    assert rk4.dtype == np.float64 and rk4.shape == (32,)
    # RK4 with 50 geometric steps: 2e-5 nats measured in both dtypes.
    np.testing.assert_allclose(rk4, truth, atol=2e-4)
    if dtype == np.float64:
        # Heun is second order: 4x the steps, 16x less error (float64 only:
        # each step count compiles its own program).
        e_50 = np.abs(run(50, "heun") - truth).max()
        e_200 = np.abs(run(200, "heun") - truth).max()
        assert 8 < e_50 / e_200 < 32, (e_50, e_200)


def test_ode_log_prob_hutchinson_is_unbiased():
    schedule = diffusion.linear_schedule(1000)
    cov = jnp.asarray(COV, jnp.float32)
    denoise = _gaussian_denoiser(schedule, cov)
    x = jnp.tile(jnp.array([[0.5, -0.3]]), (256, 1))
    exact = diffusion.ode_log_prob(
        jax.random.key(0), denoise, x[:1], schedule, num_steps=50
    )
    est = diffusion.ode_log_prob(
        jax.random.key(0), denoise, x, schedule, num_steps=50, trace="hutchinson"
    )
    # 256 independent single-probe estimates of one point: their mean is
    # within 4 standard errors of the exact value.
    se = float(jnp.std(est)) / 16
    assert float(jnp.std(est)) > 0
    assert abs(float(jnp.mean(est) - exact[0])) < 4 * se


def test_uniform_latent_of_generators():
    opts = GeneratorOptions(latent="uniform", latent_dim=3)
    z = gans.sample_generator(lambda z: z, opts, jax.random.key(0), 500, jnp.float32)
    assert z.shape == (500, 3) and bool(jnp.all((z > 0) & (z < 1)))
    with pytest.raises(ValueError, match="latent"):
        GeneratorOptions(latent="cauchy")


@pytest.mark.slow
def test_ode_log_prob_of_a_ddpm_trained_on_a_gaussian():
    x = jax.random.multivariate_normal(
        jax.random.key(0), jnp.zeros(2), jnp.asarray(COV), (20_000,)
    )
    run = train(
        jax.random.key(1),
        x,
        method="ddpm",
        num_steps=4000,
        hidden=(64, 64),
        eval_size=0,
        chunk_size=1000,
    )
    schedule = diffusion.schedule_of(run.options)
    held_out = jax.random.multivariate_normal(
        jax.random.key(2), jnp.zeros(2), jnp.asarray(COV), (2000,)
    )
    lp = jax.jit(lambda k, x: diffusion.ode_log_prob(k, run.generator, x, schedule))(
        jax.random.key(3), held_out
    )
    truth = stats.multivariate_normal(np.zeros(2), COV).logpdf(np.asarray(held_out))
    # A trained denoiser is not the exact score: the ODE model's held-out
    # log-likelihood is within 0.05 nats per point of the truth (cross-entropy
    # >= entropy: it may not exceed it by more than the sampling error).
    gap = float(np.mean(np.asarray(lp) - truth))
    assert -0.05 < gap < 0.01, gap
