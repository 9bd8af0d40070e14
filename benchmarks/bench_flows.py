"""Held-out likelihood of every density model, and flows against flowjax.

One table, in nats per held-out point (higher is better), on 8 Gaussians, two
moons, the Swiss roll, rings (``densax.datasets``; 20,000 training and 5,000
held-out points, 3 seeds) and a real dataset shipped with scikit-learn (the
breast-cancer measurements: log1p, standardised, first 4 principal
components; its 569 points split 80/20, per seed), for:

* Gaussian (maximum likelihood), GMM (K by BIC over 4, 8, 16, 32), KDE
  (leave-one-out bandwidth);
* flowjax 19 (``coupling_flow`` with a rational-quadratic spline, 8 knots on
  ``[-4, 4]``, 8 layers; ``fit_to_data`` defaults, early stopping, batch 256);
* the densax flow (``train(method="flow")``, its defaults: 8
  rational-quadratic spline couplings, batch 256) for the number of steps
  flowjax took ("densax flow"), and for densax's own budget of 128 epochs
  ("densax flow 128ep": 10,000 steps on 20,000 points), and for that budget
  with smooth couplings ("densax flow 128ep logistic": ``LOGISTIC``, 8
  logistic-mixture couplings of 4 components with tanh conditioners);
* DDPM (``train(method="ddpm")``, 128-wide denoiser): its ELBO and its
  probability-flow ODE log-density (``diffusion.ode_log_prob``, RK4 50 steps,
  exact trace).

Training throughput (steps/s at batch 256, compilation excluded) is measured
separately, robustly to the load of a shared machine: ``--repeat`` rounds,
each timing a warm flowjax ``fit_to_data`` of 3 epochs (its whole loop:
batching, steps, validation loss) and then a warm densax run of the same
number of steps (one compiled chunk), interleaved in this process; the
medians are reported. ``--quick``: one dataset, small sizes.

The density-estimator calls (current gmm/kde APIs) are in :func:`classical`.
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, device_tag, parse_args, record, write_results

from densax import datasets, gaussian, gmm, kde
from densax.generative import density, diffusion, train

OWN_EPOCHS = 128  # densax's own budget: 10,000 steps of 256 on 20,000 points
LOGISTIC = {"transform": "logistic_mixture", "activation": "tanh"}  # smooth
# The regularised spline flow of the ablation scripts (their reference row).
REG = {"transform": "spline", "activation": "tanh", "noise": 0.02}
LEGEND = (
    "flowjax: coupling_flow (RQ spline, 8 knots on [-4, 4], 8 layers), "
    "fit_to_data defaults with early stopping, batch 256; densax flow: "
    'train(method="flow") defaults (8 rational-quadratic spline couplings), '
    "batch 256, for the number of steps flowjax took on that seed; densax "
    "flow 128ep: the same for densax's own budget of 128 epochs (10,000 steps "
    "at 20,000 points); densax flow 128ep logistic: the same with "
    'transform="logistic_mixture", activation="tanh" (8 logistic-mixture '
    "couplings of 4 components, smooth conditioners); steps/s: medians of "
    "--repeat interleaved warm rounds in one process."
)
DATASETS = ("eight_gaussians", "two_moons", "swiss_roll", "rings", "breast_cancer")
MODELS = (
    "gaussian",
    "gmm",
    "kde",
    "flowjax",
    "densax flow",
    "densax flow 128ep",
    "densax flow 128ep logistic",
    "ddpm elbo",
    "ddpm ode",
)


def load(name, seed, n_train, n_test):
    """(train [n, d], test [m, d]) float32 arrays."""
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer
        from sklearn.decomposition import PCA

        x = np.log1p(load_breast_cancer().data)
        x = (x - x.mean(0)) / x.std(0)
        x = PCA(4, random_state=0).fit_transform(x)
        perm = np.random.default_rng(seed).permutation(len(x))
        cut = int(0.8 * len(x))
        x = x.astype(np.float32)
        return jnp.asarray(x[perm[:cut]]), jnp.asarray(x[perm[cut:]])
    make = getattr(datasets, name)
    k_train, k_test = jax.random.split(jax.random.key(100 + seed))
    return make(k_train, n_train), make(k_test, n_test)


def gmm_by_bic(train_x, quick):
    """(K, GMM) with K by BIC over 4, 8, 16, 32 (8 alone with ``quick``)."""
    best = None
    for k in (8,) if quick else (4, 8, 16, 32):
        fit = gmm.fit(jax.random.key(k), train_x, k, n_init=2)
        bic = float(gmm.bic(fit.model, train_x))
        if best is None or bic < best[0]:
            best = (bic, k, fit.model)
    return best[1], best[2]


def classical(train_x, test_x, quick):
    """Gaussian, GMM (K by BIC) and KDE (LOO bandwidth): {model: (nats, note)}."""
    out = {}
    g = gaussian.fit(train_x)
    out["gaussian"] = (float(jnp.mean(gaussian.log_prob(g, test_x))), "")
    k, model = gmm_by_bic(train_x, quick)
    out["gmm"] = (float(jnp.mean(gmm.log_prob(model, test_x))), f"K={k}")
    model = kde.fit(train_x, bandwidth="loo").model
    h = float(model.bandwidth)
    out["kde"] = (float(jnp.mean(kde.log_prob(model, test_x))), f"h={h:.3f}")
    return out


def _flowjax_setup(seed, d):
    """A fresh flowjax flow and the fit arguments shared by every fit."""
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow
    from flowjax.train.losses import MaximumLikelihoodLoss

    flow = coupling_flow(
        jax.random.key(seed),
        base_dist=Normal(jnp.zeros(d)),
        transformer=RationalQuadraticSpline(knots=8, interval=4),
        flow_layers=8,
    )
    # One loss and one optimiser (fit_to_data's default, Adam(5e-4)) for every
    # fit: new ones are new static arguments of flowjax's jitted step, which
    # would compile again.
    shared = {"loss_fn": MaximumLikelihoodLoss(), "optimizer": optax.adam(5e-4)}
    return flow, shared


FLOWJAX = {}  # (seed, d) -> (flow, shared): one compiled flowjax step per shape


def _flowjax(seed, d):
    if (seed, d) not in FLOWJAX:
        FLOWJAX[seed, d] = _flowjax_setup(seed, d)
    return FLOWJAX[seed, d]


def fit_flowjax(seed, train_x, test_x, quick):
    """The flowjax RQ-spline coupling flow, fit_to_data defaults, batch 256."""
    from flowjax.train import fit_to_data

    flow, shared = _flowjax(seed, train_x.shape[1])
    extra = {"max_epochs": 3, **shared} if quick else shared
    t0 = time.perf_counter()
    fitted, losses = fit_to_data(
        jax.random.key(seed + 1),
        flow,
        train_x,
        batch_size=256,
        show_progress=False,
        **extra,
    )
    wall = time.perf_counter() - t0
    n_fit = train_x.shape[0] - int(0.1 * train_x.shape[0])
    steps = len(losses["train"]) * -(-n_fit // 256)
    nats = float(jnp.mean(fitted.log_prob(test_x)))
    return nats, steps, wall


def throughput(seed, train_x, repeat):
    """Interleaved warm timings: (flowjax steps/s, densax steps/s), medians.

    Each round times a flowjax ``fit_to_data`` of at least 3 epochs and 200
    steps (its whole loop) and then a densax run of the same number of steps
    in one compiled chunk (``history.steps_per_s``: the chunk's wall time,
    setup excluded).
    """
    from flowjax.train import fit_to_data

    flow, shared = _flowjax(seed, train_x.shape[1])
    n_fit = train_x.shape[0] - int(0.1 * train_x.shape[0])
    per_epoch = -(-n_fit // 256)
    epochs = max(3, -(-200 // per_epoch))
    steps = epochs * per_epoch

    def flowjax_rate():
        t0 = time.perf_counter()
        _, losses = fit_to_data(
            jax.random.key(seed),
            flow,
            train_x,
            batch_size=256,
            show_progress=False,
            max_epochs=epochs,
            **shared,
        )
        # Early stopping may end the fit before ``epochs``: count its steps.
        return len(losses["train"]) * per_epoch / (time.perf_counter() - t0)

    def densax_rate():
        res = train(
            jax.random.key(seed),
            train_x,
            method="flow",
            num_steps=steps,
            batch_size=256,
            chunk_size=steps,
            eval_size=0,
        )
        return float(res.history.steps_per_s[0])

    flowjax_rate(), densax_rate()  # compile both
    rates = [(flowjax_rate(), densax_rate()) for _ in range(repeat)]
    fj, ours = np.median(np.array(rates), axis=0)
    return float(fj), float(ours)


def train_flow(seed, train_x, steps, **options):
    """``train(method="flow")``: defaults but ``options``, batch 256."""
    return train(
        jax.random.key(seed),
        train_x,
        method="flow",
        num_steps=steps,
        batch_size=256,
        chunk_size=max(1, min(1000, steps // 4)),
        eval_size=0,
        **options,
    )


def fit_densax_flow(seed, train_x, test_x, steps, **options):
    """The densax flow, defaults but ``options``, batch 256, ``steps`` steps.

    Returns ``(held-out nats, wall seconds, flag)``, the flag ``" NaN"`` for a
    run the NaN guard stopped, ``" diverged"`` for one that ended worse on
    its training data than it started (``TrainResult.diverged``), else ``""``.
    """
    t0 = time.perf_counter()
    res = train_flow(seed, train_x, steps, **options)
    wall = time.perf_counter() - t0
    nats = float(jnp.mean(density(res).log_prob(test_x)))
    flag = " NaN" if not res.finite else " diverged" if res.diverged else ""
    return nats, wall, flag


def fit_ddpm(seed, train_x, test_x, steps):
    """DDPM: (ELBO, ODE log-density) in nats per held-out point."""
    res = train(
        jax.random.key(seed),
        train_x,
        method="ddpm",
        num_steps=steps,
        chunk_size=max(1, min(1000, steps // 2)),
        eval_size=0,
    )
    schedule = diffusion.schedule_of(res.options)
    net = res.generator
    elbo = jax.jit(lambda k, x: diffusion.elbo(k, net, x, schedule))
    ode = jax.jit(
        lambda k, x: diffusion.ode_log_prob(k, net, x, schedule, num_steps=50)
    )
    k = jax.random.key(7)
    return float(jnp.mean(elbo(k, test_x))), float(jnp.mean(ode(k, test_x)))


def write_table(table, notes, names, seeds, records, args):
    """Writes flows.json/md and the likelihood table (mean, std over seeds)."""
    quick = args.quick
    write_results("flows", records, args)
    # The likelihood table: mean (std) over seeds, one row per dataset.
    out = args.out or (RESULTS_DIR / device_tag() / ("quick" if quick else ""))
    summary = {
        name: {
            m: [float(np.mean(v)), float(np.std(v)), notes[name][m]]
            for m, v in table[name].items()
        }
        for name in names
    }
    (out / "likelihood_table.json").write_text(json.dumps(summary, indent=1))
    lines = [
        "| dataset | " + " | ".join(MODELS) + " |",
        "|---" * (len(MODELS) + 1) + "|",
    ]
    for name in names:
        cells = [
            f"{summary[name][m][0]:.3f} ± {summary[name][m][1]:.3f}" for m in MODELS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(LEGEND)
    lines.append("")
    lines.append(
        "nats per held-out point, mean ± std over "
        f"{len(seeds)} seed(s); notes (last seed): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{m} {n}" for m, n in notes[name].items() if n)
            for name in names
        )
    )
    (out / "likelihood_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--seeds", type=int, default=3, help="seeds (full mode)")
    extra.add_argument("--datasets", nargs="*", default=None, help="subset")
    own, rest = extra.parse_known_args()
    args = parse_args(__doc__, rest)
    quick = args.quick
    names = ("two_moons",) if quick else tuple(own.datasets or DATASETS)
    seeds = (0,) if quick else tuple(range(own.seeds))
    n_train, n_test = (2000, 1000) if quick else (20_000, 5000)
    ddpm_steps = 200 if quick else 3000
    table = {name: {m: [] for m in MODELS} for name in names}
    notes = {name: {} for name in names}
    records = []
    for name in names:
        for seed in seeds:
            train_x, test_x = load(name, seed, n_train, n_test)
            case = f"held-out log-lik {name} n={train_x.shape[0]}"
            row = classical(train_x, test_x, quick)
            fj, steps, fj_wall = fit_flowjax(seed, train_x, test_x, quick)
            ours, wall, flag = fit_densax_flow(seed, train_x, test_x, steps)
            own = max(1, round(OWN_EPOCHS * train_x.shape[0] / 256))
            long, long_wall, long_flag = fit_densax_flow(seed, train_x, test_x, own)
            smooth, smooth_wall, smooth_flag = fit_densax_flow(
                seed, train_x, test_x, own, **LOGISTIC
            )
            fj_rate, rate = throughput(seed, train_x, args.repeat)
            elbo, ode = fit_ddpm(seed, train_x, test_x, ddpm_steps)
            row["flowjax"] = (fj, f"{steps} steps, {fj_rate:.0f} steps/s")
            row["densax flow"] = (ours, f"{steps} steps, {rate:.0f} steps/s{flag}")
            row["densax flow 128ep"] = (long, f"{own} steps{long_flag}")
            row["densax flow 128ep logistic"] = (smooth, f"{own} steps{smooth_flag}")
            row["ddpm elbo"] = (elbo, f"{ddpm_steps} steps")
            row["ddpm ode"] = (ode, f"{ddpm_steps} steps")
            walls = {"flowjax": fj_wall, "densax flow": wall}
            walls["densax flow 128ep"] = long_wall
            walls["densax flow 128ep logistic"] = smooth_wall
            for model, (value, note) in row.items():
                table[name][model].append(value)
                notes[name][model] = note
                extra = {}
                if model in walls:
                    extra = {
                        "steps": own if "128ep" in model else steps,
                        "fit_wall_s": round(walls[model], 1),
                    }
                if model in ("flowjax", "densax flow"):
                    extra["steps_per_s"] = round(
                        fj_rate if model == "flowjax" else rate
                    )
                records.append(
                    record(
                        case,
                        model,
                        "float32",
                        None,
                        accuracy={"heldout_nats": round(value, 3)},
                        unit="nats per held-out point",
                        note=note,
                        seed=seed,
                        **extra,
                    )
                )
            print(
                f"{name:16s} seed {seed}  "
                + "  ".join(f"{m} {v:.3f}" for m, (v, _) in row.items())
                + f"  | flowjax {fj_rate:.0f} steps/s, densax {rate:.0f} steps/s",
                flush=True,
            )
        done = names[: names.index(name) + 1]
        write_table(table, notes, done, seeds, records, args)


if __name__ == "__main__":
    main()
