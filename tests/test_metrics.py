import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

from densax import datasets, gaussian, metrics
from densax import ot as dot


def test_sw2_matches_pot_with_the_same_directions(key, x64):
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (300, 2), jnp.float64)
    y = jax.random.normal(ky, (300, 2), jnp.float64) * 0.5 + 1.0
    theta = dot.random_directions(kp, 64, 2, dtype=jnp.float64)
    ref = pot.sliced_wasserstein_distance(
        np.asarray(x), np.asarray(y), projections=np.asarray(theta).T
    )
    # Same directions: both compute the exact 1D W2 per direction (float64).
    np.testing.assert_allclose(metrics.sw2(kp, x, y, n_projections=64), ref, rtol=1e-10)


def test_noise_floor_is_the_mean_over_pairs_and_decays_like_n_to_minus_quarter(key):
    floor = float(
        metrics.sw2_noise_floor(key, datasets.eight_gaussians, 1000, n_repeats=4)
    )
    manual = []
    for k in jax.random.split(key, 4):
        k1, k2, kp = jax.random.split(k, 3)
        a, b = datasets.eight_gaussians(k1, 1000), datasets.eight_gaussians(k2, 1000)
        manual.append(float(metrics.sw2(kp, a, b)))
    np.testing.assert_allclose(floor, np.mean(manual), rtol=1e-5)
    big = float(
        metrics.sw2_noise_floor(key, datasets.eight_gaussians, 4000, n_repeats=4)
    )
    # Mode-share fluctuations dominate: SW2 ~ n^(-1/4), a factor 4^(1/4) = 1.41
    # from n = 1000 to 4000 (4 pairs each: ~15% Monte Carlo spread).
    np.testing.assert_allclose(floor / big, 4**0.25, rtol=0.2)


def test_mode_coverage_counts_by_hand():
    modes = datasets.eight_gaussians_modes()
    c, std = np.asarray(modes.centres), modes.std
    outward = c / np.linalg.norm(c, axis=1, keepdims=True)
    x = np.concatenate(
        [
            np.repeat(c[:6], 10, axis=0),  # 10 exact hits on modes 0..5
            c[6] + 2.5 * std * outward[6] * np.ones((10, 1)),  # mode 6: within 3 std
            c[7] + 4.0 * std * outward[7] * np.ones((10, 1)),  # mode 7: outside
            np.array([[0.0, 0.0]] * 4 + [c[0] * 1.01]),  # far off, and 1 near mode 0
        ]
    )
    cov = metrics.mode_coverage(x, modes.centres, std)
    # 85 samples; 0.2 * 85 / 8 = 2.1: a mode needs 3 high-quality samples.
    np.testing.assert_array_equal(cov.counts, [11, 10, 10, 10, 10, 10, 10, 0])
    assert int(cov.n_modes) == 7
    np.testing.assert_allclose(cov.high_quality, 71 / 85, rtol=1e-6)
    strict = metrics.mode_coverage(x, modes.centres, std, n_std=2.0)
    assert int(strict.counts[6]) == 0 and int(strict.n_modes) == 6
    jitted = jax.jit(lambda x: metrics.mode_coverage(x, modes.centres, std).n_modes)
    assert int(jitted(x)) == 7
    # A second eager call with the same shapes does not compile again.
    compiled = metrics._mode_coverage._cache_size()
    metrics.mode_coverage(x + 0.001, modes.centres, std)
    assert metrics._mode_coverage._cache_size() == compiled


def test_heldout_log_likelihood_of_a_kde_matches_sklearn(key, x64):
    from densax import kde

    x = datasets.two_moons(key, 500, dtype=jnp.float64)
    y = datasets.two_moons(jax.random.key(1), 200, dtype=jnp.float64)
    ref = KernelDensity(bandwidth=0.1).fit(np.asarray(x)).score_samples(np.asarray(y))
    model = kde.fit(x, bandwidth=0.1)
    np.testing.assert_allclose(
        metrics.heldout_log_likelihood(model, y), ref.mean(), rtol=1e-10
    )
    # A fit result is accepted for its .model; weights give a weighted mean.
    result = kde.FitResult(model, *([None] * 5))
    np.testing.assert_allclose(
        metrics.heldout_log_likelihood(result, y), ref.mean(), rtol=1e-10
    )
    w = jnp.linspace(0.0, 2.0, 200)
    np.testing.assert_allclose(
        metrics.heldout_log_likelihood(model, y, sample_weight=w),
        np.sum(w * ref) / np.sum(w),
        rtol=1e-10,
    )


def test_heldout_log_likelihood_of_a_gmm_matches_sklearn(key, x64):
    from densax import gmm

    # Three well-separated blobs: EM from any sensible start reaches the same
    # optimum; the fits stop when the mean log-likelihood changes by < 1e-3.
    centres = jnp.array([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]], jnp.float64)
    kx, kc = jax.random.split(key)
    x = centres[jax.random.randint(kc, (600,), 0, 3)] + jax.random.normal(
        kx, (600, 2), jnp.float64
    )
    y = centres[jnp.arange(150) % 3] + jax.random.normal(
        jax.random.key(5), (150, 2), jnp.float64
    )
    ours = metrics.heldout_log_likelihood(gmm.fit(jax.random.key(2), x, 3), y)
    sk = GaussianMixture(3, random_state=0).fit(np.asarray(x)).score(np.asarray(y))
    np.testing.assert_allclose(ours, sk, atol=5e-3)


_GAUSSIAN = gaussian.Gaussian(jnp.zeros(2), jnp.eye(2))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: metrics.mode_coverage(np.ones((4, 3)), np.ones((8, 2)), 0.1),
            "same dimension",
        ),
        (
            lambda: metrics.mode_coverage(np.ones((4, 2)), np.ones((8, 2)), 0.0),
            "positive",
        ),
        (
            lambda: metrics.heldout_log_likelihood(_GAUSSIAN, np.ones(4)),
            "rank 2",
        ),
        (
            lambda: metrics.heldout_log_likelihood(
                _GAUSSIAN, np.ones((4, 2)), sample_weight=np.ones(3)
            ),
            "sample_weight must have shape",
        ),
        (
            lambda: metrics.sw2_noise_floor(jax.random.key(0), datasets.rings, 0),
            "n must be",
        ),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(TypeError, match="model must be a density model"):
        metrics.heldout_log_likelihood(np.ones((4, 2)), np.ones((4, 2)))
