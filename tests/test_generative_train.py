"""The shared training loop: reproducibility, resume, sharding, NaN guard.

Training compiles a whole chunk of steps, so every test here reuses one tiny
configuration (16-wide networks, batch 32, chunks of 5 steps) and its compiled
chunk, through module-scoped fixtures.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densax import datasets
from densax.generative import checkpoint, sample, train
from densax.generative import training as train_module

TINY = dict(batch_size=32, chunk_size=5, eval_size=64, hidden=(16, 16))
STEPS = 10


def _raw(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _equal(a, b):
    """Bit-identical pytrees (typed PRNG keys compared by their key data)."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(_raw(x), _raw(y)) for x, y in pairs)


@pytest.fixture(scope="module")
def data():
    return datasets.eight_gaussians(jax.random.key(0), 256)


@pytest.fixture(scope="module")
def base(data):
    """WGAN-GP (the most involved step: critic loop, double backprop), 10 steps."""
    return train(jax.random.key(1), data, method="wgan-gp", num_steps=STEPS, **TINY)


def test_result_structure(base):
    assert base.finite and base.message == ""
    assert int(base.state.step) == STEPS
    assert set(base.history.losses) == {
        "critic",
        "generator",
        "gradient_penalty",
        "wasserstein",
    }
    for v in base.history.losses.values():
        assert v.shape == (STEPS,) and np.all(np.isfinite(v))
    np.testing.assert_array_equal(base.history.chunk_step, [5, 10])
    assert base.history.sw2.shape == (2,) and np.all(base.history.sw2 > 0)
    assert base.critic is not None
    assert base.generator(jnp.zeros((3, 2))).shape == (3, 2)


def test_same_seed_is_bit_identical_without_recompiling(base, data):
    compiled = train_module._run_chunk._cache_size()
    again = train(jax.random.key(1), data, method="wgan-gp", num_steps=STEPS, **TINY)
    assert train_module._run_chunk._cache_size() == compiled
    assert _equal(again.state, base.state)
    assert _equal(again.history.losses, base.history.losses)
    other = train(jax.random.key(2), data, method="wgan-gp", num_steps=STEPS, **TINY)
    assert not _equal(other.state.params, base.state.params)


def test_chunk_size_does_not_change_the_result(base, data):
    options = {**TINY, "chunk_size": 10}
    one_chunk = train(
        jax.random.key(1), data, method="wgan-gp", num_steps=STEPS, **options
    )
    assert _equal(one_chunk.state, base.state)


class _Interrupt(Exception):
    pass


def test_resume_from_checkpoint_is_bit_identical(base, data, tmp_path):
    path = tmp_path / "run.ckpt"

    def stop_after_first_chunk(progress):
        if progress.step == 5:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(
            jax.random.key(1),
            data,
            method="wgan-gp",
            num_steps=STEPS,
            checkpoint=path,
            callback=stop_after_first_chunk,
            **TINY,
        )
    resumed = train(
        jax.random.key(1),
        data,
        method="wgan-gp",
        num_steps=STEPS,
        checkpoint=path,
        resume=True,
        **TINY,
    )
    assert _equal(resumed.state, base.state)
    assert _equal(resumed.history.losses, base.history.losses)
    np.testing.assert_array_equal(resumed.history.chunk_step, [5, 10])
    # The checkpoint now holds the finished run: restoring gives it back.
    state, _, meta = checkpoint.load(path, base.state)
    assert _equal(state, base.state) and meta["method"] == "wgan-gp"
    # Another run's options: refused rather than silently mixed.
    with pytest.raises(ValueError, match="belongs to another run"):
        train(
            jax.random.key(1),
            data,
            method="wgan-gp",
            num_steps=STEPS,
            checkpoint=path,
            resume=True,
            **{**TINY, "gp_weight": 0.5},
        )


def _payload(target, **changes):
    """A checkpoint's msgpack payload, with some entries replaced (crafted files)."""
    from flax import serialization

    raw = target._replace(key=jax.random.key_data(target.key))
    payload = {
        "format": "densax.generative.checkpoint/1",
        "key_impl": str(jax.random.key_impl(target.key)),
        "meta": "{}",
        "state": serialization.to_state_dict(jax.device_get(raw)),
        "history": None,
    }
    payload.update(changes)
    return serialization.msgpack_serialize(payload)


