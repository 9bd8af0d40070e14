"""Shared data and helpers of the Sinkhorn test files."""

import numpy as np

__all__ = [
    "D",
    "EPS",
    "M",
    "N",
    "TIGHT",
    "gauge",
    "large_problem",
    "sample_problem",
    "sq_cost",
    "storage_options",
]

N, M, D = 24, 18, 2
EPS = 0.5  # ~0.05 x the mean cost of the data below
TIGHT = 1e-11


def sample_problem(dtype=np.float64, seed=0):
    """The small weighted problem of most tests: x [N, D], y [M, D], a [N], b [M]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    y = rng.normal(size=(M, D)) * 1.3 + 1.0
    a = rng.uniform(0.2, 1.0, N)
    b = rng.uniform(0.2, 1.0, M)
    return (
        x.astype(dtype),
        y.astype(dtype),
        (a / a.sum()).astype(dtype),
        (b / b.sum()).astype(dtype),
    )


def storage_options(block):
    """Storage options: None dense, a string that storage, an int online blocks."""
    if block is None:
        return dict(storage="dense")
    if isinstance(block, str):
        return dict(storage=block)
    return dict(storage="online", block_size=block)


def sq_cost(x, y):
    return ((np.asarray(x)[:, None] - np.asarray(y)[None]) ** 2).sum(-1)


def gauge(f, g, a, b):
    """densax's gauge <a, f> = <b, g>, applied to other libraries' potentials."""
    c = 0.5 * (np.dot(b, g) - np.dot(a, f))
    return f + c, g - c


def large_problem(dtype, n=300, m=260, seed=3):
    """A problem above 2^16 entries: "auto" runs online with a cached kernel."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D))
    y = rng.normal(size=(m, D)) * 0.7 + 1.0
    a = rng.uniform(0.2, 1.0, n)
    b = rng.uniform(0.2, 1.0, m)
    cast = lambda v: np.asarray(v, dtype)
    return cast(x), cast(y), cast(a / a.sum()), cast(b / b.sum())
