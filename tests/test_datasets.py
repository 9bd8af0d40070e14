import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets as skd

from densax import datasets

N = 20_000
# Monte Carlo tolerance for a moment of N points: a few standard errors.
MC = 5 / np.sqrt(N)

TWO_D = [
    datasets.eight_gaussians,
    datasets.twenty_five_gaussians,
    datasets.swiss_roll,
    datasets.two_moons,
    datasets.rings,
]


@pytest.mark.parametrize("fn", TWO_D, ids=lambda f: f.__name__)
def test_shape_dtype_keys_jit_vmap(fn, dtype, key):
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: fn(k, 16, dtype=dtype)))(keys)
    assert batched.shape == (3, 16, 2) and batched.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(batched)))
    assert not np.allclose(batched[0], batched[1])
    x = jax.jit(fn, static_argnums=1, static_argnames="dtype")(keys[1], 16, dtype=dtype)
    # vmap and jit fuse the sines differently: equal up to float rounding.
    np.testing.assert_allclose(batched[1], x, rtol=10 * np.finfo(dtype).eps)


@pytest.mark.parametrize(
    "fn, modes",
    [
        (datasets.eight_gaussians, datasets.eight_gaussians_modes()),
        (datasets.twenty_five_gaussians, datasets.twenty_five_gaussians_modes()),
    ],
)
def test_mixtures_match_their_modes(fn, modes, key):
    x = np.asarray(fn(key, N))
    centres = np.asarray(modes.centres)
    d = np.linalg.norm(x[:, None] - centres[None], axis=-1)
    nearest = d.argmin(1)
    # Every point is within 6 std of a centre (P(miss) ~ 1e-8 per point)...
    assert d.min(1).max() < 6 * modes.std
    # ...modes are equally likely (binomial std of a share: sqrt(p (1-p) / N))...
    share = np.bincount(nearest, minlength=len(centres)) / N
    p = 1 / len(centres)
    np.testing.assert_allclose(share, p, atol=5 * np.sqrt(p * (1 - p) / N))
    # ...and the within-mode spread is the stated std (relative error of a
    # sample std of 2N coordinates is ~1/sqrt(4N)).
    resid = x - centres[nearest]
    np.testing.assert_allclose(resid.std(), modes.std, rtol=5 / np.sqrt(4 * N))


def test_swiss_roll_matches_sklearn(key):
    ours = np.asarray(datasets.swiss_roll(key, N, noise=0.0), np.float64)
    ref, _ = skd.make_swiss_roll(N, noise=0.0, random_state=0)
    ref = ref[:, [0, 2]] / 5
    # Same distribution: the radius t/5 (uniform on [0.3 pi, 0.9 pi]) and the
    # first two moments agree within Monte Carlo error (data scale ~2).
    for stat in (
        lambda a: np.linalg.norm(a, axis=1),
        lambda a: a[:, 0],
        lambda a: a[:, 1],
    ):
        s_ours, s_ref = stat(ours), stat(ref)
        assert abs(s_ours.mean() - s_ref.mean()) < 2 * 2 * MC
        assert abs(s_ours.std() - s_ref.std()) < 2 * 2 * MC
    r = np.linalg.norm(ours, axis=1)
    assert r.min() >= 0.3 * np.pi - 1e-5 and r.max() <= 0.9 * np.pi + 1e-5


def test_two_moons_matches_sklearn(key):
    ours = np.asarray(datasets.two_moons(key, N, noise=0.1), np.float64)
    ref, _ = skd.make_moons(N, noise=0.1, random_state=0)
    np.testing.assert_allclose(ours.mean(0), ref.mean(0), atol=2 * MC)
    np.testing.assert_allclose(np.cov(ours.T), np.cov(ref.T), atol=2 * MC)
    clean = np.asarray(datasets.two_moons(key, 200, noise=0.0))
    upper = np.abs(np.linalg.norm(clean, axis=1) - 1) < 1e-5
    lower = np.abs(np.linalg.norm(clean - [1.0, 0.5], axis=1) - 1) < 1e-5
    assert np.all(upper | lower)


def test_rings_equal_mass_per_ring(key):
    r = np.linalg.norm(np.asarray(datasets.rings(key, N, noise=0.0)), axis=1)
    radii, counts = np.unique(np.round(r, 4), return_counts=True)
    np.testing.assert_allclose(radii, [0.75, 1.5, 2.25, 3.0], atol=1e-4)
    np.testing.assert_allclose(counts / N, 0.25, atol=5 * np.sqrt(0.25 * 0.75 / N))


def test_regime_series_transitions_and_emissions(key):
    transition = np.array([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.2, 0.0, 0.8]])
    n = 50_000
    s = datasets.regime_series(key, n, transition=transition)
    values, regimes = np.asarray(s.values), np.asarray(s.regimes)
    assert values.shape == regimes.shape == (n,) and s.regimes.dtype == jnp.int32
    counts = np.zeros((3, 3))
    np.add.at(counts, (regimes[:-1], regimes[1:]), 1)
    empirical = counts / counts.sum(1, keepdims=True)
    # Each row is a multinomial over >= 5000 transitions: std <= 0.5/sqrt(5000).
    np.testing.assert_allclose(empirical, transition, atol=5 * 0.5 / np.sqrt(5000))
    for j, (m, sd) in enumerate(zip((0.5, 0.0, -1.0), (0.5, 1.0, 3.0), strict=True)):
        v = values[regimes == j]
        assert abs(v.mean() - m) < 5 * sd / np.sqrt(v.size)
        assert abs(v.std() / sd - 1) < 5 / np.sqrt(2 * v.size)


def test_regime_series_default_is_sticky_and_uniform(key, x64):
    s = datasets.regime_series(key, 20_000, dtype=np.float64)
    assert s.values.dtype == np.float64
    regimes = np.asarray(s.regimes)
    np.testing.assert_allclose(np.mean(regimes[1:] == regimes[:-1]), 0.98, atol=0.005)
    # Regimes last ~50 steps, so the chain is far from independent: shares are
    # only loosely uniform over 20000 steps (about 400 visits).
    np.testing.assert_allclose(np.bincount(regimes) / regimes.size, 1 / 3, atol=0.1)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda k: datasets.eight_gaussians(k, 0), ValueError, "n must be >= 1"),
        (lambda k: datasets.eight_gaussians(k, 5.0), TypeError, "n must be an int"),
        (lambda k: datasets.eight_gaussians(k, 5, std=-1.0), ValueError, "std must"),
        (lambda k: datasets.swiss_roll(k, 5, noise=-0.1), ValueError, "noise must"),
        (lambda k: datasets.rings(k, 5, radii=()), ValueError, "radii must"),
        (lambda k: datasets.two_moons(k, 5, dtype=np.int32), TypeError, "dtype must"),
        (
            lambda k: datasets.regime_series(k, 5, stds=(1.0,)),
            ValueError,
            "equal length",
        ),
        (lambda k: datasets.regime_series(k, 5, stay=1.5), ValueError, "stay must"),
        (
            lambda k: datasets.regime_series(k, 5, transition=np.ones((3, 3))),
            ValueError,
            "row-stochastic",
        ),
    ],
)
def test_bad_options_raise(call, exc, match, key):
    with pytest.raises(exc, match=match):
        call(key)
