"""GAN, WGAN and OT generators on 8 Gaussians: speed, quality, acceptance.

Three parts, all on ``densax.datasets.eight_gaussians`` (radius 2, std 0.02):

1. **Throughput**: generator steps per second of ``densax.generative.train``
   for every method (batch 256, 3 hidden layers of 128), timed after
   compilation; beside WGAN-GP, the same networks, losses and optimiser in
   the idiomatic Flax loop (one ``nnx.jit`` call per step from Python), the
   peer that isolates the cost of dispatching steps one by one.
2. **Acceptance**: every method with the library defaults for 3000 steps,
   3 seeds: modes covered and high-quality fraction
   (:func:`densax.metrics.mode_coverage`: within 3 std of a centre; a mode
   counts with at least 20% of its fair share), and ``SW2 / noise floor``
   (mean ``SW2`` of 4 draws of 1000 generated vs 1000 true points, over the
   mean ``SW2`` of 16 pairs of true samples of 1000). Pass: 8/8 modes and a
   ratio <= 1.5 (required of WGAN-GP, sliced and Sinkhorn; the JS-GAN and
   the weight-clipped WGAN are reported as they are).
3. The wall-clock and process CPU time of each acceptance run.

``--quick`` is a smoke run (about 20 s): 20 steps per method, no Flax peer,
the acceptance path on the required methods and one seed, scored on one
draw.

Usage::

    flock /tmp/densax-bench.lock python benchmarks/bench_generative.py [--quick]
"""

import functools
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_peer_threads, parse_args, record, time_fn, write_results

from densax import datasets, metrics
from densax.generative import MLP, losses, sample, train
from densax.generative.method import cosine_decay

METHODS = ("gan", "wgan-clip", "wgan-gp", "sliced", "sinkhorn")
REQUIRED = ("wgan-gp", "sliced", "sinkhorn")
MODES = datasets.eight_gaussians_modes()
N_EVAL = 1000


def quality(result, floor, key, n_draws=4, n_cover=2000):
    """Modes, high-quality fraction and SW2 / noise floor of a trained model.

    ``n_draws`` pairs of N_EVAL points for SW2, ``n_cover`` samples for the
    mode coverage (``--quick`` uses one draw and N_EVAL samples: one shape,
    one compilation).
    """
    k_cov, k_sw = jax.random.split(key)
    x = sample(k_cov, result, n_cover)
    cov = metrics.mode_coverage(x, MODES.centres, MODES.std)
    sw = []
    for k in jax.random.split(k_sw, n_draws):
        k_gen, k_true, k_proj = jax.random.split(k, 3)
        gen = sample(k_gen, result, N_EVAL)
        true = datasets.eight_gaussians(k_true, N_EVAL)
        sw.append(float(metrics.sw2(k_proj, gen, true)))
    return {
        "modes": int(cov.n_modes),
        "high_quality": round(float(cov.high_quality), 4),
        "sw2_over_floor": round(float(np.mean(sw) / floor), 3),
    }


@functools.lru_cache
def _peer_tx(num_steps):
    # One optimiser object per run length: nnx.jit keys its cache on it.
    return optax.adam(cosine_decay(1e-3, num_steps), b1=0.5, b2=0.9)


@functools.partial(nnx.jit, static_argnames=("n_critic", "batch_size", "gp_weight"))
def _peer_step(gen, critic, opt_g, opt_c, key, data, n_critic, batch_size, gp_weight):
    keys = jax.random.split(key, n_critic + 1)
    for k in keys[:-1]:
        k_x, k_z, k_e = jax.random.split(k, 3)
        real = data[jax.random.randint(k_x, (batch_size,), 0, data.shape[0])]
        fake = gen(jax.random.normal(k_z, (batch_size, 2)))
        eps = jax.random.uniform(k_e, (batch_size,))

        def critic_loss(c, real=real, fake=fake, eps=eps):
            score = lambda x: c(x)[:, 0]
            w = losses.wgan_critic_loss(score(real), score(fake))
            return w + gp_weight * losses.gradient_penalty(score, real, fake, eps)

        opt_c.update(critic, nnx.grad(critic_loss)(critic))
    z = jax.random.normal(keys[-1], (batch_size, 2))
    g_loss = lambda g: losses.wgan_generator_loss(critic(g(z))[:, 0])
    opt_g.update(gen, nnx.grad(g_loss)(gen))


def flax_wgan_gp(key, data, num_steps, batch_size=256, n_critic=5, gp_weight=1.0):
    """WGAN-GP the usual Flax way: one ``nnx.jit`` step per Python iteration."""
    k_g, k_c, k_run = jax.random.split(key, 3)
    gen = MLP(2, 2, rngs=nnx.Rngs(k_g))
    critic = MLP(2, 1, rngs=nnx.Rngs(k_c))
    opt_g = nnx.Optimizer(gen, _peer_tx(num_steps), wrt=nnx.Param)
    # The critic's schedule spans its n_critic updates per generator step.
    opt_c = nnx.Optimizer(critic, _peer_tx(num_steps * n_critic), wrt=nnx.Param)
    for i in range(num_steps):
        key = jax.random.fold_in(k_run, i)
        _peer_step(
            gen, critic, opt_g, opt_c, key, data, n_critic, batch_size, gp_weight
        )
    return gen


