"""Exact discrete OT: densax's network simplex against POT and SciPy.

Three parts, float64, 2D points, squared Euclidean cost, the same data for
every implementation in this process (warm timings, cost matrix included):

1. ``emd``: one weighted problem (random weights) at n = m = 500 ... 4000,
   densax ``ot.emd`` (jitted) against POT's C++ ``ot.emd2``. Accuracy: the
   cost's relative error against POT's, and densax's own certificate (gap,
   dual infeasibility).
2. ``assignment``: uniform square problems at the same n, densax
   ``ot.assignment`` against ``scipy.optimize.linear_sum_assignment``; the
   accuracy is the relative difference of the assignment totals.
3. ``batch``: 256 independent weighted problems of n = m = 128, one
   ``jit(vmap(emd2))`` call against a Python loop over POT's ``emd2``.

Usage: ``python benchmarks/bench_ot_exact.py [--quick]``.
"""

import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    limit_peer_threads,
    parse_args,
    recorder,
    time_fn,
    write_results,
)

from densax import ot  # noqa: E402


def show(r):
    t = r["time_s"]
    print(
        f"  {r['case']:<22} {r['impl']:<28} "
        f"{'-' if t is None else f'{t * 1e3:10.2f} ms'}  {r['accuracy']} "
        f"{r.get('n_iter', '')}",
        flush=True,
    )


@jax.jit
def densax_emd(x, y, a, b):
    return ot.emd(x, y, a=a, b=b, validate=False)


@jax.jit
def densax_assignment(x, y):
    return ot.assignment(x, y, validate=False)


@jax.jit
def densax_batch(x, y, a, b):
    return jax.vmap(lambda *p: ot.emd2(p[0], p[1], a=p[2], b=p[3], validate=False))(
        x, y, a, b
    )


def emd_cases(add, sizes, repeat):
    """[1] one weighted problem per size: ``ot.emd`` against POT's ``emd2``."""
    from _ot_exact_data import pot_emd2, problem

    print("\n[1] one weighted problem, float64")
    for n in sizes:
        x, y, a, b = problem(n, n)
        args_j = [jnp.asarray(v) for v in (x, y, a, b)]
        rep = repeat if n <= 1000 else 1
        t_pot = time_fn(pot_emd2, x, y, a, b, repeat=rep)
        ref = pot_emd2(x, y, a, b)
        t_dx = time_fn(densax_emd, *args_j, repeat=rep)
        out = densax_emd(*args_j)
        case = f"emd n=m={n}"
        add(
            case,
            "densax",
            "float64",
            t_dx,
            size=n,
            n_iter=int(out.n_iter),
            accuracy={
                "rel_err": abs(float(out.cost) - ref) / ref,
                "gap": float(out.gap),
                "dual_infeas": float(out.dual_infeasibility),
            },
            note=f"converged={bool(out.converged)}",
        )
        add(case, "pot (emd2, C++)", "float64", t_pot, size=n)


def assignment_cases(add, sizes, repeat):
    """[2] uniform square problems: ``ot.assignment`` against SciPy."""
    import scipy.optimize
    import scipy.spatial.distance
    from _ot_exact_data import problem

    def scipy_assignment(x, y):
        cost = scipy.spatial.distance.cdist(x, y, "sqeuclidean")
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        return cost[rows, cols].sum()

    print("\n[2] uniform square assignment, float64")
    for n in sizes:
        x, y, _, _ = problem(n + 1, n, uniform=True)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        rep = repeat if n <= 1000 else 1
        t_sp = time_fn(scipy_assignment, x, y, repeat=rep)
        ref = scipy_assignment(x, y)
        t_dx = time_fn(densax_assignment, xj, yj, repeat=rep)
        out = densax_assignment(xj, yj)
        case = f"assignment n={n}"
        add(
            case,
            "densax",
            "float64",
            t_dx,
            size=n,
            accuracy={
                "rel_err": abs(float(out.cost) - ref) / ref,
                "gap": float(out.gap),
            },
            note=f"converged={bool(out.converged)}",
        )
        add(case, "scipy (linear_sum_assignment)", "float64", t_sp, size=n)


def batch_cases(add, batch, n, repeat):
    """[3] ``batch`` problems of ``n`` points: one ``jit(vmap)`` call, POT's loop."""
    from _ot_exact_data import batch_problems, pot_loop

    print(f"\n[3] {batch} independent weighted problems of n=m={n}, float64")
    xs, ys, as_, bs = batch_problems(batch, n)
    t_pot = time_fn(pot_loop, xs, ys, as_, bs, repeat=repeat)
    refs = np.array(pot_loop(xs, ys, as_, bs))
    batch_j = [jnp.asarray(v) for v in (xs, ys, as_, bs)]
    t_dx = time_fn(densax_batch, *batch_j, repeat=repeat)
    vals = np.asarray(densax_batch(*batch_j))
    case = f"batch {batch} x n=m={n}"
    add(
        case,
        "densax",
        "float64",
        t_dx,
        size=n,
        note="one jit(vmap(emd2)) call",
        accuracy={"max_rel_err": float(np.max(np.abs(vals - refs) / refs))},
    )
    add(case, "pot loop (emd2)", "float64", t_pot, size=n)


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()  # before the peers (POT, SciPy) are imported
    records, add = recorder(show)

    sizes = [100, 200] if args.quick else [500, 1000, 2000, 4000]
    print(f"threads: {threads}")
    emd_cases(add, sizes, args.repeat)
    assignment_cases(add, sizes, args.repeat)
    batch_cases(add, *((16, 32) if args.quick else (256, 128)), args.repeat)
    write_results("ot_exact", records, args, threads)


if __name__ == "__main__":
    main()
