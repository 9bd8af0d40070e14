import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from scipy.special import expit

from densax import ot
from densax.generative import losses, models

REAL = np.array([2.0, -1.0, 0.5, 30.0])
FAKE = np.array([-3.0, 0.25, -40.0, 1.0])


def _tol(dtype):
    # A few ulps of the dtype: the losses are short sums of log-sigmoids.
    return 8 * np.finfo(dtype).eps


def test_gan_losses_match_hand_computation(dtype):
    # -E log D(x) - E log(1 - D(G(z))), D = sigmoid, in float64 NumPy/SciPy.
    d_ref = -np.mean(np.log(expit(REAL))) - np.mean(np.log1p(-expit(FAKE)))
    g_ref = -np.mean(np.log(expit(FAKE)))
    real, fake = jnp.asarray(REAL, dtype), jnp.asarray(FAKE, dtype)
    d = losses.gan_discriminator_loss(real, fake)
    g = losses.gan_generator_loss(fake)
    assert d.dtype == g.dtype == dtype
    np.testing.assert_allclose(d, d_ref, rtol=_tol(dtype))
    np.testing.assert_allclose(g, g_ref, rtol=_tol(dtype))


def test_gan_losses_finite_for_saturated_logits():
    # Naive log(sigmoid(-200)) underflows to log(0) = -inf; log_sigmoid does not.
    big = jnp.array([200.0, -200.0])
    assert np.isfinite(losses.gan_discriminator_loss(-big, big))
    np.testing.assert_allclose(losses.gan_generator_loss(jnp.array([-200.0])), 200.0)
    grad = jax.grad(losses.gan_generator_loss)(jnp.array([-200.0, 200.0]))
    assert np.all(np.isfinite(grad))


def test_wgan_losses_match_hand_computation(dtype):
    real, fake = jnp.asarray(REAL, dtype), jnp.asarray(FAKE, dtype)
    c = losses.wgan_critic_loss(real, fake)
    g = losses.wgan_generator_loss(fake)
    assert c.dtype == g.dtype == dtype
    np.testing.assert_allclose(c, FAKE.mean() - REAL.mean(), rtol=_tol(dtype))
    np.testing.assert_allclose(g, -FAKE.mean(), rtol=_tol(dtype))


def _critic(dtype):
    net = models.MLP(
        2, 1, hidden=(8, 8), activation="tanh", param_dtype=dtype, rngs=nnx.Rngs(3)
    )
    return lambda x: net(x)[:, 0]


def test_gradient_penalty_matches_finite_difference_norms(x64, key):
    critic = _critic(jnp.float64)
    kr, kf, ke = jax.random.split(key, 3)
    real = jax.random.normal(kr, (16, 2), jnp.float64)
    fake = jax.random.normal(kf, (16, 2), jnp.float64) + 1.0
    eps = jax.random.uniform(ke, (16,), jnp.float64)
    x_hat = np.asarray(eps[:, None] * real + (1 - eps[:, None]) * fake)
    # Central differences of the critic, coordinate by coordinate: error
    # O(h^2 f''') ~ 1e-10 plus rounding ~ eps/h ~ 1e-11.
    h = 1e-5
    grads = np.stack(
        [(critic(x_hat + h * e) - critic(x_hat - h * e)) / (2 * h) for e in np.eye(2)],
        axis=1,
    )
    expected = np.mean((np.linalg.norm(grads, axis=1) - 1) ** 2)
    gp = losses.gradient_penalty(critic, real, fake, eps)
    np.testing.assert_allclose(gp, expected, rtol=1e-8)


def test_gradient_penalty_gradients(x64, key):
    critic = _critic(jnp.float64)
    kr, kf = jax.random.split(key)
    real = jax.random.normal(kr, (8, 2), jnp.float64)
    fake = jax.random.normal(kf, (8, 2), jnp.float64)
    eps = jnp.linspace(0.1, 0.9, 8)
    fn = lambda r, f: losses.gradient_penalty(critic, r, f, eps)
    check_grads(fn, (real, fake), order=1, modes=["rev"])


def test_gradient_penalty_zero_gradient_is_finite():
    # A constant critic has zero gradient: penalty 1, and a finite derivative.
    flat = lambda x: jnp.zeros(x.shape[0]) + 0.0 * jnp.sum(x)
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(
        losses.gradient_penalty(flat, x, x, jnp.full(4, 0.5)), 1.0
    )
    g = jax.grad(lambda x: losses.gradient_penalty(flat, x, -x, jnp.full(4, 0.5)))(x)
    assert np.all(np.isfinite(g))


