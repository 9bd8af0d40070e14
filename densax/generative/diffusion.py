"""Denoising diffusion (DDPM): schedules, forward process, loss, samplers, ELBO.

The forward process adds Gaussian noise in ``T`` steps,
``q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)``, so that
``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with ``abar_t =
prod_{s<=t} alpha_s``. A network ``eps_theta(x_t, t)`` learns to predict the
noise (Ho et al., 2020); the backward process ``p(x_{t-1} | x_t)`` is the
Gaussian posterior ``q(x_{t-1} | x_t, x_0)`` with ``x_0`` replaced by its
prediction.

**Timestep convention.** Arrays are indexed by ``t = 0, ..., T-1``, index
``t`` holding the paper's step ``t + 1``: ``schedule.alpha_bars[0] =
alpha_1`` is the least noisy level, ``schedule.alpha_bars[T-1]`` the noisiest.

* Schedules: :func:`linear_schedule` (Ho et al.) and :func:`cosine_schedule`
  (Nichol & Dhariwal), pure functions returning a :class:`Schedule`.
* :func:`q_sample` draws ``x_t ~ q(x_t | x_0)``; :func:`denoising_loss` is
  the epsilon-prediction loss ``E |eps - eps_theta(x_t, t)|^2``.
* Samplers, both one ``lax.scan`` over (possibly respaced) timesteps,
  jittable and vmappable over keys: :func:`ddpm_sample` (ancestral, reverse
  variance ``sigma_t^2 = beta_t``) and :func:`ddim_sample` (deterministic
  for ``eta = 0``, with few steps).
* :func:`elbo`: the evidence lower bound in nats per point, for comparison
  with the held-out log-likelihood of density estimators (see its docstring
  for the decoder term of continuous data).
* :func:`ode_log_prob`: the exact log-density of the probability-flow ODE
  model (Song et al., 2021), by a fixed-step integrator, with the exact trace
  of the Jacobian in low dimension and Hutchinson's estimator above.

``densax.generative.train(key, x, method="ddpm")`` trains a
:class:`~densax.generative.models.Denoiser` through the shared training loop
and ``densax.generative.sample(key, result, n, sampler="ddim",
num_steps=50)`` samples from it.

References:
  Ho, Jain and Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS
  2020. Song, Meng and Ermon, *Denoising Diffusion Implicit Models*, ICLR
  2021. Nichol and Dhariwal, *Improved Denoising Diffusion Probabilistic
  Models*, ICML 2021. Sohl-Dickstein et al., *Deep Unsupervised Learning using
  Nonequilibrium Thermodynamics*, ICML 2015. Yang et al., *Diffusion Models: A
  Comprehensive Survey of Methods and Applications*, ACM Computing Surveys
  2024.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from densax import _validate
from densax.generative.image_nets import UNet
from densax.generative.losses import batch_mean
from densax.generative.method import Method, StepContext, adam
from densax.generative.models import Denoiser, check_widths, get_activation

__all__ = [
    "DDPMOptions",
    "METHODS",
    "Schedule",
    "alpha_bar_at",
    "cosine_schedule",
    "ddim_sample",
    "ddpm_sample",
    "denoising_loss",
    "elbo",
    "linear_schedule",
    "ode_log_prob",
    "q_sample",
    "schedule_of",
    "timesteps",
]

Denoise = Callable[[jax.Array, jax.Array], jax.Array]


class Schedule(NamedTuple):
    """A noise schedule; index ``t`` is the paper's step ``t + 1``."""

    betas: jax.Array  # [T] beta_t, the variance added at step t
    alphas: jax.Array  # [T] alpha_t = 1 - beta_t
    alpha_bars: jax.Array  # [T] abar_t = prod_{s<=t} alpha_s, decreasing


def _float_dtype(dtype: Any) -> np.dtype:
    return _validate.common_float_dtype() if dtype is None else np.dtype(dtype)


def _from_betas(betas: np.ndarray, dtype: Any) -> Schedule:
    # Computed in float64 on the host (the schedule is static), then cast.
    alphas = 1.0 - betas
    dtype = _float_dtype(dtype)
    return Schedule(
        jnp.asarray(betas, dtype),
        jnp.asarray(alphas, dtype),
        jnp.asarray(np.cumprod(alphas), dtype),
    )


