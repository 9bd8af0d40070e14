"""Kernel density estimation: densax vs SciPy, scikit-learn and jax.scipy.

n_train = n_query = 20 000 (2 000 with --quick), d = 2 and 8, float32 and
float64, gaussian kernel, Scott's bandwidth. The data are whitened so that
their covariance is exactly the identity: SciPy's and jax.scipy's Scott
covariance is then ``factor^2 I``, the same KDE as scikit-learn's scalar
``bandwidth=factor`` and densax's scalar ``h`` (densax's ``[d, d]`` path runs
too, as ``densax-H``). Every time has beside it the max abs error in
log-density against an exact float64 reference (direct differences and
logsumexp in NumPy), and the planned peak memory (XLA's memory analysis for
JAX, ``tracemalloc`` for NumPy-based peers). The gradient benchmark times
d sum_i log p(x_i) / dh: densax (custom JVP, blocked), jax.scipy (autodiff
through its dense kernel matrix) and SciPy central differences. Separate child
processes measure the whole-process peak RSS of densax's forward and gradient
at d = 8. Peers whose planned memory exceeds ``--peer-memory-gb`` run on a
slice of the queries and their time is scaled (noted in the record).
"""

import argparse
import functools
import json
import resource
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    host_peak_bytes,
    jax_memory_bytes,
    limit_peer_threads,
    parse_args,
    record,
    time_fn,
    write_results,
)

jax.config.update("jax_enable_x64", True)

from densax import kde  # noqa: E402


def log_density(x, y, h):
    """The KDE of ``y`` at bandwidth ``h`` (set-up included), at the queries ``x``."""
    return kde.log_prob(kde.fit(y, bandwidth=h, validate=False), x)


