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
"""

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


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()
    print("peer threads:", threads)
    print("jax devices:", jax.devices())
    reference = {}
    records = []
    for name, n, d, k, batch in QUICK if args.quick else FULL:
        for dtype in (np.float64, np.float32):  # float64 first: the reference
            records += run_case(name, n, d, k, batch, dtype, reference, args)
    write_results("gmm", records, args, threads)


if __name__ == "__main__":
    main()
