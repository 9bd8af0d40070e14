"""Exact 1D and sliced Wasserstein: densax against SciPy, POT and ott-jax.

Four parts, each on the same data for every implementation:

1. ``argsort``: XLA's CPU sort against NumPy's, the reason densax sorts on the
   host on CPU.
2. ``W_1`` / ``W_2`` between weighted samples of size n: forward against
   ``scipy.stats.wasserstein_distance`` and POT's NumPy ``ot.wasserstein_1d``,
   and value-and-gradient against POT on its JAX backend (the only peer with a
   gradient). Accuracy is the relative error against SciPy (p = 1) or POT's
   NumPy result (p = 2), all in float64; gradients against POT-JAX's.
3. ``dispatch``: densax's automatic choice against forcing the XLA sort or the
   host sort, at small sizes and for a sliced-Wasserstein training step, to
   check the ``sort`` strategy's static size threshold.
4. ``sliced``: SW_2 with 200 directions on n x 10 points in float32, against
   POT (NumPy) and ott-jax, with the same directions, so all three must agree
   to float32 rounding with a float64 POT reference.

Usage: ``python benchmarks/bench_ot.py [--quick]``.
"""

import functools
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


def rel(x, ref):
    return float(abs(float(x) - float(ref)) / abs(float(ref)))


def grad_rel(g, ref):
    g, ref = (
        np.concatenate([np.ravel(x) for x in g]),
        np.concatenate([np.ravel(x) for x in ref]),
    )
    return float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))


def show(r):
    t = r["time_s"]
    print(
        f"  {r['case']:<34} {r['impl']:<22} {r['unit']:<16} "
        f"{'-' if t is None else f'{t * 1e3:9.2f} ms'}  {r['accuracy']}",
        flush=True,
    )


HOST, XLA = "host", "xla"  # densax's sort strategies


def forced(sort, fn):
    """``fn`` with densax's sort strategy (``wasserstein_1d(..., sort=...)``)."""
    return jax.jit(functools.partial(fn, sort=sort))


def argsort_cases(add, quick, repeat):
    """[1] NumPy's and XLA's argsort."""
    sort_n = 10**5 if quick else 10**6
    print("\n[1] argsort")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(sort_n)
    xj = jnp.asarray(x)
    case = f"argsort n={sort_n:.0e}"
    t_np = time_fn(np.argsort, x, repeat=repeat)
    add(case, "numpy", "float64", t_np, unit="argsort", size=sort_n)
    t_xla = time_fn(jax.jit(jnp.argsort), xj, repeat=repeat)
    add(
        case,
        "xla (jnp.argsort)",
        "float64",
        t_xla,
        unit="argsort",
        size=sort_n,
        note=f"{t_xla['time_s'] / t_np['time_s']:.1f}x NumPy's time",
    )


