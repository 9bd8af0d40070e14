"""Binned KDE on a grid: densax (linear binning + FFT) vs KDEpy's FFTKDE.

Three cases, the plotting workloads of issue 24: 1D with 10^6 and 10^7 points
on a 4,096-node grid, 2D with 10^6 points on 256 x 256 (``--quick``: 10^5
points, 1,024 and 64 x 64 nodes). Data: a two-component gaussian mixture;
gaussian kernel, Silverman's scalar bandwidth. Both libraries evaluate the
density at the same nodes (densax's automatic grid: the data's range widened
by the kernel's cut-off). densax's time includes everything from the data to
the grid densities (bounds, binning, FFT, log); KDEpy's is ``fit`` +
``evaluate`` (NumPy, float64 whatever the input). Accuracy against densax's
exact float64 ``kde.log_prob`` at a subsample of nodes: the max relative
error where the exact density is above 1e-3 of its maximum. ``densax-exact``
is the exact evaluation's time scaled from the subsample to the whole grid.
Every record keeps the 1-minute load average: on a shared machine, compare
only the rows of one case and dtype (timed in the same run, interleaved).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from _common import limit_peer_threads, parse_args, record, time_fn, write_results

jax.config.update("jax_enable_x64", True)

from densax import _binned, kde  # noqa: E402


def make_data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.random(n) < 0.3
    x = rng.standard_normal((n, d))
    return np.where(k[:, None], 0.5 * x + 2.0, x - 0.5)


def silverman(x):
    n, d = x.shape
    sigma = float(np.mean(np.std(x, axis=0)))
    return sigma * (4 / (d + 2) / n) ** (1 / (d + 4))


def rel_error(p, exact):
    keep = exact >= 1e-3 * exact.max()
    return float(np.max(np.abs(p[keep] - exact[keep]) / exact[keep]))


def bench_case(n, shape, dtype, args, records, subsample):
    d = len(shape)
    x64 = make_data(n, d)
    h = silverman(x64)
    x = jnp.asarray(x64, dtype)
    case = f"{d}D n={n:.0e} grid {'x'.join(map(str, shape))}"
    size = float(n)

    grid = jax.jit(lambda x, h: _binned.grid_log_density(x, h, shape))
    logp, lo, hi = grid(x, jnp.asarray(h, dtype))
    lo, hi = (jnp.asarray(b, jnp.float64) for b in (lo, hi))  # exact node spacing
    nodes = np.array(_binned.grid_points(lo, hi, shape).reshape(-1, d))
    ours = np.exp(np.asarray(logp, np.float64)).ravel()

    # Reference: exact float64 KDE at a subsample of nodes.
    pick = np.linspace(0, len(nodes) - 1, subsample).astype(int)
    exact_fn = jax.jit(
        lambda q, data: kde.log_prob(kde.fit(data, bandwidth=h, validate=False), q)
    )
    data64 = jnp.asarray(x64)
    exact_timing = time_fn(exact_fn, jnp.asarray(nodes[pick]), data64, repeat=1)
    exact = np.exp(np.asarray(exact_fn(jnp.asarray(nodes[pick]), data64)))
    scale = len(nodes) / subsample

    timing = time_fn(grid, x, jnp.asarray(h, dtype), repeat=args.repeat)
    records.append(
        record(
            case,
            "densax",
            np.dtype(dtype).name,
            timing,
            accuracy={"max_rel_err": rel_error(ours[pick], exact)},
            size=size,
        )
    )
    try:
        from KDEpy import FFTKDE
    except ImportError:
        records.append(
            record(case, "KDEpy", np.dtype(dtype).name, None, note="not installed")
        )
    else:
        x_np = np.asarray(x)

        def kdepy():
            return FFTKDE(kernel="gaussian", bw=h).fit(x_np).evaluate(nodes)

        theirs = kdepy()
        records.append(
            record(
                case,
                "KDEpy",
                np.dtype(dtype).name,
                time_fn(kdepy, repeat=args.repeat),
                accuracy={"max_rel_err": rel_error(theirs[pick], exact)},
                size=size,
                note="float64 inside",
            )
        )
    if dtype == np.float64:
        exact_full = {k: v * scale for k, v in exact_timing.items() if k != "n_runs"}
        exact_full["n_runs"] = exact_timing["n_runs"]
        records.append(
            record(
                case,
                "densax-exact",
                "float64",
                exact_full,
                size=size,
                note=f"timed on {subsample} nodes, scaled x{scale:.0f}",
            )
        )
    for r in records[-3:]:
        r["load_avg_1min"] = os.getloadavg()[0]  # the machine is shared


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()
    records = []
    if args.quick:
        cases = [(10**5, (1024,), 256), (10**5, (64, 64), 256)]
    else:
        cases = [(10**6, (4096,), 128), (10**7, (4096,), 16), (10**6, (256, 256), 128)]
    for n, shape, sub in cases:
        for dtype in (np.float64, np.float32):
            bench_case(n, shape, dtype, args, records, sub)
            print(records[-1]["case"], "done", flush=True)
    write_results("kde_binned", records, args, threads)


if __name__ == "__main__":
    main()