def test_unreadable_checkpoints_raise_one_error_naming_the_file(base, tmp_path):
    from flax import serialization

    good = tmp_path / "good.ckpt"
    checkpoint.save(good, base.state, meta={"a": 1})
    data = good.read_bytes()
    state_dict = serialization.to_state_dict(
        jax.device_get(base.state._replace(key=jax.random.key_data(base.state.key)))
    )
    int8 = jax.tree.map(lambda a: np.asarray(a).astype(np.int8), state_dict)
    negative = {**state_dict, "step": np.int32(-5)}
    cases = {
        "junk": b"\x80\x04not msgpack of ours",
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "list": serialization.msgpack_serialize([1, 2, 3]),
        "no_state": serialization.msgpack_serialize(
            {"format": "densax.generative.checkpoint/1"}
        ),
        "state_not_dict": _payload(base.state, state=3),
        "bad_impl": _payload(base.state, key_impl="nope"),
        "bad_meta": _payload(base.state, meta="{not json"),
        "int8": _payload(base.state, state=int8),
        "negative_step": _payload(base.state, state=negative),
        "bad_history": _payload(base.state, history=[1, 2]),
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            checkpoint.load(path, base.state)
    with pytest.raises(ValueError, match=r"missing\.ckpt"):
        checkpoint.load(tmp_path / "missing.ckpt", base.state)
    assert checkpoint.load(good, base.state)[2] == {"a": 1}


def test_resume_checks_key_and_data_and_extends_a_finished_run(base, data, tmp_path):
    path = tmp_path / "run.ckpt"
    run = dict(method="wgan-gp", checkpoint=path, **TINY)
    done = train(jax.random.key(1), data, num_steps=STEPS, **run)
    assert _equal(done.state, base.state)
    for key, x, what in [
        (jax.random.key(2), data, "key"),
        (jax.random.key(1), data[::-1], "data_fingerprint"),
    ]:
        with pytest.raises(ValueError, match=f"differs in {what}"):
            train(key, x, num_steps=STEPS, resume=True, **run)
    with pytest.raises(ValueError, match="already holds 10 steps"):
        train(jax.random.key(1), data, num_steps=5, resume=True, **run)
    # A finished run extended to more steps continues from the saved state.
    longer = train(jax.random.key(1), data, num_steps=STEPS + 5, resume=True, **run)
    assert int(longer.state.step) == STEPS + 5
    np.testing.assert_array_equal(longer.history.chunk_step, [5, 10, 15])
    for name, losses in base.history.losses.items():
        np.testing.assert_array_equal(longer.history.losses[name][:STEPS], losses)
        assert np.all(np.isfinite(longer.history.losses[name]))


def test_degenerate_data_and_half_precision(data):
    with pytest.raises(ValueError, match="data must have at least one feature"):
        train(jax.random.key(1), jnp.zeros((8, 0)), method="sliced", num_steps=1)
    with pytest.raises(ValueError, match="data must hold at least one point"):
        train(jax.random.key(1), jnp.zeros((0, 2)), method="sliced", num_steps=1)
    # Half precision is trained in float32 (the compiled chunk of `base`).
    for dtype in (jnp.float16, jnp.bfloat16):
        half = train(
            jax.random.key(1),
            data.astype(dtype),
            method="wgan-gp",
            num_steps=STEPS,
            **TINY,
        )
        assert half.finite and int(half.state.step) == STEPS
        for leaf in jax.tree.leaves(half.state.params):
            assert leaf.dtype == jnp.float32


def test_sharded_training_equals_single_device(base, data, mesh):
    sharded = train(
        jax.random.key(1), data, method="wgan-gp", num_steps=STEPS, mesh=mesh, **TINY
    )
    # Same global batch and noise on 4 devices; only the order of the float32
    # batch sums differs (psum of 4 partial sums), a relative error of a few
    # ulps per step that Adam's normalised steps (size <= lr = 1e-3) carry
    # over 10 steps: 1e-5 absolute on O(1) weights.
    for x, y in zip(
        jax.tree.leaves(sharded.state.params),
        jax.tree.leaves(base.state.params),
        strict=True,
    ):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    for name in base.history.losses:
        np.testing.assert_allclose(
            sharded.history.losses[name],
            base.history.losses[name],
            rtol=1e-4,
            atol=1e-5,
        )


def test_nan_guard_keeps_last_good_state(base, data, tmp_path):
    # Poison one data point: the first step whose batches draw it is not
    # finite. Each step draws 5 x 32 of the 256 rows, so most rows are drawn
    # within two steps; take the first row that first appears at step >= 3.
    path = tmp_path / "nan.ckpt"
    for row in range(data.shape[0]):
        poisoned = data.at[row].set(jnp.nan)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bad = train(
                jax.random.key(1),
                poisoned,
                method="wgan-gp",
                num_steps=STEPS,
                validate=False,
                checkpoint=path,
                **TINY,
            )
        if not bad.finite and int(bad.state.step) >= 2:
            break
    good_steps = int(bad.state.step)
    assert 2 <= good_steps < STEPS
    assert [w.category for w in caught] == [RuntimeWarning]
    assert f"non-finite loss or parameters at step {good_steps + 1}" in str(
        caught[0].message
    )
    assert "the last finite one" in bad.message
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(bad.state.params))
    assert all(v.shape == (good_steps,) for v in bad.history.losses.values())
    # Before that step the poisoned row was never drawn, so the kept state is
    # exactly the clean run's after `good_steps` steps: resuming from the
    # checkpoint on clean data ends bit-identical to the clean run. The
    # checkpoint describes the poisoned data, so resuming on the clean data
    # is refused until its description is rewritten for them.
    saved, history, meta = checkpoint.load(path, bad.state)
    assert _equal(saved, bad.state)
    with pytest.raises(ValueError, match="differs in data_fingerprint"):
        train(
            jax.random.key(1),
            data,
            method="wgan-gp",
            num_steps=STEPS,
            checkpoint=path,
            resume=True,
            **TINY,
        )
    clean = {**meta, "data_fingerprint": train_module._fingerprint(data)}
    checkpoint.save(path, saved, history=history, meta=clean)
    resumed = train(
        jax.random.key(1),
        data,
        method="wgan-gp",
        num_steps=STEPS,
        checkpoint=path,
        resume=True,
        **TINY,
    )
    assert _equal(resumed.state, base.state)
    for name, losses in base.history.losses.items():
        np.testing.assert_array_equal(resumed.history.losses[name], losses)


