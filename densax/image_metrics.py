"""Metrics for generative models of images: a small-classifier FID, coverage, bits/dim.

The field scores image generators in the feature space of a trained
classifier (the Fréchet Inception Distance of Heusel et al.); on data as small
as :func:`densax.datasets.digits` an Inception network is out of place, so the
features come from a small convolutional :class:`Classifier` trained on the
real images once, deterministically (:func:`train_classifier`: fixed key,
fixed steps).

* :func:`frechet_distance`: ``|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y
  S_x^1/2)^1/2)`` between the Gaussians fitted to two feature sets, i.e. the
  squared 2-Wasserstein (Bures) distance of
  :func:`densax.ot.gaussian.bures_wasserstein`. :func:`fid` applies it to a
  classifier's features. Like every sample-based metric it is biased upwards
  at finite ``n`` (the covariance estimates' noise): compare it with the same
  metric between two real samples of the same size, the *noise floor*.
* :func:`class_coverage`: the classes the classifier sees in a sample and
  their counts (mode collapse drops classes).
* :func:`bits_per_dim`: a continuous model's log-density of dequantised
  pixels, as bits per dimension of the discrete images.

References:
  Heusel et al., *GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium*, NeurIPS 2017 (FID). Dowson and Landau, *The
  Fréchet distance between multivariate normal distributions*, J.
  Multivariate Anal. 1982. Theis, van den Oord and Bethge, *A note on the
  evaluation of generative models*, ICLR 2016 (dequantisation, bits/dim).
"""

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from densax import _validate
from densax.generative.image_nets import Conv, image_shape_of
from densax.generative.models import check_widths

__all__ = [
    "ClassCoverage",
    "Classifier",
    "bits_per_dim",
    "class_coverage",
    "classifier_accuracy",
    "fid",
    "frechet_distance",
    "train_classifier",
]