def linear_schedule(
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    dtype: Any = None,
) -> Schedule:
    """Betas linear from ``beta_start`` to ``beta_end`` (Ho et al., 2020).

    Args:
      num_timesteps: ``T``.
      beta_start: ``beta_1``.
      beta_end: ``beta_T``.
      dtype: floating dtype of the arrays (default: JAX's default float).

    Returns:
      A :class:`Schedule` of length ``T``.

    Example:
      >>> s = linear_schedule(1000)
      >>> float(s.betas[0]), round(float(s.alpha_bars[-1]), 6)
      (0.0001, 4e-05)
    """
    num_timesteps = _validate.check_int(num_timesteps, "num_timesteps", minimum=1)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
        )
    return _from_betas(np.linspace(beta_start, beta_end, num_timesteps), dtype)


def cosine_schedule(
    num_timesteps: int = 1000,
    s: float = 0.008,
    max_beta: float = 0.999,
    *,
    dtype: Any = None,
) -> Schedule:
    """``abar_t = f(t) / f(0)``, ``f(t) = cos^2((t/T + s) / (1 + s) pi / 2)``.

    The betas ``1 - abar_t / abar_{t-1}`` are clipped at ``max_beta`` (only
    the last step reaches it, where ``f`` vanishes) and ``alpha_bars`` is
    recomputed from the clipped betas, so the three arrays stay consistent.

    Args:
      num_timesteps: ``T``.
      s: the small offset keeping ``beta_1`` away from 0.
      max_beta: upper bound on every beta.
      dtype: floating dtype of the arrays.

    Returns:
      A :class:`Schedule` of length ``T``.

    References:
      Nichol and Dhariwal, *Improved Denoising Diffusion Probabilistic
      Models*, 2021, eq. 17.

    Example:
      >>> s = cosine_schedule(1000)
      >>> round(float(s.alpha_bars[499]), 3)
      0.494
    """
    num_timesteps = _validate.check_int(num_timesteps, "num_timesteps", minimum=1)
    if not (s > 0 and 0 < max_beta < 1):
        raise ValueError(f"need s > 0 and 0 < max_beta < 1, got {s}, {max_beta}")
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], max_beta)
    return _from_betas(betas, dtype)


def _noised(x0, t, noise, schedule):
    n_t = schedule.alpha_bars.shape[0]
    valid = (t >= 0) & (t < n_t)  # out of range: NaN rows, never a clamp or wrap
    abar = jnp.where(valid, schedule.alpha_bars[jnp.clip(t, 0, n_t - 1)], jnp.nan)
    abar = abar[:, None]
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise


def q_sample(key: jax.Array, x0: Any, t: Any, schedule: Schedule) -> jax.Array:
    """Draws ``x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``.

    Args:
      key: PRNG key.
      x0: [n, d] clean data.
      t: [n] int timesteps in ``[0, T)`` (or a scalar for all rows).
      schedule: the noise schedule.

    Returns:
      [n, d] noised data, in ``x0``'s dtype. Under a transformation a
      timestep outside ``[0, T)`` gives a NaN row (never a clamped or
      wrapped timestep).

    Raises:
      TypeError: ``t`` is not an integer array.
      ValueError: ``t`` does not broadcast to [n]; eagerly, a timestep
        outside ``[0, T)``.

    Example:
      >>> x0 = jnp.ones((4, 2))
      >>> q_sample(jax.random.key(0), x0, jnp.array([0, 10, 100, 999]),
      ...          linear_schedule()).shape
      (4, 2)
    """
    x0 = _validate.as_float(x0, "x0", ndim=2)
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"t must hold integer timesteps, got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, x0.shape[0])):
        raise ValueError(f"t must be a scalar or [{x0.shape[0]}], got {t.shape}")
    t = jnp.broadcast_to(t, x0.shape[:1])
    n_t = schedule.alpha_bars.shape[0]
    _validate.value_check(
        True,
        jnp.all((t >= 0) & (t < n_t)),
        f"t must be in [0, {n_t}) (the schedule's timesteps)",
    )
    noise = jax.random.normal(key, x0.shape, x0.dtype)
    return _noised(x0, t, noise, schedule).astype(x0.dtype)


