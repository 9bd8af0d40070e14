"""Where a flow's held-out likelihood is lost: flows against the truth and the GMM.

On two moons and the Swiss roll (``densax.datasets``, noise 0.1; 20,000
training and 5,000 held-out points, the data of ``bench_flows.py``), the
densax flow stays a few thousandths of a nat per point behind the GMM with K
by BIC. This script measures why, against the *true* log-density of the data
(both are a curve convolved with isotropic Gaussian noise of 0.1, so the
truth is a one-dimensional integral, computed on a fine grid of the curve):

* ``excess`` = mean log-density of the model minus the truth's, on the
  held-out points (the KL divergence from the truth, estimated: 0 is best)
  and on 5,000 training points (above 0: the model fits this sample better
  than the truth does, i.e. it overfits);
* rows: the GMM (K by BIC over 4, 8, 16, 32), the regularised flow of
  ``bench_flows.py`` (``REG``: tanh conditioners, noise 0.02), an ensemble
  (the mixture of that flow trained from 4 initialisations: does the error
  come from the optimiser or from the sample?), a smoother spline flow
  (4 knots, 16 layers of 32 x 32), and affine (RealNVP) couplings, which are
  smooth but less expressive (16 layers of 64 x 64 and of 128 x 128).

Every flow is ``train(method="flow")``: 10,000 steps of 256 (128 epochs),
cosine decay from 3e-3. ``--quick``: two moons, 2,000 points, 500 steps.
"""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, record, write_results
from bench_flows import REG, gmm_by_bic, load, train_flow

from densax import gmm
from densax.generative import density

NOISE = 0.1  # the datasets' noise standard deviation
MEMBERS = 4  # flows in the ensemble
VARIANTS = {  # row -> train() options besides REG's
    "flow reg, 4 knots, 16 layers of 32x32": {
        "knots": 4,
        "layers": 16,
        "hidden": (32, 32),
    },
    "affine flow, 16 layers of 64x64": {"transform": "affine", "layers": 16},
    "affine flow, 16 layers of 128x128": {
        "transform": "affine",
        "layers": 16,
        "hidden": (128, 128),
    },
}


def curve(name: str) -> np.ndarray:
    """[m, 2] a fine, uniform-in-parameter grid of the dataset's noiseless curve."""
    if name == "two_moons":
        th = (np.arange(8000) + 0.5) / 8000 * np.pi
        upper = np.stack([np.cos(th), np.sin(th)], 1)
        return np.concatenate(
            [upper, np.stack([1 - upper[:, 0], 0.5 - upper[:, 1]], 1)]
        )
    u = (np.arange(40_000) + 0.5) / 40_000
    t = 1.5 * np.pi * (1 + 2 * u)
    return np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5


def true_log_prob(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[n] log of the mean over the curve of N(x; point, NOISE^2 I), float64."""
    x = np.asarray(x, np.float64)
    out = []
    for i in range(0, len(x), 500):
        d2 = ((x[i : i + 500, None, :] - points[None]) ** 2).sum(-1)
        out.append(
            logsumexp(-d2 / (2 * NOISE**2), axis=1)
            - np.log(len(points))
            - np.log(2 * np.pi * NOISE**2)
        )
    return np.concatenate(out)


def flow(seed, train_x, steps, **options):
    """A trained flow's density model."""
    return density(train_flow(seed, train_x, steps, **options))


def models(name, train_x, quick, steps, members):
    """{row: (log_prob function, note)} of the models compared on ``name``."""
    k, g = gmm_by_bic(train_x, quick)
    out = {"gmm (K by BIC)": (lambda x: gmm.log_prob(g, x), f"K={k}")}
    ensemble = [flow(1000 * j, train_x, steps, **REG) for j in range(members)]
    out["flow reg"] = (ensemble[0].log_prob, "tanh, noise 0.02")

    def mixture(x):
        lp = jnp.stack([m.log_prob(x) for m in ensemble])
        return logsumexp(lp, axis=0) - jnp.log(len(ensemble))

    out[f"mixture of {members} flow reg"] = (mixture, f"{members} initialisations")
    for row, options in VARIANTS.items():
        out[row] = (flow(0, train_x, steps, **{**REG, **options}).log_prob, "")
    return out


def main():
    args = parse_args(__doc__)
    quick = args.quick
    names = ("two_moons",) if quick else ("two_moons", "swiss_roll")
    n_train, n_test = (2000, 1000) if quick else (20_000, 5000)
    steps = 500 if quick else max(1, round(128 * n_train / 256))
    members = 2 if quick else MEMBERS
    records = []
    for name in names:
        train_x, test_x = load(name, 0, n_train, n_test)
        fit_x = train_x[:5000]
        points = curve(name)
        truth_test = true_log_prob(test_x, points)
        truth_fit = true_log_prob(fit_x, points)
        case = f"{name} n={n_train} seed 0 (truth {truth_test.mean():.4f})"
        for row, (log_prob, note) in models(
            name, train_x, quick, steps, members
        ).items():
            held = np.asarray(log_prob(test_x), np.float64)
            fit = np.asarray(log_prob(fit_x), np.float64)
            accuracy = {
                "heldout_nats": round(float(held.mean()), 4),
                "excess_heldout": round(float((held - truth_test).mean()), 4),
                "excess_train": round(float((fit - truth_fit).mean()), 4),
            }
            records.append(
                record(
                    case,
                    row,
                    "float32",
                    None,
                    accuracy=accuracy,
                    unit="nats per point",
                    note=note,
                )
            )
            print(f"{name:10s} {row:40s} {accuracy}", flush=True)
    write_results("flows_ablation", records, args)


if __name__ == "__main__":
    main()