def exact_cases(add, quick, repeat):
    """[2] exact 1D Wasserstein against SciPy and POT (NumPy and JAX backends)."""
    import ot as pot
    import scipy.stats

    print("\n[2] exact 1D Wasserstein, weighted, float64")
    for n in [10**3, 10**4] if quick else [10**4, 10**5, 10**6]:
        rng = np.random.default_rng(n)
        u, v = rng.standard_normal(n), 1.5 * rng.standard_normal(n) + 0.5
        a, b = rng.random(n), rng.random(n)
        an, bn = a / a.sum(), b / b.sum()
        jargs = tuple(map(jnp.asarray, (u, v, a, b)))
        jargs_n = tuple(map(jnp.asarray, (u, v, an, bn)))
        for p in (1, 2):
            case = f"W{p} n={n:.0e}"
            ref = (
                scipy.stats.wasserstein_distance(u, v, a, b)
                if p == 1
                else pot.wasserstein_1d(u, v, an, bn, p=p) ** (1 / p)
            )
            w1d = lambda u, v, a, b, p=p: ot.wasserstein_1d(u, v, a=a, b=b, p=p)
            fwd = jax.jit(w1d)
            t = time_fn(fwd, *jargs, repeat=repeat)
            add(
                case,
                "densax",
                "float64",
                t,
                unit="forward",
                size=n,
                accuracy={"rel_err": rel(fwd(*jargs), ref)},
            )
            t_fwd = t["time_s"]
            if p == 1:
                t = time_fn(scipy.stats.wasserstein_distance, u, v, a, b, repeat=repeat)
                add(
                    case,
                    "scipy",
                    "float64",
                    t,
                    unit="forward",
                    size=n,
                    accuracy={"rel_err": 0.0},
                )
            pot_np = lambda u, v, a, b, p=p: (
                pot.wasserstein_1d(u, v, a, b, p=p) ** (1 / p)
            )
            t = time_fn(pot_np, u, v, an, bn, repeat=repeat)
            add(
                case,
                "pot",
                "float64",
                t,
                unit="forward",
                size=n,
                accuracy={"rel_err": rel(pot_np(u, v, an, bn), ref)},
            )
            pot_jax = jax.jit(pot_np)
            t = time_fn(pot_jax, *jargs_n, repeat=repeat)
            add(
                case,
                "pot (jax backend)",
                "float64",
                t,
                unit="forward",
                size=n,
                accuracy={"rel_err": rel(pot_jax(*jargs_n), ref)},
            )

            grad = jax.jit(jax.value_and_grad(w1d, argnums=(0, 1, 2, 3)))
            pot_grad = jax.jit(jax.value_and_grad(pot_np, argnums=(0, 1, 2, 3)))
            # densax normalises the weights, POT does not: at normalised weights,
            # d/da W(a / Σa) = g - <g, a> for POT's raw gradient g.
            val, g = grad(*jargs_n)
            pval, pg = pot_grad(*jargs_n)
            proj = lambda g, w: g - jnp.sum(g * w)
            pg = (pg[0], pg[1], proj(pg[2], jargs_n[2]), proj(pg[3], jargs_n[3]))
            t = time_fn(grad, *jargs, repeat=repeat)
            add(
                case,
                "densax",
                "float64",
                t,
                unit="value and grad",
                size=n,
                accuracy={"rel_err": rel(val, ref), "grad_rel_err": grad_rel(g, pg)},
                note=f"{t['time_s'] / t_fwd:.2f}x densax forward",
            )
            t = time_fn(pot_grad, *jargs_n, repeat=repeat)
            add(
                case,
                "pot (jax backend)",
                "float64",
                t,
                unit="value and grad",
                size=n,
                accuracy={"rel_err": rel(pval, ref)},
            )


def dispatch_cases(add, quick, repeat):
    """[3] the sort strategy's threshold: host sort or XLA sort."""
    import scipy.stats

    print("\n[3] host sort or XLA sort: the sort strategy's size threshold")
    for n in [256, 4096] if quick else [256, 1024, 4096, 16384]:
        rng = np.random.default_rng(n + 1)
        jargs = tuple(
            jnp.asarray(x, jnp.float32)
            for x in (
                rng.standard_normal(n),
                rng.standard_normal(n),
                rng.random(n),
                rng.random(n),
            )
        )
        w1d = lambda u, v, a, b, sort="auto": ot.wasserstein_1d(
            u, v, a=a, b=b, sort=sort
        )
        ref = scipy.stats.wasserstein_distance(*map(np.asarray, jargs))
        case = f"W1 n=m={n}"
        for impl, fn in (
            ("densax", jax.jit(w1d)),
            ("densax (XLA sort)", forced(XLA, w1d)),
            ("densax (host sort)", forced(HOST, w1d)),
        ):
            t = time_fn(fn, *jargs, repeat=max(repeat, 20))
            add(
                case,
                impl,
                "float32",
                t,
                unit="forward",
                size=n,
                accuracy={"rel_err": rel(fn(*jargs), ref)},
            )

    key = jax.random.key(0)
    for n, n_proj in ((256, 200),) if quick else ((256, 50), (256, 200)):
        kx, ky = jax.random.split(jax.random.key(n_proj))
        x = jax.random.normal(kx, (n, 2))
        y = jax.random.normal(ky, (n, 2)) * 0.5 + 2.0
        loss = lambda x, y, n_proj=n_proj, sort="auto": ot.sliced_wasserstein(
            key, x, y, n_projections=n_proj, sort=sort
        )
        step = jax.value_and_grad(loss)
        case = f"SW2 step n={n} L={n_proj}"
        ref = float(jax.jit(loss)(x, y))
        for impl, fn in (
            ("densax", jax.jit(step)),
            ("densax (XLA sort)", forced(XLA, step)),
            ("densax (host sort)", forced(HOST, step)),
        ):
            t = time_fn(fn, x, y, repeat=max(repeat, 20))
            add(
                case,
                impl,
                "float32",
                t,
                unit="value and grad",
                size=n * n_proj,
                accuracy={"rel_err": rel(fn(x, y)[0], ref)},
            )


