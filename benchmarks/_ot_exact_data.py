"""The exact-OT benchmarks' problems and POT calls (``bench_ot_exact*.py``).

Import after ``_common.limit_peer_threads()``: POT is imported here.
"""

import numpy as np
import ot as pot

__all__ = ["batch_problems", "pot_emd2", "pot_loop", "problem"]


def problem(seed, n, uniform=False):
    """``(x [n, 2], y [n, 2], a [n], b [n])``: Gaussian clouds, y shifted by 0.5.

    The weights are uniform with ``uniform``, else random; both sum to 1.
    """
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 0.5
    a, b = (np.ones(n), np.ones(n)) if uniform else (rng.random(n), rng.random(n))
    return x, y, a / a.sum(), b / b.sum()


def batch_problems(batch, n):
    """``(xs, ys, as_, bs)``, each stacked over ``batch`` weighted problems."""
    probs = [problem(1000 + s, n) for s in range(batch)]
    return tuple(np.stack([p[i] for p in probs]) for i in range(4))


def pot_emd2(x, y, a, b):
    """POT's exact cost (C++ network simplex) on the squared Euclidean cost."""
    return pot.emd2(a, b, pot.dist(x, y), numItermax=10**8)


def pot_loop(xs, ys, as_, bs):
    """:func:`pot_emd2` over a batch, one problem after the other."""
    return [pot_emd2(*p) for p in zip(xs, ys, as_, bs, strict=True)]
