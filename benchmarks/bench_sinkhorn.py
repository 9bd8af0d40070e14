"""Sinkhorn benchmark: densax vs ott-jax (dense, log domain) vs POT.

Cases: n = m = 4096 points, d = 2 and 16 (x ~ N(0, I), y ~ N(1, I)),
epsilon = 0.1 and 0.01 x the mean cost, squared Euclidean cost, float32 and
float64. Every solver stops at an L1 marginal error of 1e-3:

* densax: ``sinkhorn(x, y, epsilon=eps, threshold=1e-3)`` with its defaults
  (epsilon-scaling, adaptive over-relaxation, ``block_size="auto"``, which is
  online at this size) and, for comparison, ``block_size=None`` (dense);
* ott-jax 0.6: ``linear.solve(PointCloud(x, y, epsilon=eps), threshold=1e-3)``
  (dense point cloud, log domain, its default ``inner_iterations=10``);
* POT: ``ot.sinkhorn`` (``method="sinkhorn"``, scaling domain) and
  ``method="sinkhorn_log"``. POT tests an L2 error every 10 iterations, so it
  is run for exactly the number of plain Sinkhorn iterations that reach an L1
  error of 1e-3 (the same iterations as ott-jax's), with ``stopThr=0``.

Accuracy: each implementation's plan is rebuilt in float64 (from its
potentials, or POT's plan), then ``<P, C>`` and the L1 marginal error are
computed in float64; ``cost_rel_err`` is against a float64 densax solve at
threshold 1e-8 (densax agrees with ott-jax and POT to 1e-10 in the tests).

Also: the gradient of the entropic cost w.r.t. ``x`` (densax's envelope
gradient vs ott-jax's default, float32/float64), and the online mode at
n = m = 10^5, d = 3 (a fixed number of iterations; per-iteration time and
memory: XLA's planned peak and the growth of the process's peak RSS), beside
dense and online per-iteration times at 4096. ott-jax's own online mode
(``batch_size``) is tried and its error recorded.

JAX runs jitted, timed after a warm-up; NumPy peers (POT) have no
compilation and are timed once (they take up to minutes).
"""

import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    jax_memory_bytes,
    limit_peer_threads,
    parse_args,
    record,
    time_fn,
    write_results,
)

import densax

THRESHOLD = 1e-3


def _cost64(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2.0 * x @ y.T).clip(
        min=0.0
    )


def _mean_cost(x, y):
    """Mean squared distance over all pairs, in O((n + m) d)."""
    return float(x.var(0).sum() + y.var(0).sum() + np.sum((x.mean(0) - y.mean(0)) ** 2))


def _plan_stats(plan, cost, ref_cost):
    n, m = plan.shape
    err = np.abs(plan.sum(1) - 1 / n).sum() + np.abs(plan.sum(0) - 1 / m).sum()
    tc = float(np.sum(plan * cost))
    if not np.isfinite(tc):
        return {"cost_rel_err": float("nan"), "l1_marginal_err": float(err)}
    return {
        "cost_rel_err": abs(tc - ref_cost) / abs(ref_cost),
        "l1_marginal_err": float(err),
    }


def _plan_from_potentials(f, g, cost, eps):
    f = np.asarray(f, np.float64)
    g = np.asarray(g, np.float64)
    return np.exp((f[:, None] + g[None, :] - cost) / float(eps))


