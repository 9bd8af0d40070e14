"""Gaussian mixture EM: densax vs scikit-learn GaussianMixture vs gmmx.

Every implementation starts from the same initial parameters (k-means++ by
densax, given to scikit-learn as weights_init/means_init/precisions_init and
to gmmx as a GaussianMixtureModelJax) and runs the same fixed number of EM
iterations (tol=0), on the same data, in this process. Reported: time per EM
iteration (a whole fit divided by the iterations, so set-up is included),
the ratio to densax, and the final log-likelihood's distance to the
reference: scikit-learn in float64 from the same start. gmmx supports
float32 only (and full/diag covariances); it has no batched API, so its
batched case is a loop of jitted fits, as is scikit-learn's.

Cases: n=100 000, d=16, K=16 full (float64, float32); n=1 000 000, d=8, K=8
full (float64, float32); 64 independent fits of 50 000 x 15, K=8 full under
``vmap`` (float64, float32). ``--quick``: the same cases at small sizes.

Streaming rows (``gmm_stream.json``; ``--stream-only`` runs just these):
``gmm.fit_stream`` on 10^8 rows x d=8, K=8 full, float32, in chunks of 10^6
rows generated on the fly by a jitted, counter-based function of the chunk
index (:func:`stream_generator`), 3 EM iterations (tol=0) from one start.
Time per 10^6 rows per EM iteration, for: the stream of 10^7 and of 10^8
generated rows (generation included), the 10^8-row stream read from host
memory (a ring of 4 NumPy chunks: the case of chunks read from files), the
generation alone; then, interleaved in 3 rounds (medians), the in-memory
``gmm.fit`` on 10^7 rows (the baseline) and the streams of the same 10^7
rows: generated, from NumPy chunks, and one cached device chunk (EM alone).
The peak resident memory of the process (``resource.getrusage`` maxrss)
after each generated stream, before the in-memory fit, shows that it does
not grow with n. ``--quick``: 2 x 10^5
rows in chunks of 5 x 10^4.
"""

import resource
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    jax_memory_bytes,
    limit_peer_threads,
    parse_args,
    record,
    time_fn,
    write_results,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from densax import gmm

try:
    from gmmx import EMFitter, GaussianMixtureModelJax
except ImportError:  # gmmx is an optional peer
    EMFitter = GaussianMixtureModelJax = None

N_ITER = 10  # EM iterations of every fit (5 with --quick)
FULL = [  # (name, n, d, K, batch)
    ("n=100000 d=16 K=16 full", 100_000, 16, 16, None),
    ("n=1000000 d=8 K=8 full", 1_000_000, 8, 8, None),
    ("64 fits of 50000x15 K=8 full", 50_000, 15, 8, 64),
]
QUICK = [
    ("n=5000 d=16 K=16 full", 5_000, 16, 16, None),
    ("n=20000 d=8 K=8 full", 20_000, 8, 8, None),
    ("4 fits of 2000x15 K=8 full", 2_000, 15, 8, 4),
]


def make_data(rng, n, d, k):
    """A sample of a random GMM with overlapping, anisotropic components."""
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(size=(k, d)) * 2.0 + 3.0
    factors = rng.normal(size=(k, d, d)) / np.sqrt(d) + 0.3 * np.eye(d)
    labels = rng.choice(k, size=n, p=weights)
    z = rng.normal(size=(n, d))
    return means[labels] + np.einsum("ni,nji->nj", z, factors[labels])


def precisions(params):
    u = np.asarray(params.precisions_cholesky, np.float64)
    return u @ np.swapaxes(u, -1, -2)


def sklearn_fit(x, params, n_iter):
    weights = np.asarray(params.weights, x.dtype)
    model = GaussianMixture(
        params.weights.shape[0],
        weights_init=weights / weights.sum(),
        means_init=np.asarray(params.means, x.dtype),
        precisions_init=precisions(params).astype(x.dtype),
        max_iter=n_iter,
        tol=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x)
    return model.lower_bound_


