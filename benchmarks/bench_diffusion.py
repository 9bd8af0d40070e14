"""DDPM on the toy datasets: speed, sample quality, held-out log-likelihood.

1. **Training throughput**: denoiser steps per second of
   ``densax.generative.train(method="ddpm")`` (batch 256, 3 hidden layers of
   128, T = 1000), timed after compilation.
2. **Sampling throughput**: samples per second of ancestral DDPM (1000
   steps) and DDIM (100 and 20 steps), with ``SW2 / noise floor`` beside
   each: fewer steps are faster and slightly worse.
3. **Acceptance**: defaults, 5000 steps, 3 seeds, on 8 Gaussians, the Swiss
   roll and two moons: ``SW2 / noise floor`` (mean of 4 draws of 1000
   samples, floor from 16 pairs of true samples of 1000) <= 1.5, and 8/8
   modes on 8 Gaussians; wall-clock and process CPU time.
4. **Held-out log-likelihood**, nats per point on 2000 fresh points, models
   fitted on 10000: a GMM by EM (densax; K chosen by BIC among 4..64; the
   scikit-learn fit with the same K beside it), a Gaussian KDE (bandwidth
   maximising the leave-one-out likelihood; scikit-learn's ``KernelDensity``
   with the same bandwidth beside it) and the diffusion model's ELBO (a
   *lower bound* on its log-likelihood; the decoder is a Gaussian of variance
   ``beta_1``, see ``densax.generative.diffusion.elbo``). For the Gaussian
   mixtures the true density gives the ceiling.

``--quick`` is a smoke run (about 20 s): T = 100, 100 training steps, the
DDPM and 20-step DDIM samplers, 8 Gaussians and one seed scored on one draw,
GMM (K = 8) and KDE fitted to 2000 points.

Usage::

    flock /tmp/densax-bench.lock python benchmarks/bench_diffusion.py [--quick]
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_peer_threads, parse_args, record, time_fn, write_results

from densax import datasets, gmm, kde, metrics
from densax.generative import diffusion, sample, train

DATASETS = ("eight_gaussians", "swiss_roll", "two_moons")
N_EVAL = 1000


def sw2_ratio(draw, truth, floor, key, n_draws=4):
    """Mean SW2 of ``n_draws`` (model, true) pairs of N_EVAL points, over the floor."""
    values = []
    for k in jax.random.split(key, n_draws):
        k_gen, k_true, k_proj = jax.random.split(k, 3)
        values.append(float(metrics.sw2(k_proj, draw(k_gen), truth(k_true, N_EVAL))))
    return round(float(np.mean(values)) / floor, 3)


def true_log_density(name, x):
    """Exact log-density of the equal-weight Gaussian mixtures, else None."""
    if name == "eight_gaussians":
        modes = datasets.eight_gaussians_modes()
    elif name == "twenty_five_gaussians":
        modes = datasets.twenty_five_gaussians_modes()
    else:
        return None
    d2 = jnp.sum((x[:, None] - modes.centres[None]) ** 2, -1)
    k = modes.centres.shape[0]
    log_norm = -np.log(2 * np.pi * modes.std**2)
    return float(
        jnp.mean(logsumexp(-0.5 * d2 / modes.std**2, axis=1) - np.log(k) + log_norm)
    )


def heldout_rows(name, train_x, test_x, model, quick):
    """GMM (densax, sklearn), KDE (densax, sklearn) and ELBO rows for one dataset."""
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import KernelDensity

    rows = []
    case = f"held-out log-lik {name}"
    truth = true_log_density(name, test_x)
    extra = {} if truth is None else {"true_nats": round(truth, 3)}

    # GMM: K by BIC on the training data, then its held-out log-likelihood.
    best = None
    t0 = time.perf_counter()
    for k in (8,) if quick else (4, 8, 16, 32, 64):
        fit = gmm.fit(jax.random.key(k), train_x, k, n_init=2)
        bic = float(gmm.bic(fit.model, train_x))
        if best is None or bic < best[0]:
            best = (bic, k, fit)
    _, k, fit = best
    gmm_time = time.perf_counter() - t0
    ours = float(jnp.mean(gmm.log_prob(fit.model, test_x)))
    rows.append(
        record(
            case,
            "densax gmm",
            "float32",
            {"time_s": gmm_time},
            accuracy={"heldout_nats": round(ours, 3)},
            unit="fit (BIC over K, incl. compile)",
            note=f"K={k}",
            **extra,
        )
    )
    t0 = time.perf_counter()
    sk = GaussianMixture(k, n_init=2, random_state=0).fit(
        np.asarray(train_x, np.float64)
    )
    rows.append(
        record(
            case,
            "sklearn gmm",
            "float64",
            {"time_s": time.perf_counter() - t0},
            accuracy={"heldout_nats": round(float(sk.score(np.asarray(test_x))), 3)},
            unit="fit one K",
            note=f"K={k}",
            **extra,
        )
    )

    # KDE: bandwidth by leave-one-out likelihood.
    t0 = time.perf_counter()
    bw = kde.fit(train_x, bandwidth="loo").model
    ours = float(jnp.mean(kde.log_prob(bw, test_x)))
    kde_time = time.perf_counter() - t0
    h = float(bw.bandwidth)
    rows.append(
        record(
            case,
            "densax kde",
            "float32",
            {"time_s": kde_time},
            accuracy={"heldout_nats": round(ours, 3)},
            unit="fit + evaluate (incl. compile)",
            note=f"h={h:.4f}",
            **extra,
        )
    )
    t0 = time.perf_counter()
    skd = KernelDensity(bandwidth=h).fit(np.asarray(train_x, np.float64))
    sk_value = float(np.mean(skd.score_samples(np.asarray(test_x, np.float64))))
    rows.append(
        record(
            case,
            "sklearn kde",
            "float64",
            {"time_s": time.perf_counter() - t0},
            accuracy={"heldout_nats": round(sk_value, 3)},
            unit="evaluate (same h)",
            note=f"h={h:.4f}",
            **extra,
        )
    )

    # Diffusion: the ELBO of the trained model.
    schedule = diffusion.schedule_of(model.options)
    elbo = jax.jit(lambda k, x: diffusion.elbo(k, model.generator, x, schedule))
    timing = time_fn(elbo, jax.random.key(5), test_x, repeat=1)
    value = float(jnp.mean(elbo(jax.random.key(5), test_x)))
    rows.append(
        record(
            case,
            "densax ddpm (ELBO)",
            "float32",
            timing,
            accuracy={"heldout_nats": round(value, 3)},
            unit="ELBO, T terms",
            note="lower bound",
            **extra,
        )
    )
    for r in rows:
        print(
            f"{name:16s} {r['impl']:20s} {r['accuracy']['heldout_nats']:8.3f} nats"
            + (f"  (true {truth:.3f})" if truth is not None else "")
        )
    return rows


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()
    print(f"peer threads: {threads['limit']}")
    quick = args.quick
    records = []
    names = DATASETS[:1] if quick else DATASETS
    n_draws = 1 if quick else 4
    floors = {
        name: float(
            metrics.sw2_noise_floor(
                jax.random.key(1),
                getattr(datasets, name),
                N_EVAL,
                n_repeats=4 if quick else 16,
            )
        )
        for name in names
    }
    print("SW2 noise floors at n=1000:", {k: round(v, 4) for k, v in floors.items()})

    # 1. Training throughput.
    data = datasets.eight_gaussians(jax.random.key(0), 10_000)
    steps = 100 if quick else 1000
    holder = {}

    def run():
        holder["result"] = train(
            jax.random.key(2),
            data,
            method="ddpm",
            num_steps=steps,
            chunk_size=100,
            eval_size=0,
            **(dict(num_timesteps=100) if quick else {}),
        )
        return holder["result"].state.params

    timing = time_fn(run, repeat=1 if quick else 3, budget_s=60)
    rate = steps / timing["time_s"]
    print(f"training: {rate:.1f} steps/s")
    records.append(
        record(
            "ddpm training, batch=256, 8 gaussians",
            "densax",
            "float32",
            timing,
            unit=f"{steps} steps",
            steps_per_s=round(rate, 1),
        )
    )

    # 2. Sampling throughput (on a trained model: the acceptance seed-0 model
    # is trained below; here the throughput model suffices for timing).
    n = N_EVAL if quick else 10_000
    result = holder["result"]
    total = result.options.num_timesteps
    samplers = [
        (f"ddpm {total} steps", {}),
        ("ddim 20 steps", dict(sampler="ddim", num_steps=20)),
    ]
    if total > 100:
        samplers.insert(1, ("ddim 100 steps", dict(sampler="ddim", num_steps=100)))
    for label, opts in samplers:
        fn = lambda k, opts=opts: sample(k, result, n, **opts)
        timing = time_fn(fn, jax.random.key(3), repeat=1 if quick else 3)
        ratio = sw2_ratio(
            lambda k, opts=opts: sample(k, result, N_EVAL, **opts),
            datasets.eight_gaussians,
            floors["eight_gaussians"],
            jax.random.key(4),
            n_draws,
        )
        per_s = n / timing["time_s"]
        print(f"sampling {label}: {per_s:.0f} samples/s, SW2/floor {ratio}")
        records.append(
            record(
                f"sampling n={n}, 8 gaussians",
                f"densax {label}",
                "float32",
                timing,
                accuracy={"sw2_over_floor": ratio},
                unit=f"{n} samples",
                samples_per_s=round(per_s),
            )
        )

    # 3. Acceptance and 4. held-out log-likelihood.
    num_steps = 100 if quick else 5000
    seeds = (0,) if quick else (0, 1, 2)
    fast = dict(num_timesteps=100, chunk_size=100, eval_size=0) if quick else {}
    modes = datasets.eight_gaussians_modes()
    for name in names:
        fn = getattr(datasets, name)
        for seed in seeds:
            x = fn(jax.random.key(100 + seed), 10_000)
            t0, c0 = time.perf_counter(), time.process_time()
            model = train(
                jax.random.key(seed), x, method="ddpm", num_steps=num_steps, **fast
            )
            jax.block_until_ready(model.state.params)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            acc = {
                "sw2_over_floor": sw2_ratio(
                    lambda k, model=model: sample(k, model, N_EVAL),
                    fn,
                    floors[name],
                    jax.random.key(1000 + seed),
                    n_draws,
                )
            }
            if name == "eight_gaussians":
                cov = metrics.mode_coverage(
                    sample(jax.random.key(7), model, N_EVAL if quick else 2000),
                    modes.centres,
                    modes.std,
                )
                acc.update(
                    modes=int(cov.n_modes),
                    high_quality=round(float(cov.high_quality), 4),
                )
            passed = acc["sw2_over_floor"] <= 1.5 and acc.get("modes", 8) == 8
            print(f"{name:16s} seed {seed}: {acc} pass={passed} {wall:.1f} s")
            records.append(
                record(
                    f"{name}, defaults, seed {seed}",
                    "densax ddpm",
                    "float32",
                    {"time_s": wall},
                    accuracy=acc,
                    unit=f"{num_steps} steps (incl. compile)",
                    cpu_s=round(cpu, 1),
                    note=f"{'pass' if passed else 'fail'}, CPU {cpu:.0f} s",
                )
            )
            if seed == 0:
                test_x = fn(jax.random.key(999), 2000)
                # --quick fits GMM and KDE to 2000 points, K = 8 only.
                fit_x = x[:2000] if quick else x
                records.extend(heldout_rows(name, fit_x, test_x, model, quick))
    write_results("diffusion", records, args, threads)


if __name__ == "__main__":
    main()
