"""The plug-in interface between a training method and the shared loop.

:func:`densax.generative.train` runs every method ("gan", "wgan-gp",
"sliced", "ddpm", ...) through the same jitted ``lax.scan``, progress report,
checkpointing, data-parallel sharding and NaN guard. A method only says

* which options it takes (a frozen dataclass: hashable, so it is static
  configuration of the compiled loop),
* which ``nnx`` networks it trains and with which Optax optimisers,
* what one optimisation step does, written against a :class:`StepContext`
  that hides the batch layout (single device or sharded), and
* how to draw samples from the trained networks.

A new method plugs in by adding it to the registry,
``densax.generative.METHODS["name"] = Method(...)``; ``train(...,
method="name")`` then runs it with everything above.

A step is a pure function ``step(ctx, params, opt_state, key) -> (params,
opt_state, losses)``: ``key`` is already specific to the step (the loop folds
the step index into the run's key), ``losses`` a dict of scalars. Random
draws of per-sample quantities go through ``ctx.local(global_draw)``: each
device draws the *global* ``[B, ...]`` array from the same key and keeps its
rows, so a sharded run sees exactly the numbers of a single-device run.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

__all__ = ["LATENTS", "Method", "StepContext", "draw_latent"]

LATENTS = ("normal", "uniform")


def draw_latent(key: jax.Array, kind: str, shape: tuple, dtype: Any) -> jax.Array:
    """A latent draw: ``"normal"`` (``N(0, I)``) or ``"uniform"`` (``U(0, 1)``).

    The uniform draw lies in the open interval ``(0, 1)`` (from the smallest
    positive float), so that a logit maps it to finite values.

    Example:
      >>> z = draw_latent(jax.random.key(0), "uniform", (1000, 2), jnp.float32)
      >>> bool((z > 0).all() and (z < 1).all())
      True
    """
    if kind == "normal":
        return jax.random.normal(key, shape, dtype)
    if kind == "uniform":
        tiny = jnp.finfo(dtype).tiny
        return jax.random.uniform(key, shape, dtype, minval=tiny, maxval=1.0)
    raise ValueError(f"latent must be one of {LATENTS}, got {kind!r}")


class StepContext(NamedTuple):
    """What a method's step sees: data, networks, optimisers, batch layout.

    Built inside the compiled loop; ``data`` is a traced array and the other
    fields are static.
    """

    data: jax.Array  # [n, d] training data, the same on every device
    batch_size: int  # the global batch size B
    graphdefs: Mapping[str, Any]  # network name -> nnx.GraphDef
    optimizers: Mapping[str, optax.GradientTransformation]  # network name -> optimiser
    options: Any  # the method's options (frozen dataclass)
    axis_name: Any  # mapped axis the batch is split over, or None
    n_shards: int  # number of devices sharing the batch (1 without sharding)

    def apply(self, name: str, params: Any, *args: Any) -> Any:
        """Calls network ``name`` with parameters ``params`` on ``args``."""
        return nnx.merge(self.graphdefs[name], params)(*args)

    def local(self, x: jax.Array) -> jax.Array:
        """This device's rows of a global ``[B, ...]`` array (all of it unsharded)."""
        if self.axis_name is None:
            return x
        rows = x.shape[0] // self.n_shards
        start = lax.axis_index(self.axis_name) * rows
        return lax.dynamic_slice_in_dim(x, start, rows, axis=0)

    def real_batch(self, key: jax.Array) -> jax.Array:
        """This device's rows of a batch of B data points drawn with replacement."""
        idx = jax.random.randint(key, (self.batch_size,), 0, self.data.shape[0])
        return self.data[self.local(idx)]

    def normal(self, key: jax.Array, features: int) -> jax.Array:
        """This device's rows of a global ``[B, features]`` standard normal draw."""
        z = jax.random.normal(key, (self.batch_size, features), self.data.dtype)
        return self.local(z)

    def latent(self, key: jax.Array, kind: str, features: int) -> jax.Array:
        """This device's rows of a global ``[B, features]`` latent draw.

        ``kind`` is ``"normal"`` or ``"uniform"`` (:func:`draw_latent`).
        """
        shape = (self.batch_size, features)
        return self.local(draw_latent(key, kind, shape, self.data.dtype))

    def uniform(self, key: jax.Array) -> jax.Array:
        """This device's entries of a global ``[B]`` uniform draw on ``[0, 1)``."""
        return self.local(jax.random.uniform(key, (self.batch_size,), self.data.dtype))

    def update(
        self,
        name: str,
        loss_fn: Callable[[Any], Any],
        params: Any,
        opt_state: Any,
        *,
        has_aux: bool = False,
    ) -> tuple[Any, Any, Any]:
        """One optimiser step of network ``name`` on ``loss_fn(params)``.

        ``loss_fn`` must average over the global batch (the losses of
        :mod:`densax.generative.losses` with ``axis_name=ctx.axis_name``): its
        gradient with respect to the replicated ``params`` is then the global
        gradient on every device.

        Returns:
          ``(new params, new optimiser state, value)`` where ``value`` is the
          loss, or ``(loss, aux)`` when ``has_aux``.
        """
        value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params)
        updates, opt_state = self.optimizers[name].update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value


