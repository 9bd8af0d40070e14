import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densax import _validate


def test_as_float_keeps_float_dtypes_and_promotes_ints(x64):
    assert _validate.as_float(np.ones(3, np.float32), "x").dtype == jnp.float32
    assert _validate.as_float(np.ones(3), "x").dtype == jnp.float64
    assert _validate.as_float(np.arange(3), "x").dtype == jnp.float64


def test_as_float_float32_default():
    assert _validate.as_float(np.arange(3), "x").dtype == jnp.float32


@pytest.mark.parametrize("bad", [np.ones(2, bool), np.ones(2, complex)])
def test_as_float_rejects_non_real(bad):
    with pytest.raises(TypeError, match="x must"):
        _validate.as_float(bad, "x")


def test_as_float_rank_error_names_argument():
    with pytest.raises(ValueError, match="data must have rank 2"):
        _validate.as_float(np.ones(3), "data", ndim=2)


def test_check_choice_lists_allowed_values():
    with pytest.raises(ValueError, match=r"'full', 'diag'.*'fool'"):
        _validate.check_choice("fool", "covariance_type", ("full", "diag"))


def test_check_int():
    assert _validate.check_int(np.int64(3), "k", minimum=1) == 3
    with pytest.raises(TypeError, match="k must be an int"):
        _validate.check_int(2.0, "k")
    with pytest.raises(ValueError, match="k must be >= 1"):
        _validate.check_int(0, "k", minimum=1)


def test_weights_value_checks_run_eagerly_only():
    with pytest.raises(ValueError, match="w must be non-negative"):
        _validate.check_weights(
            jnp.array([1.0, -1.0]), "w", (2,), dtype=jnp.float32, validate=True
        )
    with pytest.raises(ValueError, match="positive sum"):
        _validate.check_weights(
            jnp.zeros(2), "w", (2,), dtype=jnp.float32, validate=True
        )
    with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
        _validate.check_weights(
            jnp.ones(2), "w", (3,), dtype=jnp.float32, validate=True
        )

    @jax.jit
    def traced(w):  # value checks are skipped under tracing: no host sync
        return _validate.check_weights(w, "w", (2,), dtype=jnp.float32, validate=True)

    np.testing.assert_array_equal(traced(jnp.array([1.0, -1.0])), [1.0, -1.0])


def test_check_finite():
    with pytest.raises(ValueError, match="x contains NaN"):
        _validate.check_finite(jnp.array([1.0, jnp.nan]), "x", True)
    _validate.check_finite(jnp.array([1.0, jnp.nan]), "x", False)


def test_four_host_devices():
    assert jax.device_count() >= 4


def test_mesh_fixture_shard_map_psum(mesh):
    from jax.sharding import PartitionSpec as P

    total = jax.shard_map(
        lambda x: jax.lax.psum(x.sum(), "data"),
        mesh=mesh,
        in_specs=P("data"),
        out_specs=P(),
    )(jnp.arange(8.0))
    assert float(total) == 28.0


def test_check_scalar_static_always_values_eagerly():
    assert _validate.check_scalar(0.5, "reg_covar", jnp.float32) == 0.5
    for bad, err in (("a", TypeError), (True, TypeError), (jnp.ones(2), TypeError)):
        with pytest.raises(err, match="reg_covar must be a real scalar"):
            _validate.check_scalar(bad, "reg_covar", jnp.float32)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="reg_covar must be"):
            _validate.check_scalar(bad, "reg_covar", jnp.float32, minimum=0)
    # A traced value passes unchecked (the function documents the outcome).
    out = jax.jit(lambda r: _validate.check_scalar(r, "r", jnp.float32, minimum=0))
    assert float(out(-1.0)) == -1.0


def test_check_key_and_the_public_decorator():
    _validate.check_key(jax.random.key(0))
    _validate.check_key(jax.random.PRNGKey(0))  # legacy raw uint32 [2]
    for bad in (0, 1.5, jnp.zeros(3, jnp.uint32), jnp.zeros(2)):
        with pytest.raises(TypeError, match="key must be a PRNG key"):
            _validate.check_key(bad)

    @_validate.public
    def draw(key, x):
        return x * 2

    @_validate.public
    def maybe(key=None):
        return key

    assert maybe() is None
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        draw(3, jnp.ones(2))
    for dtype in (jnp.float16, jnp.bfloat16):
        assert draw(jax.random.key(0), jnp.ones(2, dtype)).dtype == dtype
    assert draw(jax.random.key(0), jnp.ones(2, jnp.int32)).dtype == jnp.int32


def test_half_precision_computes_in_float32():
    seen = []

    @_validate.half_precision
    def f(x, y=None, n=3):
        seen.append((x.dtype, None if y is None else y.dtype))
        return {"value": jnp.sum(x), "count": jnp.int32(n), "flag": x[0] > 0}

    out = f(jnp.full(4, 300.0, jnp.float16))
    assert seen[-1] == (jnp.float32, None)
    assert out["value"].dtype == jnp.float16 and float(out["value"]) == 1200.0
    assert out["count"].dtype == jnp.int32 and out["flag"].dtype == jnp.bool_
    # Mixed with a wider float: computed and returned in float32.
    out = f(jnp.ones(2, jnp.float16), jnp.ones(2, jnp.float32))
    assert out["value"].dtype == jnp.float32
    assert jax.jit(f)(jnp.ones(2, jnp.bfloat16))["value"].dtype == jnp.bfloat16


def test_normalize_weights_keeps_ratios_and_invalid_weights_invalid():
    w = jnp.array([1.0, 2.0, 3.0])
    for scale in (1.0, 1e-30, 1e30):
        np.testing.assert_allclose(
            _validate.normalize_weights(w * scale), [0.5, 1.0, 1.5], rtol=1e-6
        )
    np.testing.assert_array_equal(_validate.normalize_weights(jnp.ones(4)), 1.0)
    assert np.isnan(_validate.normalize_weights(-jnp.ones(3))).all()
    assert float(_validate.normalize_weights(jnp.array([-1.0, 3.0]))[0]) < 0


def test_check_sums_to_one_and_nonempty():
    _validate.check_sums_to_one(jnp.array([1.0, 1.0 + 5e-4]), "p")
    with pytest.raises(ValueError, match="p must sum to one"):
        _validate.check_sums_to_one(jnp.array([1.0, 0.5]), "p")
    with pytest.raises(ValueError, match=r"x must have at least one sample"):
        _validate.check_nonempty(jnp.zeros((0, 2)), "x")
    with pytest.raises(ValueError, match=r"x must have at least one feature"):
        _validate.check_nonempty(jnp.zeros((3, 0)), "x", axis=1)
