"""Normalizing flows: densities by the change of variables, trained by likelihood.

A flow is an invertible map ``x = f(z)`` from a base variable ``z`` (standard
normal, or uniform on ``[0, 1]^d``) to data space, built from bijectors whose
inverse and log-Jacobian determinant are cheap. Its density is given by the
change-of-variable formula

    ``log p(x) = log p_Z(f^{-1}(x)) + log |det d f^{-1}(x) / dx|``,

the second term being the sum of the bijectors' log-determinants.

The bijectors (:mod:`densax.generative.bijectors`, re-exported here) are
affine (RealNVP), rational-quadratic spline and logistic-mixture (Flow++)
couplings, an LU-parametrised linear map, ActNorm and the logit of the
uniform base.

:class:`Flow` composes them (base side first); ``train(key, x,
method="flow")`` fits it by maximum likelihood (the loss is the mean negative
log-likelihood of a batch, in nats) in the shared training loop, and
:func:`density` turns the result into a :class:`FlowDensity`: a registered
pytree ``(graphdef, params)`` (the graph definition is static pytree metadata)
with ``log_prob(x)`` and ``sample(key, n)``, so generic consumers of the
density contract accept it and it passes through ``jax.jit``.

Example:
  >>> from densax import datasets, generative
  >>> x = datasets.two_moons(jax.random.key(0), 512)
  >>> res = generative.train(jax.random.key(1), x, method="flow", num_steps=20,
  ...                        chunk_size=10, eval_size=0, layers=2, hidden=(16,))
  >>> model = generative.density(res)
  >>> model.log_prob(x[:3]).shape, model.sample(jax.random.key(2), 4).shape
  ((3,), (4, 2))

References:
  Dinh, Sohl-Dickstein and Bengio, *Density Estimation Using Real NVP*, ICLR
  2017. Durkan, Bekasov, Murray and Papamakarios, *Neural Spline Flows*,
  NeurIPS 2019. Kingma and Dhariwal, *Glow: Generative Flow with Invertible
  1x1 Convolutions*, NeurIPS 2018. Papamakarios et al., *Normalizing Flows for
  Probabilistic Modeling and Inference*, JMLR 2021. Ho et al., *Flow++*, ICML
  2019.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from densax import _validate
from densax.generative.bijectors import (
    ActNorm,
    AffineCoupling,
    LogisticMixtureCoupling,
    Logit,
    LULinear,
    SplineCoupling,
    rational_quadratic_spline,
)
from densax.generative.losses import batch_mean
from densax.generative.method import LATENTS, Method, StepContext, adam, draw_latent
from densax.generative.models import check_widths, get_activation

__all__ = [
    "METHODS",
    "ActNorm",
    "AffineCoupling",
    "Flow",
    "FlowDensity",
    "FlowOptions",
    "LULinear",
    "LogisticMixtureCoupling",
    "Logit",
    "SplineCoupling",
    "base_log_prob",
    "density",
    "log_prob",
    "rational_quadratic_spline",
    "sample",
]

BASES = LATENTS
TRANSFORMS = ("spline", "logistic_mixture", "affine")


def base_log_prob(z: jax.Array, base: str) -> jax.Array:
    """[n] log-density of ``z: [n, d]`` under the base ``"normal"`` or ``"uniform"``."""
    if base == "normal":
        d = z.shape[-1]
        return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
    inside = jnp.all((z >= 0) & (z <= 1), axis=-1)
    return jnp.where(inside, 0.0, -jnp.inf).astype(z.dtype)


class _Block(nnx.Module):
    """One layer of a :class:`Flow`: a coupling, then a linear mixing."""

    def __init__(
        self, features, *, transform, linear, knots, bound, components, kw, rngs
    ):
        if transform == "spline":
            self.coupling = SplineCoupling(
                features, knots=knots, bound=bound, rngs=rngs, **kw
            )
        elif transform == "logistic_mixture":
            self.coupling = LogisticMixtureCoupling(
                features, components=components, rngs=rngs, **kw
            )
        else:
            self.coupling = AffineCoupling(features, rngs=rngs, **kw)
        if linear == "lu":
            self.linear = LULinear(features, param_dtype=kw["param_dtype"], rngs=rngs)
        else:
            self.linear = _Reverse()

    def forward(self, x):
        y, ld1 = self.coupling.forward(x)
        y, ld2 = self.linear.forward(y)
        return y, ld1 + ld2

    def inverse(self, y):
        x, ld2 = self.linear.inverse(y)
        x, ld1 = self.coupling.inverse(x)
        return x, ld1 + ld2


class _Reverse(nnx.Module):
    """Reverses the coordinates (volume-preserving)."""

    def forward(self, x):
        return x[..., ::-1], jnp.zeros(x.shape[:-1], x.dtype)

    def inverse(self, y):
        return self.forward(y)


class Flow(nnx.Module):
    """A normalizing flow ``x = f(z)``: bijectors over a base distribution.

    Base side first: [:class:`Logit` for the uniform base], then ``layers``
    times (:class:`SplineCoupling`, :class:`LogisticMixtureCoupling` or
    :class:`AffineCoupling`, then
    :class:`LULinear` or a plain reversal), then :class:`ActNorm` (data side).
    Reading from the data: standardise, then alternate linear mixing and
    coupling. The ``layers`` blocks share one structure: their parameters are
    stacked along a leading axis (``nnx.vmap`` at construction) and applied by
    one unrolled ``lax.scan``.

    Args:
      features: data dimension ``d >= 2``.
      layers: number of coupling layers.
      transform: ``"spline"``, ``"logistic_mixture"`` or ``"affine"`` (see
        :class:`FlowOptions`).
      linear: ``"lu"`` (:class:`LULinear`) or ``"reverse"`` (a fixed
        permutation) between couplings.
      knots: bins of each spline.
      bound: the splines act on ``[-bound, bound]`` (in standardised units:
        the data-side ActNorm starts at the data's mean and scale). Tight
        enough that the bins spend their resolution on the data, not on
        empty space; the tails map by the identity.
      components: logistic components of each ``"logistic_mixture"``
        coupling.
      hidden: hidden widths of every conditioner.
      activation: their activation.
      base: ``"normal"`` (``N(0, I)``) or ``"uniform"`` (``U(0, 1)^d``).
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs``.

    Example:
      >>> flow = Flow(2, layers=2, hidden=(8,), rngs=nnx.Rngs(0))
      >>> flow(jnp.zeros((3, 2))).shape  # log-densities
      (3,)
    """

    def __init__(
        self,
        features: int,
        *,
        layers: int = 8,
        transform: str = "spline",
        linear: str = "lu",
        knots: int = 8,
        bound: float = 2.5,
        components: int = 4,
        hidden=(64, 64),
        activation="relu",
        base: str = "normal",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the bijectors; see the class docstring."""
        if features < 2:
            raise ValueError(f"a coupling flow needs features >= 2, got {features}")
        _validate.check_choice(transform, "transform", TRANSFORMS)
        _validate.check_choice(linear, "linear", ("lu", "reverse"))
        _validate.check_choice(base, "base", BASES)
        _validate.check_int(layers, "layers", minimum=1)
        _validate.check_int(components, "components", minimum=1)
        kw = dict(hidden=hidden, activation=activation, param_dtype=param_dtype)

        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def blocks(rngs):
            return _Block(
                features,
                transform=transform,
                linear=linear,
                knots=knots,
                bound=bound,
                components=components,
                kw=kw,
                rngs=rngs,
            )

        self.blocks = blocks(rngs)
        self.norm = ActNorm(features, param_dtype=param_dtype, rngs=rngs)
        self.base = base
        self.features = features

    def _scan(self, x: jax.Array, inverse: bool) -> tuple[jax.Array, jax.Array]:
        graphdef, state = nnx.split(self.blocks)

        def body(carry, layer_state):
            x, total = carry
            block = nnx.merge(graphdef, layer_state)
            x, ld = block.inverse(x) if inverse else block.forward(x)
            return (x, total + ld), None

        # zeros_like(x): the carry is device-varying like x under shard_map.
        start = (x, jnp.zeros_like(x[..., 0]))
        # Unrolled: XLA then fuses across the small per-layer operations (a
        # third more training steps per second on CPU than a rolled loop).
        (x, total), _ = jax.lax.scan(body, start, state, reverse=inverse, unroll=True)
        return x, total

    def forward(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Base to data: ``(x [n, d], log|det dx/dz| [n])``."""
        total = jnp.zeros(z.shape[:-1], z.dtype)
        if self.base == "uniform":
            z, total = Logit().forward(z)
        z, ld = self._scan(z, inverse=False)
        x, ld_norm = self.norm.forward(z)
        return x, total + ld + ld_norm

    def inverse(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Data to base: ``(z [n, d], log|det dz/dx| [n])``."""
        z, total = self.norm.inverse(x)
        z, ld = self._scan(z, inverse=True)
        total = total + ld
        if self.base == "uniform":
            z, ld = Logit().inverse(z)
            total = total + ld
        return z, total

    def __call__(self, x: jax.Array) -> jax.Array:
        """[n] log-density of ``x: [n, d]`` (change of variables)."""
        z, ld = self.inverse(x)
        return base_log_prob(z, self.base) + ld

    def generate(self, key: jax.Array, n: int, dtype: Any = None) -> jax.Array:
        """[n, d] samples ``f(z)``, ``z`` drawn from the base."""
        dtype = self.norm.loc.dtype if dtype is None else dtype
        z = draw_latent(key, self.base, (n, self.features), dtype)
        return self.forward(z)[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlowDensity:
    """A trained flow as a density model: ``(graphdef, params)``, a pytree.

    ``graphdef`` (the :class:`Flow`'s ``nnx.GraphDef``) is static pytree
    metadata, ``params`` (its ``nnx.Param`` state as a pure dict) the leaves:
    the model passes through ``jax.jit`` and ``jax.vmap``, and
    ``nnx.merge(graphdef, params)`` rebuilds the module.
    """

    graphdef: Any = dataclasses.field(metadata=dict(static=True))  # nnx.GraphDef
    params: Any  # pure dict of parameter arrays (nested by module path)

    @classmethod
    def from_module(cls, flow: Flow) -> "FlowDensity":
        """The density model of a :class:`Flow` module (its parameters copied)."""
        graphdef, state = nnx.split(flow, nnx.Param)
        return cls(graphdef, nnx.to_pure_dict(state))

    def module(self) -> Flow:
        """The :class:`Flow` module."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def features(self) -> int:
        """Data dimension ``d``."""
        return self.params["norm"]["loc"].shape[-1]

    def log_prob(self, x: Any) -> jax.Array:
        """[n] log-density of ``x: [n, d]``; see :func:`log_prob`."""
        return log_prob(self, x)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """[n, d] samples; see :func:`sample`."""
        return sample(key, self, n)


def _merge(model: FlowDensity) -> Flow:
    return nnx.merge(model.graphdef, model.params)


@jax.jit
def _log_prob(model: FlowDensity, x: jax.Array) -> jax.Array:
    return _merge(model)(x)


@functools.partial(jax.jit, static_argnames="n")
def _sample(key: jax.Array, model: FlowDensity, n: int) -> jax.Array:
    flow = _merge(model)
    dtype = jax.tree.leaves(model.params)[0].dtype
    return flow.generate(key, n, dtype)


def _check_model(model: Any) -> FlowDensity:
    if not isinstance(model, FlowDensity):
        raise TypeError(
            f"model must be a FlowDensity (generative.density(result)), got "
            f"{type(model).__name__}"
        )
    return model


def log_prob(model: FlowDensity, x: Any, *, validate: bool = True) -> jax.Array:
    """Log-density of a flow by the change of variables.

    ``log p(x) = log p_Z(z) + log |det dz/dx|`` with ``z = f^{-1}(x)``, the
    log-determinant summed over the bijectors in the same pass. Jitted.

    Args:
      model: a :class:`FlowDensity`.
      x: [n, d] points.
      validate: check eagerly that ``x`` is finite.

    Returns:
      [n] log-densities in nats, in the parameters' dtype (``-inf`` outside
      the support of a uniform base).

    Example:
      >>> flow = Flow(2, layers=1, hidden=(8,), rngs=nnx.Rngs(0))
      >>> model = FlowDensity.from_module(flow)  # at init: N(0, I)
      >>> round(float(log_prob(model, jnp.zeros((1, 2)))[0]), 4)
      -1.8379
    """
    model = _check_model(model)
    dtype = jax.tree.leaves(model.params)[0].dtype
    x = _validate.as_float(x, "x", ndim=2, dtype=dtype)
    _validate.check_finite(x, "x", validate)
    if x.shape[1] != model.features:
        raise ValueError(
            f"x has {x.shape[1]} features but the flow models {model.features}"
        )
    return _log_prob(model, x)


def sample(key: jax.Array, model: FlowDensity, n: int) -> jax.Array:
    """Draws ``n`` samples ``f(z)``, ``z`` from the base. Jitted per ``n``.

    Args:
      key: PRNG key.
      model: a :class:`FlowDensity`.
      n: number of samples.

    Returns:
      [n, d] samples in the parameters' dtype.

    Example:
      >>> flow = Flow(2, layers=1, hidden=(8,), rngs=nnx.Rngs(0))
      >>> sample(jax.random.key(0), FlowDensity.from_module(flow), 5).shape
      (5, 2)
    """
    model = _check_model(model)
    n = _validate.check_int(n, "n", minimum=0)
    return _sample(key, model, n)


def density(result: Any) -> FlowDensity:
    """The density model of a ``method="flow"`` :class:`~densax.generative.TrainResult`.

    Args:
      result: the output of ``densax.generative.train(..., method="flow")``.

    Returns:
      A :class:`FlowDensity`.

    Raises:
      ValueError: ``result`` is not a flow's (GANs have no density; for a
        DDPM use :func:`densax.generative.diffusion.ode_log_prob`).
    """
    if getattr(result, "method", None) != "flow":
        raise ValueError(
            f"result must come from train(..., method='flow'), got method "
            f"{getattr(result, 'method', None)!r}; GANs have no density and a "
            f"DDPM's is diffusion.ode_log_prob"
        )
    return FlowDensity.from_module(result.generator)


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """Options of flow training (``method="flow"``; static, hashable).

    Attributes:
      layers: number of coupling layers.
      transform: ``"spline"`` (rational-quadratic, as in neural spline
        flows and flowjax), ``"logistic_mixture"`` (Flow++) or ``"affine"``
        (RealNVP). The logistic-mixture coupling is infinitely
        differentiable, where the spline's density has a kink at every knot,
        and it is linear in both tails: with smooth conditioners
        (``activation="tanh"``) the fitted density is smooth, which overfits
        a finite sample less; it also learns more slowly, so it pays on long
        runs and the spline on short ones (both measured in
        ``benchmarks/bench_flows.py`` and ``bench_flows_smooth.py``). Its
        sampling inverts a CDF by Newton's method, slower than the spline's
        closed form. Affine couplings are smooth too but train less reliably
        at the default step size: with wide conditioners (``hidden=(256,
        256)``, 16 layers) Adam's first steps can throw the flow far from the
        data, and the run may settle on a likelihood worse than its start.
        Clipping the gradients (``optimizer=optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(...))``) helps.
        :func:`~densax.generative.train` reports a run that ends worse on its
        training data than it started (``result.diverged``, with a
        ``RuntimeWarning``); a partial failure shows in
        ``result.history.losses["nll"]``.
      linear: ``"lu"`` or ``"reverse"`` between couplings.
      knots: bins of each spline. Fewer bins make each layer a smoother
        map, which overfits a sample of a few tens of thousands of points
        less; more ``layers`` give the expressiveness back (the trade is
        measured in ``benchmarks/bench_flows_smooth.py``).
      bound: spline interval ``[-bound, bound]`` in standardised units (see
        :class:`Flow`).
      components: logistic components of each ``"logistic_mixture"``
        coupling.
      hidden: hidden widths of the conditioners.
      activation: activation name or callable of the conditioners
        (``"tanh"``: every coupling's parameters are smooth functions of the
        other half of the coordinates).
      base: ``"normal"`` or ``"uniform"``.
      learning_rate: Adam's (initial) step size.
      lr_schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      optimizer: an Optax optimiser replacing Adam.
      noise: standard deviation of Gaussian noise added to every training
        batch, in units of each feature's standard deviation in the training
        data (noise regularisation; 0 turns it off). The flow then fits the
        data convolved with that noise: a small bias (structure of width
        ``w`` is widened to ``sqrt(w^2 + (noise * std)^2)``) traded for less
        overfitting of the training points: it helps where the data's
        finest structure is wide compared with the noise and costs much
        where it is not (tight clusters). The batches drawn are those of a
        run without noise (the noise has its own random stream).

    References:
      Rothfuss et al., *Noise Regularization for Conditional Density
      Estimation*, 2019 (adding noise to the training data as a smoothness
      penalty on the fitted density).

    Example:
      >>> FlowOptions(transform="logistic_mixture", activation="tanh").components
      4
    """

    layers: int = 8
    transform: str = "spline"
    linear: str = "lu"
    knots: int = 8
    bound: float = 2.5
    components: int = 4
    hidden: tuple[int, ...] = (64, 64)
    activation: str | Callable = "relu"
    base: str = "normal"
    learning_rate: float = 3e-3
    lr_schedule: str = "cosine"
    b1: float = 0.9
    b2: float = 0.999
    optimizer: optax.GradientTransformation | None = None
    noise: float = 0.0

    def __post_init__(self):
        """Normalises ``hidden`` and checks the values."""
        object.__setattr__(self, "hidden", check_widths(self.hidden))
        get_activation(self.activation)
        _validate.check_int(self.layers, "layers", minimum=1)
        _validate.check_int(self.knots, "knots", minimum=2)
        _validate.check_int(self.components, "components", minimum=1)
        _validate.check_choice(self.transform, "transform", TRANSFORMS)
        _validate.check_choice(self.linear, "linear", ("lu", "reverse"))
        _validate.check_choice(self.base, "base", BASES)
        _validate.check_choice(self.lr_schedule, "lr_schedule", ("cosine", "constant"))
        if not self.bound > 0:
            raise ValueError(f"bound must be positive, got {self.bound}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}"
            )
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {self.noise}")


def _networks(options: FlowOptions, features, dtype, rngs):
    flow = Flow(
        features,
        layers=options.layers,
        transform=options.transform,
        linear=options.linear,
        knots=options.knots,
        bound=options.bound,
        components=options.components,
        hidden=options.hidden,
        activation=options.activation,
        base=options.base,
        param_dtype=dtype,
        rngs=rngs,
    )
    return {"flow": flow}


def _prepare(networks: dict[str, nnx.Module], data: jax.Array) -> None:
    networks["flow"].norm.initialize(data)


def _step(ctx: StepContext, params, opt_state, key):
    x = ctx.real_batch(key)
    if ctx.options.noise:  # static: without noise, the step is unchanged
        scale = ctx.options.noise * jnp.std(ctx.data, axis=0)
        x = x + scale * ctx.normal(jax.random.fold_in(key, 1), x.shape[-1])

    def loss(p):
        return -batch_mean(ctx.apply("flow", p, x), ctx.axis_name)

    p, s, value = ctx.update("flow", loss, params["flow"], opt_state["flow"])
    return {"flow": p}, {"flow": s}, {"nll": value}


def _score(networks: dict[str, nnx.Module], options, x: jax.Array) -> jax.Array:
    """[] the training objective on ``x: [k, d]``: the mean negative log-likelihood.

    With noise regularisation, of ``x`` plus one fixed draw of that noise (the
    objective the steps lower is that of the noisy data).
    """
    if options.noise:
        eps = jax.random.normal(jax.random.key(0), x.shape, x.dtype)
        x = x + options.noise * jnp.std(x, axis=0) * eps
    return -jnp.mean(networks["flow"](x))


def _method_sample(model: Flow, options, key, n, dtype):
    del options
    return model.generate(key, n, dtype)


METHODS: dict[str, Method] = {
    "flow": Method(
        FlowOptions,
        _networks,
        lambda o, n: {"flow": adam(o, n)},
        _step,
        _method_sample,
        batch_size=256,
        prepare=_prepare,
        score=_score,
    ),
}