def test_clip_weights_bounds_and_composes():
    opt = optax.chain(optax.adam(0.5), losses.clip_weights(0.01))
    params = {"w": jnp.array([0.5, -0.005, 0.0]), "b": jnp.array(-3.0)}
    state = opt.init(params)
    for _ in range(3):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for leaf in jax.tree.leaves(params):
            # |w| <= c up to the rounding of w + (clip(w + u) - w): one ulp.
            assert np.all(np.abs(leaf) <= 0.01 + np.spacing(np.float32(0.01)))
    np.testing.assert_allclose(params["w"], -0.01, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the current params"):
        losses.clip_weights(0.1).update(params, optax.EmptyState())
    with pytest.raises(ValueError, match="clip_value must be positive"):
        losses.clip_weights(0.0)


def test_sliced_loss_is_squared_sliced_wasserstein(key):
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (32, 2))
    y = jax.random.normal(ky, (32, 2)) + 2.0
    sw = ot.sliced_wasserstein(kp, x, y, n_projections=16)
    np.testing.assert_allclose(
        losses.sliced_loss(kp, x, y, n_projections=16), sw**2, rtol=1e-6
    )


def test_losses_jit_and_vmap():
    real = jnp.asarray(np.stack([REAL, REAL[::-1]]), jnp.float32)
    fake = jnp.asarray(np.stack([FAKE, FAKE[::-1]]), jnp.float32)
    batched = jax.jit(jax.vmap(losses.gan_discriminator_loss))(real, fake)
    np.testing.assert_allclose(
        batched[0], losses.gan_discriminator_loss(real[0], fake[0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        batched[1], losses.gan_discriminator_loss(real[1], fake[1]), rtol=1e-6
    )


@pytest.mark.parametrize(
    "fn, args",
    [
        (losses.gan_discriminator_loss, (np.ones((2, 2)), np.ones(2))),
        (losses.gan_generator_loss, (np.ones((2, 1)),)),
        (losses.wgan_critic_loss, (np.ones(2), np.ones((1, 2)))),
    ],
)
def test_losses_reject_wrong_rank(fn, args):
    with pytest.raises(ValueError, match="must have rank 1"):
        fn(*args)


def test_gradient_penalty_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="real, fake and eps"):
        losses.gradient_penalty(
            lambda x: x[:, 0], np.ones((4, 2)), np.ones((3, 2)), np.ones(4)
        )


def test_sharded_losses_and_gradients_equal_unsharded(mesh, key):
    """Global-batch losses under shard_map: same values, same gradients."""
    critic = _critic(jnp.float32)
    kr, kf, ke, kp = jax.random.split(key, 4)
    real = jax.random.normal(kr, (16, 2))
    fake_base = jax.random.normal(kf, (16, 2))
    eps = jax.random.uniform(ke, (16,))

    def all_losses(shift, real, fake_base, eps, axis_name=None):
        fake = fake_base + shift  # a replicated "parameter"
        r, f = critic(real), critic(fake)
        return jnp.stack(
            [
                losses.gan_discriminator_loss(r, f, axis_name=axis_name),
                losses.gan_generator_loss(f, axis_name=axis_name),
                losses.wgan_critic_loss(r, f, axis_name=axis_name),
                losses.gradient_penalty(critic, real, fake, eps, axis_name=axis_name),
                losses.sliced_loss(
                    kp, fake, real, n_projections=8, axis_name=axis_name
                ),
            ]
        )

    shift = jnp.array([0.3, -0.2])
    value = all_losses(shift, real, fake_base, eps)
    jac = jax.jacrev(all_losses)(shift, real, fake_base, eps)

    def sharded(shift, real, fake_base, eps):
        fn = functools.partial(all_losses, axis_name="data")
        return fn(shift, real, fake_base, eps), jax.jacrev(fn)(
            shift, real, fake_base, eps
        )

    sm = jax.shard_map(
        sharded,
        mesh=mesh,
        in_specs=(P(), P("data"), P("data"), P("data")),
        out_specs=(P(), P()),
    )
    s_value, s_jac = jax.jit(sm)(shift, real, fake_base, eps)
    # float32 sums split over 4 devices: reordering errors of a few ulps.
    np.testing.assert_allclose(s_value, value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s_jac, jac, rtol=1e-5, atol=1e-6)


def test_batch_mean_under_shard_map(mesh):
    x = jnp.arange(8.0)
    fn = jax.shard_map(
        functools.partial(losses.batch_mean, axis_name="data"),
        mesh=mesh,
        in_specs=P("data"),
        out_specs=P(),
    )
    np.testing.assert_allclose(fn(x), 3.5)