def denoising_loss(
    denoiser: Denoise,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    schedule: Schedule,
    *,
    axis_name: Any = None,
) -> jax.Array:
    """The epsilon-prediction loss ``E |eps - eps_theta(x_t, t)|^2 / d``.

    Ho et al.'s simplified objective ("L_simple"): ``x_t = sqrt(abar_t) x_0 +
    sqrt(1 - abar_t) eps`` with the given ``t`` and ``eps``, and the squared
    error averaged over coordinates and the batch.

    Args:
      denoiser: maps ``(x_t [b, d], t [b])`` to predicted noise ``[b, d]``.
      x0: [b, d] clean data.
      t: [b] int timesteps in ``[0, T)``, uniform in training.
      noise: [b, d] the standard normal ``eps``.
      schedule: the noise schedule.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the loss.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. 14.

    Example:
      >>> x0, eps = jnp.zeros((3, 2)), jnp.ones((3, 2))
      >>> loss = denoising_loss(lambda x, t: x, x0, jnp.array([999] * 3), eps,
      ...                       linear_schedule())
      >>> bool(loss < 1e-4)  # at t = T, x_t is almost pure noise
      True
    """
    pred = denoiser(_noised(x0, t, noise, schedule), t)
    return batch_mean(jnp.mean((noise - pred) ** 2, axis=-1), axis_name)


def timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """``num_steps`` timesteps from ``T - 1`` down to ``0``, evenly spaced.

    Example:
      >>> timesteps(1000, 5).tolist()
      [999, 749, 500, 250, 0]
    """
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    if num_steps > num_timesteps:
        raise ValueError(
            f"num_steps ({num_steps}) exceeds num_timesteps ({num_timesteps})"
        )
    if num_steps == 1:
        return np.array([num_timesteps - 1])
    return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


def _reverse(
    key: jax.Array,
    denoiser: Denoise,
    schedule: Schedule,
    shape: tuple[int, int],
    dtype: Any,
    steps: np.ndarray,
    eta: float | None,
    trajectory: bool,
) -> jax.Array:
    """Runs the reverse chain over ``steps`` (decreasing timesteps).

    Each step predicts ``x0_hat`` and moves to ``sqrt(abar') x0_hat + sqrt(1 -
    abar' - c^2) eps_hat + sigma z``. DDIM (``eta`` given): ``c^2 = sigma^2 =
    eta^2 beta~``. DDPM (``eta=None``): ``c^2 = beta~`` (the posterior mean)
    and ``sigma^2 = beta``, with ``beta = 1 - abar / abar'`` and ``beta~ = (1 -
    abar') / (1 - abar) beta`` for the (possibly respaced) step. The last step
    (to ``abar' = 1``) returns the mean.
    """
    abar = schedule.alpha_bars.astype(dtype)
    t_now = jnp.asarray(steps)
    abar_now = abar[t_now]
    abar_prev = jnp.concatenate([abar[t_now[1:]], jnp.ones((1,), dtype)])
    beta = 1 - abar_now / abar_prev
    beta_tilde = (1 - abar_prev) / (1 - abar_now) * beta
    if eta is None:
        mean_var = beta_tilde
        noise_var = beta.at[-1].set(0.0)
    else:
        mean_var = noise_var = eta**2 * beta_tilde
    k_init, k_steps = jax.random.split(key)

    def step(x, inputs):
        i, t, a_t, a_prev, c2, var = inputs
        eps = denoiser(x, jnp.full(shape[:1], t))
        x0_hat = (x - jnp.sqrt(1 - a_t) * eps) / jnp.sqrt(a_t)
        direction = jnp.sqrt(jnp.maximum(1 - a_prev - c2, 0.0))
        z = jax.random.normal(jax.random.fold_in(k_steps, i), shape, dtype)
        x = jnp.sqrt(a_prev) * x0_hat + direction * eps + jnp.sqrt(var) * z
        return x, (x if trajectory else None)

    x_T = jax.random.normal(k_init, shape, dtype)
    inputs = (jnp.arange(len(steps)), t_now, abar_now, abar_prev, mean_var, noise_var)
    x0, path = lax.scan(step, x_T, inputs)
    return jnp.concatenate([x_T[None], path]) if trajectory else x0


def _check_sampler(n: int, features: int, schedule: Schedule, num_steps):
    n = _validate.check_int(n, "n", minimum=1)
    features = _validate.check_int(features, "features", minimum=1)
    total = schedule.betas.shape[0]
    return n, features, timesteps(total, total if num_steps is None else num_steps)


