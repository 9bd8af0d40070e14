"""Sinkhorn benchmark: densax vs ott-jax (dense, log domain) vs POT.

Cases: n = m = 4096 points, d = 2 and 16 (x ~ N(0, I), y ~ N(1, I)),
epsilon = 0.1 and 0.01 x the mean cost, squared Euclidean cost, float32 and
float64. Every solver stops at an L1 marginal error of 1e-3:

* densax: ``sinkhorn(x, y, epsilon=eps, tol=1e-3)`` with its defaults
  (epsilon-scaling, adaptive over-relaxation, ``storage="auto"``, which is
  online at this size) and, for comparison, ``storage="dense"``;
* ott-jax 0.6: ``linear.solve(PointCloud(x, y, epsilon=eps), threshold=1e-3)``
  (dense point cloud, log domain, its default ``inner_iterations=10``);
* POT: ``ot.sinkhorn`` (``method="sinkhorn"``, scaling domain) and
  ``method="sinkhorn_log"``. POT tests an L2 error every 10 iterations, so it
  is run for exactly ott-jax's number of iterations (the same plain Sinkhorn
  iterations, tested every 10 as well) with ``stopThr=0``.

Accuracy: each implementation's plan is rebuilt in float64 (from its
potentials, or POT's plan), then ``<P, C>`` and the L1 marginal error are
computed in float64; ``cost_rel_err`` is against a float64 densax solve at
threshold 1e-6 (densax agrees with ott-jax and POT to 1e-9 in the tests). A
result whose marginal error exceeds the threshold is marked in ``note``: its
time is not comparable.

Also: the gradient of the entropic cost w.r.t. ``x`` (densax's envelope
gradient vs ott-jax's default), and time per iteration: the online mode at
n = m = 10^5, d = 3 with its memory (XLA's planned peak and the growth of the
process's peak RSS), beside n = m = 4096 with the default (a cached kernel at
this size), online (``storage="online", block_size=256``: no cached kernel,
the 10^5 case's algorithm) and dense. A per-iteration time is the difference
between a run of ``k`` iterations (threshold 0) and one of none (threshold inf)
of the same
compiled solver, divided by ``k``, each the best of its timed runs (two at
n = 10^5, where a run takes seconds).
ott-jax's own online mode (``batch_size``) is tried and its error recorded.

JAX runs jitted, timed after a warm-up; each jitted function is built once and
reused across cases of the same shapes (one compilation per shape and dtype).
POT's ``sinkhorn`` is timed the same way (warm-up, then the median of up to
``--repeat`` calls); ``sinkhorn_log``, at up to minutes a call, once. ``--quick`` runs
n = 512, d = 2 and float32 only (the float64 reference still runs), and the
online mode at n = 10^4.
"""

import functools
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
REF_THRESHOLD = 1e-6


# ---------------------------------------------------------------------------
# Jitted solvers, built once (a new lambda would compile again).


def _storage(block):
    """Storage options of densax for "auto", None (dense) or rows (online)."""
    if block == "auto":
        return dict(storage="auto")
    if block is None:
        return dict(storage="dense")
    return dict(storage="online", block_size=block)


@functools.cache
def _densax_solve(block, max_iter=2000):
    return jax.jit(
        lambda x, y, e, thr: densax.ot.sinkhorn(
            x, y, epsilon=e, tol=thr, max_iter=max_iter, **_storage(block)
        )
    )


@functools.cache
def _densax_grad():
    return jax.jit(
        jax.grad(
            lambda x, y, e, thr: densax.ot.sinkhorn(x, y, epsilon=e, tol=thr).reg_cost
        )
    )


@functools.cache
def _ott_solve():
    from ott.geometry import pointcloud
    from ott.solvers import linear

    return jax.jit(
        lambda x, y, e: linear.solve(
            pointcloud.PointCloud(x, y, epsilon=e),
            threshold=THRESHOLD,
            max_iterations=5000,
        )
    )


@functools.cache
def _ott_grad():
    from ott.geometry import pointcloud
    from ott.solvers import linear

    return jax.jit(
        jax.grad(
            lambda x, y, e: (
                linear.solve(
                    pointcloud.PointCloud(x, y, epsilon=e), threshold=THRESHOLD
                ).reg_ot_cost
            )
        )
    )


@functools.cache
def _densax_iterations(block, k):
    """Plain Sinkhorn, at most ``k`` iterations: ``(reg_cost, n_iter)``."""

    def run(x, y, e, thr):
        out = densax.ot.sinkhorn(
            x,
            y,
            epsilon=e,
            tol=thr,
            max_iter=k,
            epsilon_scaling=None,
            relaxation=1.0,
            **_storage(block),
        )
        return out.reg_cost, out.n_iter

    return jax.jit(run)