def make_data(n, d, seed):
    """Train and query points from a 3-component mixture, whitened (float64)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.5, (3, d))
    scales = rng.uniform(0.5, 1.5, (3, d))

    def draw(size):
        k = rng.integers(0, 3, size)
        return centres[k] + scales[k] * rng.standard_normal((size, d))

    data, queries = draw(n), draw(n)
    mean = data.mean(0)
    chol = np.linalg.cholesky(np.cov(data.T))
    whiten = lambda a: np.linalg.solve(chol, (a - mean).T).T
    return whiten(data), whiten(queries)


@functools.cache
def reference_case(n, d):
    """Data, queries, h and their exact reference, computed once per (n, d)."""
    data, queries = make_data(n, d, seed=d)
    h = float(n ** (-1.0 / (d + 4)))  # Scott's factor; data covariance is I
    return data, queries, h, *exact_reference(queries, data, h)


def exact_reference(queries, data, h, chunk=256):
    """Exact float64 log p(x_i) and d/dh sum_i log p(x_i) (direct differences)."""
    n, d = data.shape
    log_norm = -np.log(n) - d * np.log(h) - 0.5 * d * np.log(2 * np.pi)
    logp, grad = np.empty(len(queries)), 0.0
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sq = np.zeros((len(q), n))
        for k in range(d):
            sq += (q[:, k, None] - data[None, :, k]) ** 2
        s = -0.5 * sq / h**2
        top = s.max(axis=1, keepdims=True)
        e = np.exp(s - top)
        total = e.sum(axis=1)
        logp[start : start + chunk] = top[:, 0] + np.log(total) + log_norm
        # d log p / dh = E_P[|x - x_j|^2] / h^3 - d / h.
        grad += np.sum((e * sq).sum(axis=1) / total) / h**3 - len(q) * d / h
    return logp, grad


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


def planned_mb(fn, *args):
    nbytes = jax_memory_bytes(fn, *args)
    return None if nbytes is None else nbytes / 1e6


def subset_for_memory(fn, queries, data, *args, limit_gb, copies):
    """Largest query slice (m / 2^k) that fits ``limit_gb``.

    Both XLA's plan and the dense ``[d, n, m]`` difference arrays of
    ``jax.scipy.stats.gaussian_kde`` (``copies`` of them alive at once) must
    fit: the plan alone has under-reported the d=8 peak (killed at 24 GB).
    """
    m = len(queries)
    n, d = data.shape
    while m > 1:
        dense_mb = copies * d * n * m * queries.dtype.itemsize / 1e6
        mb = planned_mb(fn, queries[:m], data, *args)
        if max(mb or 0.0, dense_mb) <= limit_gb * 1e3:
            return m, mb
        m //= 2
    return m, None


def child_rss(mode, d, dtype, n):
    """Runs densax's forward or gradient in a fresh process; its peak RSS (MB)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(d), dtype, str(n)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb():
    """This process's peak resident set in MB (VmHWM, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def run_child(mode, d, dtype, n):
    data, queries = make_data(n, d, seed=d)
    data, queries = jnp.asarray(data, dtype), jnp.asarray(queries, dtype)
    h = float(n ** (-1.0 / (d + 4)))
    before = peak_rss_mb()
    if mode == "forward":
        fn = jax.jit(lambda h, x, y: log_density(x, y, h))
    else:
        fn = jax.jit(jax.grad(lambda h, x, y: jnp.sum(log_density(x, y, h))))
    jax.block_until_ready(fn(jnp.asarray(h, dtype), queries, data))
    after = peak_rss_mb()
    print(json.dumps({"before_mb": before, "peak_mb": after}))


def bench_case(n, d, dtype, args, records):
    import scipy.stats
    from jax.scipy.stats import gaussian_kde as jax_gaussian_kde
    from sklearn.neighbors import KernelDensity

    data64, queries64, h, ref_logp, ref_grad = reference_case(n, d)
    case = f"n=m={n} d={d}"
    data, queries = jnp.asarray(data64, dtype), jnp.asarray(queries64, dtype)
    data_np, queries_np = np.asarray(data), np.asarray(queries)
    repeat = args.repeat

    # densax, scalar h and the [d, d] matrix path.
    density = jax.jit(lambda x, y, h: log_density(x, y, h))
    out = density(queries, data, h)
    records.append(
        record(
            case,
            "densax",
            dtype,
            time_fn(density, queries, data, h, repeat=repeat),
            accuracy={"max_abs_err": max_err(out, ref_logp)},
            size=n,
            peak_mb=planned_mb(density, queries, data, h),
        )
    )
    cov = jnp.asarray(h**2 * np.eye(d), dtype)
    out = density(queries, data, cov)
    records.append(
        record(
            case,
            "densax-H",
            dtype,
            time_fn(density, queries, data, cov, repeat=repeat),
            accuracy={"max_abs_err": max_err(out, ref_logp)},
            size=n,
            peak_mb=planned_mb(density, queries, data, cov),
        )
    )

    # SciPy (computes in float64 whatever the input dtype).
    scipy_kde = scipy.stats.gaussian_kde(data_np.T)
    out = scipy_kde.logpdf(queries_np.T)
    records.append(
        record(
            case,
            "scipy",
            dtype,
            time_fn(scipy_kde.logpdf, queries_np.T, repeat=1, budget_s=1),
            accuracy={"max_abs_err": max_err(out, ref_logp)},
            size=n,
            peak_mb=host_peak_bytes(scipy_kde.logpdf, queries_np.T) / 1e6,
            note=f"bandwidth factor {scipy_kde.factor:.4f} (h={h:.4f})",
        )
    )

    # scikit-learn, exact tree traversal (rtol = atol = 0), float64 inside.
    sk = KernelDensity(bandwidth=h, algorithm="kd_tree", rtol=0, atol=0).fit(data_np)
    out = sk.score_samples(queries_np)
    records.append(
        record(
            case,
            "sklearn",
            dtype,
            time_fn(sk.score_samples, queries_np, repeat=1, budget_s=1),
            accuracy={"max_abs_err": max_err(out, ref_logp)},
            size=n,
            peak_mb=host_peak_bytes(sk.score_samples, queries_np) / 1e6,
        )
    )

    # jax.scipy.stats.gaussian_kde: a dense [m, n] kernel matrix.
    jsp = jax.jit(lambda x, y: jax_gaussian_kde(y.T).logpdf(x.T))
    m_sub, mb = subset_for_memory(
        jsp, queries, data, limit_gb=args.peer_memory_gb, copies=3
    )
    timing = time_fn(jsp, queries[:m_sub], data, repeat=repeat)
    note = None
    if m_sub < n:
        timing = {
            k: v * n / m_sub if k.endswith("_s") else v for k, v in timing.items()
        }
        note = (
            f"timed on {m_sub} queries x {n // m_sub} (its dense arrays for all "
            f"queries exceed --peer-memory-gb {args.peer_memory_gb})"
        )
    out = jsp(queries[:m_sub], data)
    records.append(
        record(
            case,
            "jax.scipy",
            dtype,
            timing,
            accuracy={"max_abs_err": max_err(out, ref_logp[:m_sub])},
            size=n,
            peak_mb=mb,
            note=note,
        )
    )

    # Gradient d/dh sum_i log p(x_i).
    grad_case = f"{case} d/dh"
    unit = "per gradient"

    def rel(g):
        return {"rel_err": abs(float(g) - ref_grad) / abs(ref_grad)}

    grad = jax.jit(jax.grad(lambda h, x, y: jnp.sum(log_density(x, y, h))))
    h_arr = jnp.asarray(h, dtype)
    records.append(
        record(
            grad_case,
            "densax",
            dtype,
            time_fn(grad, h_arr, queries, data, repeat=repeat),
            accuracy=rel(grad(h_arr, queries, data)),
            unit=unit,
            size=n,
            peak_mb=planned_mb(grad, h_arr, queries, data),
        )
    )
    jsp_grad = jax.jit(
        jax.grad(
            lambda f, x, y: jnp.sum(jax_gaussian_kde(y.T, bw_method=f).logpdf(x.T))
        )
    )
    m_sub, mb = subset_for_memory(
        lambda x, y, f: jsp_grad(f, x, y),
        queries,
        data,
        h_arr,
        limit_gb=args.peer_memory_gb,
        copies=6,
    )
    timing = time_fn(jsp_grad, h_arr, queries[:m_sub], data, repeat=repeat)
    g = jsp_grad(h_arr, queries[:m_sub], data)
    note, accuracy = None, rel(g)
    if m_sub < n:
        timing = {
            k: v * n / m_sub if k.endswith("_s") else v for k, v in timing.items()
        }
        note = f"timed on {m_sub} queries x {n // m_sub} (memory)"
        accuracy = {"rel_err": None}
    records.append(
        record(
            grad_case,
            "jax.scipy",
            dtype,
            timing,
            accuracy=accuracy,
            unit=unit,
            size=n,
            peak_mb=mb,
            note=note,
        )
    )
    step = 1e-5 * h

    def central_difference():
        plus = scipy.stats.gaussian_kde(data_np.T, bw_method=h + step)
        minus = scipy.stats.gaussian_kde(data_np.T, bw_method=h - step)
        return (
            np.sum(plus.logpdf(queries_np.T)) - np.sum(minus.logpdf(queries_np.T))
        ) / (2 * step)

    records.append(
        record(
            grad_case,
            "scipy-fd",
            dtype,
            time_fn(central_difference, repeat=1, budget_s=1),
            accuracy=rel(central_difference()),
            unit=unit,
            size=n,
            note="central difference, step 1e-5 h",
        )
    )


def main():
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        mode, d, dtype, n = sys.argv[i + 1 : i + 5]
        run_child(mode, int(d), dtype, int(n))
        return
    parser_args = [a for a in sys.argv[1:]]
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--peer-memory-gb", type=float, default=4.0)
    known, rest = extra.parse_known_args(parser_args)
    args = parse_args(__doc__, rest)
    args.peer_memory_gb = known.peer_memory_gb
    threads = limit_peer_threads()
    print("threads:", threads)
    n = 2000 if args.quick else 20000
    records = []
    for d in (2, 8):
        for dtype in ("float32", "float64"):
            bench_case(n, d, dtype, args, records)
            print(records[-1]["case"], dtype, "done", flush=True)
    for mode in ("forward", "gradient"):
        for dtype in ("float32", "float64"):
            rss = child_rss(mode, 8, dtype, n)
            records.append(
                record(
                    f"n=m={n} d=8 process RSS ({mode})",
                    "densax",
                    dtype,
                    None,
                    size=n,
                    peak_mb=rss["peak_mb"],
                    note=f"whole process incl. compile; {rss['before_mb']:.0f} MB "
                    "after imports and data",
                )
            )
    write_results("kde", records, args, threads)


if __name__ == "__main__":
    main()
