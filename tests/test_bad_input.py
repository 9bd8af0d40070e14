"""Every public function against every class of bad input (issue 20).

One table, ``ROWS``: for each public function of densax, how to call it on
tiny data and which classes of bad input apply to it. Each class has one
test, run over the rows it applies to, eagerly and (where the outcome
differs or costs no compilation) under ``jit``, asserting the documented
outcome: a ``TypeError``/``ValueError`` that names the argument, or the
documented value (NaN confined to the affected output, ``converged=False``).
``test_every_public_function_is_in_the_table`` walks the modules'
``__all__``: a new public function must get a row or a reasoned entry of
``EXCLUDED``.

Kept fast: 12 x 2 inputs, one shape per row (the eager float32 core compiles
once per row and the integer, half-precision and weight-scale cases reuse
it, the half-precision inputs being computed in float32), static checks
raise before any compilation. Half precision under ``jit`` is bfloat16 only.
"""

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import densax
from densax import (
    cluster,
    datasets,
    divergences,
    gaussian,
    gmm,
    image_metrics,
    kde,
    metrics,
    ot,
)

_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.normal(size=(12, 2)), jnp.float32)
W = jnp.asarray(_RNG.uniform(0.1, 1.0, size=12), jnp.float32)
KEY = jax.random.key(0)
P = jnp.asarray(_RNG.dirichlet(np.ones(5), size=3), jnp.float32)  # [3, 5]
Q = jnp.asarray(_RNG.dirichlet(np.ones(5), size=3), jnp.float32)
G = gaussian.Gaussian(jnp.zeros(2), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
MIX = gmm.from_covariances(
    jnp.array([0.4, 0.6]),
    jnp.array([[-1.0, 0.0], [1.0, 0.5]]),
    jnp.ones(2),
    "spherical",
)
KDE = kde.fit(X, bandwidth=0.7)
CENTRES = jnp.asarray(_RNG.normal(size=(3, 2)), jnp.float32)


def _dt(x):
    """The dtype models and side inputs take: ``x``'s when it is floating."""
    dtype = jnp.asarray(x).dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _like(model, x):
    """``model`` with its floating leaves in ``x``'s (floating) dtype."""
    return jax.tree.map(
        lambda a: a.astype(_dt(x)) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        model,
    )


def _n(x):
    return jnp.shape(x)[0] if jnp.ndim(x) else 1


def _other(x):
    """A second point cloud derived from ``x`` (same shape and dtype)."""
    return x[::-1] + 1 if jnp.ndim(x) else x + 1


def _has_nan(tree):
    return any(bool(jnp.any(jnp.isnan(a))) for a in _floats(tree))


def _floats(tree):
    return [
        a
        for a in jax.tree.leaves(tree)
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
    ]


def _not_converged(result):
    return not bool(result.converged)


def _nan_first_row_only(out):
    """NaN in the poisoned query (row 0) only, finite elsewhere."""
    out = jnp.asarray(out)
    return bool(jnp.isnan(out[0]).all()) and bool(jnp.all(jnp.isfinite(out[1:])))


@dataclasses.dataclass(frozen=True)
class Row:
    """How to call one public function, and the bad inputs that apply to it.

    ``call(x, w, key, **options)`` calls the function with ``x`` as its data
    argument (named ``data`` in messages), ``w`` as its weights (``None``:
    default) and ``key`` as its PRNG key. ``checks`` lists the classes of
    bad input that apply. ``nan_jit`` is the documented outcome under ``jit``
    of NaN data, a predicate on the output (``None``: not run under jit).
    ``option`` is a bad option (keyword, value). ``xfail`` maps a check to
    the reason it is expected to fail (strictly).
    """

    call: Callable[..., Any]
    data: str = "x"
    checks: tuple[str, ...] = ()
    nan_jit: Callable[[Any], bool] | None = None
    option: tuple[str, Any] | None = None
    min_n: int = 1  # the fewest samples accepted (the "empty" check uses n=0)
    xfail: dict[str, str] = dataclasses.field(default_factory=dict)
    jit: bool = True  # False: a host loop (streams), checked eagerly only


ESTIMATOR = ("rank", "empty", "d0", "bool", "int", "half", "nan")
EVALUATOR = ("rank", "d0", "bool", "int", "half", "nan")
WEIGHTS = ("negative", "zero_sum", "scale")


def _opt(kw, **defaults):
    return {**defaults, **kw}


ROWS: dict[str, Row] = {
    # --------------------------------------------------------------- gaussian
    "gaussian.fit": Row(
        lambda x, w, key, **kw: gaussian.fit(x, sample_weight=w, **kw),
        checks=(*ESTIMATOR, *WEIGHTS),
        nan_jit=_has_nan,
        option=("reg_covar", float("nan")),
    ),
    "gaussian.log_prob": Row(
        lambda x, w, key, **kw: gaussian.log_prob(_like(G, x), x, **kw),
        checks=("d0", "bool", "int", "half", "nan"),  # any rank [..., d]
        nan_jit=_nan_first_row_only,
    ),
    "gaussian.sample": Row(
        lambda x, w, key, **kw: gaussian.sample(
            key, gaussian.Gaussian(x[0], _like(G.cov, x)), 4, **kw
        ),
        data="model.mean",
        checks=("half", "key", "nan"),
        nan_jit=_has_nan,
    ),
    # -------------------------------------------------------------------- gmm
    "gmm.fit": Row(
        lambda x, w, key, **kw: gmm.fit(
            key, x, 2, sample_weight=w, **_opt(kw, covariance_type="diag")
        ),
        checks=(*ESTIMATOR, *WEIGHTS, "key"),
        nan_jit=_not_converged,
        option=("covariance_type", "nope"),
        min_n=2,
    ),
    "gmm.fit_stream": Row(
        lambda x, w, key, **kw: gmm.fit_stream(
            key, [x if w is None else (x, w)], 2, **_opt(kw, covariance_type="diag")
        ),
        data="chunk",
        checks=(*ESTIMATOR, *WEIGHTS, "key"),
        jit=False,
        option=("covariance_type", "nope"),
        min_n=2,
    ),
    "gmm.fit_online": Row(
        lambda x, w, key, **kw: gmm.fit_online(
            key, [x if w is None else (x, w)], 2, **_opt(kw, covariance_type="diag")
        ),
        data="chunk",
        checks=(*ESTIMATOR, *WEIGHTS, "key"),
        jit=False,
        option=("covariance_type", "nope"),
        min_n=2,
    ),
    "gmm.init": Row(
        lambda x, w, key, **kw: gmm.init(
            key, x, 2, sample_weight=w, **_opt(kw, covariance_type="diag")
        ),
        checks=(*ESTIMATOR, *WEIGHTS, "key"),
        option=("method", "nope"),
        min_n=2,
    ),
    "gmm.e_step": Row(
        lambda x, w, key, **kw: gmm.e_step(_like(MIX, x), x, sample_weight=w, **kw),
        checks=(*EVALUATOR, *WEIGHTS),
    ),
    "gmm.m_step": Row(
        lambda x, w, key, **kw: gmm.m_step(
            x,
            jnp.log(jnp.full((_n(x), 2), 0.5, _dt(x))),
            sample_weight=w,
            **_opt(kw, covariance_type="diag"),
        ),
        checks=(*ESTIMATOR, *WEIGHTS),
        option=("covariance_type", "nope"),
    ),
    "gmm.em_step": Row(
        lambda x, w, key, **kw: gmm.em_step(_like(MIX, x), x, sample_weight=w, **kw),
        checks=(*EVALUATOR, *WEIGHTS),
        option=("reg_covar", -1.0),
    ),
    "gmm.log_prob": Row(
        lambda x, w, key, **kw: gmm.log_prob(_like(MIX, x), x, **kw),
        checks=EVALUATOR,
        nan_jit=_nan_first_row_only,
    ),
    "gmm.predict_proba": Row(
        lambda x, w, key, **kw: gmm.predict_proba(_like(MIX, x), x, **kw),
        checks=EVALUATOR,
    ),
    "gmm.predict": Row(
        lambda x, w, key, **kw: gmm.predict(_like(MIX, x), x, **kw),
        checks=("rank", "d0", "bool", "int", "nan"),
    ),
    "gmm.bic": Row(
        lambda x, w, key, **kw: gmm.bic(_like(MIX, x), x, sample_weight=w, **kw),
        checks=(*EVALUATOR, "negative", "zero_sum"),
    ),
    "gmm.aic": Row(
        lambda x, w, key, **kw: gmm.aic(_like(MIX, x), x, sample_weight=w, **kw),
        checks=(*EVALUATOR, "negative", "zero_sum"),
    ),
    "gmm.sample": Row(lambda x, w, key, **kw: gmm.sample(key, MIX, 4), checks=("key",)),
    "gmm.sample_with_labels": Row(
        lambda x, w, key, **kw: gmm.sample_with_labels(key, MIX, 4), checks=("key",)
    ),
    "gmm.from_covariances": Row(
        lambda x, w, key, **kw: gmm.from_covariances(
            jnp.full(_n(x), 1 / _n(x), _dt(x)),
            x,
            jnp.ones(_n(x), _dt(x)),
            **_opt(kw, covariance_type="spherical"),
        ),
        data="means",
        checks=("rank", "bool", "half", "nan"),
        nan_jit=_has_nan,
        option=("covariance_type", "nope"),
    ),
    "gmm.from_precisions": Row(
        lambda x, w, key, **kw: gmm.from_precisions(
            jnp.full(_n(x), 1 / _n(x), _dt(x)),
            x,
            jnp.ones(_n(x), _dt(x)),
            **_opt(kw, covariance_type="spherical"),
        ),
        data="means",
        checks=("rank", "bool", "half", "nan"),
        option=("covariance_type", "nope"),
    ),
    # -------------------------------------------------------------------- kde
    "kde.fit": Row(
        lambda x, w, key, **kw: kde.fit(x, sample_weight=w, **_opt(kw, bandwidth=0.7)),
        data="data",
        checks=(*ESTIMATOR, *WEIGHTS),
        option=("kernel", "nope"),
    ),
    "kde.log_prob": Row(
        lambda x, w, key, **kw: kde.log_prob(_like(KDE, x), x, **kw),
        checks=("rank", "d0", "bool", "int", "half", "nan_value"),
        nan_jit=_nan_first_row_only,
    ),
    "image_metrics.frechet_distance": Row(
        lambda x, w, key, **kw: image_metrics.frechet_distance(x, _other(x), **kw),
        checks=("rank", "bool", "int", "half"),
    ),
    "kde.grid_log_prob": Row(
        lambda x, w, key, **kw: kde.grid_log_prob(_like(KDE, x), 16, **kw),
        checks=("half",),
    ),
    "kde.interpolate": Row(
        lambda x, w, key, **kw: kde.interpolate(
            kde.grid_log_prob(_like(KDE, x), 16), x, **kw
        ),
        checks=("rank", "bool", "int", "half"),
    ),
    "kde.loo_log_likelihood": Row(
        lambda x, w, key, **kw: kde.loo_log_likelihood(x, 0.7, sample_weight=w, **kw),
        data="data",
        checks=(*ESTIMATOR, *WEIGHTS),
        option=("kernel", "nope"),
        min_n=2,
    ),
    "kde.scott": Row(
        lambda x, w, key, **kw: kde.scott(x, sample_weight=w, **kw),
        data="data",
        checks=(*ESTIMATOR, *WEIGHTS),
        min_n=2,
    ),
    "kde.silverman": Row(
        lambda x, w, key, **kw: kde.silverman(x, sample_weight=w, **kw),
        data="data",
        checks=(*ESTIMATOR, "negative", "zero_sum"),
        min_n=2,
    ),
    "kde.sample": Row(lambda x, w, key, **kw: kde.sample(key, KDE, 4), checks=("key",)),
    # ------------------------------------------------------------ divergences
    "divergences.kl_divergence": Row(
        lambda x, w, key, **kw: divergences.kl_divergence(x, _like(Q, x), **kw),
        data="p",
        checks=("bool", "half", "nan", "unnormalised"),
        nan_jit=_nan_first_row_only,
        option=("axis", 5),
    ),
    "divergences.js_divergence": Row(
        lambda x, w, key, **kw: divergences.js_divergence(x, _like(Q, x), **kw),
        data="p",
        checks=("bool", "half", "nan", "unnormalised"),
        nan_jit=_nan_first_row_only,
        option=("base", -2.0),
    ),
    "divergences.kl_divergence_from_log": Row(
        lambda x, w, key, **kw: divergences.kl_divergence_from_log(
            jnp.log(x), jnp.log(_like(Q, x)), **kw
        ),
        data="log_p",
        checks=("half", "nan", "unnormalised"),
        option=("axis", 5),
    ),
    "divergences.js_divergence_from_log": Row(
        lambda x, w, key, **kw: divergences.js_divergence_from_log(
            jnp.log(x), jnp.log(_like(Q, x)), **kw
        ),
        data="log_p",
        checks=("half", "nan", "unnormalised"),
        option=("base", 1.0),
    ),
    "divergences.kl_gaussian": Row(
        lambda x, w, key, **kw: divergences.kl_gaussian(
            x[0], _like(G.cov, x), x[1], _like(G.cov, x)
        ),
        data="mean_p",
        checks=("bool", "half"),
    ),
    "divergences.kl_monte_carlo": Row(
        lambda x, w, key, **kw: divergences.kl_monte_carlo(key, G, MIX, 8),
        checks=("key",),
    ),
    "divergences.js_monte_carlo": Row(
        lambda x, w, key, **kw: divergences.js_monte_carlo(key, G, MIX, 8),
        checks=("key",),
    ),
    # ---------------------------------------------------------------- metrics
    "metrics.mode_coverage": Row(
        lambda x, w, key, **kw: metrics.mode_coverage(x, _like(CENTRES, x), 0.5, **kw),
        checks=("rank", "empty", "bool", "int", "half"),
        option=("n_std", -1.0),
    ),
    "metrics.heldout_log_likelihood": Row(
        lambda x, w, key, **kw: metrics.heldout_log_likelihood(
            _like(G, x), x, sample_weight=w, **kw
        ),
        data="heldout",
        checks=("rank", "empty", "bool", "int", "half", "negative", "zero_sum"),
    ),
    "metrics.sw2": Row(
        lambda x, w, key, **kw: metrics.sw2(key, x, x + 1.0, n_projections=8),
        checks=("key",),
    ),
    "metrics.sw2_noise_floor": Row(
        lambda x, w, key, **kw: metrics.sw2_noise_floor(
            key, datasets.two_moons, 8, n_projections=8, n_repeats=2
        ),
        checks=("key",),
    ),
    # ---------------------------------------------------------------- cluster
    "cluster.kmeans": Row(
        lambda x, w, key, **kw: cluster.kmeans(
            key, x, 2, sample_weight=w, **_opt(kw, max_iter=5)
        ),
        checks=("rank", "empty", "bool", "int", "half", "nan", "key", "negative"),
        option=("init", "nope"),
        min_n=2,
    ),
    "cluster.kmeans_plusplus": Row(
        lambda x, w, key, **kw: cluster.kmeans_plusplus(key, x, 2, sample_weight=w),
        checks=("rank", "empty", "bool", "int", "half", "nan", "key", "negative"),
        min_n=2,
    ),
    # --------------------------------------------------------------------- ot
    # (densax.ot is owned by the OT helper, wip-split; its own table is
    # tests/test_ot_api.py. These rows hold it to the same policy.)
    # Only the checks that compile nothing (or little) here: the solvers'
    # dtypes are the rows of tests/test_ot_api.py.
    "ot.sinkhorn": Row(
        lambda x, w, key, **kw: ot.sinkhorn(x, _other(x), **kw).reg_cost,
        checks=("rank", "bool", "nan"),
    ),
    "ot.sliced_wasserstein": Row(
        lambda x, w, key, **kw: ot.sliced_wasserstein(
            key, x, _other(x), n_projections=4, **kw
        ),
        checks=("rank", "bool", "int", "half", "key", "nan"),
    ),
    "ot.wasserstein_1d": Row(
        lambda x, w, key, **kw: ot.wasserstein_1d(
            jnp.reshape(x, -1), _other(jnp.reshape(x, -1)), **kw
        ),
        data="u",
        checks=("bool", "int", "half", "nan"),
    ),
    "ot.emd2": Row(
        lambda x, w, key, **kw: ot.emd2(x, _other(x), **kw),
        checks=("rank", "bool", "nan"),
    ),
    "ot.wasserstein_exact": Row(
        lambda x, w, key, **kw: ot.wasserstein_exact(x, _other(x), **kw),
        checks=("rank", "bool", "nan"),
    ),
    "ot.wasserstein_entropic": Row(
        lambda x, w, key, **kw: ot.wasserstein_entropic(x, _other(x), **kw),
        checks=("rank", "bool", "nan"),
    ),
    # --------------------------------------------------------------- datasets
    **{
        f"datasets.{name}": Row(
            lambda x, w, key, _name=name, **kw: getattr(datasets, _name)(key, 4),
            checks=("key",),
        )
        for name in (
            "eight_gaussians",
            "rings",
            "swiss_roll",
            "twenty_five_gaussians",
            "two_moons",
        )
    },
    "datasets.regime_series": Row(
        lambda x, w, key, **kw: datasets.regime_series(key, 4, **kw),
        checks=("key",),
        option=("means", (float("nan"), 0.0, 1.0)),
    ),
}

# Public functions without a row, and why.
EXCLUDED = {
    "density.as_model": "takes any object (no data); tested in test_contract.py",
    "density.check_density": "takes any object; raises the TypeError it documents",
    "datasets.eight_gaussians_modes": "no argument",
    "datasets.twenty_five_gaussians_modes": "no argument",
    "generative.train": "bad inputs tested in test_generative_train.py "
    "(checkpoints, d=0, n=0, half precision, NaN data): each call compiles",
    "generative.sample": "takes a TrainResult; tested in test_generative_methods.py",
    "generative.density": "takes a TrainResult; tested in test_flows.py",
    "cluster.quantize": "takes a density model; its k and key checks are "
    "the kmeans ones (tested in test_cluster.py)",
    "datasets.digits": "no data argument (options checked in test_images.py)",
    "image_metrics.train_classifier": "a training loop over images and labels; "
    "tested in test_images.py",
    "image_metrics.classifier_accuracy": "takes a trained Classifier",
    "image_metrics.fid": "takes a trained Classifier; its core is frechet_distance",
    "image_metrics.class_coverage": "takes integer labels, not data",
    "image_metrics.bits_per_dim": "takes log-densities, not data",
}
# Whole modules whose bad inputs are tested by their own tables: the OT
# package (tests/test_ot_api.py, a table over densax.ot's functions, owned by
# the OT helper), and the generative building blocks (networks, losses,
# schedules: internal pieces of `train`, tested in test_generative_*.py).
EXCLUDED_MODULES = {
    "ot": "tests/test_ot_api.py's table (plus the ot.* rows of ROWS)",
    "generative.checkpoint": "tests/test_generative_train.py (every unreadable file)",
    "generative.diffusion": "building blocks of train; q_sample below",
    "generative.flows": "building blocks of train (test_flows.py)",
    "generative.bijectors": "building blocks of flows (test_flows.py's table)",
    "generative.gans": "building blocks of train",
    "generative.losses": "building blocks of train (test_generative_losses.py)",
    "generative.method": "building blocks of train",
    "generative.models": "building blocks of train",
    "generative.training": "train and sample: see EXCLUDED",
    "generative.image_nets": "building blocks of train (test_images.py)",
}


def _public_functions():
    names = set()
    for sub in densax._SUBMODULES:
        mod = importlib.import_module(f"densax.{sub}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                names.add(f"{sub}.{name}")
            elif inspect.ismodule(obj):
                for inner in getattr(obj, "__all__", ()):
                    if inspect.isfunction(getattr(obj, inner)):
                        names.add(f"{sub}.{name}.{inner}")
    return names


def test_every_public_function_is_in_the_table():
    missing = {
        name
        for name in _public_functions() - set(ROWS) - set(EXCLUDED)
        if not any(name == m or name.startswith(m + ".") for m in EXCLUDED_MODULES)
    }
    assert not missing, f"public functions without a row in ROWS: {sorted(missing)}"


def _cases(check):
    out = []
    for name, row in ROWS.items():
        if check in row.checks:
            marks = ()
            if check in row.xfail:
                marks = pytest.mark.xfail(strict=True, reason=row.xfail[check])
            out.append(pytest.param(row, id=name, marks=marks))
    return out


def _data(row):
    return P if row.data in ("p", "log_p") else X


_JITTED = {}


def _jitted(row):
    """``row.call`` of the data under jit, one per row: the half-precision and
    the NaN cases share its (bfloat16) compilation."""
    if id(row) not in _JITTED:
        _JITTED[id(row)] = jax.jit(lambda x: row.call(x, None, KEY))
    return _JITTED[id(row)]


def _eager_and_jit(row, x, w=None, key=KEY, **kw):
    """The call, eagerly and under jit (static errors: no compilation)."""
    yield lambda: row.call(x, w, key, **kw)
    if row.jit:
        yield lambda: jax.jit(lambda x, w: row.call(x, w, key, **kw))(x, w)


@pytest.mark.parametrize("row", _cases("rank"))
def test_wrong_rank_names_the_argument(row):
    for bad in (X[None], X[0, 0]):
        for call in _eager_and_jit(row, bad):
            with pytest.raises(ValueError, match=row.data):
                call()


@pytest.mark.parametrize("row", _cases("empty"))
def test_too_few_samples_name_the_argument(row):
    for n in sorted({0, row.min_n - 1}):
        for call in _eager_and_jit(row, X[:n], None):
            with pytest.raises(ValueError, match=row.data):
                call()


@pytest.mark.parametrize("row", _cases("d0"))
def test_no_feature_names_the_argument(row):
    with pytest.raises(ValueError, match=row.data):
        row.call(X[:, :0], None, KEY)


@pytest.mark.parametrize("row", _cases("bool"))
def test_bool_and_complex_data_are_type_errors(row):
    for bad in (X > 0, X.astype(jnp.complex64)):
        with pytest.raises(TypeError, match=row.data):
            row.call(bad, None, KEY)


@pytest.mark.parametrize("row", _cases("int"))
def test_integer_data_are_computed_in_the_default_float(row):
    out = row.call(jnp.round(X * 3).astype(jnp.int32), None, KEY)
    for leaf in _floats(out):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("row", _cases("half"))
def test_half_precision_is_computed_in_float32(row):
    """float16 eagerly, bfloat16 under jit: results in the input's dtype."""
    x = _data(row)
    ref = row.call(x, None, KEY)
    cases = ((jnp.float16, False), (jnp.bfloat16, True))
    for dtype, jit in cases if row.jit else cases[:1]:
        half = x.astype(dtype)
        fn = (
            (lambda x: row.call(x, None, KEY))
            if not jit
            else jax.jit(lambda x: row.call(x, None, KEY))
        )
        out = fn(half)
        for got, want in zip(_floats(out), _floats(ref), strict=True):
            assert got.dtype == dtype
            # The inputs rounded to half precision, the result rounded to it.
            np.testing.assert_allclose(
                np.asarray(got, np.float32), want, rtol=0.1, atol=0.1
            )


@pytest.mark.parametrize("row", _cases("nan"))
def test_nan_data(row):
    """Eagerly a ValueError naming the argument; under jit the documented value."""
    bad = _data(row).at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=row.data):
        row.call(bad, None, KEY)
    if row.nan_jit is not None:  # in bfloat16: the compilation of the half case
        out = _jitted(row)(bad.astype(jnp.bfloat16))
        assert row.nan_jit(out)


@pytest.mark.parametrize("row", _cases("nan_value"))
def test_nan_data_documented_as_nan_output(row):
    """NaN queries are not an error: NaN for them only, eagerly and under jit."""
    bad = X.at[0, 0].set(jnp.nan)
    assert row.nan_jit(row.call(bad, None, KEY))
    assert row.nan_jit(_jitted(row)(bad.astype(jnp.bfloat16)))


@pytest.mark.parametrize("row", _cases("negative"))
def test_negative_weights(row):
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        row.call(X, W.at[0].set(-1.0), KEY)


@pytest.mark.parametrize("row", _cases("zero_sum"))
def test_zero_sum_weights(row):
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        row.call(X, jnp.zeros_like(W), KEY)


@pytest.mark.parametrize("row", _cases("scale"))
def test_weights_act_only_through_their_ratios(row):
    ref = row.call(X, W, KEY)
    for scale in (1e-5, 1e-30, 1e30):
        out = row.call(X, W * scale, KEY)
        for got, want in zip(_floats(out), _floats(ref), strict=True):
            # float32: the same computation on rescaled weights, up to rounding
            # of the rescaling (a few ulps, carried through the fit).
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize(
    "row", [pytest.param(r, id=name) for name, r in ROWS.items() if r.option]
)
def test_bad_options_name_the_argument(row):
    name, value = row.option
    with pytest.raises((ValueError, TypeError), match=name):
        row.call(_data(row), None, KEY, **{name: value})


@pytest.mark.parametrize("row", _cases("key"))
def test_wrong_key_types_name_the_key(row):
    for bad in (0, 1.5, jnp.zeros(3, jnp.uint32), jnp.zeros(2, jnp.float32)):
        with pytest.raises(TypeError, match="key must be a PRNG key"):
            row.call(X, None, bad)


@pytest.mark.parametrize("row", _cases("unnormalised"))
def test_unnormalised_probabilities_need_normalize(row):
    with pytest.raises(ValueError, match="must sum to one"):
        row.call(P * 0.5, None, KEY)
    # With normalize=True they are normalised first: the same value.
    np.testing.assert_allclose(
        row.call(P * 0.5, None, KEY, normalize=True),
        row.call(P, None, KEY),
        rtol=1e-5,
        atol=1e-7,
    )


# ---------------------------------------------------------------------------
# The reproducers of issue 20, made permanent (tiny, eager).


def test_gmm_max_iter_zero_returns_the_initialisation():
    res = gmm.fit(KEY, X, 2, covariance_type="diag", max_iter=0)
    # fit draws the restarts' keys by splitting its key (n_init=1: one)
    start = gmm.init(jax.random.split(KEY, 1)[0], X, 2, covariance_type="diag")
    np.testing.assert_allclose(res.model.means, start.means, rtol=1e-6)
    assert res.trace.shape == (0,) and int(res.n_iter) == 0
    assert float(res.log_likelihood) == -np.inf and not bool(res.converged)


def test_gmm_warm_start_converges_like_scikit_learn():
    first = gmm.fit(KEY, X, 2, covariance_type="diag", tol=1e-3)
    assert bool(first.converged)
    again = gmm.fit(KEY, X, 2, covariance_type="diag", max_iter=1, init_params=first)
    assert bool(again.converged) and int(again.n_iter) == 1
    cold = gmm.fit(
        KEY, X, 2, covariance_type="diag", max_iter=1, init_params=first.model
    )
    assert not bool(cold.converged)  # a bare model starts from -inf
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        gmm.fit(None, X, 2)  # the key is needed without init_params


def test_mixture_constructors_check_values():
    means, ones = jnp.zeros((2, 2)), jnp.ones(2)
    sph = "spherical"
    for weights, match in (
        (jnp.array([-0.5, 1.5]), "weights must be non-negative"),
        (jnp.array([1.0, 1.0]), "weights must sum to one"),
    ):
        with pytest.raises(ValueError, match=match):
            gmm.from_covariances(weights, means, ones, sph)
    half = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match="precisions must be positive definite"):
        gmm.from_precisions(half, means, jnp.array([0.0, 1.0]), sph)
    with pytest.raises(ValueError, match="covariances must be symmetric"):
        gmm.from_covariances(half, means, jnp.array([[[1.0, 0.5], [0.0, 1.0]]] * 2))
    with pytest.raises(ValueError, match="precisions must be positive definite"):
        gmm.init(KEY, X, 2, precisions=-jnp.stack([jnp.eye(2)] * 2))
    # Under jit the documented outcome: NaN precision factors, fit not converged.
    bad = jax.jit(lambda p: gmm.from_precisions(half, means, p))(
        -jnp.stack([jnp.eye(2)] * 2)
    )
    assert _has_nan(bad.precisions_cholesky)
    for value in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="reg_covar"):
            gmm.fit(KEY, X, 2, reg_covar=value)
    # A traced reg_covar is accepted (e.g. to differentiate with respect to
    # it): tracing is enough to show it (no compilation).
    out = jax.eval_shape(
        lambda r: gmm.fit(KEY, X, 2, covariance_type="diag", reg_covar=r), 1e-3
    )
    assert out.log_likelihood.shape == ()


