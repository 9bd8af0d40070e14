"""Every GAN-family method through the shared loop, on tiny networks.

The loop itself (reproducibility, resume, sharding, NaN guard) is tested on
WGAN-GP in test_generative_train.py; here each method runs a few steps, the
OT generator shows that training improves the metric, and the sliced loss's
sharded path (gathered batch, directions split over devices) is checked
against one device.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from densax import datasets, metrics
from densax.generative import METHODS, MLP, Method, gans, losses, sample, train

TINY = dict(batch_size=64, chunk_size=10, eval_size=64, hidden=(16, 16))


@pytest.fixture(scope="module")
def data():
    return datasets.eight_gaussians(jax.random.key(0), 512)


@pytest.fixture(scope="module")
def runs(data):
    # The metric's compiled path runs on one method (the same evaluation code
    # serves all); evaluating every method would compile it three times.
    return {
        method: train(
            jax.random.key(1),
            data,
            method=method,
            num_steps=20,
            **{**TINY, "eval_size": 64 if method == "sinkhorn" else 0},
        )
        for method in ("gan", "wgan-clip", "sinkhorn")
    }


@pytest.mark.parametrize(
    "method, losses",
    [
        ("gan", {"critic", "generator"}),
        ("wgan-clip", {"critic", "generator", "wasserstein"}),
        ("sinkhorn", {"generator"}),
    ],
)
def test_each_method_trains(runs, method, losses):
    result = runs[method]
    assert result.finite and int(result.state.step) == 20
    assert set(result.history.losses) == losses
    assert all(np.all(np.isfinite(v)) for v in result.history.losses.values())
    assert (result.critic is None) == (method == "sinkhorn")
    assert np.all(np.isfinite(result.history.sw2)) == (method == "sinkhorn")
    x = sample(jax.random.key(3), result, 5)
    assert x.shape == (5, 2) and bool(jnp.all(jnp.isfinite(x)))
    with pytest.raises(TypeError, match="no sampler options"):
        sample(jax.random.key(3), result, 5, sampler="ddim")


def test_wgan_clip_keeps_critic_weights_clipped(runs):
    clip = runs["wgan-clip"].options.clip
    for w in jax.tree.leaves(runs["wgan-clip"].state.params["critic"]):
        # clip(w + u) - w added back to w: within one float32 ulp of the bound.
        assert float(jnp.max(jnp.abs(w))) <= clip + np.spacing(np.float32(clip))


@pytest.mark.parametrize("method", ["wgan-clip", "wgan-gp"])
def test_critic_schedule_spans_every_critic_step(method):
    # The critic takes n_critic Adam steps per generator step: its cosine
    # schedule must reach 0 at the end of the run, not after num_steps of its
    # own steps (a frozen critic lets the generator run away).
    opts = METHODS[method].options()
    num_steps = 4
    optimizers = METHODS[method].optimizers(opts, num_steps)
    params = {"w": jnp.zeros(())}

    def moves(name, n_updates):
        tx = optimizers[name]
        state = tx.init(params)
        grad = {"w": jnp.ones(())}
        for _ in range(n_updates):
            update, state = tx.update(grad, state, params)
        return abs(float(update["w"]))

    n_critic = opts.n_critic
    assert moves("critic", num_steps * n_critic - 1) > 0
    assert moves("critic", num_steps * n_critic + 1) == 0
    assert moves("generator", num_steps - 1) > 0
    assert moves("generator", num_steps + 1) == 0


@pytest.fixture(scope="module")
def sliced(data):
    return train(jax.random.key(1), data, method="sliced", num_steps=300, **TINY)


def test_short_sliced_run_improves_the_metric(sliced, data):
    untrained = MLP(2, 2, hidden=(16, 16), rngs=nnx.Rngs(0))
    held_out = datasets.eight_gaussians(jax.random.key(9), 512)
    k_z, k_proj = jax.random.split(jax.random.key(4))
    before = gans.sample_generator(untrained, sliced.options, k_z, 512, jnp.float32)
    after = sample(k_z, sliced, 512)
    sw_before = float(metrics.sw2(k_proj, before, held_out))
    sw_after = float(metrics.sw2(k_proj, after, held_out))
    assert sw_after < 0.5 * sw_before, (sw_before, sw_after)
    # The history's metric went down too (fixed evaluation noise).
    assert sliced.history.sw2[-1] < sliced.history.sw2[0]


def test_sharded_sliced_step_equals_single_device(data, mesh):
    options = dict(TINY, n_projections=16, eval_size=0)
    single = train(jax.random.key(1), data, method="sliced", num_steps=10, **options)
    sharded = train(
        jax.random.key(1), data, method="sliced", num_steps=10, mesh=mesh, **options
    )
    # Same directions and batches; the 16 directions are split 4 per device
    # and summed with psum: float32 reordering only (Adam steps <= lr = 1e-3).
    for a, b in zip(
        jax.tree.leaves(sharded.state.params),
        jax.tree.leaves(single.state.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        sharded.history.losses["generator"],
        single.history.losses["generator"],
        rtol=1e-5,
    )


def test_float64_training_keeps_the_dtype(data, x64):
    x = jnp.asarray(data, jnp.float64)
    result = train(
        jax.random.key(1),
        x,
        method="sliced",
        num_steps=5,
        **dict(TINY, chunk_size=5, eval_size=0),
    )
    assert all(w.dtype == jnp.float64 for w in jax.tree.leaves(result.state.params))
    assert sample(jax.random.key(0), result, 3).dtype == jnp.float64
    assert result.history.losses["generator"].dtype == np.float64


def test_a_new_method_plugs_into_the_loop(data):
    """A mean-matching generator, registered in METHODS, trains through train()."""

    def step(ctx, params, opt_state, key):
        k_real, k_z = jax.random.split(key)
        real = ctx.real_batch(k_real)

        def loss(p):
            fake = ctx.apply("generator", p, ctx.normal(k_z, ctx.options.latent_dim))
            gap = losses.batch_mean(fake, ctx.axis_name) - losses.batch_mean(
                real, ctx.axis_name
            )
            return jnp.sum(gap**2)

        p, s, value = ctx.update(
            "generator", loss, params["generator"], opt_state["generator"]
        )
        return {"generator": p}, {"generator": s}, {"generator": value}

    def networks(options, features, dtype, rngs):
        net = MLP(
            options.latent_dim,
            features,
            hidden=options.hidden,
            param_dtype=dtype,
            rngs=rngs,
        )
        return {"generator": net}

    METHODS["moments"] = Method(
        gans.GeneratorOptions,
        networks,
        lambda options, num_steps: {"generator": optax.adam(1e-2)},
        step,
        gans.sample_generator,
        batch_size=64,
    )
    try:
        result = train(
            jax.random.key(1),
            data + 3.0,
            method="moments",
            num_steps=100,
            **{**TINY, "eval_size": 0},
        )
        mean = jnp.mean(sample(jax.random.key(2), result, 2000), axis=0)
    finally:
        del METHODS["moments"]
    assert result.finite and set(result.history.losses) == {"generator"}
    # The data mean is (3, 3) up to the sample's noise (std 1.4 / sqrt(512)).
    np.testing.assert_allclose(mean, 3.0 + jnp.mean(data, axis=0), atol=0.3)