def _time_once(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    t = time.perf_counter() - t0
    return {"time_s": t, "min_s": t, "n_runs": 1, "first_s": t}, out


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 1.0


def _dtype_name(dtype):
    return np.dtype(dtype).name


def _solver_cases(args, records, sizes, dims, rels):
    import ot
    from ott.geometry import pointcloud
    from ott.solvers import linear

    for n in sizes:
        for d in dims:
            x64, y64 = _data(n, d)
            cost = _cost64(x64, y64)
            mean_cost = float(cost.mean())
            for rel in rels:
                eps = rel * mean_cost
                with jax.enable_x64(True):
                    ref = densax.ot.sinkhorn(
                        x64, y64, epsilon=eps, threshold=1e-8, max_iterations=20000
                    )
                    ref_plan = _plan_from_potentials(ref.f, ref.g, cost, eps)
                    ref_cost = float(np.sum(ref_plan * cost))
                del ref_plan
                case = f"n={n} d={d} eps={rel}x mean cost"
                for dtype in (np.float32, np.float64):
                    with jax.enable_x64(dtype == np.float64):
                        _one_case(
                            args,
                            records,
                            case,
                            x64,
                            y64,
                            cost,
                            eps,
                            ref_cost,
                            dtype,
                            ot,
                            pointcloud,
                            linear,
                        )


def _one_case(
    args, records, case, x64, y64, cost, eps, ref_cost, dtype, ot, pointcloud, linear
):
    name = _dtype_name(dtype)
    x, y = jnp.asarray(x64, dtype), jnp.asarray(y64, dtype)
    eps_a = jnp.asarray(eps, dtype)
    n = x.shape[0]

    for impl, block in (("densax", "auto"), ("densax dense", None)):
        fn = jax.jit(
            lambda x, y, e, block=block: densax.ot.sinkhorn(
                x, y, epsilon=e, threshold=THRESHOLD, block_size=block
            )
        )
        timing = time_fn(fn, x, y, eps_a, repeat=args.repeat)
        out = fn(x, y, eps_a)
        acc = _plan_stats(
            _plan_from_potentials(out.f, out.g, cost, eps), cost, ref_cost
        )
        records.append(
            record(
                case,
                impl,
                name,
                timing,
                accuracy=acc,
                size=n,
                n_iter=int(out.n_iter),
                converged=bool(out.converged),
            )
        )
        print(
            f"{case} {name} {impl}: {timing['time_s']:.3f}s it={int(out.n_iter)} {acc}"
        )

    def ott_solve(x, y, e):
        geom = pointcloud.PointCloud(x, y, epsilon=e)
        return linear.solve(geom, threshold=THRESHOLD, max_iterations=5000)

    ott_fn = jax.jit(ott_solve)
    timing = time_fn(ott_fn, x, y, eps_a, repeat=args.repeat)
    out = ott_fn(x, y, eps_a)
    acc = _plan_stats(_plan_from_potentials(out.f, out.g, cost, eps), cost, ref_cost)
    records.append(
        record(
            case,
            "ott-jax",
            name,
            timing,
            accuracy=acc,
            size=n,
            n_iter=int(out.n_iters),
            converged=bool(out.converged),
        )
    )
    print(f"{case} {name} ott: {timing['time_s']:.3f}s it={int(out.n_iters)} {acc}")

    # POT: as many iterations as plain Sinkhorn needs to reach the threshold.
    plain = densax.ot.sinkhorn(
        x,
        y,
        epsilon=eps_a,
        threshold=THRESHOLD,
        relaxation=1.0,
        epsilon_scaling=None,
        max_iterations=5000,
    )
    n_plain = int(plain.n_iter)
    a = np.full(n, 1.0 / n, dtype)
    m_cost = cost.astype(dtype)
    for impl, method in (
        ("POT sinkhorn", "sinkhorn"),
        ("POT sinkhorn_log", "sinkhorn_log"),
    ):
        timing, plan = _time_once(
            lambda method=method: ot.sinkhorn(
                a,
                a,
                m_cost,
                dtype(eps),
                method=method,
                numItermax=n_plain,
                stopThr=0.0,
            )
        )
        acc = _plan_stats(np.asarray(plan, np.float64), cost, ref_cost)
        note = None if np.isfinite(acc["cost_rel_err"]) else "kernel underflows (NaN)"
        records.append(
            record(
                case,
                impl,
                name,
                timing,
                accuracy=acc,
                size=n,
                n_iter=n_plain,
                note=note,
            )
        )
        print(f"{case} {name} {impl}: {timing['time_s']:.3f}s {acc}")


def _gradient_cases(args, records, n, d, rel):
    from ott.geometry import pointcloud
    from ott.solvers import linear

    x64, y64 = _data(n, d, seed=1)
    eps = rel * float(_cost64(x64, y64).mean())
    with jax.enable_x64(True):
        ref = np.asarray(
            jax.grad(
                lambda x: (
                    densax.ot.sinkhorn(x, y64, epsilon=eps, threshold=1e-8).reg_cost
                )
            )(jnp.asarray(x64))
        )
    case = f"grad reg_cost wrt x, n={n} d={d} eps={rel}x mean cost"
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            x, y = jnp.asarray(x64, dtype), jnp.asarray(y64, dtype)
            e = jnp.asarray(eps, dtype)
            fns = {
                "densax": jax.jit(
                    jax.grad(
                        lambda x, y, e: (
                            densax.ot.sinkhorn(
                                x, y, epsilon=e, threshold=THRESHOLD
                            ).reg_cost
                        )
                    )
                ),
                "ott-jax": jax.jit(
                    jax.grad(
                        lambda x, y, e: (
                            linear.solve(
                                pointcloud.PointCloud(x, y, epsilon=e),
                                threshold=THRESHOLD,
                            ).reg_ot_cost
                        )
                    )
                ),
            }
            for impl, fn in fns.items():
                timing = time_fn(fn, x, y, e, repeat=args.repeat)
                g = np.asarray(fn(x, y, e), np.float64)
                acc = {
                    "grad_rel_err": float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
                }
                records.append(
                    record(
                        case,
                        impl,
                        _dtype_name(dtype),
                        timing,
                        accuracy=acc,
                        unit="per gradient",
                        size=n,
                    )
                )
                print(f"{case} {dtype.__name__} {impl}: {timing['time_s']:.3f}s {acc}")


def _per_iteration(fn_k, x, y, iters, repeat):
    """Per-iteration time: the difference of two fixed iteration counts."""
    lo, hi = iters
    t_lo = time_fn(fn_k(lo), x, y, repeat=repeat)["min_s"]
    t_hi = time_fn(fn_k(hi), x, y, repeat=repeat)["min_s"]
    per = max(t_hi - t_lo, 1e-9) / (hi - lo)
    return {"time_s": per, "min_s": per, "n_runs": repeat, "first_s": t_lo}


def _online_cases(args, records, n_big, n_dense, d):
    from ott.geometry import pointcloud
    from ott.solvers import linear

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def fixed(block, k):
        return jax.jit(
            lambda x, y: (
                densax.ot.sinkhorn(
                    x,
                    y,
                    epsilon=eps,
                    block_size=block,
                    fixed_iterations=True,
                    max_iterations=k,
                ).reg_cost
            )
        )

    x64, y64 = _data(n_big, d, seed=2)
    eps = 0.1 * _mean_cost(x64, y64)
    x, y = jnp.asarray(x64, jnp.float32), jnp.asarray(y64, jnp.float32)
    k_lo, k_hi = (2, 4) if args.quick else (3, 8)
    timing = _per_iteration(lambda k: fixed("auto", k), x, y, (k_lo, k_hi), 1)
    planned = jax_memory_bytes(fixed("auto", k_hi), x, y)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    entries = n_big * n_big
    records.append(
        record(
            f"online n=m={n_big} d={d}",
            "densax",
            "float32",
            timing,
            unit="per iteration",
            size=n_big,
            peak_mb=(planned or 0) / 2**20,
            rss_growth_mb=rss / 2**20,
            ns_per_entry=timing["time_s"] / entries * 1e9,
        )
    )
    print(f"online {n_big}: {timing['time_s']:.3f}s/it planned {planned} rss +{rss}")
    try:
        geom = pointcloud.PointCloud(x[:1000], y[:1000], epsilon=eps, batch_size=256)
        linear.solve(geom, threshold=THRESHOLD).reg_ot_cost.block_until_ready()
        note = "ran"
    except Exception as err:  # ott-jax 0.6 + jax 0.10: AttributeError (#700)
        note = f"{type(err).__name__}: {err}"[:120]
    records.append(
        record(
            f"online n=m={n_big} d={d}",
            "ott-jax (batch_size=256)",
            "float32",
            None,
            unit="per iteration",
            size=n_big,
            note=note,
        )
    )
    x64, y64 = _data(n_dense, d, seed=2)
    x, y = jnp.asarray(x64, jnp.float32), jnp.asarray(y64, jnp.float32)
    for impl, block in (("densax", "auto"), ("densax dense", None)):
        timing = _per_iteration(
            lambda k, b=block: fixed(b, k), x, y, (10, 30), args.repeat
        )
        records.append(
            record(
                f"per iteration n=m={n_dense} d={d}",
                impl,
                "float32",
                timing,
                unit="per iteration",
                size=n_dense,
                peak_mb=(jax_memory_bytes(fixed(block, 10), x, y) or 0) / 2**20,
                ns_per_entry=timing["time_s"] / n_dense**2 * 1e9,
            )
        )
        print(f"per-iteration {n_dense} {impl}: {timing['time_s'] * 1e3:.2f} ms")


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()
    records = []
    if args.quick:
        _online_cases(args, records, n_big=10_000, n_dense=1024, d=3)
        _solver_cases(args, records, sizes=(512,), dims=(2,), rels=(0.1, 0.01))
        _gradient_cases(args, records, n=512, d=2, rel=0.1)
    else:
        _online_cases(args, records, n_big=100_000, n_dense=4096, d=3)
        _solver_cases(args, records, sizes=(4096,), dims=(2, 16), rels=(0.1, 0.01))
        _gradient_cases(args, records, n=4096, d=2, rel=0.1)
    write_results("sinkhorn", records, args, threads)


if __name__ == "__main__":
    main()
