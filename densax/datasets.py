"""Toy datasets, generated on the fly: 2D benchmarks and a regime-switching series.

Every 2D dataset is a function ``name(key, n) -> [n, 2]`` that draws ``n``
independent points, so a fresh key gives a fresh, independent sample (the
noise floor of a sample-based metric is measured that way). The mixtures of
Gaussians also expose their modes (centres and common standard deviation),
which the mode-coverage metrics of :mod:`densax.metrics` need.

=========================  ==============================================
``eight_gaussians``        8 isotropic Gaussians on a circle of radius 2
``twenty_five_gaussians``  5 x 5 grid of isotropic Gaussians, spacing 2
``swiss_roll``             2D Swiss roll (scikit-learn's curve, scaled)
``two_moons``              scikit-learn's two interleaving half circles
``rings``                  4 concentric noisy circles
``regime_series``          1D series from a hidden Markov chain of regimes
``digits``                 scikit-learn's 8 x 8 handwritten digits (real data)
=========================  ==============================================

All functions take ``dtype=None`` (JAX's default float: float32, or float64
with x64) and validate their static options, raising ``ValueError`` /
``TypeError`` naming the argument.

References:
  Gulrajani et al., *Improved Training of Wasserstein GANs*, NeurIPS 2017
  (8 and 25 Gaussians); Srivastava et al., *VEEGAN*, NeurIPS 2017 (the same
  mixtures with their mode-coverage metrics); Hamilton, *A New Approach to the
  Economic Analysis of Nonstationary Time Series and the Business Cycle*,
  Econometrica 1989 (Markov regime switching).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from densax import _validate

__all__ = [
    "Digits",
    "Modes",
    "RegimeSeries",
    "digits",
    "eight_gaussians",
    "eight_gaussians_modes",
    "regime_series",
    "rings",
    "swiss_roll",
    "twenty_five_gaussians",
    "twenty_five_gaussians_modes",
    "two_moons",
]


class Modes(NamedTuple):
    """The modes of an isotropic Gaussian mixture with equal weights."""

    centres: jax.Array  # [K, 2] mode centres, float
    std: float  # the common per-coordinate standard deviation of every mode


class Digits(NamedTuple):
    """Images flattened to rows, with their labels and layout."""

    images: jax.Array  # [n, H * W] float pixels in [-1, 1], row-major (H, W)
    labels: jax.Array  # [n] int32 digit class, in [0, 10)
    image_shape: tuple  # (H, W, 1), static
    bin_width: float  # spacing of the 17 grey levels (1/8; 1/8 after resizing)


class RegimeSeries(NamedTuple):
    """A regime-switching series and its hidden regimes."""

    values: jax.Array  # [n] observations, float
    regimes: jax.Array  # [n] int32 regime of each observation, in [0, K)


def _float_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        return np.dtype(jnp.result_type(float))
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def _positive(value: Any, name: str) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
        value, bool
    ):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def _finite(value: Any, name: str) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
        value, bool
    ):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _non_negative(value: Any, name: str) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
        value, bool
    ):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return float(value)


def eight_gaussians_modes(
    *, radius: float = 2.0, std: float = 0.02, dtype: Any = None
) -> Modes:
    """The modes of :func:`eight_gaussians`: centres at angles ``2 pi k / 8``.

    Example:
      >>> eight_gaussians_modes().centres.shape
      (8, 2)
    """
    radius = _positive(radius, "radius")
    std = _positive(std, "std")
    angles = 2 * np.pi * np.arange(8) / 8
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return Modes(jnp.asarray(centres, _float_dtype(dtype)), std)


def twenty_five_gaussians_modes(
    *, spacing: float = 2.0, std: float = 0.05, dtype: Any = None
) -> Modes:
    """The modes of :func:`twenty_five_gaussians`: a centred 5 x 5 grid.

    Example:
      >>> m = twenty_five_gaussians_modes()
      >>> m.centres.shape, float(m.centres.max())
      ((25, 2), 4.0)
    """
    spacing = _positive(spacing, "spacing")
    std = _positive(std, "std")
    grid = spacing * np.arange(-2, 3)
    centres = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    return Modes(jnp.asarray(centres, _float_dtype(dtype)), std)


def _mixture_sample(key: jax.Array, n: int, modes: Modes) -> jax.Array:
    n = _validate.check_int(n, "n", minimum=1)
    k_mode, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_mode, (n,), 0, modes.centres.shape[0])
    noise = jax.random.normal(k_noise, (n, 2), modes.centres.dtype)
    return modes.centres[idx] + modes.std * noise


@_validate.public
def eight_gaussians(
    key: jax.Array,
    n: int,
    *,
    radius: float = 2.0,
    std: float = 0.02,
    dtype: Any = None,
) -> jax.Array:
    """Samples an equal-weight mixture of 8 Gaussians evenly spaced on a circle.

    Args:
      key: PRNG key.
      n: number of points (a Python int).
      radius: radius of the circle of centres.
      std: standard deviation of every coordinate within a mode.
      dtype: floating output dtype (default: JAX's default float).

    Returns:
      ``[n, 2]`` points.

    References:
      Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017.

    Example:
      >>> x = eight_gaussians(jax.random.key(0), 1000)
      >>> x.shape, round(float(jnp.linalg.norm(x, axis=1).mean()), 1)
      ((1000, 2), 2.0)
    """
    return _mixture_sample(
        key, n, eight_gaussians_modes(radius=radius, std=std, dtype=dtype)
    )


@_validate.public
def twenty_five_gaussians(
    key: jax.Array,
    n: int,
    *,
    spacing: float = 2.0,
    std: float = 0.05,
    dtype: Any = None,
) -> jax.Array:
    """Samples an equal-weight mixture of 25 Gaussians on a 5 x 5 grid.

    Args:
      key: PRNG key.
      n: number of points.
      spacing: distance between neighbouring centres; the grid is centred at 0.
      std: standard deviation of every coordinate within a mode.
      dtype: floating output dtype.

    Returns:
      ``[n, 2]`` points.

    Example:
      >>> twenty_five_gaussians(jax.random.key(0), 500).shape
      (500, 2)
    """
    modes = twenty_five_gaussians_modes(spacing=spacing, std=std, dtype=dtype)
    return _mixture_sample(key, n, modes)


@_validate.public
def swiss_roll(
    key: jax.Array, n: int, *, noise: float = 0.1, dtype: Any = None
) -> jax.Array:
    """Samples the 2D Swiss roll: ``t (cos t, sin t) / 5`` plus Gaussian noise.

    ``t = 1.5 pi (1 + 2 u)`` with ``u ~ U(0, 1)``, the curve of scikit-learn's
    ``make_swiss_roll`` (its first and third coordinates), divided by 5 so that
    the points lie in about ``[-3, 3]^2``.

    Args:
      key: PRNG key.
      n: number of points.
      noise: standard deviation of the isotropic noise added after scaling.
      dtype: floating output dtype.

    Returns:
      ``[n, 2]`` points.

    Example:
      >>> x = swiss_roll(jax.random.key(0), 1000, noise=0.0)
      >>> x.shape, bool(jnp.abs(x).max() < 2.9)
      ((1000, 2), True)
    """
    n = _validate.check_int(n, "n", minimum=1)
    noise = _non_negative(noise, "noise")
    dtype = _float_dtype(dtype)
    k_t, k_noise = jax.random.split(key)
    t = 1.5 * jnp.pi * (1 + 2 * jax.random.uniform(k_t, (n,), dtype))
    curve = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1) / 5
    return curve + noise * jax.random.normal(k_noise, (n, 2), dtype)


@_validate.public
def two_moons(
    key: jax.Array, n: int, *, noise: float = 0.1, dtype: Any = None
) -> jax.Array:
    """Samples scikit-learn's two moons: two interleaving half circles.

    Each point picks a moon with probability 1/2 and an angle ``theta ~ U(0,
    pi)``: the upper moon is ``(cos theta, sin theta)``, the lower one
    ``(1 - cos theta, 0.5 - sin theta)``, as in ``sklearn.datasets.make_moons``
    (which spaces the angles evenly instead of drawing them).

    Args:
      key: PRNG key.
      n: number of points.
      noise: standard deviation of the isotropic Gaussian noise.
      dtype: floating output dtype.

    Returns:
      ``[n, 2]`` points.

    Example:
      >>> two_moons(jax.random.key(0), 300).shape
      (300, 2)
    """
    n = _validate.check_int(n, "n", minimum=1)
    noise = _non_negative(noise, "noise")
    dtype = _float_dtype(dtype)
    k_moon, k_theta, k_noise = jax.random.split(key, 3)
    lower = jax.random.bernoulli(k_moon, 0.5, (n,))
    theta = jnp.pi * jax.random.uniform(k_theta, (n,), dtype)
    upper_pts = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1)
    lower_pts = jnp.stack([1 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=1)
    points = jnp.where(lower[:, None], lower_pts, upper_pts)
    return points + noise * jax.random.normal(k_noise, (n, 2), dtype)


@_validate.public
def rings(
    key: jax.Array,
    n: int,
    *,
    radii: tuple[float, ...] = (0.75, 1.5, 2.25, 3.0),
    noise: float = 0.08,
    dtype: Any = None,
) -> jax.Array:
    """Samples concentric noisy circles, each ring holding the same mass.

    Args:
      key: PRNG key.
      n: number of points.
      radii: the radii of the rings (each ring is drawn with probability
        ``1 / len(radii)``, the angle uniformly).
      noise: standard deviation of the isotropic Gaussian noise.
      dtype: floating output dtype.

    Returns:
      ``[n, 2]`` points.

    Example:
      >>> x = rings(jax.random.key(0), 400, noise=0.0)
      >>> sorted({round(float(r), 2) for r in jnp.linalg.norm(x, axis=1)})
      [0.75, 1.5, 2.25, 3.0]
    """
    n = _validate.check_int(n, "n", minimum=1)
    noise = _non_negative(noise, "noise")
    if len(radii) == 0:
        raise ValueError("radii must hold at least one radius")
    radii = tuple(_positive(r, "radii") for r in radii)
    dtype = _float_dtype(dtype)
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    r = jnp.asarray(radii, dtype)[jax.random.randint(k_ring, (n,), 0, len(radii))]
    angle = 2 * jnp.pi * jax.random.uniform(k_angle, (n,), dtype)
    points = r[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return points + noise * jax.random.normal(k_noise, (n, 2), dtype)


@_validate.public
def regime_series(
    key: jax.Array,
    n: int,
    *,
    means: tuple[float, ...] = (0.5, 0.0, -1.0),
    stds: tuple[float, ...] = (0.5, 1.0, 3.0),
    stay: float = 0.98,
    transition: Any = None,
    dtype: Any = None,
) -> RegimeSeries:
    """Samples a Gaussian series whose regime follows a hidden Markov chain.

    ``s_0`` is uniform over the ``K`` regimes, ``s_t | s_{t-1}`` follows the
    transition matrix and ``x_t | s_t ~ N(means[s_t], stds[s_t]^2)``. By
    default the chain stays in its regime with probability ``stay`` and
    otherwise jumps to one of the other regimes uniformly, so regimes last
    ``1 / (1 - stay)`` steps on average and the stationary law is uniform:
    ignoring time, ``values`` is a sample of the equal-weight Gaussian mixture
    of the regimes (the course's GMM example; fit it with
    ``densax.gmm.fit(key, values[:, None], K)``). The default regimes read as
    daily returns in % of a calm, a normal and a crisis market.

    Args:
      key: PRNG key.
      n: length of the series.
      means: ``[K]`` mean of each regime.
      stds: ``[K]`` standard deviation of each regime (positive).
      stay: probability of staying in the same regime, used when
        ``transition`` is None.
      transition: optional ``[K, K]`` row-stochastic matrix, ``transition[i,
        j] = P(s_t = j | s_{t-1} = i)``; overrides ``stay``.
      dtype: floating dtype of ``values``.

    Returns:
      A :class:`RegimeSeries` with ``values [n]`` and ``regimes [n]`` (int32).

    Raises:
      ValueError: mismatched lengths, a non-finite mean, a non-positive std,
        ``stay`` outside
        ``[0, 1]``, or a transition matrix that is not row-stochastic.

    References:
      Hamilton, *A New Approach to the Economic Analysis of Nonstationary Time
      Series and the Business Cycle*, Econometrica 1989.

    Example:
      >>> s = regime_series(jax.random.key(0), 1000)
      >>> s.values.shape, s.regimes.dtype, int(s.regimes.max()) <= 2
      ((1000,), dtype('int32'), True)
    """
    n = _validate.check_int(n, "n", minimum=1)
    dtype = _float_dtype(dtype)
    k = len(means)
    if k == 0 or len(stds) != k:
        raise ValueError(
            f"means and stds must be non-empty and of equal length, got "
            f"{len(means)} and {len(stds)}"
        )
    stds = tuple(_positive(s, "stds") for s in stds)
    means = tuple(_finite(m, "means") for m in means)
    if transition is None:
        if not 0.0 <= stay <= 1.0:
            raise ValueError(f"stay must be in [0, 1], got {stay}")
        transition = np.full((k, k), (1.0 - stay) / max(k - 1, 1))
        np.fill_diagonal(transition, stay if k > 1 else 1.0)
    transition = np.asarray(transition, np.float64)
    if transition.shape != (k, k):
        raise ValueError(
            f"transition must have shape ({k}, {k}), got {transition.shape}"
        )
    if np.any(transition < 0) or not np.allclose(transition.sum(axis=1), 1.0):
        raise ValueError(
            "transition must be row-stochastic (non-negative rows summing to 1)"
        )
    # Inverse-CDF sampling of each row: s_t = #{j : u_t > cdf[s_{t-1}, j]}.
    cdf = jnp.asarray(np.cumsum(transition, axis=1)[:, :-1], dtype)

    k_init, k_chain, k_noise = jax.random.split(key, 3)
    s0 = jax.random.randint(k_init, (), 0, k, jnp.int32)

    def step(s, u):
        s_next = jnp.sum(u > cdf[s]).astype(jnp.int32)
        return s_next, s_next

    u = jax.random.uniform(k_chain, (n - 1,), dtype)
    _, rest = jax.lax.scan(step, s0, u)
    regimes = jnp.concatenate([s0[None], rest])
    noise = jax.random.normal(k_noise, (n,), dtype)
    values = (
        jnp.asarray(means, dtype)[regimes] + jnp.asarray(stds, dtype)[regimes] * noise
    )
    return RegimeSeries(values, regimes)


def digits(
    split: str = "train",
    *,
    size: int = 8,
    resize: str = "pad",
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: Any = None,
) -> Digits:
    """scikit-learn's handwritten digits (1,797 greyscale 8 x 8 images), in [-1, 1].

    The pixels' 17 grey levels ``v = 0..16`` map to ``v / 8 - 1``: background
    -1, ink up to 1, levels ``bin_width = 1/8`` apart. A continuous density
    model needs the levels dequantised (add ``U(-bin_width / 2, bin_width /
    2)`` noise); its held-out log-density then converts to bits per
    dimension of the discrete data with
    :func:`densax.image_metrics.bits_per_dim`.

    The train/test split is a fixed permutation (NumPy's generator seeded by
    ``seed``), stratified by class, so every call returns the same images.

    Args:
      split: ``"train"``, ``"test"`` or ``"all"`` (the file's order).
      size: image side, ``8`` or a power of two above: ``16``, ``32``...
      resize: how to reach ``size``: ``"pad"`` (background border around the
        centred digit) or ``"upsample"`` (nearest-neighbour, each pixel
        repeated ``size / 8`` times per axis; the grey levels are unchanged).
      test_fraction: share of each class held out as the test split.
      seed: seed of the split.
      dtype: floating dtype of ``images`` (default: JAX's default float).

    Returns:
      A :class:`Digits`: ``images [n, size * size]``, ``labels [n]``.

    Raises:
      ImportError: scikit-learn is not installed (it ships the data; install
        ``densax[test]`` or ``densax[bench]``, or ``scikit-learn``).
      ValueError: a bad ``split``, ``size``, ``resize`` or ``test_fraction``.

    References:
      Alpaydin and Kaynak, *Optical Recognition of Handwritten Digits*, UCI
      Machine Learning Repository, 1998 (``sklearn.datasets.load_digits``).

    Example:
      >>> d = digits("train")
      >>> d.images.shape, d.labels.shape, float(d.images.min()), float(d.images.max())
      ((1347, 64), (1347,), -1.0, 1.0)
      >>> digits("test", size=16).images.shape
      (450, 256)
    """
    _validate.check_choice(split, "split", ("train", "test", "all"))
    _validate.check_choice(resize, "resize", ("pad", "upsample"))
    size = _validate.check_int(size, "size", minimum=8)
    if size & (size - 1):
        raise ValueError(f"size must be 8 or a larger power of two, got {size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    dtype = _float_dtype(dtype)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "densax.datasets.digits needs scikit-learn, which ships the data: "
            "pip install 'densax[test]' (or scikit-learn)"
        ) from err
    raw = load_digits()
    values = np.asarray(raw.images, np.float64)  # [1797, 8, 8], levels 0..16
    labels = np.asarray(raw.target, np.int32)
    if split != "all":
        rng = np.random.default_rng(seed)
        test = np.zeros(labels.shape[0], bool)
        for c in range(10):
            members = rng.permutation(np.flatnonzero(labels == c))
            test[members[: round(test_fraction * members.size)]] = True
        keep = np.flatnonzero(test if split == "test" else ~test)
        values, labels = values[keep], labels[keep]
    pixels = values / 8.0 - 1.0
    if size > 8 and resize == "pad":
        border = (size - 8) // 2
        pixels = np.pad(
            pixels, ((0, 0), (border, border), (border, border)), constant_values=-1
        )
    elif size > 8:
        factor = size // 8
        pixels = pixels.repeat(factor, axis=1).repeat(factor, axis=2)
    images = jnp.asarray(pixels.reshape(pixels.shape[0], -1), dtype)
    return Digits(images, jnp.asarray(labels), (size, size, 1), 1.0 / 8.0)
