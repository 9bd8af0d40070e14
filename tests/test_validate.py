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