def main():
    args = parse_args(__doc__)
    threads = limit_peer_threads()
    print(f"peer threads: {threads['limit']}")
    quick = args.quick
    data = datasets.eight_gaussians(jax.random.key(0), 10_000)
    floor = float(
        metrics.sw2_noise_floor(
            jax.random.key(1),
            datasets.eight_gaussians,
            N_EVAL,
            n_repeats=4 if quick else 16,
        )
    )
    print(f"SW2 noise floor at n={N_EVAL}: {floor:.4f}")
    records = []

    # 1. Throughput at batch 256, default 128-wide networks.
    steps, chunk = (20, 20) if quick else (500, 50)
    for method in METHODS:
        kw = dict(method=method, num_steps=steps, batch_size=256, chunk_size=chunk)
        last = {}

        def run(kw=kw, last=last):
            last["result"] = train(jax.random.key(2), data, eval_size=0, **kw)
            return last["result"].state.params

        timing = time_fn(run, repeat=1 if quick else 3, budget_s=60)
        rate = steps / timing["time_s"]
        acc = {} if quick else quality(last["result"], floor, jax.random.key(3))
        print(f"{method:10s} {rate:8.1f} steps/s  {acc}")
        records.append(
            record(
                f"throughput {method} batch=256",
                "densax",
                "float32",
                timing,
                accuracy=acc,
                unit=f"{steps} generator steps",
                steps_per_s=round(rate, 1),
            )
        )
        if method == "wgan-gp" and not quick:  # the peer compiles for seconds
            peer_steps = 100
            holder = {}

            def peer(holder=holder, peer_steps=peer_steps):
                holder["gen"] = flax_wgan_gp(jax.random.key(2), data, peer_steps)
                return nnx.state(holder["gen"])

            t_peer = time_fn(peer, repeat=3, budget_s=60)
            # Scale the peer's time to the same number of steps.
            scaled = {
                k: v * steps / peer_steps for k, v in t_peer.items() if k != "n_runs"
            }
            scaled["n_runs"] = t_peer["n_runs"]
            peer_rate = peer_steps / t_peer["time_s"]
            print(f"{'flax loop':10s} {peer_rate:8.1f} steps/s")
            records.append(
                record(
                    f"throughput {method} batch=256",
                    "flax nnx.jit per step",
                    "float32",
                    scaled,
                    unit=f"{steps} generator steps",
                    steps_per_s=round(peer_rate, 1),
                    note=f"timed over {peer_steps} steps, scaled",
                )
            )

    # 2-3. Acceptance: library defaults, 3000 steps, 3 seeds.
    num_steps = chunk if quick else 3000
    seeds = (0,) if quick else (0, 1, 2)
    scoring = dict(n_draws=1, n_cover=N_EVAL) if quick else {}
    summary = {}
    # --quick smoke-tests the acceptance path on the required methods only.
    for method in REQUIRED if quick else METHODS:
        for seed in seeds:
            x = datasets.eight_gaussians(jax.random.key(100 + seed), 10_000)
            t0, c0 = time.perf_counter(), time.process_time()
            # --quick reuses the throughput runs' compiled chunks (same batch
            # and chunk size) instead of compiling the defaults again.
            fast = dict(batch_size=256, chunk_size=chunk, eval_size=0) if quick else {}
            result = train(
                jax.random.key(seed), x, method=method, num_steps=num_steps, **fast
            )
            jax.block_until_ready(result.state.params)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            acc = quality(result, floor, jax.random.key(1000 + seed), **scoring)
            passed = acc["modes"] == 8 and acc["sw2_over_floor"] <= 1.5
            summary.setdefault(method, []).append(passed)
            print(f"{method:10s} seed {seed}: {acc}  pass={passed}  {wall:.1f} s")
            records.append(
                record(
                    f"8 gaussians, defaults, seed {seed}",
                    f"densax {method}",
                    "float32",
                    {"time_s": wall},
                    accuracy=acc,
                    unit=f"{num_steps} steps (incl. compile)",
                    cpu_s=round(cpu, 1),
                    finite=result.finite,
                    note=f"{'pass' if passed else 'fail'}, CPU {cpu:.0f} s",
                )
            )
    for method, passes in summary.items():
        need = "required" if method in REQUIRED else "reported"
        print(f"{method:10s} {sum(passes)}/{len(passes)} seeds pass ({need})")
    write_results("generative", records, args, threads)


if __name__ == "__main__":
    main()
