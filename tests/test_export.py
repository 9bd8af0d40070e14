"""The public entry points lower for GPU and TPU (no device needed).

``jax.export`` lowers a jitted function for platforms other than the one it
runs on. Exporting for ``("cuda", "tpu")`` catches what would break or be slow
there: host callbacks (``pure_callback``) and CPU-only branches of
``lax.platform_dependent`` leaking into the accelerator path (densax has two:
``ot``'s host sorts for large inputs and ``gmm.fit``'s ``lax.map`` vmap rule).
All calls of densax's API are in ``ENTRY_POINTS``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densax import _binned, gmm, kde
from densax import ot as densax_ot
from densax.generative import training

PLATFORMS = ("cuda", "tpu")
# Custom-call targets of host callbacks (jax.pure_callback / io_callback).
CALLBACK_TARGETS = ("callback", "host_compute")

N = 4096  # above densax.ot's host-sort threshold (2048 elements)
_rng = np.random.default_rng(0)
X = _rng.standard_normal((N, 2)).astype(np.float32)
Y = _rng.standard_normal((N, 2)).astype(np.float32)
SMALL = X[:256]
U = X[:, 0]
V = Y[:, 0]
KEY = jax.random.key(0)


def _gmm_fit(key, x):
    res = gmm.fit(key, x, 3, max_iter=5, validate=False)
    return res.model.means, res.log_likelihood


def _kde_log_prob(x, data, h):
    return kde.log_prob(kde.fit(data, bandwidth=h, validate=False), x, validate=False)


def _train_chunk(data):
    """One compiled chunk of generative.train's loop (method "sliced")."""
    spec = training.METHODS["sliced"]
    opts = training._options("sliced", {"hidden": (16, 16)})
    graphdefs, state = training._initial_state(spec, opts, data, 4, jax.random.key(1))
    static = training._Static("sliced", opts, tuple(graphdefs.items()), 32, 2, None)
    chunk = functools.partial(
        training._chunk, data=data, stop=jnp.int32(4), static=static
    )
    return chunk, (state,)


# name -> (function, arguments); the lead adapts renames here.
ENTRY_POINTS = {
    "gmm.fit": (_gmm_fit, (KEY, SMALL)),
    "gmm.fit under vmap": (
        jax.vmap(_gmm_fit),
        (jax.random.split(KEY, 2), SMALL.reshape(2, 128, 2)),
    ),
    "kde.log_prob": (
        lambda x, data, h: _kde_log_prob(x, data, h),
        (SMALL, X, np.float32(0.3)),
    ),
    "kde.log_prob grad": (
        jax.grad(lambda h, x, data: _kde_log_prob(x, data, h).sum()),
        (np.float32(0.3), SMALL, X),
    ),
    "ot.sinkhorn": (
        lambda x, y: densax_ot.sinkhorn(x, y, epsilon=0.1, validate=False).reg_cost,
        (SMALL, Y[:200]),
    ),
    "ot.wasserstein_1d": (
        lambda u, v: densax_ot.wasserstein_1d(u, v, p=2, validate=False),
        (U, V),
    ),
    "ot.wasserstein_1d grad": (
        jax.grad(lambda u, v: densax_ot.wasserstein_1d(u, v, p=2, validate=False)),
        (U, V),
    ),
    "ot.sliced_wasserstein": (
        lambda key, x, y: densax_ot.sliced_wasserstein(
            key, x, y, n_projections=8, validate=False
        ),
        (KEY, X, Y),
    ),
    "binned kde grid": (
        lambda data, h: _binned.grid_log_density(data, h, (256,))[0],
        (X[:, :1], np.float32(0.2)),
    ),
}


def _module_text(exported):
    return exported.mlir_module()


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_lowers_for_accelerators(name):
    fn, args = ENTRY_POINTS[name]
    exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
    assert exported.platforms == PLATFORMS
    text = _module_text(exported)
    for target in CALLBACK_TARGETS:
        assert f'call_target_name = "{target}' not in text, (name, target)
        assert "xla_python_cpu_callback" not in text
        assert "xla_ffi_python" not in text


def test_generative_train_chunk_lowers_for_accelerators():
    data = jnp.asarray(X[:256])
    chunk, args = _train_chunk(data)
    exported = jax.export.export(jax.jit(chunk), platforms=PLATFORMS)(*args)
    assert "callback" not in _module_text(exported)


def test_callback_detection_works():
    """Not vacuous: a host callback cannot be exported for two platforms.

    ``ot.wasserstein_1d`` at this size takes its host-sort path on the CPU: the
    same export with the CPU among the platforms fails on that callback, so the
    accelerator export above really went through ``lax.platform_dependent``.
    """
    fn, args = ENTRY_POINTS["ot.wasserstein_1d"]
    with pytest.raises(NotImplementedError, match="python_callback"):
        jax.export.export(jax.jit(fn), platforms=("cpu", "cuda"))(*args)

    def host(x):
        return jax.pure_callback(np.sort, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    with pytest.raises(NotImplementedError, match="python_callback"):
        jax.export.export(jax.jit(host), platforms=PLATFORMS)(U)