def ddpm_sample(
    key: jax.Array,
    denoiser: Denoise,
    schedule: Schedule,
    n: int,
    features: int,
    *,
    num_steps: int | None = None,
    trajectory: bool = False,
    dtype: Any = None,
) -> jax.Array:
    """Ancestral sampling: ``x_T ~ N(0, I)``, then ``x_{t-1} ~ p(x_{t-1} | x_t)``.

    Each step moves to the mean of the Gaussian posterior ``q(x_{t-1} | x_t,
    x_0 = x0_hat)``, with ``x0_hat`` predicted from ``eps_theta``, and adds
    noise of variance ``sigma_t^2 = beta_t`` (Ho et al., Algorithm 2). Of Ho
    et al.'s two choices, ``beta_t`` (rather than the posterior's ``beta~_t``)
    is the right one for data with a density: with the exact denoiser of a
    Gaussian dataset its ELBO (:func:`elbo`) is tight to 0.001 nats, against
    0.9 nats for ``beta~_t``. With ``num_steps < T`` the chain runs on evenly
    spaced timesteps with the betas respaced accordingly (Nichol and
    Dhariwal, §4). The last step returns the mean (no noise).

    Args:
      key: PRNG key.
      denoiser: ``(x_t [n, d], t [n]) -> eps [n, d]``.
      schedule: the schedule the denoiser was trained with.
      n: number of samples.
      features: data dimension ``d``.
      num_steps: number of denoising steps (default ``T``).
      trajectory: return the whole chain, ``x_T`` first.
      dtype: floating dtype (default: JAX's default float).

    Returns:
      [n, d] samples, or [num_steps + 1, n, d] states with ``trajectory``.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, Algorithm 2.

    Example:
      >>> x = ddpm_sample(jax.random.key(0), lambda x, t: jnp.zeros_like(x),
      ...                 linear_schedule(100), 5, 2)
      >>> x.shape
      (5, 2)
    """
    n, features, steps = _check_sampler(n, features, schedule, num_steps)
    shape, dtype = (n, features), _float_dtype(dtype)
    return _reverse(key, denoiser, schedule, shape, dtype, steps, None, trajectory)


def ddim_sample(
    key: jax.Array,
    denoiser: Denoise,
    schedule: Schedule,
    n: int,
    features: int,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    trajectory: bool = False,
    dtype: Any = None,
) -> jax.Array:
    """DDIM sampling on ``num_steps`` evenly spaced timesteps.

    ``x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma^2) eps_theta
    + sigma z``, ``sigma^2 = eta^2 beta~``: deterministic given ``x_T`` for
    ``eta = 0`` (an implicit model, a discretisation of the probability-flow
    ODE), ancestral sampling with the posterior variance ``beta~`` for
    ``eta = 1``. Few deterministic steps contract the samples slightly (with
    the exact denoiser of a Gaussian dataset, each step's linear map shrinks
    the covariance, by Cauchy–Schwarz); more steps reduce that bias.

    Args:
      key: PRNG key (only ``x_T`` is random when ``eta = 0``).
      denoiser: ``(x_t [n, d], t [n]) -> eps [n, d]``.
      schedule: the schedule the denoiser was trained with.
      n: number of samples.
      features: data dimension ``d``.
      num_steps: number of denoising steps.
      eta: stochasticity, in ``[0, 1]``.
      trajectory: return the whole chain, ``x_T`` first.
      dtype: floating dtype.

    Returns:
      [n, d] samples, or [num_steps + 1, n, d] states with ``trajectory``.

    References:
      Song, Meng and Ermon, *Denoising Diffusion Implicit Models*, 2021, eq. 12.

    Example:
      >>> x = ddim_sample(jax.random.key(0), lambda x, t: jnp.zeros_like(x),
      ...                 linear_schedule(100), 5, 2, num_steps=10)
      >>> x.shape
      (5, 2)
    """
    n, features, steps = _check_sampler(n, features, schedule, num_steps)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    shape, dtype = (n, features), _float_dtype(dtype)
    return _reverse(key, denoiser, schedule, shape, dtype, steps, eta, trajectory)