def gmmx_fitter(params, n_iter):
    fitter = EMFitter(max_iter=n_iter, tol=0.0)
    start = GaussianMixtureModelJax.from_squeezed(
        means=np.asarray(params.means, np.float32),
        covariances=np.asarray(params.covariances, np.float32),
        weights=np.asarray(params.weights, np.float32),
    )
    return lambda x: fitter.fit(x, start).log_likelihood


def densax_fit(k, n_iter, batched):
    fit = lambda x, p: gmm.fit(None, x, k, init_params=p, max_iter=n_iter, tol=0.0)
    return jax.jit(jax.vmap(fit) if batched else fit)


def cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def step_breakdown(x, params, repeat):
    """Milliseconds of densax's set-up (cells, features) and of one EM iteration."""
    w = jnp.ones(x.shape[0], x.dtype)
    k = params.weights.shape[0]
    setup = jax.jit(lambda x, w: gmm._engine._blocks_for(x, w, k, "full", None))
    blocks = setup(x, w)
    iteration = jax.jit(lambda b, p: gmm._engine._em_iteration(b, p, 1e-6, None))
    s = time_fn(setup, x, w, repeat=repeat)["time_s"]
    i = time_fn(iteration, blocks, params, repeat=repeat)["time_s"]
    return s * 1e3, i * 1e3


def per_iteration(timing, n_iter):
    out = dict(timing)
    out["time_s"] = timing["time_s"] / n_iter
    out["min_s"] = timing["min_s"] / n_iter
    return out


def run_case(name, n, d, k, batch, dtype, reference, args):
    """Times every implementation on one case and dtype; returns the records."""
    n_iter = 5 if args.quick else N_ITER
    rng = np.random.default_rng(0)
    shape = (n, d) if batch is None else (batch, n, d)
    data = (
        make_data(rng, n, d, k)
        if batch is None
        else np.stack([make_data(rng, n, d, k) for _ in range(batch)])
    )
    with jax.enable_x64(True):  # the initialisation, once, in float64
        keys = jax.random.split(jax.random.key(0), batch or 1)
        init = jax.vmap(lambda key, x: gmm.init(key, x, k))(
            keys, data.reshape((batch or 1, n, d))
        )
        init = jax.tree.map(np.asarray, init)
    inits = [jax.tree.map(lambda a, i=i: a[i], init) for i in range(batch or 1)]
    x = data.astype(dtype)
    size = float(np.prod(shape))
    records = []
    slow = dict(repeat=1, budget_s=1.0)  # peers: one warm-up and one timed call

    # scikit-learn (a loop over datasets when batched).
    xs = [x] if batch is None else list(x)
    result = {}

    def sklearn_all():
        result["sklearn"] = [
            sklearn_fit(xi, p, n_iter) for xi, p in zip(xs, inits, strict=True)
        ]

    timing = time_fn(sklearn_all, **slow)
    if dtype == np.float64:
        reference[name] = np.array(result["sklearn"])
    records.append(("sklearn", timing, result["sklearn"], None))

    # gmmx: float32 only.
    if dtype == np.float32 and EMFitter is not None:
        fitters = [jax.jit(gmmx_fitter(p, n_iter)) for p in inits]

        def gmmx_all():
            result["gmmx"] = [
                f(jnp.asarray(xi)) for f, xi in zip(fitters, xs, strict=True)
            ]
            return result["gmmx"]

        records.append(("gmmx", time_fn(gmmx_all, **slow), result["gmmx"], None))

    # densax: one jitted call (vmap over the datasets when batched).
    with jax.enable_x64(dtype == np.float64):
        fit = densax_fit(k, n_iter, batch is not None)
        xj = jnp.asarray(x)
        p0 = cast(init if batch else inits[0], dtype)
        timing = time_fn(fit, xj, p0, repeat=args.repeat)
        lls = np.atleast_1d(np.asarray(fit(xj, p0).log_likelihood, np.float64))
        extra = {"peak_mb": jax_memory_bytes(fit, xj, p0) / 2**20}
        if not args.quick:  # where the time goes: set-up and one iteration
            x0, q0 = (xj, p0) if batch is None else (xj[0], cast(inits[0], dtype))
            setup_ms, iter_ms = step_breakdown(x0, q0, args.repeat)
            per = f" (one fit of the {batch})" if batch else ""
            extra["note"] = (
                f"set-up {setup_ms:.1f} ms + {iter_ms:.1f} ms per iteration{per}"
            )
    records.append(("densax", timing, lls, extra))

    out = []
    ref = reference[name]
    for impl, timing, lls, extra in records:
        diff = np.abs(np.array(lls, np.float64) - ref)
        accuracy = {
            "ll_abs_diff": float(diff.max()),
            "ll_rel_diff": float((diff / np.abs(ref)).max()),
        }
        out.append(
            record(
                name,
                impl,
                np.dtype(dtype).name,
                per_iteration(timing, n_iter),
                accuracy=accuracy,
                unit="per EM iteration",
                size=size,
                n_iter=n_iter,
                **(extra or {}),
            )
        )
        t = out[-1]["time_s"] * 1e3
        print(
            f"{name:32s} {out[-1]['dtype']:8s} {impl:8s} {t:10.2f} ms/iter  {accuracy}"
        )
    return out


