"""Every public function of densax.ot through the same transformations.

One table, one row per function: ``jit`` equals the eager call, ``vmap`` equals
a loop, ``shard_map`` over the 4 host devices equals one device (for the
functions that take an ``axis_name`` or a batch), float64 in gives float64
out, a second eager call with new values of the same shapes does not trace
again, and a boolean input is a ``TypeError`` naming the argument. The
numbers themselves are tested against references in test_ot.py and
test_sinkhorn.py.
"""

import importlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import densax
from densax import ot
from densax.ot import divergence, exact, sliced, univariate

# The module densax.ot.sinkhorn (the attribute densax.ot.sinkhorn is the function).
sinkhorn_module = importlib.import_module("densax.ot.sinkhorn")

N, M, D = 8, 6, 2  # N divisible by the 4 devices
EPS = 0.5


class Case(NamedTuple):
    fn: Callable[..., jax.Array]  # fn(*arrays, axis_name=None) -> array
    args: Callable[[Any], tuple]  # dtype -> the arrays
    sharded: tuple[int, ...] | None  # args split over devices (axis 0)
    out_sharded: bool  # the output is split too
    core: Callable[[], Any]  # the jitted core (for the retrace check)
    # A thin wrapper of another row's core: jit, vmap and float64 are that
    # row's (saves compiling the most expensive core twice).
    wrapper: bool = False


def _points(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(dtype)
    y = (rng.normal(size=(M, D)) + 1.0).astype(dtype)
    a = rng.uniform(0.2, 1.0, N).astype(dtype)
    b = rng.uniform(0.2, 1.0, M).astype(dtype)
    return x, a, y, b


def _matrix(dtype):
    x, a, y, b = _points(dtype)
    c = ((x[:, None] - y[None]) ** 2).sum(-1)
    return c, a, b


def _solve(x, a, y, b, axis_name=None):
    return ot.sinkhorn(x, y, a=a, b=b, epsilon=EPS, tol=1e-6, axis_name=axis_name)


def _rows(dtype):
    """A batch of N 1D problems: u [N, 5] with weights, v [N, 4]."""
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(N, 5)), rng.normal(size=(N, 4)) + 0.5
    return u.astype(dtype), v.astype(dtype), rng.uniform(0.2, 1, (N, 5)).astype(dtype)


THETA = np.random.default_rng(1).normal(size=(5, D))

CASES = {
    "wasserstein_1d": Case(
        lambda u, v, a, axis_name=None: ot.wasserstein_1d(u, v, a=a, p=2),
        lambda dt: _rows(dt),
        (0, 1, 2),
        True,
        lambda: univariate._wasserstein_1d_pow,
    ),
    "sliced_wasserstein": Case(
        lambda x, a, y, b, axis_name=None: ot.sliced_wasserstein(
            None, x, y, a=a, b=b, projections=THETA.astype(x.dtype)
        ),
        _points,
        None,
        False,
        lambda: sliced._sliced_core,
    ),
    "sinkhorn": Case(
        lambda *args, axis_name=None: _solve(*args, axis_name=axis_name).reg_cost,
        _points,
        (0, 1),
        False,
        lambda: sinkhorn_module._sinkhorn_core,
    ),
    "sinkhorn(cost_matrix)": Case(
        lambda c, a, b, axis_name=None: (
            ot.sinkhorn(
                cost_matrix=c, a=a, b=b, epsilon=EPS, tol=1e-6, axis_name=axis_name
            ).reg_cost
        ),
        _matrix,
        (0, 1),
        False,
        lambda: sinkhorn_module._sinkhorn_core,
    ),
    "sinkhorn_divergence": Case(
        lambda x, a, y, b, axis_name=None: (
            ot.sinkhorn_divergence(
                x, y, a=a, b=b, epsilon=EPS, tol=1e-6, axis_name=axis_name
            ).divergence
        ),
        _points,
        (0, 1),
        False,
        lambda: divergence._divergence_core,
    ),
    "wasserstein_entropic": Case(
        lambda x, a, y, b, axis_name=None: ot.wasserstein_entropic(
            x, y, a=a, b=b, epsilon=EPS, tol=1e-6, axis_name=axis_name
        ),
        _points,
        (0, 1),
        False,
        lambda: divergence._divergence_core,
        wrapper=True,
    ),
    "transport_plan": Case(
        lambda *args, axis_name=None: ot.transport_plan(
            _solve(*args, axis_name=axis_name), axis_name=axis_name
        ),
        _points,
        (0, 1),
        True,
        lambda: sinkhorn_module._plan_core,
    ),
    "apply_plan": Case(
        lambda x, a, y, b, axis_name=None: ot.apply_plan(
            _solve(x, a, y, b, axis_name=axis_name),
            x,
            transpose=True,
            axis_name=axis_name,
        ),
        _points,
        (0, 1),
        False,
        lambda: sinkhorn_module._apply_core,
    ),
    "emd": Case(
        lambda x, a, y, b, axis_name=None: (
            ot.emd(x, y, a=a / a.sum(), b=b / b.sum()).cost
        ),
        _points,
        None,
        False,
        lambda: exact._emd_core,
    ),
    "emd2": Case(
        lambda x, a, y, b, axis_name=None: ot.emd2(x, y, a=a / a.sum(), b=b / b.sum()),
        _points,
        None,
        False,
        lambda: exact._emd_core,
        wrapper=True,
    ),
    "wasserstein_exact": Case(
        lambda x, a, y, b, axis_name=None: ot.wasserstein_exact(
            x, y, a=a / a.sum(), b=b / b.sum()
        ),
        _points,
        None,
        False,
        lambda: exact._emd_core,
        wrapper=True,
    ),
    "plan_dense": Case(
        lambda c, a, b, axis_name=None: ot.plan_dense(
            ot.emd(cost_matrix=c, a=a / a.sum(), b=b / b.sum())
        ),
        _matrix,
        None,
        False,
        lambda: exact._emd_core,
        wrapper=True,
    ),
    "assignment": Case(
        lambda x, a, y, b, axis_name=None: ot.assignment(x, x[::-1] + y.mean(0)).cost,
        _points,
        None,
        False,
        lambda: exact._assignment_core,
    ),
}
IDS = list(CASES)
TABLE = pytest.mark.parametrize("case", [CASES[k] for k in IDS], ids=IDS)


