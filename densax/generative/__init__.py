"""Generative models trained by divergence minimisation, in Flax ``nnx``.

One entry point trains every method, one draws samples::

    result = densax.generative.train(key, x, method="wgan-gp", num_steps=3000)
    samples = densax.generative.sample(key, result, 1000)

Modules: :mod:`~densax.generative.models` (MLP generator/critic, diffusion
denoiser), :mod:`~densax.generative.image_nets` (convolutional networks for
images: a U-Net denoiser, a DCGAN generator and critic, selected by
``network="unet"`` / ``network="dcgan"``), :mod:`~densax.generative.losses`
(pure GAN, WGAN and OT losses),
:mod:`~densax.generative.gans` (the GAN-family methods and their options),
:mod:`~densax.generative.diffusion` (DDPM: schedules, samplers, ELBO, ODE
likelihood), :mod:`~densax.generative.flows` (normalizing flows: a density
model trained by maximum likelihood; ``density(result)``),
:mod:`~densax.generative.bijectors` (the flows' couplings and linear maps),
:mod:`~densax.generative.training` (the shared training loop),
:mod:`~densax.generative.checkpoint` (msgpack checkpoints) and
:mod:`~densax.generative.method` (the interface a new method implements).
"""

from densax.generative import (
    bijectors,
    checkpoint,
    diffusion,
    flows,
    gans,
    image_nets,
    losses,
    method,
    models,
    training,
)
from densax.generative.diffusion import DDPMOptions
from densax.generative.flows import Flow, FlowDensity, FlowOptions, density
from densax.generative.gans import (
    GANOptions,
    GeneratorOptions,
    SinkhornOptions,
    SlicedOptions,
    WGANClipOptions,
    WGANGPOptions,
)
from densax.generative.image_nets import DCGANCritic, DCGANGenerator, UNet
from densax.generative.method import Method, StepContext
from densax.generative.models import MLP, Denoiser
from densax.generative.training import (
    METHODS,
    History,
    Progress,
    TrainResult,
    TrainState,
    sample,
    train,
)

__all__ = [
    "METHODS",
    "MLP",
    "DCGANCritic",
    "DCGANGenerator",
    "DDPMOptions",
    "Denoiser",
    "Flow",
    "FlowDensity",
    "FlowOptions",
    "GANOptions",
    "GeneratorOptions",
    "History",
    "Method",
    "Progress",
    "SinkhornOptions",
    "SlicedOptions",
    "StepContext",
    "TrainResult",
    "TrainState",
    "UNet",
    "WGANClipOptions",
    "WGANGPOptions",
    "bijectors",
    "checkpoint",
    "density",
    "diffusion",
    "flows",
    "gans",
    "image_nets",
    "losses",
    "method",
    "models",
    "sample",
    "train",
    "training",
]