def _fmix32(h):
    """murmur3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def stream_generator(d, k, rows, seed=0):
    """A jitted ``chunk(i) -> [rows, d]``: a Gaussian mixture, rows by counter.

    Counter-based, as the data of a stream would be addressed: uniforms are
    a hash (murmur3's finaliser, twice) of the global index of each number,
    and normals come from them by Box-Muller. Each chunk is a stratified
    sample of the mixture: component ``j`` fills a fixed run of
    ``round(w_j rows)`` rows (EM does not depend on the order of rows), so
    no row is gathered. It generates a chunk about twice as fast as
    ``jax.random`` (threefry) does its normals alone, so that the streamed
    rows measure EM rather than the generator (whose time is its own row).
    """
    if d % 2:
        raise ValueError("d must be even (Box-Muller makes normals in pairs)")
    rng = np.random.default_rng(seed)
    ends = np.round(np.cumsum(rng.dirichlet(np.full(k, 5.0))) * rows).astype(int)
    starts = np.concatenate([[0], ends[:-1]])
    means = jnp.asarray(rng.normal(size=(k, d)) * 2.0 + 3.0, jnp.float32)
    scales = jnp.asarray(rng.uniform(0.3, 1.5, (k, d)), jnp.float32)
    salt = jnp.uint32(_fmix32(np.uint32(seed + 1)))

    @jax.jit
    def chunk(i):
        row = jnp.uint32(i) * jnp.uint32(rows) + jnp.arange(rows, dtype=jnp.uint32)
        index = row[:, None] * jnp.uint32(d) + jnp.arange(d, dtype=jnp.uint32)
        bits = _fmix32(_fmix32(index ^ salt) + jnp.uint32(0x9E3779B9))
        u = ((bits >> 8).astype(jnp.float32) + 0.5) * jnp.float32(2**-24)
        radius = jnp.sqrt(-2 * jnp.log(u[:, : d // 2]))
        angle = 2 * jnp.pi * u[:, d // 2 :]
        noise = jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)], 1)
        parts = [
            means[j] + scales[j] * noise[a:b]
            for j, (a, b) in enumerate(zip(starts, ends, strict=True))
        ]
        return jnp.concatenate(parts)

    return chunk


def maxrss_mb():
    """The process's peak resident memory so far, in MiB (Linux: KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stream(args):
    """The streaming rows: fit_stream vs the in-memory fit, throughput and memory."""
    d, k, n_iter = 8, 8, 3
    if args.quick:
        rows, n_big, n_mem = 50_000, 200_000, 100_000
    else:
        rows, n_big, n_mem = 1_000_000, 100_000_000, 10_000_000
    chunk = stream_generator(d, k, rows)
    params = gmm.init(jax.random.key(1), chunk(0), k)
    opts = dict(init_params=params, max_iter=n_iter, tol=0.0)
    # Compile every step once (two chunks, one iteration).
    gmm.fit_stream(None, chunk, k, n_chunks=2, init_params=params, max_iter=1)
    case = f"d={d} K={k} full, chunks of {rows}"
    unit = "per 1e6 rows per EM iteration"
    records, lls = [], {}

    def row(impl, seconds, n, n_passes, repeat=1, **extra):
        per = float(np.median(seconds)) / (n / 1e6) / n_passes
        best = float(np.min(seconds)) / (n / 1e6) / n_passes
        timing = {"time_s": per, "min_s": best, "repeat": repeat}
        rec = record(case, impl, "float32", timing, unit=unit, size=float(n), **extra)
        records.append(rec)
        print(f"{impl:44s} {per * 1e3:8.2f} ms {extra}")

    def stream(n, source, label):
        start = time.perf_counter()
        res = gmm.fit_stream(None, source, k, n_chunks=n // rows, **opts)
        jax.block_until_ready(res)
        lls[label] = float(res.log_likelihood)
        return time.perf_counter() - start

    # At scale, once each: memory after each stream must not grow with n.
    for n in (n_mem, n_big):
        label = f"fit_stream n={n:.0e} generated"
        row(label, stream(n, chunk, label), n, n_iter, maxrss_mb=maxrss_mb(), n_rows=n)
    # Host memory, as chunks read from a file would be: a ring of 4 NumPy
    # chunks, each converted to a device array by its step.
    host = [np.asarray(chunk(i)) for i in range(4)]
    label = f"fit_stream n={n_big:.0e} NumPy chunks"
    seconds = stream(n_big, lambda i: host[i % 4], label)
    row(label, seconds, n_big, n_iter, n_rows=n_big)
    start = time.perf_counter()
    for i in range(n_big // rows):
        last = chunk(i)
    jax.block_until_ready(last)
    row(
        "generation alone",
        time.perf_counter() - start,
        n_big,
        1,
        note="one pass: included once per EM iteration in the generated rows",
    )
    # The throughput ratio: the in-memory fit on the first n_mem rows and the
    # streams of the same rows, from the same start, interleaved (3 rounds,
    # medians), so that a change of the machine's load hits all alike.
    x = jnp.concatenate([chunk(i) for i in range(n_mem // rows)])
    fit = jax.jit(
        lambda x, p: gmm.fit(None, x, k, init_params=p, max_iter=n_iter, tol=0.0)
    )
    jax.block_until_ready(fit(x, params))  # compile
    cached = chunk(0)
    sources = {
        f"fit_stream n={n_mem:.0e} generated, interleaved": chunk,
        f"fit_stream n={n_mem:.0e} NumPy chunks, interleaved": lambda i: host[i % 4],
        f"fit_stream n={n_mem:.0e} one cached chunk, interleaved": lambda i: cached,
    }
    times = {label: [] for label in ["densax", *sources]}
    for _ in range(3):
        start = time.perf_counter()
        res = jax.block_until_ready(fit(x, params))
        times["densax"].append(time.perf_counter() - start)
        for label, source in sources.items():
            times[label].append(stream(n_mem, source, label))
    for label in sources:
        row(label, times[label], n_mem, n_iter, repeat=3, n_rows=n_mem)
    diff = abs(float(res.log_likelihood) - lls[next(iter(sources))])
    row(
        "densax",
        times["densax"],
        n_mem,
        n_iter,
        repeat=3,
        maxrss_mb=maxrss_mb(),
        n_rows=n_mem,
        note=f"gmm.fit in memory; |ll - fit_stream's ll| = {diff:.1e}",
    )
    return records


def main():
    stream_only = "--stream-only" in sys.argv
    args = parse_args(__doc__, [a for a in sys.argv[1:] if a != "--stream-only"])
    threads = limit_peer_threads()
    print("peer threads:", threads)
    print("jax devices:", jax.devices())
    if not stream_only:
        reference = {}
        records = []
        for name, n, d, k, batch in QUICK if args.quick else FULL:
            for dtype in (np.float64, np.float32):  # float64 first: the reference
                records += run_case(name, n, d, k, batch, dtype, reference, args)
        write_results("gmm", records, args, threads)
    write_results("gmm_stream", run_stream(args), args, threads)


if __name__ == "__main__":
    main()