class Method(NamedTuple):
    """A training method for :func:`densax.generative.train`.

    * ``networks(options, features, dtype, rngs)`` builds a dict of ``nnx``
      modules, the first of which is the model that sampling uses (a
      generator ``z -> x``, or a diffusion denoiser);
    * ``optimizers(options, num_steps)`` gives one Optax optimiser per
      network (``num_steps``, the run's length, may be traced; it is the
      horizon of learning-rate schedules);
    * ``step`` is described in the module docstring;
    * ``sample(model, options, key, n, dtype, **kwargs)`` draws ``[n,
      features]`` samples, jittable in ``key``;
    * ``prepare(networks, data)``, optional, initialises the fresh networks
      from the ``[n, d]`` training data in place, before training (e.g. a
      flow's :class:`~densax.generative.flows.ActNorm` set to the data's mean
      and scale); deterministic, so resuming rebuilds the same start;
    * ``score(networks, options, x)``, optional, a scalar that training must
      lower on the ``[k, d]`` training rows ``x`` (a flow's mean negative
      log-likelihood; a DDPM's denoising loss at one fixed draw of timesteps
      and noise): :func:`~densax.generative.train` evaluates it before
      step 0 and after the last step, and reports a run that ended above its
      start (``TrainResult.diverged``). Only for a proper objective, not for
      adversarial losses, which need not fall.
    """

    options: type  # frozen dataclass of the method's options, with defaults
    networks: Callable[..., dict[str, nnx.Module]]
    optimizers: Callable[[Any, Any], dict[str, optax.GradientTransformation]]
    step: Callable[..., tuple[Any, Any, dict[str, jax.Array]]]
    sample: Callable[..., jax.Array]
    batch_size: int  # the default global batch size
    prepare: Callable[[dict[str, nnx.Module], jax.Array], None] | None = None
    score: Callable[[dict[str, nnx.Module], Any, jax.Array], jax.Array] | None = None


def cosine_decay(learning_rate: float, horizon: Any) -> optax.Schedule:
    """``learning_rate * (1 + cos(pi min(t, horizon) / horizon)) / 2``.

    Unlike ``optax.cosine_decay_schedule``, ``horizon`` may be a traced
    integer, so one compiled training loop serves every ``num_steps``.
    """

    def schedule(count):
        frac = jnp.minimum(count, horizon) / horizon
        return learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * frac))

    return schedule


def adam(options: Any, num_steps: Any) -> optax.GradientTransformation:
    """``options.optimizer`` if set, else Adam with the options' rate and betas.

    The rate decays to 0 over ``num_steps`` along a cosine when
    ``options.lr_schedule == "cosine"`` and stays constant for ``"constant"``.
    """
    if options.optimizer is not None:
        return options.optimizer
    rate = options.learning_rate
    if options.lr_schedule == "cosine":
        rate = cosine_decay(rate, num_steps)
    return optax.adam(rate, b1=options.b1, b2=options.b2)


def all_finite(tree: Any) -> jax.Array:
    """[] bool: every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