def test_nan_data_rejected_eagerly(data):
    with pytest.raises(ValueError, match="data contains NaN or inf"):
        train(jax.random.key(1), data.at[0].set(jnp.inf), method="sliced", num_steps=1)


def test_sample_shapes_determinism_and_vmap(base):
    a = sample(jax.random.key(5), base, 7)
    assert a.shape == (7, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, sample(jax.random.key(5), base, 7))
    compiled = train_module._sample._cache_size()
    sample(jax.random.key(6), base, 7)
    assert train_module._sample._cache_size() == compiled
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.vmap(lambda k: sample(k, base, 7))(keys)
    np.testing.assert_allclose(batched[1], sample(keys[1], base, 7), rtol=1e-6)


def test_progress_callback_and_verbose(data, capsys):
    seen = []
    train(
        jax.random.key(1),
        data,
        method="wgan-gp",
        num_steps=STEPS,
        verbose=True,
        callback=seen.append,
        **TINY,
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("[wgan-gp] step 10/10")
    assert "steps/s" in lines[-1] and "sw2" in lines[-1]
    assert [p.step for p in seen] == [5, 10]
    assert set(seen[0].losses) == {
        "critic",
        "generator",
        "gradient_penalty",
        "wasserstein",
    }
    assert seen[-1].steps_per_s > 0 and np.isfinite(seen[-1].sw2)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(method="vae", num_steps=1), ValueError, "method must be one of"),
        (dict(method="gan", num_steps=0), ValueError, "num_steps must be >= 1"),
        (dict(method="gan", num_steps=1, gp_weight=1.0), TypeError, "unknown option"),
        (dict(method="gan", num_steps=1, n_critic=0), ValueError, "n_critic must be"),
        (dict(method="gan", num_steps=1, hidden=(0,)), ValueError, "hidden must be"),
        (
            dict(method="gan", num_steps=1, activation="swish2"),
            ValueError,
            "activation",
        ),
        (
            dict(method="gan", num_steps=1, lr_schedule="step"),
            ValueError,
            "lr_schedule",
        ),
        (dict(method="wgan-gp", num_steps=1, gp_weight=-1.0), ValueError, "gp_weight"),
        (
            dict(method="sliced", num_steps=1, batch_size=30, mesh="mesh"),
            ValueError,
            "divisible",
        ),
        (
            dict(method="sliced", num_steps=1, eval_data=np.ones((4, 3))),
            ValueError,
            "dimension",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, exc, match, data, mesh):
    if kwargs.get("mesh") == "mesh":
        kwargs = {**kwargs, "mesh": mesh}
    with pytest.raises(exc, match=match):
        train(jax.random.key(0), data, **kwargs)


def test_data_rank_checked():
    with pytest.raises(ValueError, match="data must have rank 2"):
        train(jax.random.key(0), np.ones(5), method="gan", num_steps=1)


def test_no_warning_on_a_clean_run(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train(jax.random.key(1), data, method="wgan-gp", num_steps=5, **TINY)