def test_gaussian_checks_its_covariance():
    lopsided = gaussian.Gaussian(jnp.zeros(2), jnp.array([[2.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match=r"model\.cov must be symmetric"):
        gaussian.log_prob(lopsided, X)
    with pytest.raises(ValueError, match="cov_p must be symmetric"):
        divergences.kl_gaussian(jnp.zeros(2), lopsided.cov, jnp.zeros(2), G.cov)
    for cov in (jnp.zeros((2, 2)), -jnp.eye(2)):
        singular = gaussian.Gaussian(jnp.zeros(2), cov)
        with pytest.raises(ValueError, match=r"model\.cov must be positive definite"):
            gaussian.sample(KEY, singular, 3)
        assert _has_nan(gaussian.sample(KEY, singular, 3, validate=False))


def test_heldout_log_likelihood_refuses_an_unconverged_fit():
    dup = jnp.concatenate([X[:6]] * 3)  # duplicates: the LOO bandwidth collapses
    res = kde.fit(dup, bandwidth="loo", max_iter=5)
    assert not bool(res.converged)
    with pytest.raises(ValueError, match="did not converge"):
        metrics.heldout_log_likelihood(res, X)
    metrics.heldout_log_likelihood(res.model, X)  # explicitly: allowed


def test_kl_keeps_its_digits_when_p_and_q_nearly_agree():
    # SciPy gh-20710: p log(p/q) summed where p ~ q; reference in float64
    # from scipy.special.rel_entr on the same numbers (exact to ~1e-10 here).
    from scipy.special import rel_entr

    with jax.enable_x64(True):
        p = np.array([0.2, 0.3, 0.5])
        q = p * (1 + 1e-6 * np.array([1.0, -2.0, 0.8]))
        q = q / q.sum()
        want = rel_entr(p, q).sum()
        got = float(divergences.kl_divergence(p, q))
        assert got == pytest.approx(want, rel=1e-6)
        js = float(divergences.js_divergence(p, q))
        assert 0 < js == pytest.approx(want / 4, rel=1e-3)  # JS ~ KL / 4 here


def test_q_sample_refuses_out_of_range_timesteps():
    from densax.generative import diffusion

    schedule = diffusion.linear_schedule(10)
    x0 = jnp.ones((2, 2))
    for t in (jnp.array([0, 10]), jnp.array([-1, 0])):
        with pytest.raises(ValueError, match=r"t must be in \[0, 10\)"):
            diffusion.q_sample(KEY, x0, t, schedule)
        out = jax.jit(lambda t: diffusion.q_sample(KEY, x0, t, schedule))(t)
        assert _nan_first_row_only(out[::-1] if int(t[0]) == 0 else out)
    with pytest.raises(TypeError, match="t must hold integer"):
        diffusion.q_sample(KEY, x0, jnp.array([0.5, 1.0]), schedule)


def test_wasserstein_1d_with_an_infinite_sample_is_inf():
    assert (
        float(ot.wasserstein_1d(jnp.array([0.0, 1.0]), jnp.array([0.0, jnp.inf])))
        == np.inf
    )


def test_w2_float32_does_not_overflow():
    # W2 between 0 and 1e30 is 1e30, representable in float32; |x - y|^2 is not.
    got = ot.wasserstein_1d(jnp.array([0.0]), jnp.array([1e30]), p=2)
    assert float(got) == pytest.approx(1e30, rel=1e-5)
