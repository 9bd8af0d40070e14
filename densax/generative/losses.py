"""Generator and critic losses as pure functions of network outputs.

* Jensen–Shannon GAN (Goodfellow et al., 2014), non-saturating generator,
  written on logits with ``log_sigmoid`` so no ``log(0)`` can occur.
* Wasserstein GAN (Arjovsky et al., 2017): the Kantorovich–Rubinstein dual
  ``W1 = sup_{|f|_L <= 1} E f(x) - E f(G(z))``, with a 1-Lipschitz critic
  kept so by weight clipping (:func:`clip_weights`) or by the gradient penalty
  of Gulrajani et al. (2017) (:func:`gradient_penalty`).
* Generators trained directly on an optimal-transport loss, no critic:
  squared sliced Wasserstein (:func:`sliced_loss`) and the Sinkhorn
  divergence (:func:`sinkhorn_loss`), both from :mod:`densax.ot`.

Every loss averages over the batch (the leading axis). With ``axis_name``
(inside ``jax.shard_map`` or ``jax.pmap`` over a sharded batch) the average
runs over the *global* batch: sums are ``lax.psum``-ed, so the value is the
same on every device and ``jax.grad`` with respect to replicated parameters
gives the gradient of the global loss (no further averaging needed). The OT
losses are not sums over samples: they gather the batch (``all_gather``) and
split the remaining work over the devices, whose shares are again summed
with ``psum``; the gradient is the global one.

References:
  Goodfellow et al., *Generative Adversarial Nets*, NeurIPS 2014.
  Arjovsky, Chintala and Bottou, *Wasserstein GAN*, ICML 2017.
  Gulrajani et al., *Improved Training of Wasserstein GANs*, NeurIPS 2017.
  Deshpande, Zhang and Schwing, *Generative Modeling using the Sliced
  Wasserstein Distance*, CVPR 2018.
  Genevay, Peyré and Cuturi, *Learning Generative Models with Sinkhorn
  Divergences*, AISTATS 2018.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from densax import _validate, ot

__all__ = [
    "batch_mean",
    "clip_weights",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "gradient_penalty",
    "sinkhorn_loss",
    "sliced_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
]


def batch_mean(values: jax.Array, axis_name: Any = None) -> jax.Array:
    """Mean over the leading (batch) axis, over all shards when ``axis_name``.

    Args:
      values: [b, ...] per-sample values (this device's rows of the batch).
      axis_name: the mapped axis the batch is split over, or None.

    Returns:
      [...] the mean over the global batch.

    Example:
      >>> float(batch_mean(jnp.array([1.0, 2.0, 6.0])))
      3.0
    """
    total, count = jnp.sum(values, axis=0), values.shape[0]
    if axis_name is not None:
        total = lax.psum(total, axis_name)
        count = count * lax.axis_size(axis_name)
    return total / count


def _logits(x: Any, name: str) -> jax.Array:
    return _validate.as_float(x, name, ndim=1)


def gan_discriminator_loss(
    real_logits: Any, fake_logits: Any, *, axis_name: Any = None
) -> jax.Array:
    """Discriminator cross-entropy ``-E log D(x) - E log(1 - D(G(z)))``.

    With ``D = sigmoid(logits)``: ``log D = log_sigmoid(l)`` and ``log(1 - D)
    = log_sigmoid(-l)``, exact and finite for every finite logit.

    Args:
      real_logits: [b] discriminator logits on data.
      fake_logits: [b'] logits on generated samples.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the loss (``2 log 2`` at the chance-level ``logits = 0``).

    References:
      Goodfellow et al., *Generative Adversarial Nets*, 2014, eq. 1.

    Example:
      >>> round(float(gan_discriminator_loss(jnp.zeros(4), jnp.zeros(4))), 4)
      1.3863
    """
    real, fake = (
        _logits(real_logits, "real_logits"),
        _logits(fake_logits, "fake_logits"),
    )
    return -batch_mean(jax.nn.log_sigmoid(real), axis_name) - batch_mean(
        jax.nn.log_sigmoid(-fake), axis_name
    )


def gan_generator_loss(fake_logits: Any, *, axis_name: Any = None) -> jax.Array:
    """Non-saturating generator loss ``-E log D(G(z))``.

    Its gradient does not vanish when the discriminator confidently rejects
    the samples early in training (Goodfellow et al., 2014, §3), unlike the
    minimax ``E log(1 - D(G(z)))``.

    Args:
      fake_logits: [b] discriminator logits on generated samples.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the loss.

    Example:
      >>> round(float(gan_generator_loss(jnp.zeros(3))), 4)
      0.6931
    """
    return -batch_mean(
        jax.nn.log_sigmoid(_logits(fake_logits, "fake_logits")), axis_name
    )


def wgan_critic_loss(
    real_scores: Any, fake_scores: Any, *, axis_name: Any = None
) -> jax.Array:
    """Critic loss ``E f(G(z)) - E f(x)``: minus the dual estimate of ``W1``.

    Args:
      real_scores: [b] critic outputs on data.
      fake_scores: [b'] critic outputs on generated samples.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the loss; ``-loss`` estimates ``W1`` when the critic is 1-Lipschitz
      and optimal.

    References:
      Arjovsky, Chintala and Bottou, *Wasserstein GAN*, 2017, Algorithm 1.

    Example:
      >>> float(wgan_critic_loss(jnp.array([2.0, 4.0]), jnp.array([1.0, 1.0])))
      -2.0
    """
    real, fake = (
        _logits(real_scores, "real_scores"),
        _logits(fake_scores, "fake_scores"),
    )
    return batch_mean(fake, axis_name) - batch_mean(real, axis_name)


def wgan_generator_loss(fake_scores: Any, *, axis_name: Any = None) -> jax.Array:
    """Generator loss ``-E f(G(z))`` of the Wasserstein GAN.

    Example:
      >>> float(wgan_generator_loss(jnp.array([1.0, 3.0])))
      -2.0
    """
    return -batch_mean(_logits(fake_scores, "fake_scores"), axis_name)


def gradient_penalty(
    critic: Callable[[jax.Array], jax.Array],
    real: Any,
    fake: Any,
    eps: Any,
    *,
    axis_name: Any = None,
) -> jax.Array:
    """Gradient penalty ``E (|grad f(x_hat)| - 1)^2`` of WGAN-GP.

    ``x_hat = eps x + (1 - eps) G(z)`` on random segments between data and
    generated points (Gulrajani et al., 2017, Algorithm 1). The per-sample
    gradients come from one backward pass of ``sum_i f(x_hat_i)``, which is
    exact because ``critic`` must act on each row independently (no batch
    statistics, as the paper requires). The norm uses ``optax.safe_norm`` so a
    zero gradient gives a finite (zero) derivative instead of NaN.

    Args:
      critic: maps [b, d] points to [b] scores, row by row.
      real: [b, d] data points.
      fake: [b, d] generated points.
      eps: [b] interpolation weights, uniform on [0, 1] in the paper.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the penalty (to be multiplied by its weight, ``lambda``).

    References:
      Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017, eq. 3.

    Example:
      >>> critic = lambda x: 3.0 * x[:, 0]  # gradient norm 3 everywhere
      >>> x = jnp.ones((4, 2))
      >>> float(gradient_penalty(critic, x, -x, jnp.full(4, 0.5)))
      4.0
    """
    real = _validate.as_float(real, "real", ndim=2)
    fake = _validate.as_float(fake, "fake", ndim=2)
    eps = _validate.as_float(eps, "eps", ndim=1).astype(real.dtype)
    if real.shape != fake.shape or eps.shape != real.shape[:1]:
        raise ValueError(
            f"real, fake and eps must have shapes [b, d], [b, d], [b]; got "
            f"{real.shape}, {fake.shape}, {eps.shape}"
        )
    x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
    norms = optax.safe_norm(grads, 0.0, axis=-1)
    return batch_mean((norms - 1) ** 2, axis_name)


def clip_weights(clip_value: float) -> optax.GradientTransformation:
    """Optax transform keeping every parameter in ``[-clip_value, clip_value]``.

    Chained *after* an optimiser (``optax.chain(optax.rmsprop(5e-5),
    clip_weights(0.01))``), it rewrites the update as ``clip(w + u) - w``, so
    that ``optax.apply_updates`` lands on the clipped weights of the WGAN
    critic (Arjovsky et al., 2017, Algorithm 1). This is the idiom of optax's
    own ``keep_params_nonnegative``: clipping composes with any optimiser and
    the training loop stays ``update -> apply_updates``, instead of a special
    post-update step. The only cost is the rounding of ``w + (clip(w + u) -
    w)``: a weight may overshoot the bound by one ulp of ``clip_value``.

    Args:
      clip_value: the positive bound ``c``.

    Returns:
      An ``optax.GradientTransformation`` (stateless; needs ``params``).

    References:
      Arjovsky, Chintala and Bottou, *Wasserstein GAN*, 2017, Algorithm 1.

    Example:
      >>> import optax
      >>> opt = optax.chain(optax.sgd(1.0), clip_weights(0.1))
      >>> w = {"w": jnp.array([0.05, -0.05])}
      >>> u, _ = opt.update({"w": jnp.array([1.0, -0.02])}, opt.init(w), w)
      >>> optax.apply_updates(w, u)["w"].round(3).tolist()
      [-0.1, -0.03]
    """
    if not clip_value > 0:
        raise ValueError(f"clip_value must be positive, got {clip_value}")

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("clip_weights needs the current params in update()")
        updates = jax.tree.map(
            lambda u, w: jnp.clip(w + u, -clip_value, clip_value) - w, updates, params
        )
        return updates, state

    return optax.GradientTransformation(init, update)


def _gather(x: jax.Array, axis_name: Any) -> jax.Array:
    return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def sliced_loss(
    key: jax.Array,
    fake: Any,
    real: Any,
    *,
    n_projections: int = 128,
    axis_name: Any = None,
) -> jax.Array:
    """Squared sliced 2-Wasserstein distance ``SW_2^2`` from ``fake`` to ``real``.

    The generator loss of Deshpande et al. (2018) without a discriminator:
    fresh random directions at every step, each 1D distance exact
    (:func:`densax.ot.sliced_wasserstein`). The square is the expectation of
    the projected ``W_2^2``, so its Monte Carlo gradient over directions is
    unbiased (the root's would not be).

    With ``axis_name`` the batch is gathered and the *directions* are split
    over the devices: each sorts the full batch along its share of the
    directions (XLA's sort; ``densax.ot`` would sort on the host through a
    callback, which cannot run inside a multi-device program with
    collectives), and the shares are summed with ``psum``. The result is the
    same ``SW_2^2`` as without sharding, for equal-size batches and
    ``n_projections`` divisible by the number of devices.

    Args:
      key: PRNG key for the directions (the same on every device).
      fake: [b, d] generated samples.
      real: [b', d] data samples (``b' = b`` with ``axis_name``).
      n_projections: number of directions.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the loss.

    Raises:
      ValueError: with ``axis_name``, batches of different sizes or
        ``n_projections`` not divisible by the number of devices.

    Example:
      >>> x = jnp.zeros((8, 2))
      >>> round(float(sliced_loss(jax.random.key(0), x, x + 1.0)), 1)
      1.0
    """
    fake = _validate.as_float(fake, "fake", ndim=2)
    real = _validate.as_float(real, "real", ndim=2, dtype=fake.dtype)
    theta = ot.random_directions(key, n_projections, fake.shape[1], dtype=fake.dtype)
    if axis_name is None:
        sw = ot.sliced_wasserstein(
            None,
            fake,
            real,
            projections=theta,
            n_projections=n_projections,
            validate=False,
        )
        return sw**2
    n_shards = lax.axis_size(axis_name)
    if fake.shape != real.shape or n_projections % n_shards:
        raise ValueError(
            f"a sharded sliced_loss needs batches of equal size and n_projections "
            f"divisible by the {n_shards} devices; got shapes {fake.shape}, "
            f"{real.shape} and n_projections={n_projections}"
        )
    per_device = n_projections // n_shards
    mine = lax.dynamic_slice_in_dim(
        theta, lax.axis_index(axis_name) * per_device, per_device
    )
    fake, real = _gather(fake, axis_name), _gather(real, axis_name)
    diff = jnp.sort(fake @ mine.T, axis=0) - jnp.sort(real @ mine.T, axis=0)
    return lax.psum(jnp.sum(diff**2), axis_name) / (diff.shape[0] * n_projections)


def sinkhorn_loss(
    fake: Any,
    real: Any,
    *,
    epsilon: float = 0.01,
    max_iter: int = 100,
    tol: float = 1e-3,
    axis_name: Any = None,
) -> jax.Array:
    """Debiased Sinkhorn divergence ``S_eps(fake, real)`` (squared Euclidean cost).

    The generator loss of Genevay et al. (2018) with the debiasing of Feydy et
    al. (2019), from :func:`densax.ot.sinkhorn_divergence`, differentiated by
    the envelope theorem (one pass per problem). At most ``max_iter``
    Sinkhorn iterations per problem keep each training step's cost bounded.
    The budget matters: when the two batches' cluster counts differ and
    ``epsilon`` is far below the squared distance between clusters, the
    solve converges slowly and an unconverged solve gives a biased gradient
    (see :mod:`densax.generative.gans`).

    With ``axis_name`` the generated batch stays sharded (the cross problem's
    rows and the self-problem are split over the devices by
    ``sinkhorn_divergence``'s own ``axis_name``) and the data batch is
    gathered.

    Args:
      fake: [b, d] generated samples.
      real: [b', d] data samples.
      epsilon: entropic regularisation, in squared data units (0.01: a blur of
        about 0.1, below the spacing of the toy datasets' structures).
      max_iter: iteration budget of each of the three problems.
      tol: L1 marginal error at which a problem stops early.
      axis_name: mapped axis of a sharded batch, or None.

    Returns:
      [] the divergence.

    References:
      Genevay, Peyré and Cuturi, *Learning Generative Models with Sinkhorn
      Divergences*, AISTATS 2018; Feydy et al., *Interpolating between Optimal
      Transport and MMD using Sinkhorn Divergences*, AISTATS 2019.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> round(float(sinkhorn_loss(x, x + 1.0, epsilon=0.1)), 1)
      2.0
    """
    out = ot.sinkhorn_divergence(
        fake,
        _gather(real, axis_name),
        epsilon=epsilon,
        max_iter=max_iter,
        tol=tol,
        axis_name=axis_name,
        validate=False,
    )
    return out.divergence