class Classifier(nnx.Module):
    """A small convolutional classifier of images flattened to rows.

    ``3 x 3`` convolutions with ReLUs, the first at full resolution and one
    of stride 2 per further width, then a ReLU layer of ``features`` units
    (the feature space of :func:`fid`) and a linear map to the logits.

    Args:
      in_features: data dimension ``d = H W C``.
      num_classes: number of classes.
      channels: convolution widths (``H`` and ``W`` divisible by
        ``2^(len - 1)``).
      features: width of the penultimate layer.
      image_shape: ``(H, W[, C])``; default square greyscale.
      param_dtype: dtype of the weights.
      rngs: ``nnx.Rngs`` for the initialisation.

    Example:
      >>> net = Classifier(64, 10, channels=(8, 16), features=32,
      ...                  rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((3, 64))).shape, net.features(jnp.zeros((3, 64))).shape
      ((3, 10), (3, 32))
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (16, 32),
        features: int = 64,
        image_shape: Sequence[int] | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the layers; see the class docstring."""
        widths = check_widths(channels)
        shape = image_shape_of(in_features, image_shape)
        down = 2 ** (len(widths) - 1)
        if not widths or shape[0] % down or shape[1] % down:
            raise ValueError(
                f"channels={channels!r}: need at least one width and H, W "
                f"divisible by 2^(len(channels) - 1) (image shape {shape})"
            )
        kw = dict(dtype=param_dtype, param_dtype=param_dtype)
        self.image_shape = shape
        ins = (shape[2], *widths[:-1])
        self.convs = nnx.List(
            [
                Conv(
                    a,
                    b,
                    3,
                    strides=1 if i == 0 else 2,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for i, (a, b) in enumerate(zip(ins, widths, strict=True))
            ]
        )
        cells = (shape[0] // down) * (shape[1] // down)
        self.hidden = nnx.Linear(cells * widths[-1], features, **kw, rngs=rngs)
        self.out = nnx.Linear(features, num_classes, **kw, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The penultimate activations ``[n, features]`` of images ``x: [n, d]``."""
        n = x.shape[0]
        h = x.reshape(n, *self.image_shape)
        for conv in self.convs:
            h = jax.nn.relu(conv(h))
        return jax.nn.relu(self.hidden(h.reshape(n, -1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """The logits ``[n, num_classes]`` of images ``x: [n, d]``."""
        return self.out(self.features(x))


@functools.partial(jax.jit, static_argnames=("graphdef", "num_steps", "batch"))
def _fit(params, key, images, labels, learning_rate, *, graphdef, num_steps, batch):
    tx = optax.adam(learning_rate)  # traced rate: no recompilation per value

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def step(carry, k):
        p, s = carry
        idx = jax.random.randint(k, (batch,), 0, images.shape[0])
        value, grads = jax.value_and_grad(loss)(p, images[idx], labels[idx])
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    keys = jax.random.split(key, num_steps)
    (params, _), losses = lax.scan(step, (params, tx.init(params)), keys)
    return params, losses


@_validate.public
def train_classifier(
    key: jax.Array,
    images: Any,
    labels: Any,
    *,
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32),
    features: int = 64,
    image_shape: Sequence[int] | None = None,
    num_steps: int = 1000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
) -> Classifier:
    """Trains a :class:`Classifier` by Adam on the cross-entropy, deterministically.

    One jitted ``lax.scan`` of ``num_steps`` steps on batches drawn with
    replacement; the same key and arguments give the same weights, so a
    benchmark can cache them (the feature space of :func:`fid` must not
    change between the runs it compares).

    Args:
      key: PRNG key (initialisation and batches).
      images: [n, d] real images flattened to rows.
      labels: [n] int classes in ``[0, num_classes)``.
      num_classes: number of classes.
      channels: convolution widths (see :class:`Classifier`).
      features: width of the feature layer.
      image_shape: ``(H, W[, C])``; default square greyscale.
      num_steps: optimisation steps.
      batch_size: images per step.
      learning_rate: Adam's step size.

    Returns:
      The trained :class:`Classifier`.

    Example:
      >>> from densax import datasets
      >>> d = datasets.digits("train")
      >>> net = train_classifier(jax.random.key(0), d.images, d.labels,
      ...                        channels=(8,), features=16, num_steps=50)
      >>> net(d.images[:4]).shape
      (4, 10)
    """
    images = _validate.as_float(images, "images", ndim=2)
    labels = jnp.asarray(labels)
    if labels.shape != images.shape[:1] or not jnp.issubdtype(
        labels.dtype, jnp.integer
    ):
        raise ValueError(
            f"labels must be [n] ints matching images [n, d]; got {labels.shape} "
            f"{labels.dtype} for images {images.shape}"
        )
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    batch_size = _validate.check_int(batch_size, "batch_size", minimum=1)
    num_classes = _validate.check_int(num_classes, "num_classes", minimum=2)
    k_init, k_fit = jax.random.split(key)
    net = Classifier(
        images.shape[1],
        num_classes,
        channels=channels,
        features=features,
        image_shape=image_shape,
        param_dtype=images.dtype,
        rngs=nnx.Rngs(k_init),
    )
    graphdef, state = nnx.split(net, nnx.Param)
    params, _ = _fit(
        nnx.to_pure_dict(state),
        k_fit,
        images,
        labels,
        jnp.asarray(learning_rate, images.dtype),
        graphdef=graphdef,
        num_steps=num_steps,
        batch=batch_size,
    )
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


@_validate.public
def classifier_accuracy(classifier: Classifier, images: Any, labels: Any) -> jax.Array:
    """[] the fraction of ``images [n, d]`` whose predicted class is ``labels [n]``.

    Example:
      >>> net = Classifier(64, 10, channels=(4,), features=8, rngs=nnx.Rngs(0))
      >>> float(classifier_accuracy(net, jnp.zeros((5, 64)), jnp.zeros(5, int)))
      1.0
    """
    images = _validate.as_float(images, "images", ndim=2)
    predicted = jnp.argmax(_apply(classifier, images, "logits"), axis=-1)
    return jnp.mean(predicted == jnp.asarray(labels))


@functools.partial(jax.jit, static_argnames=("graphdef", "what"))
def _apply_core(graphdef, params, x, what):
    net = nnx.merge(graphdef, params)
    return net(x) if what == "logits" else net.features(x)


def _apply(classifier: Classifier, x: jax.Array, what: str) -> jax.Array:
    """``classifier``'s logits or features of ``x``, in one compiled call."""
    graphdef, state = nnx.split(classifier, nnx.Param)
    return _apply_core(graphdef, nnx.to_pure_dict(state), x, what)


def _moments(x):
    mean = jnp.mean(x, axis=0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _root(cov):
    vals, vecs = jnp.linalg.eigh(cov)
    return (vecs * jnp.sqrt(jnp.maximum(vals, 0.0))) @ vecs.T


@jax.jit
def _frechet(x, y):
    mx, sx = _moments(x)
    my, sy = _moments(y)
    # tr (Sx^1/2 Sy Sx^1/2)^1/2 is the nuclear norm of Sx^1/2 Sy^1/2: its
    # singular values carry an absolute error of about eps |S|, where the
    # eigenvalues of Sx^1/2 Sy Sx^1/2 under a square root would carry
    # sqrt(eps) |S| (0.1 on 64 rank-deficient float32 features).
    cross = jnp.sum(jnp.linalg.svd(_root(sx) @ _root(sy), compute_uv=False))
    value = jnp.sum((mx - my) ** 2) + jnp.trace(sx) + jnp.trace(sy) - 2 * cross
    return jnp.maximum(value, 0.0)


@_validate.public
def frechet_distance(x: Any, y: Any) -> jax.Array:
    """Fréchet distance between the Gaussians fitted to two samples.

    ``|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2)`` with the
    sample means and the unbiased (``n - 1``) covariances, as in FID; this is
    the *squared* 2-Wasserstein distance between the two Gaussians
    (:func:`densax.ot.gaussian.bures_wasserstein` with ``squared=True``). The
    trace term is computed as the nuclear norm of ``S_x^1/2 S_y^1/2``, whose
    rounding error stays of the order of ``eps tr S`` on rank-deficient
    covariances (ReLU features), so a set scores ~0 against itself in float32.

    Args:
      x: [n, k] features of the first sample (``n >= 2``).
      y: [m, k] features of the second.

    Returns:
      [] the distance, ``>= 0``, in the inputs' dtype.

    References:
      Dowson and Landau, 1982; Heusel et al., 2017, eq. 6.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (5000, 2))
      >>> round(float(frechet_distance(x, 2.0 * x + 1.0)), 1)  # 2 + 2 (2 - 1)^2
      4.0
    """
    x = _validate.as_float(x, "x", ndim=2)
    y = _validate.as_float(y, "y", ndim=2, dtype=x.dtype)
    _validate.check_same_last_dim(x, y, "x", "y")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("x and y need at least 2 rows each (covariances)")
    return _frechet(x, y)


@_validate.public
def fid(classifier: Classifier, x: Any, y: Any) -> jax.Array:
    """The Fréchet distance of two image sets in ``classifier``'s feature space.

    Args:
      classifier: a trained :class:`Classifier` (:func:`train_classifier`).
      x: [n, d] images (generated), flattened to rows.
      y: [m, d] images (real).

    Returns:
      [] ``frechet_distance(classifier.features(x), classifier.features(y))``.

    Example:
      >>> net = Classifier(64, 10, channels=(4,), features=8, rngs=nnx.Rngs(0))
      >>> x = jax.random.uniform(jax.random.key(0), (200, 64), minval=-1)
      >>> float(fid(net, x, x))
      0.0
    """
    x = _validate.as_float(x, "x", ndim=2)
    y = _validate.as_float(y, "y", ndim=2, dtype=x.dtype)
    return frechet_distance(
        _apply(classifier, x, "features"), _apply(classifier, y, "features")
    )


class ClassCoverage(NamedTuple):
    """Which classes a sample holds, by predicted label."""

    n_classes: jax.Array  # [] int32, number of covered classes
    counts: jax.Array  # [K] int32, samples per class
    covered: jax.Array  # [K] bool, counts >= min_share * n / K


@_validate.public
def class_coverage(
    labels: Any, num_classes: int = 10, *, min_share: float = 0.2
) -> ClassCoverage:
    """The classes covered by a sample, given its (predicted) labels.

    A class is *covered* when it holds at least ``min_share`` of its fair
    share ``n / K`` of the samples (the rule of
    :func:`densax.metrics.mode_coverage`); for generated images, ``labels``
    are a classifier's predictions, ``jnp.argmax(classifier(x), -1)``.

    Args:
      labels: [n] int labels in ``[0, num_classes)`` (others are ignored).
      num_classes: ``K``.
      min_share: the share of ``n / K`` a class needs.

    Returns:
      A :class:`ClassCoverage`.

    Example:
      >>> cov = class_coverage(jnp.array([0, 0, 1, 1, 1, 2]), 4)
      >>> int(cov.n_classes), cov.counts.tolist()
      (3, [2, 3, 1, 0])
    """
    num_classes = _validate.check_int(num_classes, "num_classes", minimum=1)
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be [n] ints, got {labels.shape} {labels.dtype}")
    if not min_share >= 0:
        raise ValueError(f"min_share must be non-negative, got {min_share}")
    counts = jnp.zeros(num_classes, jnp.int32).at[labels].add(1, mode="drop")
    covered = counts >= min_share * labels.shape[0] / num_classes
    return ClassCoverage(jnp.sum(covered, dtype=jnp.int32), counts, covered)


@_validate.public
def bits_per_dim(log_density: Any, features: int, bin_width: float) -> jax.Array:
    """Bits per dimension of discrete pixels from a continuous log-density.

    Pixels on a grid of spacing ``bin_width``, dequantised by uniform noise
    over their bin, have the discrete probability ``P(v) >= exp(E log p(v +
    u)) bin_width^d`` (Jensen; Theis et al., 2016), so ``-log2 P(v) / d <=
    -(log p(x) + d log bin_width) / (d log 2)``, the value returned (for the
    mean log-density of dequantised held-out pixels, an upper bound of the
    discrete model's bits/dim). A uniform density over the ``L`` levels'
    bins scores ``log2 L``.

    Args:
      log_density: [...] log-density in nats per image (e.g. a mean
        held-out log-likelihood, :func:`densax.metrics.heldout_log_likelihood`).
      features: pixels per image ``d``.
      bin_width: spacing of the pixel levels in the data's units
        (``densax.datasets.digits(...).bin_width``).

    Returns:
      [...] bits per dimension.

    Example:
      >>> # uniform over 17 levels of width 1/8 on [-17/16, 17/16]^64
      >>> log_p = -64 * jnp.log(17 / 8)
      >>> round(float(bits_per_dim(log_p, 64, 1 / 8)), 3)  # log2(17)
      4.087
    """
    features = _validate.check_int(features, "features", minimum=1)
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    log_density = jnp.asarray(log_density)
    return -(log_density + features * math.log(bin_width)) / (features * math.log(2))