def elbo(key: jax.Array, denoiser: Denoise, x0: Any, schedule: Schedule) -> jax.Array:
    """Evidence lower bound ``log p(x_0) >= -L``, in nats, for each point.

    ``L = KL(q(x_T | x_0) | N(0, I)) + sum_{t=2}^T KL(q(x_{t-1} | x_t, x_0) |
    p(x_{t-1} | x_t)) - E log p(x_0 | x_1)`` for the model sampled by
    :func:`ddpm_sample` (all ``T`` steps, variances ``beta_t``), whose KL
    terms are closed-form Gaussian ones, each estimated with one draw of
    ``x_t`` per point (all ``T`` terms are summed: unbiased, exact in ``t``).
    Costs ``T`` denoiser calls on ``x0``: jit it with the denoiser closed
    over (``jax.jit(lambda k, x: elbo(k, net, x, schedule))``).

    **Decoder for continuous data.** Images are discretised in Ho et al.'s
    decoder; here ``x_0`` is continuous and ``p(x_0 | x_1) = N(mu_theta(x_1,
    1), beta_1 I)`` is a density, so the bound is on the log-*density* of a
    continuous model (the sampler's chain with ``N(0, beta_1 I)`` noise added
    at its last step, where the sampler returns the mean: a blur of std
    ``sqrt(beta_1) = 0.01`` for the linear schedule), in nats per point, the
    units of a KDE's or a GMM's held-out log-likelihood. It lower-bounds the
    model's log-likelihood.

    Args:
      key: PRNG key.
      denoiser: ``(x_t [n, d], t [n]) -> eps [n, d]``.
      x0: [n, d] points (held-out data).
      schedule: the schedule the denoiser was trained with.

    Returns:
      [n] ELBO of each point (average it for nats per point).

    References:
      Ho et al., 2020, eq. 5; Sohl-Dickstein et al., 2015, §2.4.

    Example:
      >>> x0 = jnp.zeros((3, 2))
      >>> elbo(jax.random.key(0), lambda x, t: jnp.zeros_like(x), x0,
      ...      linear_schedule(100)).shape
      (3,)
    """
    x0 = _validate.as_float(x0, "x0", ndim=2)
    dtype = x0.dtype
    betas, alphas, abar = (a.astype(dtype) for a in schedule)
    n, d = x0.shape
    abar_prev = jnp.concatenate([jnp.ones((1,), dtype), abar[:-1]])
    # KL(N(mu~, beta~) | N(mu_theta, beta)) = d/2 (r - 1 - log r) + w |eps_theta -
    # eps|^2 with r = beta~ / beta and w = beta / (2 alpha (1 - abar)); at t = 1
    # the decoder -log N(x_0; mu_theta, beta_1) has the same w and r = 0 is
    # replaced by its normaliser d/2 log(2 pi beta_1).
    weights = betas / (2 * alphas * (1 - abar))
    ratio = (1 - abar_prev[1:]) / (1 - abar[1:])
    constant = 0.5 * d * jnp.sum(ratio - 1 - jnp.log(ratio))
    constant += 0.5 * d * jnp.log(2 * jnp.pi * betas[0])

    def term(total, inputs):
        t, w = inputs
        noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, dtype)
        tt = jnp.full((n,), t)
        err = jnp.sum((denoiser(_noised(x0, tt, noise, schedule), tt) - noise) ** 2, -1)
        return total + w * err, None

    steps = jnp.arange(betas.shape[0])
    loss, _ = lax.scan(term, jnp.zeros((n,), dtype), (steps, weights))
    a_T = abar[-1]
    prior_kl = 0.5 * jnp.sum((1 - a_T) + a_T * x0**2 - 1 - jnp.log1p(-a_T), axis=-1)
    return -(loss + constant + prior_kl)


def alpha_bar_at(schedule: Schedule, t: Any) -> jax.Array:
    """``abar`` at fractional timesteps: log-linear interpolation of the schedule.

    The continuous-time process behind :func:`ode_log_prob`: ``log abar`` is
    piecewise linear in ``t`` between the integer timesteps, where it equals
    ``log schedule.alpha_bars[t]``.

    Args:
      schedule: the noise schedule.
      t: [...] float timesteps in ``[0, T - 1]``.

    Returns:
      [...] ``abar(t)``.

    Example:
      >>> s = linear_schedule(1000)
      >>> bool(jnp.allclose(alpha_bar_at(s, 3.0), s.alpha_bars[3]))
      True
    """
    log_abar = jnp.log(schedule.alpha_bars)
    grid = jnp.arange(log_abar.shape[0], dtype=log_abar.dtype)
    return jnp.exp(jnp.interp(jnp.asarray(t, log_abar.dtype), grid, log_abar))


