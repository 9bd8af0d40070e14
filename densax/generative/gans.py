"""Generators trained by divergence minimisation: GAN, WGAN and OT methods.

Each method is a :class:`densax.generative.method.Method` run by
:func:`densax.generative.train`:

===============  =========================================================
``"gan"``        Jensen–Shannon GAN, non-saturating generator loss
``"wgan-clip"``  Wasserstein GAN, critic kept Lipschitz by weight clipping
``"wgan-gp"``    Wasserstein GAN with the gradient penalty
``"sliced"``     generator on the squared sliced Wasserstein distance
``"sinkhorn"``   generator on the Sinkhorn divergence
===============  =========================================================

Every generator is an :class:`~densax.generative.models.MLP` mapping ``z ~
N(0, I_latent_dim)`` (or ``U(0, 1)^latent_dim`` with ``latent="uniform"``) to
data space; the adversarial methods add an MLP critic
``x -> [1]`` (the discriminator's logit for ``"gan"``). The adversarial step
first takes ``n_critic`` critic steps, each on a fresh data batch and fresh
generated samples, then one generator step (Arjovsky et al., 2017,
Algorithm 1; Gulrajani et al., 2017, Algorithm 1).

Defaults, chosen on the 8-Gaussians acceptance benchmark
(``benchmarks/bench_generative.py``; its numbers are in the documentation's
benchmark notes): 128-wide, 3-hidden-layer ReLU MLPs, a 2D latent,
Adam(1e-3, b1=0.5, b2=0.9) whose rate decays to 0 along a cosine over the
run, for every network. Gulrajani et al.'s Adam(1e-4) needs far more steps
than the benchmark's budget; the cosine decay tightens the modes at the end.
Critics take 5 steps per generator step for the WGANs, 1 for the JS-GAN; a
critic's schedule spans its ``n_critic x num_steps`` updates, so that both
networks' rates reach 0 together (a critic whose rate ran out first would
freeze while the generator keeps climbing its slope: on short runs the
samples then drift off to infinity). The gradient-penalty weight is 1.0:
Gulrajani et al.'s toy value 0.1 does as well on the benchmark, and the
firmer penalty keeps the critic closer to 1-Lipschitz. Minibatch OT losses
are biased towards blurred samples by O(1/sqrt(batch)) (the expected order
statistics of a small batch fall between modes), so the OT generators
default to larger batches: 1024 for ``"sliced"``, 512 for ``"sinkhorn"``
(whose step costs O(batch^2)).

The Sinkhorn generator keeps a small ``epsilon = 0.01`` (a blur of 0.1, well
below the distance between the benchmark's modes) and gets 100 Sinkhorn
iterations per problem and step. Between two minibatches whose mode counts
differ, Sinkhorn must move mass across modes, where the kernel
``exp(-C / epsilon)`` underflows to nearly nothing: the marginal error
decays slowly and the envelope gradient of an unconverged solve is biased.
Fewer iterations bias the gradient more (modes can then be lost); more
iterations cost proportionally more per step. A larger ``epsilon``
converges fast but blurs the modes. Check
``densax.ot.sinkhorn_divergence(...).converged`` when changing these options.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax import lax

from densax import _validate
from densax.generative import losses
from densax.generative.image_nets import DCGANCritic, DCGANGenerator
from densax.generative.method import (
    LATENTS,
    Method,
    StepContext,
    adam,
    draw_latent,
)
from densax.generative.models import MLP, check_widths, get_activation

__all__ = [
    "GANOptions",
    "GeneratorOptions",
    "SinkhornOptions",
    "SlicedOptions",
    "WGANClipOptions",
    "WGANGPOptions",
    "METHODS",
]


def _check_positive(options: Any, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value > 0
        ):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_count(options: Any, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class GeneratorOptions:
    """Options of every generator ``z -> x`` (static, hashable).

    Attributes:
      latent_dim: dimension of the latent ``z``.
      latent: its distribution, ``"normal"`` (``N(0, I)``) or ``"uniform"``
        (``U(0, 1)^latent_dim``).
      hidden: hidden widths of the generator MLP (their number is the depth).
      activation: activation name (see ``models.ACTIVATIONS``) or callable.
      learning_rate: Adam's (initial) step size.
      lr_schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      optimizer: an Optax optimiser replacing Adam for every network.
      network: ``"mlp"`` (:class:`~densax.generative.models.MLP` networks of
        widths ``hidden``) or ``"dcgan"`` (the convolutional
        :class:`~densax.generative.image_nets.DCGANGenerator` of
        ``channels`` and, for the adversarial methods,
        :class:`~densax.generative.image_nets.DCGANCritic`, for images
        flattened to rows).
      channels: the DCGAN generator's widths, smallest feature map first.
      image_shape: the images' ``(H, W[, C])``; default square greyscale.
    """

    latent_dim: int = 2
    latent: str = "normal"
    hidden: tuple[int, ...] = (128, 128, 128)
    activation: str | Callable = "relu"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    b1: float = 0.5
    b2: float = 0.9
    optimizer: optax.GradientTransformation | None = None
    network: str = "mlp"
    channels: tuple[int, ...] = (64, 32)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        """Normalises ``hidden`` to a tuple and checks the values."""
        object.__setattr__(self, "hidden", check_widths(self.hidden))
        object.__setattr__(self, "channels", check_widths(self.channels))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(self.image_shape))
        _validate.check_choice(self.network, "network", ("mlp", "dcgan"))
        _check_count(self, "latent_dim")
        _validate.check_choice(self.latent, "latent", LATENTS)
        check_widths(self.hidden)
        get_activation(self.activation)
        _check_positive(self, "learning_rate")
        _validate.check_choice(self.lr_schedule, "lr_schedule", ("cosine", "constant"))
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")


@dataclasses.dataclass(frozen=True)
class GANOptions(GeneratorOptions):
    """Options of the Jensen–Shannon GAN (``method="gan"``).

    Attributes:
      critic_hidden: hidden widths of the critic (default: ``hidden``).
      n_critic: critic (discriminator) steps per generator step.
      critic_channels: the DCGAN critic's widths, full resolution first
        (default: ``channels`` reversed).
    """

    critic_hidden: tuple[int, ...] | None = None
    n_critic: int = 1
    critic_channels: tuple[int, ...] | None = None

    def __post_init__(self):
        """Checks the critic options too."""
        super().__post_init__()
        if self.critic_hidden is not None:
            object.__setattr__(self, "critic_hidden", check_widths(self.critic_hidden))
        if self.critic_channels is not None:
            widths = check_widths(self.critic_channels)
            object.__setattr__(self, "critic_channels", widths)
        _check_count(self, "n_critic")


@dataclasses.dataclass(frozen=True)
class WGANClipOptions(GANOptions):
    """Options of the weight-clipped Wasserstein GAN (``method="wgan-clip"``).

    Attributes:
      clip: every critic weight is kept in ``[-clip, clip]``.
    """

    n_critic: int = 5
    clip: float = 0.01

    def __post_init__(self):
        """Checks ``clip`` too."""
        super().__post_init__()
        _check_positive(self, "clip")


@dataclasses.dataclass(frozen=True)
class WGANGPOptions(GANOptions):
    """Options of WGAN-GP (``method="wgan-gp"``).

    Attributes:
      gp_weight: the penalty weight ``lambda`` (Gulrajani et al. use 0.1 on
        toy data and 10 on images; 0.1 and 1.0 do equally well on 8
        Gaussians, see the module docstring).
    """

    n_critic: int = 5
    gp_weight: float = 1.0

    def __post_init__(self):
        """Checks ``gp_weight`` too."""
        super().__post_init__()
        _check_positive(self, "gp_weight")


@dataclasses.dataclass(frozen=True)
class SlicedOptions(GeneratorOptions):
    """Options of the sliced-Wasserstein generator (``method="sliced"``).

    Attributes:
      n_projections: random directions per step.
    """

    n_projections: int = 128

    def __post_init__(self):
        """Checks ``n_projections`` too."""
        super().__post_init__()
        _check_count(self, "n_projections")


@dataclasses.dataclass(frozen=True)
class SinkhornOptions(GeneratorOptions):
    """Options of the Sinkhorn-divergence generator (``method="sinkhorn"``).

    Attributes:
      epsilon: entropic regularisation (squared data units).
      max_iter: Sinkhorn iterations per problem and step, at most (100: see
        the module docstring for why 50 is too few at ``epsilon = 0.01``).
      tol: marginal error at which Sinkhorn stops early.
    """

    epsilon: float = 0.01
    max_iter: int = 100
    tol: float = 1e-3

    def __post_init__(self):
        """Checks the Sinkhorn options too."""
        super().__post_init__()
        _check_positive(self, "epsilon", "tol")
        _check_count(self, "max_iter")


def _generator(options, features, dtype, rngs):
    if options.network == "dcgan":
        return DCGANGenerator(
            options.latent_dim,
            features,
            channels=options.channels,
            image_shape=options.image_shape,
            param_dtype=dtype,
            rngs=rngs,
        )
    return MLP(
        options.latent_dim,
        features,
        hidden=options.hidden,
        activation=options.activation,
        param_dtype=dtype,
        rngs=rngs,
    )


def _generator_and_critic(options, features, dtype, rngs):
    if options.network == "dcgan":
        critic = DCGANCritic(
            features,
            channels=options.critic_channels or options.channels[::-1],
            image_shape=options.image_shape,
            param_dtype=dtype,
            rngs=rngs,
        )
    else:
        critic = MLP(
            features,
            1,
            hidden=options.critic_hidden or options.hidden,
            activation=options.activation,
            param_dtype=dtype,
            rngs=rngs,
        )
    return {"generator": _generator(options, features, dtype, rngs), "critic": critic}


def _generator_only(options, features, dtype, rngs):
    return {"generator": _generator(options, features, dtype, rngs)}


def _generate(ctx: StepContext, params: Any, key: jax.Array) -> jax.Array:
    o = ctx.options
    return ctx.apply("generator", params, ctx.latent(key, o.latent, o.latent_dim))


def _scores(ctx: StepContext, params: Any, x: jax.Array) -> jax.Array:
    return ctx.apply("critic", params, x)[:, 0]


def _adversarial_step(critic_loss: Callable, generator_loss: Callable) -> Callable:
    """A GAN step: ``n_critic`` critic updates, then one generator update.

    ``critic_loss(ctx, critic_params, real, fake, key) -> (loss, aux)`` and
    ``generator_loss(fake_scores, axis_name) -> loss``.
    """

    def step(ctx, params, opt_state, key):
        k_critic, k_gen = jax.random.split(key)
        g_params = params["generator"]

        def critic_update(carry, k):
            c_params, c_state = carry
            k_real, k_z, k_loss = jax.random.split(k, 3)
            real = ctx.real_batch(k_real)
            fake = lax.stop_gradient(_generate(ctx, g_params, k_z))
            c_params, c_state, (loss, aux) = ctx.update(
                "critic",
                lambda p: critic_loss(ctx, p, real, fake, k_loss),
                c_params,
                c_state,
                has_aux=True,
            )
            return (c_params, c_state), (loss, aux)

        (c_params, c_state), (c_loss, aux) = lax.scan(
            critic_update,
            (params["critic"], opt_state["critic"]),
            jax.random.split(k_critic, ctx.options.n_critic),
        )

        def g_loss(p):
            fake = _generate(ctx, p, k_gen)
            return generator_loss(_scores(ctx, c_params, fake), axis_name=ctx.axis_name)

        g_params, g_state, loss = ctx.update(
            "generator", g_loss, g_params, opt_state["generator"]
        )
        # The last critic update's values: the critic the generator just faced.
        logged = {"critic": c_loss[-1], **{k: v[-1] for k, v in aux.items()}}
        return (
            {"generator": g_params, "critic": c_params},
            {"generator": g_state, "critic": c_state},
            {**logged, "generator": loss},
        )

    return step


def _gan_critic_loss(ctx, params, real, fake, key):
    del key
    loss = losses.gan_discriminator_loss(
        _scores(ctx, params, real), _scores(ctx, params, fake), axis_name=ctx.axis_name
    )
    return loss, {}


def _wgan_critic_loss(ctx, params, real, fake, key):
    del key
    loss = losses.wgan_critic_loss(
        _scores(ctx, params, real), _scores(ctx, params, fake), axis_name=ctx.axis_name
    )
    return loss, {"wasserstein": -loss}


def _wgan_gp_critic_loss(ctx, params, real, fake, key):
    w_loss, aux = _wgan_critic_loss(ctx, params, real, fake, key)
    penalty = losses.gradient_penalty(
        lambda x: _scores(ctx, params, x),
        real,
        fake,
        ctx.uniform(key),
        axis_name=ctx.axis_name,
    )
    return w_loss + ctx.options.gp_weight * penalty, {
        **aux,
        "gradient_penalty": penalty,
    }


def _critic_horizon(options, num_steps):
    # The critic takes n_critic optimiser steps per generator step: its
    # schedule must span all of them, or its rate reaches 0 after
    # num_steps / n_critic generator steps and the generator runs away
    # along the frozen critic's slope.
    return num_steps * options.n_critic


def _adam_both(options, num_steps):
    return {
        "generator": adam(options, num_steps),
        "critic": adam(options, _critic_horizon(options, num_steps)),
    }


def _adam_generator(options, num_steps):
    return {"generator": adam(options, num_steps)}


def _clipped_critic(options, num_steps):
    critic = adam(options, _critic_horizon(options, num_steps))
    clipped = optax.chain(critic, losses.clip_weights(options.clip))
    return {"generator": adam(options, num_steps), "critic": clipped}


def _ot_step(ot_loss: Callable) -> Callable:
    """A generator step on ``ot_loss(ctx, key, fake, real)``; no critic."""

    def step(ctx, params, opt_state, key):
        k_real, k_z, k_loss = jax.random.split(key, 3)
        real = ctx.real_batch(k_real)

        def loss(p):
            return ot_loss(ctx, k_loss, _generate(ctx, p, k_z), real)

        g_params, g_state, value = ctx.update(
            "generator", loss, params["generator"], opt_state["generator"]
        )
        return {"generator": g_params}, {"generator": g_state}, {"generator": value}

    return step


def _sliced(ctx, key, fake, real):
    return losses.sliced_loss(
        key,
        fake,
        real,
        n_projections=ctx.options.n_projections,
        axis_name=ctx.axis_name,
    )


def _sinkhorn(ctx, key, fake, real):
    del key
    o = ctx.options
    return losses.sinkhorn_loss(
        fake,
        real,
        epsilon=o.epsilon,
        max_iter=o.max_iter,
        tol=o.tol,
        axis_name=ctx.axis_name,
    )


def sample_generator(model, options, key, n, dtype, **sampler_options):
    """``[n, d]`` samples ``G(z)``, ``z`` from the latent (normal or uniform)."""
    if sampler_options:
        raise TypeError(
            f"generators take no sampler options, got {', '.join(sampler_options)}"
        )
    return model(draw_latent(key, options.latent, (n, options.latent_dim), dtype))


METHODS: dict[str, Method] = {
    "gan": Method(
        GANOptions,
        _generator_and_critic,
        _adam_both,
        _adversarial_step(_gan_critic_loss, losses.gan_generator_loss),
        sample_generator,
        batch_size=256,
    ),
    "wgan-clip": Method(
        WGANClipOptions,
        _generator_and_critic,
        _clipped_critic,
        _adversarial_step(_wgan_critic_loss, losses.wgan_generator_loss),
        sample_generator,
        batch_size=256,
    ),
    "wgan-gp": Method(
        WGANGPOptions,
        _generator_and_critic,
        _adam_both,
        _adversarial_step(_wgan_gp_critic_loss, losses.wgan_generator_loss),
        sample_generator,
        batch_size=256,
    ),
    "sliced": Method(
        SlicedOptions,
        _generator_only,
        _adam_generator,
        _ot_step(_sliced),
        sample_generator,
        batch_size=1024,
    ),
    "sinkhorn": Method(
        SinkhornOptions,
        _generator_only,
        _adam_generator,
        _ot_step(_sinkhorn),
        sample_generator,
        batch_size=512,
    ),
}
