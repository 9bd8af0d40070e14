"""Image networks, the digits loader and the image metrics, at tiny sizes.

Compilation dominates: every network is 4 to 8 channels wide, every training
run uses batch 8 and the same few shapes, and the classifier behind the FID
trains for 30 steps (the machinery is tested here; its accuracy is the
benchmark's business, benchmarks/bench_images.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from scipy import linalg

from densax import datasets
from densax import image_metrics as im
from densax.generative import checkpoint, sample, train
from densax.generative.image_nets import (
    Conv,
    DCGANCritic,
    DCGANGenerator,
    UNet,
    image_shape_of,
)

# One resolution and one up/down-sampling layer in the training runs (the
# two-resolution U-Net is checked in test_network_shapes_dtypes_under_jit).
UNET = dict(method="ddpm", network="unet", channels=(4,), num_timesteps=10)
DCGAN = dict(method="wgan-gp", network="dcgan", channels=(4,), latent_dim=4, n_critic=2)
TINY = dict(batch_size=8, chunk_size=1, eval_size=0)


def _raw(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _equal(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(_raw(x), _raw(y)) for x, y in pairs)


@pytest.fixture(scope="module")
def digits():
    return datasets.digits("train"), datasets.digits("test")


# -- networks ---------------------------------------------------------------


@pytest.mark.parametrize("k, stride", [(3, 1), (4, 2)])
def test_conv_equals_lax_conv(k, stride):
    conv = Conv(3, 5, k, strides=stride, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 6, 3))
    expected = lax.conv_general_dilated(
        x,
        conv.kernel[...],
        (stride, stride),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_network_shapes_dtypes_under_jit(x64):
    # float64 here (dtype follows the parameters); float32 in the runs below.
    rngs = nnx.Rngs(0)
    unet = UNet(64, channels=(4, 8), param_dtype=jnp.float64, rngs=rngs)
    gen = DCGANGenerator(4, 64, channels=(4,), param_dtype=jnp.float64, rngs=rngs)
    critic = DCGANCritic(64, channels=(4,), param_dtype=jnp.float64, rngs=rngs)
    # The output convolution starts at zero: an untrained U-Net predicts 0.
    assert not unet.conv_out.kernel[...].any()
    unet.conv_out.kernel[...] = jnp.full_like(unet.conv_out.kernel[...], 0.1)

    @nnx.jit
    def forward(unet, gen, critic, x, t, z):
        images = gen(z)
        return unet(x, t), images, critic(images)

    x = jax.random.normal(jax.random.key(2), (3, 64), jnp.float64)
    z = jax.random.normal(jax.random.key(3), (3, 4), jnp.float64)
    eps, images, scores = forward(unet, gen, critic, x, jnp.arange(3), z)
    assert eps.shape == images.shape == (3, 64) and scores.shape == (3, 1)
    assert eps.dtype == images.dtype == scores.dtype == jnp.float64
    assert bool(jnp.all(jnp.abs(images) < 1))
    # Row by row (no batch statistics): changing one row changes only its own
    # outputs (same shapes: no new compilation).
    eps2, images2, scores2 = forward(
        unet, gen, critic, x.at[2].set(0.0), jnp.arange(3), z.at[2].set(0.0)
    )
    for a, b in ((eps, eps2), (images, images2), (scores, scores2)):
        np.testing.assert_array_equal(a[:2], b[:2])
        assert not np.allclose(a[2], b[2])


def test_image_shapes_checked():
    assert image_shape_of(64) == (8, 8, 1) and image_shape_of(12, (2, 2, 3)) == (
        2,
        2,
        3,
    )
    with pytest.raises(ValueError, match="not a square image"):
        image_shape_of(48)
    with pytest.raises(ValueError, match="image_shape"):
        image_shape_of(64, (4, 4))
    with pytest.raises(ValueError, match="divisible by 16"):
        DCGANGenerator(2, 64, channels=(4, 4, 4, 4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="network must be one of"):
        train(
            jax.random.key(0),
            jnp.zeros((8, 64)),
            method="ddpm",
            num_steps=1,
            network="dcgan",
        )


# -- training through the shared loop ----------------------------------------


@pytest.fixture(scope="module")
def unet_run(digits):
    return train(jax.random.key(1), digits[0].images, num_steps=2, **UNET, **TINY)


def test_ddpm_unet_trains_and_samples(unet_run):
    assert unet_run.finite and int(unet_run.state.step) == 2
    losses = unet_run.history.losses["denoiser"]
    assert losses.shape == (2,) and losses.dtype == np.float32
    assert isinstance(unet_run.generator, UNet)
    x = sample(jax.random.key(3), unet_run, 5)
    assert x.shape == (5, 64) and bool(jnp.all(jnp.isfinite(x)))


def test_ddpm_unet_resume_is_bit_identical(unet_run, digits, tmp_path):
    path = tmp_path / "unet.ckpt"

    class Stop(Exception):
        pass

    def stop(progress):
        if progress.step == 1:
            raise Stop

    with pytest.raises(Stop):
        train(
            jax.random.key(1),
            digits[0].images,
            num_steps=2,
            checkpoint=path,
            callback=stop,
            **UNET,
            **TINY,
        )
    resumed = train(
        jax.random.key(1),
        digits[0].images,
        num_steps=2,
        checkpoint=path,
        resume=True,
        **UNET,
        **TINY,
    )
    assert _equal(resumed.state, unet_run.state)
    state, _, meta = checkpoint.load(path, unet_run.state)
    assert _equal(state, unet_run.state) and meta["options"]["network"] == "unet"


def test_wgan_gp_dcgan_trains_and_samples(digits):
    result = train(jax.random.key(1), digits[0].images, num_steps=2, **DCGAN, **TINY)
    assert result.finite and int(result.state.step) == 2
    assert set(result.history.losses) == {
        "critic",
        "generator",
        "gradient_penalty",
        "wasserstein",
    }
    assert isinstance(result.generator, DCGANGenerator)
    assert isinstance(result.critic, DCGANCritic)
    x = sample(jax.random.key(3), result, 5)
    assert x.shape == (5, 64) and bool(jnp.all(jnp.abs(x) < 1))


# -- data ---------------------------------------------------------------------


def test_digits_loader(digits):
    train_set, test_set = digits
    full = datasets.digits("all")
    assert full.images.shape == (1797, 64) and full.labels.dtype == jnp.int32
    assert train_set.images.shape[0] + test_set.images.shape[0] == 1797
    assert float(full.images.min()) == -1.0 and float(full.images.max()) == 1.0
    # 17 grey levels, 1/8 apart.
    levels = np.unique(np.asarray(full.images))
    np.testing.assert_allclose(levels, np.arange(17) / 8 - 1)
    assert full.bin_width == 1 / 8 and full.image_shape == (8, 8, 1)
    # A stratified, deterministic split: every class in both parts, 25% held out.
    counts = np.bincount(np.asarray(test_set.labels), minlength=10)
    total = np.bincount(np.asarray(full.labels), minlength=10)
    np.testing.assert_array_equal(counts, np.round(0.25 * total))
    again = datasets.digits("test")
    np.testing.assert_array_equal(again.images, test_set.images)
    # The two splits partition the dataset (as multisets of image+label rows).
    rows = lambda d: sorted(map(bytes, np.c_[np.asarray(d.images), d.labels]))
    assert rows(full) == sorted(rows(train_set) + rows(test_set))
    # Padding keeps the digit in the centre on a background border.
    padded = datasets.digits("test", size=16).images.reshape(-1, 16, 16)
    np.testing.assert_array_equal(
        padded[:, 4:12, 4:12].reshape(-1, 64), test_set.images
    )
    assert float(padded[:, :4].max()) == -1.0
    up = datasets.digits("test", size=16, resize="upsample", dtype=jnp.float32)
    up = up.images.reshape(-1, 16, 16)
    np.testing.assert_array_equal(up[:, ::2, ::2].reshape(-1, 64), test_set.images)
    for kwargs, match in [
        (dict(split="val"), "split must be one of"),
        (dict(size=12), "power of two"),
        (dict(resize="bicubic"), "resize must be one of"),
        (dict(test_fraction=1.0), "test_fraction"),
    ]:
        with pytest.raises(ValueError, match=match):
            datasets.digits(**kwargs)


# -- metrics ------------------------------------------------------------------


def test_frechet_distance_closed_form(x64):
    # On samples the formula is exact on their moments: compare with SciPy's
    # matrix square root in float64.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    y = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 1.0
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x.T), np.cov(y.T)
    root = linalg.sqrtm(sx)
    expected = np.sum((mx - my) ** 2) + np.trace(
        sx + sy - 2 * linalg.sqrtm(root @ sy @ root).real
    )
    np.testing.assert_allclose(im.frechet_distance(x, y), expected, rtol=1e-9)
    # Commuting covariances: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    z = rng.normal(size=(20_000, 2))
    value = im.frechet_distance(z, z * np.array([2.0, 3.0]) + 1.0)
    np.testing.assert_allclose(value, 2 + 1 + 4, rtol=0.05)


@pytest.fixture(scope="module")
def classifier(digits):
    """A tiny, deterministic classifier (the machinery, not the accuracy)."""
    train_set = digits[0]
    return im.train_classifier(
        jax.random.key(0),
        train_set.images,
        train_set.labels,
        channels=(4, 8),
        features=16,
        num_steps=30,
        batch_size=32,
    )


def test_fid_machinery(classifier, digits):
    train_set, test_set = digits
    again = im.train_classifier(
        jax.random.key(0),
        train_set.images,
        train_set.labels,
        channels=(4, 8),
        features=16,
        num_steps=30,
        batch_size=32,
    )
    assert _equal(nnx.state(again), nnx.state(classifier))
    accuracy = float(
        im.classifier_accuracy(classifier, test_set.images, test_set.labels)
    )
    assert accuracy > 0.2  # above chance after 30 steps
    x = test_set.images
    # float32 rounding of the covariances only (the trace term is computed as a
    # nuclear norm, see frechet_distance).
    assert float(im.fid(classifier, x, x)) < 1e-3 * float(
        im.fid(classifier, x, -jnp.ones_like(x) + 0.01 * x)
    )
    floor = float(im.fid(classifier, train_set.images[:450], x))
    blurred = 0.5 * x + 0.5 * jnp.mean(x, axis=0)
    assert 0 < floor < float(im.fid(classifier, blurred, x))
    cov = im.class_coverage(
        nnx.jit(lambda net, x: jnp.argmax(net(x), -1))(classifier, x)
    )
    assert cov.counts.sum() == x.shape[0]


def test_class_coverage_on_known_labels():
    labels = jnp.array([0] * 50 + [1] * 45 + [2] * 4 + [3])
    cov = im.class_coverage(labels, 4)
    # fair share 25 each: at least 5 samples (20%) covers a class
    assert cov.counts.tolist() == [50, 45, 4, 1]
    assert cov.covered.tolist() == [True, True, False, False]
    assert int(cov.n_classes) == 2
    assert int(im.class_coverage(labels, 4, min_share=0.0).n_classes) == 4
    with pytest.raises(ValueError, match="labels must be"):
        im.class_coverage(jnp.zeros((3, 2), int))


def test_bits_per_dim():
    # A uniform density over L levels' bins: log2 L bits per dimension.
    w, d = 0.25, 10
    log_p = -d * np.log(9 * w)  # uniform on 9 bins of width w per coordinate
    np.testing.assert_allclose(im.bits_per_dim(log_p, d, w), np.log2(9), rtol=1e-6)
    with pytest.raises(ValueError, match="bin_width"):
        im.bits_per_dim(0.0, 3, 0.0)