def _trace_fn(denoiser: Denoise, x: jax.Array, t: jax.Array, probes):
    """[n] trace of ``d eps_theta(x_i, t_i) / d x_i``: exact or Hutchinson."""
    if probes is None:

        def one(xi, ti):
            jac = jax.jacfwd(lambda u: denoiser(u[None], ti[None])[0])(xi)
            return jnp.trace(jac)

        return jax.vmap(one)(x, t)

    # The rows are independent (no batch statistics): one JVP per probe gives
    # the rows' J v at once.
    def quad(v):
        jv = jax.jvp(lambda u: denoiser(u, t), (x,), (v,))[1]
        return jnp.sum(v * jv, axis=-1)

    return jnp.mean(jax.vmap(quad)(probes), axis=0)


def ode_log_prob(
    key: jax.Array,
    denoiser: Denoise,
    x0: Any,
    schedule: Schedule,
    *,
    num_steps: int = 100,
    solver: str = "rk4",
    trace: str = "auto",
    n_probes: int = 1,
) -> jax.Array:
    """Log-density of the probability-flow ODE model, in nats, for each point.

    The DDPM's continuous-time process has ``log abar(t)`` piecewise linear
    between the timesteps (:func:`alpha_bar_at`). In the variable ``s = -log
    abar`` its probability-flow ODE (Song et al., 2021, eq. 13, for the VP
    SDE with ``beta ds``) is

        ``dx/ds = f(x, s) = -(x + score(x, s)) / 2``, ``score = -eps_theta(x,
        t(s)) / sqrt(1 - exp(-s))``,

    a deterministic map from ``N(0, I)`` at the last timestep to the first;
    by the instantaneous change of variables (Chen et al., 2018)
    ``log p_{s_0}(x(s_0)) = log N(x(s_T); 0, I) + int_{s_0}^{s_T} div f ds``.
    Integrated by fixed steps (RK4 or Heun, one ``lax.scan``) on a grid
    geometric in ``s`` (the noise level changes fastest at the start), from
    ``x(s_0) = sqrt(abar_1) x_0``.

    **What density.** ``s_0`` is the first timestep (``abar_1 = 1 -
    beta_1``), where ``eps_theta`` is trained; the result is the log-density
    of ``x_{s_0} / sqrt(abar_1)``, i.e. of the data plus ``N(0, sigma_1^2
    I)`` noise with ``sigma_1^2 = beta_1 / (1 - beta_1)`` (std 0.01 for the
    linear schedule), the blur of :func:`elbo`'s decoder, in nats per point.
    With the exact denoiser of Gaussian data it equals the log-density of
    ``N(mu, Sigma + sigma_1^2 I)`` up to the integrator's error (RK4 with
    50 steps: 2e-5 nats on a 2D Gaussian) and the prior's: ``q(x_T) =
    N(sqrt(abar_T) mu, abar_T Sigma + (1 - abar_T) I)`` is ``N(0, I)`` only up
    to ``sqrt(abar_T) = 0.006`` (linear schedule), an error of about
    ``sqrt(abar_T) mu . x_T`` nats, which the ELBO's prior term shares.

    **Trace.** ``div f = -(d - tr(d eps_theta / dx) / sqrt(1 - exp(-s))) / 2``:
    the trace is exact by ``jax.jacfwd`` (``d`` JVPs per point and
    evaluation) for ``trace="exact"``, estimated by Hutchinson's ``v^T J v``
    with ``n_probes`` Rademacher vectors per point, fixed along the path
    (FFJORD), for ``"hutchinson"``: unbiased, since the path ``x(s)`` does
    not depend on the probes and the integral is linear in ``v^T J v``;
    ``"auto"`` is exact up to ``d = 16``.

    Costs ``4 num_steps`` (RK4) or ``2 num_steps`` (Heun) denoiser
    evaluations with their traces. Jit it with the denoiser closed over.

    Args:
      key: PRNG key (the Hutchinson probes; unused by the exact trace).
      denoiser: ``(x_t [n, d], t [n]) -> eps [n, d]``, taking float
        timesteps (the :class:`~densax.generative.models.Denoiser` does).
      x0: [n, d] points.
      schedule: the schedule the denoiser was trained with.
      num_steps: integration steps.
      solver: ``"rk4"`` or ``"heun"``.
      trace: ``"auto"``, ``"exact"`` or ``"hutchinson"``.
      n_probes: Hutchinson probes per point.

    Returns:
      [n] log-density of each point (average it for nats per point).

    References:
      Song et al., *Score-Based Generative Modeling through Stochastic
      Differential Equations*, ICLR 2021, §4.3 and Appendix D.2. Chen et al.,
      *Neural Ordinary Differential Equations*, 2018, Theorem 1. Grathwohl et
      al., *FFJORD*, ICLR 2019 (Hutchinson's estimator).

    Example:
      >>> x0 = jnp.zeros((3, 2))
      >>> lp = ode_log_prob(jax.random.key(0), lambda x, t: x, x0,
      ...                   linear_schedule(100), num_steps=20)
      >>> lp.shape
      (3,)
    """
    x0 = _validate.as_float(x0, "x0", ndim=2)
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    n_probes = _validate.check_int(n_probes, "n_probes", minimum=1)
    _validate.check_choice(solver, "solver", ("rk4", "heun"))
    _validate.check_choice(trace, "trace", ("auto", "exact", "hutchinson"))
    dtype = x0.dtype
    n, d = x0.shape
    if trace == "auto":
        trace = "exact" if d <= 16 else "hutchinson"
    probes = None
    if trace == "hutchinson":
        probes = jax.random.rademacher(key, (n_probes, n, d), dtype)
    # The grid in s = -log abar, geometric from the first to the last level.
    s_levels = -np.log(np.asarray(schedule.alpha_bars, np.float64))
    grid = np.geomspace(s_levels[0], s_levels[-1], num_steps + 1)
    s_table = jnp.asarray(s_levels, dtype)
    t_table = jnp.arange(s_levels.shape[0], dtype=dtype)

    def velocity(x, s):
        t = jnp.full((n,), jnp.interp(s, s_table, t_table))
        sigma = jnp.sqrt(-jnp.expm1(-s))
        eps = denoiser(x, t)
        div = -0.5 * (d - _trace_fn(denoiser, x, t, probes) / sigma)
        return -0.5 * (x - eps / sigma), div

    def step(carry, interval):
        x, total = carry
        s, h = interval[0], interval[1] - interval[0]
        if solver == "heun":
            v1, g1 = velocity(x, s)
            v2, g2 = velocity(x + h * v1, s + h)
            return (x + h / 2 * (v1 + v2), total + h / 2 * (g1 + g2)), None
        v1, g1 = velocity(x, s)
        v2, g2 = velocity(x + h / 2 * v1, s + h / 2)
        v3, g3 = velocity(x + h / 2 * v2, s + h / 2)
        v4, g4 = velocity(x + h * v3, s + h)
        x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        return (x, total + h / 6 * (g1 + 2 * g2 + 2 * g3 + g4)), None

    grid = jnp.asarray(grid, dtype)
    intervals = jnp.stack([grid[:-1], grid[1:]], axis=-1)
    log_a0 = -grid[0]
    start = (jnp.exp(0.5 * log_a0) * x0, jnp.zeros((n,), dtype))
    (x_T, integral), _ = lax.scan(step, start, intervals)
    prior = -0.5 * jnp.sum(x_T**2, axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
    return prior + integral + 0.5 * d * log_a0


@dataclasses.dataclass(frozen=True)
class DDPMOptions:
    """Options of diffusion training (``method="ddpm"``; static, hashable).

    Attributes:
      hidden: hidden widths of the denoiser (equal widths).
      time_features: size of the sinusoidal time embedding.
      activation: activation name or callable.
      num_timesteps: ``T``.
      schedule: ``"linear"`` or ``"cosine"``.
      learning_rate: Adam's (initial) step size.
      lr_schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      optimizer: an Optax optimiser replacing Adam.
      network: the denoiser, ``"mlp"`` (a
        :class:`~densax.generative.models.Denoiser` of widths ``hidden``) or
        ``"unet"`` (a :class:`~densax.generative.image_nets.UNet` of
        ``channels``, for images flattened to rows).
      channels: the U-Net's widths per resolution.
      image_shape: the U-Net's ``(H, W[, C])``; default square greyscale.
    """

    hidden: tuple[int, ...] = (128, 128, 128)
    time_features: int = 32
    activation: str | Callable = "silu"
    num_timesteps: int = 1000
    schedule: str = "linear"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    b1: float = 0.9
    b2: float = 0.999
    optimizer: optax.GradientTransformation | None = None
    network: str = "mlp"
    channels: tuple[int, ...] = (32, 64)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        """Normalises ``hidden`` and checks the values."""
        object.__setattr__(self, "hidden", check_widths(self.hidden))
        object.__setattr__(self, "channels", check_widths(self.channels))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(self.image_shape))
        get_activation(self.activation)
        _validate.check_choice(self.network, "network", ("mlp", "unet"))
        _validate.check_choice(self.schedule, "schedule", ("linear", "cosine"))
        _validate.check_choice(self.lr_schedule, "lr_schedule", ("cosine", "constant"))
        _validate.check_int(self.num_timesteps, "num_timesteps", minimum=2)
        if self.time_features < 2 or self.time_features % 2:
            raise ValueError(f"time_features must be even, got {self.time_features}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}"
            )