def sliced_cases(add, quick, repeat):
    """[4] sliced Wasserstein against POT and ott-jax."""
    import ot as pot
    from ott.tools import sliced as ott_sliced

    sliced_n = 2000 if quick else 10**5
    print("\n[4] sliced Wasserstein, 200 directions, d = 10, float32")
    d, n_proj = 10, 200
    rng = np.random.default_rng(1)
    x64 = rng.standard_normal((sliced_n, d))
    y64 = rng.standard_normal((sliced_n, d)) * np.linspace(0.5, 2.0, d) + 0.3
    theta64 = np.asarray(
        ot.random_directions(jax.random.key(1), n_proj, d, dtype=float)
    )
    ref = pot.sliced_wasserstein_distance(x64, y64, projections=theta64.T, p=2)
    x, y, theta = (np.asarray(z, np.float32) for z in (x64, y64, theta64))
    xj, yj, thetaj = map(jnp.asarray, (x, y, theta))
    case = f"SW2 n={sliced_n:.0e} d={d} L={n_proj}"

    sw = lambda x, y: ot.sliced_wasserstein(None, x, y, projections=thetaj, p=2)
    fwd = jax.jit(sw)
    t = time_fn(fwd, xj, yj, repeat=repeat)
    add(
        case,
        "densax",
        "float32",
        t,
        unit="forward",
        size=sliced_n,
        accuracy={"rel_err": rel(fwd(xj, yj), ref)},
    )
    pot_sw = lambda x, y: pot.sliced_wasserstein_distance(
        x, y, projections=theta.T, p=2
    )
    t = time_fn(pot_sw, x, y, repeat=repeat)
    add(
        case,
        "pot",
        "float32",
        t,
        unit="forward",
        size=sliced_n,
        accuracy={"rel_err": rel(pot_sw(x, y), ref)},
    )

    def ott_sw(x, y):
        cost, _ = ott_sliced.sliced_wasserstein(x, y, proj_fn=lambda z: z @ thetaj.T)
        return jnp.sqrt(cost)

    ott_fwd = jax.jit(ott_sw)
    t = time_fn(ott_fwd, xj, yj, repeat=repeat)
    add(
        case,
        "ott",
        "float32",
        t,
        unit="forward",
        size=sliced_n,
        accuracy={"rel_err": rel(ott_fwd(xj, yj), ref)},
    )

    grad = jax.jit(jax.value_and_grad(sw))
    ott_grad = jax.jit(jax.value_and_grad(ott_sw))
    (val, g), (oval, og) = grad(xj, yj), ott_grad(xj, yj)
    t = time_fn(grad, xj, yj, repeat=repeat)
    add(
        case,
        "densax",
        "float32",
        t,
        unit="value and grad",
        size=sliced_n,
        accuracy={"rel_err": rel(val, ref), "grad_rel_err": grad_rel([g], [og])},
    )
    t = time_fn(ott_grad, xj, yj, repeat=repeat)
    add(
        case,
        "ott",
        "float32",
        t,
        unit="value and grad",
        size=sliced_n,
        accuracy={"rel_err": rel(oval, ref)},
    )


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()  # before the peers (POT, SciPy) are imported
    records, add = recorder(show)

    print(f"threads: {threads}")
    for part in (argsort_cases, exact_cases, dispatch_cases, sliced_cases):
        part(add, args.quick, args.repeat)
    write_results("ot_1d", records, args, threads)


if __name__ == "__main__":
    main()