# ---------------------------------------------------------------------------
# Accuracy in float64.


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
    rel = abs(tc - ref_cost) / abs(ref_cost) if np.isfinite(tc) else float("nan")
    return {"cost_rel_err": rel, "l1_marginal_err": float(err)}


def _note(acc):
    err = acc["l1_marginal_err"]
    if not np.isfinite(acc["cost_rel_err"]) or not np.isfinite(err):
        return "non-finite plan (kernel underflows)"
    if err > THRESHOLD * 1.01:
        return f"wrong: L1 marginal error {err:.2g} > threshold"
    return None


def _plan_from_potentials(f, g, cost, eps):
    f = np.asarray(f, np.float64)
    g = np.asarray(g, np.float64)
    return np.exp((f[:, None] + g[None, :] - cost) / float(eps))


def _time_once(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    t = time.perf_counter() - t0
    return {"time_s": t, "min_s": t, "n_runs": 1, "first_s": t}, out


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 1.0


# ---------------------------------------------------------------------------
# Solvers at equal threshold.


def _solver_cases(args, records, sizes, dims, rels, dtypes):
    import ot

    for n in sizes:
        for d in dims:
            x64, y64 = _data(n, d)
            cost = _cost64(x64, y64)
            mean_cost = float(cost.mean())
            for rel in rels:
                eps = rel * mean_cost
                with jax.enable_x64(True):
                    ref = _densax_solve("auto", 5000)(x64, y64, eps, REF_THRESHOLD)
                    if not bool(ref.converged):
                        raise RuntimeError(f"reference did not converge: n={n} d={d}")
                    ref_cost = float(
                        np.sum(_plan_from_potentials(ref.f, ref.g, cost, eps) * cost)
                    )
                case = f"n={n} d={d} eps={rel}x mean cost"
                for dtype in dtypes:
                    with jax.enable_x64(dtype == np.float64):
                        _one_case(
                            args,
                            records,
                            case,
                            (x64, y64, cost),
                            eps,
                            ref_cost,
                            dtype,
                            ot,
                        )


def _one_case(args, records, case, data, eps, ref_cost, dtype, ot):
    x64, y64, cost = data
    name = np.dtype(dtype).name
    x, y = jnp.asarray(x64, dtype), jnp.asarray(y64, dtype)
    eps_a = jnp.asarray(eps, dtype)
    n = x.shape[0]

    def add(impl, timing, plan, n_iter, converged=None):
        acc = _plan_stats(plan, cost, ref_cost)
        records.append(
            record(
                case,
                impl,
                name,
                timing,
                accuracy=acc,
                size=n,
                n_iter=n_iter,
                converged=converged,
                note=_note(acc),
            )
        )
        print(f"{case} {name} {impl}: {timing['time_s']:.3f}s it={n_iter} {acc}")

    for impl, block in (("densax", "auto"), ("densax dense", None)):
        fn = _densax_solve(block)
        timing = time_fn(fn, x, y, eps_a, THRESHOLD, repeat=args.repeat)
        out = fn(x, y, eps_a, THRESHOLD)
        plan = _plan_from_potentials(out.f, out.g, cost, eps)
        add(impl, timing, plan, int(out.n_iter), bool(out.converged))

    fn = _ott_solve()
    timing = time_fn(fn, x, y, eps_a, repeat=args.repeat)
    out = fn(x, y, eps_a)
    plan = _plan_from_potentials(out.f, out.g, cost, eps)
    n_ott = int(out.n_iters)
    add("ott-jax", timing, plan, n_ott, bool(out.converged))

    a = np.full(n, 1.0 / n, dtype)
    m_cost = cost.astype(dtype)
    for impl, method in (
        ("POT sinkhorn", "sinkhorn"),
        ("POT sinkhorn_log", "sinkhorn_log"),
    ):

        def pot(method=method):
            return ot.sinkhorn(
                a, a, m_cost, dtype(eps), method=method, numItermax=n_ott, stopThr=0.0
            )

        # sinkhorn_log takes up to minutes a call: timed once.
        if method == "sinkhorn":
            timing, plan = time_fn(pot, repeat=args.repeat), pot()
        else:
            timing, plan = _time_once(pot)
        add(impl, timing, np.asarray(plan, np.float64), n_ott)


def _gradient_cases(args, records, n, d, rel, dtypes):
    x64, y64 = _data(n, d, seed=1)
    eps = rel * _mean_cost(x64, y64)
    with jax.enable_x64(True):
        ref = np.asarray(_densax_grad()(x64, y64, eps, REF_THRESHOLD))
    case = f"grad reg_cost wrt x, n={n} d={d} eps={rel}x mean cost"
    for dtype in dtypes:
        with jax.enable_x64(dtype == np.float64):
            x, y = jnp.asarray(x64, dtype), jnp.asarray(y64, dtype)
            e = jnp.asarray(eps, dtype)
            fns = {
                "densax": (_densax_grad(), (x, y, e, THRESHOLD)),
                "ott-jax": (_ott_grad(), (x, y, e)),
            }
            for impl, (fn, fn_args) in fns.items():
                timing = time_fn(fn, *fn_args, repeat=args.repeat)
                g = np.asarray(fn(*fn_args), np.float64)
                err = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
                records.append(
                    record(
                        case,
                        impl,
                        np.dtype(dtype).name,
                        timing,
                        accuracy={"grad_rel_err": err},
                        unit="per gradient",
                        size=n,
                    )
                )
                print(f"{case} {dtype.__name__} {impl}: {timing['time_s']:.3f}s {err}")


# ---------------------------------------------------------------------------
# Time per iteration and memory: online vs dense.


def _per_iteration(block, k, x, y, eps, repeat):
    """Seconds per iteration from runs of ``k`` and 0 iterations (one compile)."""
    fn = _densax_iterations(block, k)
    if repeat:
        t_none = time_fn(fn, x, y, eps, np.inf, repeat=repeat)["min_s"]
        t_k = time_fn(fn, x, y, eps, 0.0, repeat=repeat)["min_s"]
        n_k = int(fn(x, y, eps, 0.0)[1])
    else:  # large problem: compile once, then the best of two runs of each
        jax.block_until_ready(fn(x, y, eps, np.inf))
        t_none = min(_time_once(fn, x, y, eps, np.inf)[0]["time_s"] for _ in range(2))
        runs = [_time_once(fn, x, y, eps, 0.0) for _ in range(2)]
        t_k, n_k = min(r[0]["time_s"] for r in runs), int(runs[0][1][1])
    per = max(t_k - t_none, 1e-9) / n_k
    timing = {"time_s": per, "min_s": per, "n_runs": repeat or 2, "first_s": t_k}
    return timing, fn


def _online_cases(args, records, n_big, n_dense, d):
    from ott.geometry import pointcloud
    from ott.solvers import linear

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x64, y64 = _data(n_big, d, seed=2)
    eps = np.float32(0.1 * _mean_cost(x64, y64))
    x, y = jnp.asarray(x64, jnp.float32), jnp.asarray(y64, jnp.float32)
    timing, fn = _per_iteration("auto", 4 if args.quick else 5, x, y, eps, 0)
    planned = jax_memory_bytes(fn, x, y, eps, 0.0) or 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    ns = timing["time_s"] / n_big**2 * 1e9
    case = f"online n=m={n_big} d={d}"
    records.append(
        record(
            case,
            "densax",
            "float32",
            timing,
            unit="per iteration",
            size=n_big,
            peak_mb=planned / 2**20,
            rss_growth_mb=rss / 2**20,
            ns_per_entry=ns,
            note=f"{ns:.3f} ns per cost entry; peak RSS growth {rss / 2**20:.0f} MB",
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
            case,
            "ott-jax (batch_size=256)",
            "float32",
            None,
            unit="per iteration",
            size=n_big,
            note=note,
        )
    )
    x64, y64 = _data(n_dense, d, seed=2)
    eps = np.float32(0.1 * _mean_cost(x64, y64))
    x, y = jnp.asarray(x64, jnp.float32), jnp.asarray(y64, jnp.float32)
    for impl, block in (
        ("densax", "auto"),
        ("densax online (block_size=256)", 256),
        ("densax dense", None),
    ):
        timing, fn = _per_iteration(block, 20, x, y, eps, args.repeat)
        ns = timing["time_s"] / n_dense**2 * 1e9
        records.append(
            record(
                f"per iteration n=m={n_dense} d={d}",
                impl,
                "float32",
                timing,
                unit="per iteration",
                size=n_dense,
                peak_mb=(jax_memory_bytes(fn, x, y, eps, 0.0) or 0) / 2**20,
                ns_per_entry=ns,
                note=f"{ns:.3f} ns per cost entry",
            )
        )
        print(f"per-iteration {n_dense} {impl}: {timing['time_s'] * 1e3:.2f} ms")


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()
    records = []
    if args.quick:
        _online_cases(args, records, n_big=10_000, n_dense=1024, d=3)
        _solver_cases(args, records, (512,), (2,), (0.1, 0.01), (np.float32,))
        _gradient_cases(args, records, n=512, d=2, rel=0.1, dtypes=(np.float32,))
    else:
        _online_cases(args, records, n_big=100_000, n_dense=4096, d=3)
        both = (np.float32, np.float64)
        _solver_cases(args, records, (4096,), (2, 16), (0.1, 0.01), both)
        _gradient_cases(args, records, n=4096, d=2, rel=0.1, dtypes=both)
    write_results("sinkhorn", records, args, threads)


if __name__ == "__main__":
    main()