def schedule_of(options: DDPMOptions, dtype: Any = None) -> Schedule:
    """The :class:`Schedule` named by ``options``."""
    make = linear_schedule if options.schedule == "linear" else cosine_schedule
    return make(options.num_timesteps, dtype=dtype)


def _networks(options, features, dtype, rngs):
    if options.network == "unet":
        unet = UNet(
            features,
            channels=options.channels,
            image_shape=options.image_shape,
            time_features=options.time_features,
            param_dtype=dtype,
            rngs=rngs,
        )
        return {"denoiser": unet}
    net = Denoiser(
        features,
        hidden=options.hidden,
        time_features=options.time_features,
        activation=options.activation,
        param_dtype=dtype,
        rngs=rngs,
    )
    return {"denoiser": net}


def _step(ctx: StepContext, params, opt_state, key):
    k_x, k_t, k_eps = jax.random.split(key, 3)
    o = ctx.options
    x0 = ctx.real_batch(k_x)
    t = ctx.local(jax.random.randint(k_t, (ctx.batch_size,), 0, o.num_timesteps))
    noise = ctx.normal(k_eps, x0.shape[1])
    schedule = schedule_of(o, x0.dtype)

    def loss(p):
        denoise = lambda x, t: ctx.apply("denoiser", p, x, t)
        return denoising_loss(denoise, x0, t, noise, schedule, axis_name=ctx.axis_name)

    p, s, value = ctx.update(
        "denoiser", loss, params["denoiser"], opt_state["denoiser"]
    )
    return {"denoiser": p}, {"denoiser": s}, {"denoiser": value}


