"""Shared pytest set-up: four host CPU devices, a PRNG key and dtype fixtures.

The XLA flag must be set before jax is imported anywhere, so this module sets
it at import time (pytest imports conftest before the test modules).
"""

import os
import subprocess
import sys

# Four host devices for the shard_map tests. The suite is compile-bound (small
# problems, many programs), and the tests' tiny problems do not need optimised
# kernels: XLA's backend optimisation level 0 compiles about 30% faster, and
# the legacy CPU fusion emitters instead of the MLIR ones about 2.5x faster
# again (benchmarks and users keep XLA's defaults). DENSAX_TEST_XLA_FLAGS
# replaces these two (e.g. an empty value tests XLA's defaults).
_DEFAULT_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)


def _accepted(flags: str) -> bool:
    """Whether this jaxlib's XLA accepts ``flags`` (an unknown flag aborts it)."""
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    return run.returncode == 0


if "DENSAX_TEST_XLA_FLAGS" not in os.environ:
    # Probed once (the xdist workers inherit the result): a later jaxlib may
    # drop the emitter flag, and the suite must then run without it.
    _flags = _DEFAULT_COMPILE_FLAGS
    if not _accepted(_flags):
        _flags = "--xla_backend_optimization_level=0"
    os.environ["DENSAX_TEST_XLA_FLAGS"] = _flags
_COMPILE_FLAGS = os.environ["DENSAX_TEST_XLA_FLAGS"].split()
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
for _FLAG in (f"{_DEVICE_FLAG}=4", *_COMPILE_FLAGS):
    if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()


def compile_flags() -> str:
    """The suite's XLA flags without the device count: for its subprocesses."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return " ".join(f for f in flags if not f.startswith(_DEVICE_FLAG))


# Tests run on the CPU unless the caller asks otherwise (JAX_PLATFORMS=cuda).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _release_executables():
    """Frees jax's compiled programs after each test module.

    Each XLA:CPU executable holds memory mappings for its JIT code (a few
    hundred for one Sinkhorn solve), and Linux caps a process at
    ``vm.max_map_count`` (65530 by default). Kept for the whole session, the
    suite's programs reached that cap: compilation then failed, and unwinding
    its C++ exception segfaulted.
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def key():
    """A fresh, fixed PRNG key."""
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Enables float64 for the duration of one test."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Runs a test in float32 and in float64 (x64 enabled for the latter)."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


@pytest.fixture(scope="session")
def mesh():
    """A 1D mesh over the 4 host devices, axis ``"data"``, for ``jax.shard_map``.

    ``AxisType.Auto`` lets ``shard_map`` reshard unsharded inputs itself (the
    default explicit axes in jax>=0.9 require inputs already laid out).
    """
    from jax.sharding import AxisType

    return jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))


# The longest files first: with ``--dist loadfile`` each file runs whole on one
# worker, in collection order, so starting with the longest balances the two
# workers (longest-processing-time first) instead of leaving one of them alone
# with test_sinkhorn.py or the notebooks at the end. Order within a file is kept.
_LONGEST_FIRST = (
    "test_sinkhorn.py",
    "test_notebooks.py",
    "test_gmm.py",
    "test_ot_api.py",
    "test_multiprocess.py",
    "test_kde.py",
    "test_bad_input.py",
    "test_readme.py",
    "test_images.py",
    "test_flows.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return (
            _LONGEST_FIRST.index(name)
            if name in _LONGEST_FIRST
            else len(_LONGEST_FIRST)
        )

    items.sort(key=rank)  # stable: the order within a file is kept