def _close(got, want, dtype=np.float32):
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


@TABLE
def test_jit_vmap_and_no_retracing(case):
    if case.wrapper:
        pytest.skip("a thin wrapper of another row's core")
    args = case.args(np.float32)
    want = case.fn(*args)
    _close(jax.jit(case.fn)(*args), want)
    # vmap over a batch of two problems equals a loop.
    other = tuple(np.asarray(v) * 1.1 for v in args)
    batch = tuple(np.stack(pair) for pair in zip(args, other, strict=True))
    got = jax.vmap(case.fn)(*batch)
    _close(got[0], want)
    _close(got[1], case.fn(*other))
    # A second eager call, new values of the same shapes: no new trace.
    size = case.core()._cache_size()
    case.fn(*other)
    assert case.core()._cache_size() == size


@TABLE
def test_float64(case):
    if case.wrapper:
        pytest.skip("a thin wrapper of another row's core")
    with jax.enable_x64(True):
        args = case.args(np.float64)
        out = case.fn(*args)
        assert out.dtype == jnp.float64
        want32 = case.fn(*(np.float32(v) for v in args))
    _close(out, want32)


@TABLE
def test_shard_map_equals_one_device(case, mesh):
    if case.sharded is None:
        pytest.skip("no axis_name and no batch axis")
    args = case.args(np.float32)
    specs = tuple(P("data") if i in case.sharded else P() for i in range(len(args)))
    sharded = jax.shard_map(
        lambda *args: case.fn(*args, axis_name="data"),
        mesh=mesh,
        in_specs=specs,
        out_specs=P("data") if case.out_sharded else P(),
    )
    _close(sharded(*args), case.fn(*args))


@TABLE
def test_bad_dtype_names_the_argument(case):
    args = list(case.args(np.float32))
    args[0] = np.ones(args[0].shape, bool)
    with pytest.raises(TypeError, match=r"numeric|bool|float"):
        case.fn(*args)


def test_table_covers_the_public_functions():
    covered = {name.split("(")[0] for name in CASES}
    # to_ott returns an ott-jax object (tested in test_sinkhorn.py);
    # random_directions and SinkhornConfig are helpers.
    rest = {"to_ott", "random_directions", "SinkhornConfig", "Coupling1D"}
    # The submodules (gaussian, maps, semidiscrete, da, exact) have their own
    # test files.
    rest |= {name for name in ot.__all__ if inspect.ismodule(getattr(ot, name))}
    outputs = {name for name in ot.__all__ if name.endswith("Output")}
    assert set(ot.__all__) - outputs - rest == covered
    assert densax.ot.sinkhorn is sinkhorn_module.sinkhorn