def _score(networks, options, x):
    """[] the training objective on ``x: [k, d]`` at one fixed draw of ``t`` and noise.

    The steps lower an expectation over uniform ``t`` and Gaussian ``eps``;
    the same draw of both at the start and at the end of training makes the
    two values comparable (their difference is not a sampling fluctuation).
    """
    k_t, k_eps = jax.random.split(jax.random.key(0))
    t = jax.random.randint(k_t, (x.shape[0],), 0, options.num_timesteps)
    noise = jax.random.normal(k_eps, x.shape, x.dtype)
    schedule = schedule_of(options, x.dtype)
    return denoising_loss(networks["denoiser"], x, t, noise, schedule)


def _sample(model, options, key, n, dtype, *, sampler="ddpm", num_steps=None, eta=None):
    """Samples from a trained denoiser: ``sampler="ddpm" | "ddim"``."""
    _validate.check_choice(sampler, "sampler", ("ddpm", "ddim"))
    features = model.features if isinstance(model, UNet) else model.out.out_features
    schedule = schedule_of(options, dtype)
    if sampler == "ddpm":
        if eta is not None:
            raise ValueError("eta applies to sampler='ddim' only")
        return ddpm_sample(
            key, model, schedule, n, features, num_steps=num_steps, dtype=dtype
        )
    return ddim_sample(
        key,
        model,
        schedule,
        n,
        features,
        num_steps=50 if num_steps is None else num_steps,
        eta=0.0 if eta is None else eta,
        dtype=dtype,
    )


METHODS: dict[str, Method] = {
    "ddpm": Method(
        DDPMOptions,
        _networks,
        lambda o, n: {"denoiser": adam(o, n)},
        _step,
        _sample,
        batch_size=256,
        score=_score,
    ),
}
