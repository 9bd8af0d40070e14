"""The dispatch floor of a pivoting exact-OT solver written in XLA.

Why ``ot.emd`` cannot reach the C++ network simplex on a CPU: a pivot is a
chain of dependent steps (price a block and take its minimum; find the cycle's
bottleneck; pick the leaving arc; move the subtree; renumber it), and in
array code each dependent step is at least one pass over the ``n + m + 1``
nodes, i.e. one XLA kernel launched after the previous one finished. This
script times that floor on the problems of ``bench_ot_exact.py`` (same data,
float64, 2D points, squared Euclidean cost):

1. densax ``ot.emd`` and POT's ``emd2`` on the weighted problem of n = m =
   1000, and densax's pivot count;
2. a ``lax.while_loop`` of exactly that many iterations whose body (inside a
   ``lax.cond``, as in the solver) does only ``k`` dependent passes over
   ``2n + 1`` nodes, each a scalar gather and a masked minimum, for k = 1 and
   10: the cost of any pivot that needs ``k`` passes, with no pricing at all;
3. the same for the batch of 256 problems of n = m = 128 under ``vmap``
   (lockstep: the loop runs the largest pivot count of the batch), against the
   POT loop.

Usage: ``python benchmarks/bench_ot_exact_floor.py [--quick]``.
"""

import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    limit_peer_threads,
    parse_args,
    recorder,
    time_fn,
    write_results,
)

from densax import ot  # noqa: E402

PASSES = (1, 10)


def show(r):
    t = r["time_s"]
    print(f"  {r['case']:<24} {r['impl']:<40} {t * 1e3:10.2f} ms", flush=True)


def floor_loop(pivots: int, nodes: int, passes: int, batch: int | None):
    """A jitted loop of ``pivots`` iterations of ``passes`` dependent passes."""

    def chain(s):
        for i in range(passes):
            s = s + jnp.min(jnp.where(s > s[i % nodes], s, 0.5 * s))
        return s

    step = chain if batch is None else jax.vmap(chain)

    def body(carry):
        i, s = carry
        return i + 1, lax.cond(i >= 0, step, lambda s: s, s)

    @jax.jit
    def run(s):
        return lax.while_loop(lambda c: c[0] < pivots, body, (0, s))[1]

    s = jnp.linspace(0.0, 1.0, nodes)
    return run, (s if batch is None else jnp.tile(s, (batch, 1)))


def add_floors(add, repeat, case: str, pivots: int, n: int, batch: int | None):
    """Times :func:`floor_loop` for each count of passes in ``PASSES``."""
    for k in PASSES:
        run, s = floor_loop(pivots, 2 * n + 1, k, batch)
        add(
            case,
            f"floor: {pivots} x {k} dependent pass(es)"
            + ("" if batch is None else ", vmap"),
            "float64",
            time_fn(run, s, repeat=repeat),
            size=n,
            n_iter=pivots,
        )


def one_problem(add, n, repeat):
    """[1] ``ot.emd`` and POT on one weighted problem, then the floors."""
    from _ot_exact_data import pot_emd2, problem

    print(f"\n[1] one weighted problem, n = m = {n}")
    x, y, a, b = problem(n, n)
    emd = jax.jit(lambda *p: ot.emd(*p[:2], a=p[2], b=p[3], validate=False))
    args_j = [jnp.asarray(v) for v in (x, y, a, b)]
    out = emd(*args_j)
    pivots = int(out.n_iter)
    case = f"emd n=m={n}"
    add(
        case,
        "densax",
        "float64",
        time_fn(emd, *args_j, repeat=repeat),
        size=n,
        n_iter=pivots,
        note="ot.emd, jitted",
    )
    add(
        case,
        "pot (emd2, C++)",
        "float64",
        time_fn(pot_emd2, x, y, a, b, repeat=repeat),
        size=n,
    )
    add_floors(add, repeat, case, pivots, n, None)


def batch_of_problems(add, batch, n, repeat):
    """[2] ``batch`` problems under ``vmap`` and POT's loop, then the floors."""
    from _ot_exact_data import batch_problems, pot_loop

    print(f"\n[2] {batch} weighted problems of n = m = {n}, vmap")
    xs, ys, as_, bs = batch_problems(batch, n)
    batch_j = [jnp.asarray(v) for v in (xs, ys, as_, bs)]
    emd_batch = jax.jit(
        jax.vmap(lambda *p: ot.emd(*p[:2], a=p[2], b=p[3], validate=False))
    )
    counts = np.asarray(emd_batch(*batch_j).n_iter)
    pivots = int(counts.max())
    case = f"batch {batch} x n=m={n}"
    add(
        case,
        "densax",
        "float64",
        time_fn(emd_batch, *batch_j, repeat=repeat),
        size=n,
        n_iter=pivots,
        note=f"one jit(vmap(ot.emd)) call; pivots: median {np.median(counts):.0f}, "
        f"max {pivots}",
    )

    add(
        case,
        "pot loop (emd2)",
        "float64",
        time_fn(pot_loop, xs, ys, as_, bs, repeat=repeat),
        size=n,
    )
    add_floors(add, repeat, case, pivots, n, batch)


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()  # before POT is imported
    records, add = recorder(show)

    print(f"threads: {threads}")
    one_problem(add, 200 if args.quick else 1000, args.repeat)
    batch_of_problems(add, *((16, 32) if args.quick else (256, 128)), args.repeat)
    write_results("ot_exact_floor", records, args, threads)


if __name__ == "__main__":
    main()
