"""DDPM pieces against closed forms, with a Gaussian dataset as the oracle.

For data ``x0 ~ N(mu, S)`` everything is Gaussian: ``x_t ~ N(a mu, a^2 S +
s^2 I)`` (``a = sqrt(abar_t)``, ``s = sqrt(1 - abar_t)``) and the optimal
noise predictor is the posterior mean ``E[eps | x_t] = s (a^2 S + s^2 I)^-1
(x_t - a mu)``, whose error covariance ``I - s^2 (a^2 S + s^2 I)^-1`` is the
Bayes risk of the denoising loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from densax import datasets, metrics
from densax.generative import Denoiser, diffusion, sample, train

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])


def _optimal_denoiser(schedule, mu=MU, cov=COV):
    abar = schedule.alpha_bars

    def denoise(x, t):
        a, s2 = jnp.sqrt(abar[t]), 1 - abar[t]
        marginal = a[:, None, None] ** 2 * cov + s2[:, None, None] * jnp.eye(2)
        resid = x - a[:, None] * mu
        return (
            jnp.sqrt(s2)[:, None] * jnp.linalg.solve(marginal, resid[..., None])[..., 0]
        )

    return denoise


def _bayes_risk(schedule, t, cov=COV):
    abar = np.asarray(schedule.alpha_bars, np.float64)[t]
    s2 = 1 - abar
    marginal = abar[:, None, None] * cov + s2[:, None, None] * np.eye(2)
    err = np.eye(2) - s2[:, None, None] * np.linalg.inv(marginal)
    return np.trace(err, axis1=1, axis2=2) / 2


def _gaussian(key, n, dtype=jnp.float32):
    z = jax.random.normal(key, (n, 2), dtype)
    return jnp.asarray(MU, dtype) + z @ jnp.asarray(np.linalg.cholesky(COV).T, dtype)


def test_linear_schedule_closed_form(dtype):
    s = diffusion.linear_schedule(1000, 1e-4, 0.02, dtype=dtype)
    betas = np.linspace(1e-4, 0.02, 1000)
    rtol = 20 * np.finfo(dtype).eps  # a cast of float64 values, plus cumprod rounding
    assert s.betas.dtype == s.alphas.dtype == s.alpha_bars.dtype == dtype
    np.testing.assert_allclose(s.betas, betas, rtol=rtol)
    np.testing.assert_allclose(s.alphas, 1 - betas, rtol=rtol)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - betas), rtol=1e3 * rtol)


def test_cosine_schedule_closed_form(x64):
    s = diffusion.cosine_schedule(1000, s=0.008, dtype=jnp.float64)
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    t = np.arange(1, 1001)
    # abar_t = f(t) / f(0) wherever no beta was clipped (all but the last step).
    np.testing.assert_allclose(s.alpha_bars[:-1], f(t[:-1]) / f(0), rtol=1e-12)
    assert float(s.betas[-1]) == 0.999 and float(s.betas[:-1].max()) < 0.999
    np.testing.assert_allclose(
        s.alpha_bars, np.cumprod(1 - np.asarray(s.betas)), rtol=1e-12
    )
    assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0)


def test_schedule_bad_options():
    with pytest.raises(ValueError, match="beta_start"):
        diffusion.linear_schedule(10, 0.5, 0.1)
    with pytest.raises(ValueError, match="max_beta"):
        diffusion.cosine_schedule(10, max_beta=1.0)
    with pytest.raises(ValueError, match="num_timesteps must be >= 1"):
        diffusion.linear_schedule(0)


def test_q_sample_marginal_mean_and_variance(key):
    schedule = diffusion.linear_schedule(1000)
    n = 200_000
    x0 = jnp.tile(jnp.array([[1.5, -2.0]]), (n, 1))
    for t in (0, 250, 999):
        xt = np.asarray(diffusion.q_sample(jax.random.fold_in(key, t), x0, t, schedule))
        abar = float(schedule.alpha_bars[t])
        sd = np.sqrt(1 - abar)
        # Sample mean: standard error sd / sqrt(n); sample variance: relative
        # standard error sqrt(2 / n).
        np.testing.assert_allclose(
            xt.mean(0), np.sqrt(abar) * x0[0], atol=5 * sd / np.sqrt(n)
        )
        np.testing.assert_allclose(xt.var(0), sd**2, rtol=5 * np.sqrt(2 / n))


def test_optimal_denoiser_has_zero_excess_loss(key):
    schedule = diffusion.linear_schedule(1000)
    n = 100_000
    kx, kt, ke = jax.random.split(key, 3)
    x0 = _gaussian(kx, n)
    t = jax.random.randint(kt, (n,), 0, 1000)
    noise = jax.random.normal(ke, (n, 2))
    xt = diffusion._noised(x0, t, noise, schedule)
    opt = _optimal_denoiser(schedule)
    # Per-sample excess over the Bayes risk: mean zero for the optimal denoiser.
    excess = np.mean(np.asarray((noise - opt(xt, t)) ** 2), axis=1) - _bayes_risk(
        schedule, t
    )
    se = excess.std() / np.sqrt(n)
    assert abs(excess.mean()) < 5 * se
    loss = diffusion.denoising_loss(opt, x0, t, noise, schedule)
    np.testing.assert_allclose(
        loss, np.mean(_bayes_risk(schedule, t)) + excess.mean(), rtol=1e-4
    )
    # A shrunk predictor 0.9 eps* pays 0.01 E|eps*|^2 / d more: the cross term
    # E[(eps - eps*) . eps*] vanishes at the optimum (paired per sample).
    pred = np.asarray(opt(xt, t))
    paired = np.mean(
        (np.asarray(noise) - 0.9 * pred) ** 2 - (np.asarray(noise) - pred) ** 2, 1
    )
    expected = 0.01 * np.mean(pred**2)
    assert paired.mean() > 10 * paired.std() / np.sqrt(n)
    np.testing.assert_allclose(
        paired.mean(), expected, atol=5 * paired.std() / np.sqrt(n)
    )


def test_denoising_loss_sharded_equals_unsharded(key, mesh):
    schedule = diffusion.linear_schedule(1000)
    opt = _optimal_denoiser(schedule)
    kx, kt, ke = jax.random.split(key, 3)
    x0 = _gaussian(kx, 64)
    t = jax.random.randint(kt, (64,), 0, 1000)
    noise = jax.random.normal(ke, (64, 2))

    def loss(scale, x0, t, noise, axis_name=None):
        denoise = lambda x, t: scale * opt(x, t)
        return diffusion.denoising_loss(
            denoise, x0, t, noise, schedule, axis_name=axis_name
        )

    value, grad = jax.value_and_grad(loss)(0.9, x0, t, noise)
    sharded = jax.jit(
        jax.shard_map(
            jax.value_and_grad(lambda s, *a: loss(s, *a, axis_name="data")),
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=(P(), P()),
        )
    )
    s_value, s_grad = sharded(0.9, x0, t, noise)
    # float32 sums over 4 shards instead of one: a few ulps.
    np.testing.assert_allclose(s_value, value, rtol=1e-5)
    np.testing.assert_allclose(s_grad, grad, rtol=1e-5)


def _exact_chain_moments(schedule, steps, eta):
    """Mean and covariance of the sampler's output, propagated exactly.

    With the exact denoiser of Gaussian data every step is affine,
    ``x' = A x + b + sigma z``, so ``N(0, I)`` at ``x_T`` stays Gaussian.
    """
    abar = np.asarray(schedule.alpha_bars, np.float64)
    m, c = np.zeros(2), np.eye(2)
    prev = [*abar[steps[1:]], 1.0]
    for t, ab_prev in zip(steps, prev, strict=True):
        a, s, a_prev = np.sqrt(abar[t]), np.sqrt(1 - abar[t]), np.sqrt(ab_prev)
        beta = 1 - abar[t] / ab_prev
        beta_tilde = (1 - ab_prev) / (1 - abar[t]) * beta
        if eta is None:  # DDPM: posterior mean, noise beta (none at the end)
            mean_var, var = beta_tilde, beta if ab_prev < 1 else 0.0
        else:
            mean_var = var = eta**2 * beta_tilde
        coef = np.sqrt(max(1 - ab_prev - mean_var, 0.0)) - a_prev * s / a
        v_inv = np.linalg.inv(abar[t] * COV + s**2 * np.eye(2))
        big_a = a_prev / a * np.eye(2) + coef * s * v_inv
        b = -coef * s * a * v_inv @ MU
        m, c = big_a @ m + b, big_a @ c @ big_a.T + var * np.eye(2)
    return m, c


@pytest.mark.parametrize(
    "sampler, num_steps", [("ddpm", 1000), ("ddpm", 10), ("ddim", 20)]
)
def test_samplers_match_the_exact_gaussian_chain(sampler, num_steps, key):
    schedule = diffusion.linear_schedule(1000)
    denoise = _optimal_denoiser(schedule)
    n = 20_000
    if sampler == "ddpm":
        x = diffusion.ddpm_sample(key, denoise, schedule, n, 2, num_steps=num_steps)
        eta = None
    else:
        x = diffusion.ddim_sample(key, denoise, schedule, n, 2, num_steps=num_steps)
        eta = 0.0
    mean, cov = _exact_chain_moments(
        schedule, diffusion.timesteps(1000, num_steps), eta
    )
    x = np.asarray(x, np.float64)
    # Monte Carlo only: mean error ~ sqrt(var / n), covariance ~ sqrt(2 / n) var.
    np.testing.assert_allclose(x.mean(0), mean, atol=5 * np.sqrt(cov.max() / n))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=5 * np.sqrt(2 / n) * cov.max())
    # The exact chains themselves: DDPM's 1000 small steps land on the data
    # law (10 respaced steps do not: the covariance is then off by 0.1, which
    # the comparison above resolves, e.g. variances beta~ instead of beta
    # would be off by 0.47); 20 deterministic DDIM steps shrink the
    # covariance (each step's linear map is a contraction by Cauchy-Schwarz).
    if sampler == "ddpm" and num_steps == 1000:
        np.testing.assert_allclose(cov, COV, atol=0.01)
    elif sampler == "ddim":
        assert np.all(np.linalg.eigvalsh(COV - cov) > 0)


def test_sampler_trajectory(key):
    schedule = diffusion.linear_schedule(100)
    denoise = _optimal_denoiser(schedule)
    path = diffusion.ddim_sample(
        key, denoise, schedule, 5, 2, num_steps=10, trajectory=True
    )
    assert path.shape == (11, 5, 2)
    np.testing.assert_allclose(
        path[-1],
        diffusion.ddim_sample(key, denoise, schedule, 5, 2, num_steps=10),
        rtol=1e-6,
    )


def test_sampler_shapes_dtype_determinism_and_vmap(key, x64):
    schedule = diffusion.linear_schedule(50, dtype=jnp.float64)
    denoise = _optimal_denoiser(schedule)
    # One compiled sampler called twice (an eager call would trace and compile
    # the scan again).
    draw = jax.jit(
        lambda k: diffusion.ddpm_sample(k, denoise, schedule, 7, 2, dtype=jnp.float64)
    )
    a, b = draw(key), draw(key)
    assert a.shape == (7, 2) and a.dtype == jnp.float64
    np.testing.assert_array_equal(a, b)
    keys = jax.random.split(key, 3)
    batched = jax.jit(
        jax.vmap(
            lambda k: diffusion.ddim_sample(k, denoise, schedule, 7, 2, num_steps=10)
        )
    )(keys)
    assert batched.shape == (3, 7, 2)
    single = diffusion.ddim_sample(keys[2], denoise, schedule, 7, 2, num_steps=10)
    np.testing.assert_allclose(batched[2], single, rtol=1e-12)
    assert not np.allclose(batched[0], batched[1])
    with pytest.raises(ValueError, match="eta must be in"):
        diffusion.ddim_sample(key, denoise, schedule, 7, 2, eta=2.0)
    with pytest.raises(ValueError, match="exceeds num_timesteps"):
        diffusion.ddim_sample(key, denoise, schedule, 7, 2, num_steps=51)


def test_ddim_is_deterministic_given_the_starting_noise(key):
    schedule = diffusion.linear_schedule(100)
    denoise = _optimal_denoiser(schedule)
    draw = jax.jit(
        lambda k, eta: diffusion.ddim_sample(
            k, denoise, schedule, 5, 2, num_steps=20, eta=eta
        ),
        static_argnums=1,
    )
    a, b = draw(key, 0.0), draw(key, 0.0)
    np.testing.assert_array_equal(a, b)
    # eta=0 uses no noise after x_T: eta=1 (ancestral) differs.
    c = draw(key, 1.0)
    assert not np.allclose(a, c)


def test_elbo_bounds_the_gaussian_log_likelihood(key, x64):
    schedule = diffusion.linear_schedule(1000, dtype=jnp.float64)
    denoise = _optimal_denoiser(schedule)
    x = _gaussian(key, 2000, jnp.float64)
    bound = np.asarray(
        jax.jit(lambda k, x: diffusion.elbo(k, denoise, x, schedule))(
            jax.random.key(3), x
        )
    )
    assert bound.shape == (2000,) and bound.dtype == np.float64
    from scipy.stats import multivariate_normal

    exact = multivariate_normal(MU, COV).logpdf(np.asarray(x))
    gap = exact - bound
    se = gap.std() / np.sqrt(gap.size)
    # A lower bound (the gap is a KL: >= 0 up to Monte Carlo error), and a
    # tight one with the exact denoiser: the closed-form expected gap of this
    # chain (reverse variances beta_t, T = 1000) is 0.001 nats.
    assert gap.mean() > -5 * se
    assert gap.mean() < 0.001 + 5 * se


@pytest.fixture(scope="module")
def moons():
    return datasets.two_moons(jax.random.key(0), 2048)


@pytest.fixture(scope="module")
def ddpm_run(moons):
    """A short DDPM run: small denoiser, T = 100, through the shared loop."""
    return train(
        jax.random.key(1),
        moons,
        method="ddpm",
        num_steps=600,
        chunk_size=200,
        batch_size=128,
        eval_size=256,
        hidden=(64, 64),
        num_timesteps=100,
        learning_rate=3e-3,
    )


def test_ddpm_short_run_improves_the_metric(ddpm_run, moons):
    assert ddpm_run.finite and not ddpm_run.diverged
    assert set(ddpm_run.history.losses) == {"denoiser"}
    assert ddpm_run.history.sw2.shape == (3,)
    losses = ddpm_run.history.losses["denoiser"]
    assert losses[-100:].mean() < losses[:100].mean()
    # SW2 to held-out data: the trained model against the same network untrained.
    schedule = diffusion.schedule_of(ddpm_run.options)
    untrained = Denoiser(2, hidden=(64, 64), rngs=nnx.Rngs(0))
    held_out = datasets.two_moons(jax.random.key(9), 512)
    k_sample, k_proj = jax.random.split(jax.random.key(4))
    before = diffusion.ddpm_sample(k_sample, untrained, schedule, 512, 2)
    after = sample(k_sample, ddpm_run, 512)
    sw_before = float(metrics.sw2(k_proj, before, held_out))
    sw_after = float(metrics.sw2(k_proj, after, held_out))
    assert sw_after < 0.5 * sw_before, (sw_before, sw_after)


def test_a_diverged_ddpm_run_is_reported(moons):
    # A step size of 1: Adam's first steps throw the denoiser far off, and the
    # run ends with a denoising loss (at one fixed draw of t and noise, the
    # same as at the start) far above its start, every value finite.
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad = train(
            jax.random.key(1),
            moons,
            method="ddpm",
            num_steps=40,
            chunk_size=20,
            eval_size=0,
            hidden=(32, 32),
            num_timesteps=100,
            learning_rate=1.0,
        )
    assert bad.finite and bad.diverged
    assert "ddpm training objective" in bad.message, bad.message
    # The score is the training loss at a fixed draw: at initialisation the
    # same as a batch loss of the untrained network, about 1 per coordinate.
    start = float(bad.message.split("rose from ")[1].split(" ")[0])
    assert 0.5 < start < 2.0, start


def test_ddpm_result_samplers(ddpm_run):
    a = sample(jax.random.key(2), ddpm_run, 64)
    b = sample(jax.random.key(2), ddpm_run, 64, sampler="ddim", num_steps=20)
    assert a.shape == b.shape == (64, 2)
    np.testing.assert_array_equal(
        b, sample(jax.random.key(2), ddpm_run, 64, sampler="ddim", num_steps=20)
    )
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample(jax.random.key(2), ddpm_run, 4, sampler="euler")
    with pytest.raises(ValueError, match="eta applies"):
        sample(jax.random.key(2), ddpm_run, 4, eta=0.5)


def test_ddpm_elbo_of_a_trained_model_beats_a_blurred_one(ddpm_run, moons):
    schedule = diffusion.schedule_of(ddpm_run.options)
    held_out = datasets.two_moons(jax.random.key(9), 256)
    fn = jax.jit(lambda k, x: diffusion.elbo(k, ddpm_run.generator, x, schedule))
    on_data = float(jnp.mean(fn(jax.random.key(3), held_out)))
    off_data = float(jnp.mean(fn(jax.random.key(3), held_out + 1.0)))
    assert np.isfinite(on_data) and on_data > off_data + 1.0


def test_ddpm_options_checked(moons):
    with pytest.raises(ValueError, match="schedule must be one of"):
        train(jax.random.key(0), moons, method="ddpm", num_steps=1, schedule="sigmoid")
    with pytest.raises(ValueError, match="hidden must hold equal widths"):
        train(jax.random.key(0), moons, method="ddpm", num_steps=1, hidden=(32, 64))
