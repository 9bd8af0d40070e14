"""Domain adaptation by optimal transport, against POT's ot.da."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from densax.ot import da

_POT = dict(tol=1e-14, max_iter=100000)


def _domains(dtype=np.float64):
    rng = np.random.default_rng(0)
    n, m = 60, 50
    ys = rng.integers(0, 3, n)
    xs = rng.normal(size=(n, 2)) + ys[:, None] * 2.0
    yt = rng.integers(0, 3, m)
    shear = np.array([[1.0, 0.3], [0.0, 0.8]])
    xt = (rng.normal(size=(m, 2)) + yt[:, None] * 2.0) @ shear + 1.0
    xnew = rng.normal(size=(7, 2)) * 2
    return xs.astype(dtype), ys, xt.astype(dtype), yt, xnew.astype(dtype)


def test_sinkhorn_transport_matches_pot(x64):
    xs, ys, xt, _, xnew = _domains()
    tr = da.fit_sinkhorn(xs, xt, epsilon=1.0, tol=1e-11, max_iter=5000)
    assert tr.converged and tr.plan.dtype == jnp.float64
    cont = pot.da.SinkhornTransport(reg_e=1.0, **_POT).fit(Xs=xs, Xt=xt)
    ferr = pot.da.SinkhornTransport(reg_e=1.0, out_of_sample_map="ferradans", **_POT)
    ferr.fit(Xs=xs, Xt=xt)
    np.testing.assert_allclose(tr.plan, cont.coupling_, atol=1e-10)
    for pts in (xs, xnew):  # training points and new points
        np.testing.assert_allclose(
            da.transform(tr, pts, out_of_sample="continuous"),
            cont.transform(Xs=pts),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            da.transform(tr, pts), ferr.transform(Xs=pts), atol=1e-6
        )
    np.testing.assert_allclose(
        da.transfer_labels(tr, ys, 3), ferr.transform_labels(ys), atol=1e-6
    )

    # Gradient of transported points with respect to the target sample, along
    # a random direction, against central finite differences.
    def moved(t):
        fitted = da.fit_sinkhorn(xs, t, epsilon=1.0, tol=1e-11, max_iter=5000)
        return jnp.sum(da.transform(fitted, xnew) ** 2)

    v = jax.random.normal(jax.random.key(0), xt.shape, jnp.float64)
    h = 1e-5
    fd = (moved(xt + h * v) - moved(xt - h * v)) / (2 * h)
    np.testing.assert_allclose(
        jnp.vdot(jax.grad(moved)(jnp.asarray(xt)), v), fd, rtol=1e-5
    )


def test_class_regularised_and_semi_supervised_match_pot(x64):
    xs, ys, xt, yt, xnew = _domains()
    tr = da.fit_sinkhorn(
        xs, xt, ys=ys, epsilon=1.0, class_reg=0.5, tol=1e-11, max_iter=5000
    )
    ref = pot.da.SinkhornLpl1Transport(
        reg_e=1.0, reg_cl=0.5, tol=1e-14, max_inner_iter=100000
    ).fit(Xs=xs, ys=ys, Xt=xt)
    np.testing.assert_allclose(tr.plan, ref.coupling_, atol=1e-10)
    np.testing.assert_allclose(
        da.transform(tr, xnew), ref.transform(Xs=xnew), atol=1e-6
    )
    assert tr.g is None
    with pytest.raises(ValueError, match="continuous"):
        da.transform(tr, xnew, out_of_sample="continuous")
    # The group penalty concentrates each target's mass on one class.
    plain = da.fit_sinkhorn(xs, xt, epsilon=1.0, tol=1e-11, max_iter=5000)
    purity = lambda t: float(jnp.mean(jnp.max(da.transfer_labels(t, ys, 3), axis=1)))
    assert purity(tr) > purity(plain)
    # A few known target labels forbid the pairs that disagree (POT: limit_max).
    partial = np.where(np.arange(len(yt)) % 3 == 0, yt, -1)
    semi = da.fit_sinkhorn(
        xs, xt, ys=ys, yt=partial, epsilon=1.0, tol=1e-11, max_iter=5000
    )
    ref = pot.da.SinkhornTransport(reg_e=1.0, out_of_sample_map="ferradans", **_POT)
    ref.fit(Xs=xs, ys=ys, Xt=xt, yt=partial)
    assert semi.converged
    np.testing.assert_allclose(semi.plan, ref.coupling_, atol=1e-10)


def test_linear_transport_matches_pot(dtype):
    xs, _, xt, _, xnew = _domains(dtype)
    lin = da.fit_linear(xs, xt)
    ref = pot.da.LinearTransport().fit(
        Xs=xs.astype(np.float64), Xt=xt.astype(np.float64)
    )
    out = da.transform(lin, xnew)
    assert out.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, ref.transform(Xs=xnew.astype(np.float64)), atol=tol)


def test_jit_float32_and_errors():
    xs, ys, xt, _, xnew = _domains(np.float32)
    fit = jax.jit(lambda s, t: da.fit_sinkhorn(s, t, epsilon=1.0))
    tr = fit(jnp.asarray(xs), jnp.asarray(xt))
    assert tr.plan.dtype == jnp.float32 and tr.converged
    np.testing.assert_allclose(jnp.sum(tr.plan), 1.0, rtol=1e-5)
    moved = jax.jit(da.transform)(tr, xnew)
    assert moved.shape == (7, 2) and np.all(np.isfinite(moved))
    with pytest.raises(ValueError, match="ys is required"):
        da.fit_sinkhorn(xs, xt, class_reg=1.0)
    with pytest.raises(ValueError, match="out_of_sample"):
        da.transform(tr, xnew, out_of_sample="nearest")
    with pytest.raises(ValueError, match="ys must"):
        da.fit_sinkhorn(xs, xt, ys=ys[:3], class_reg=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        da.fit_sinkhorn(xs, xt, epsilon=0.0)


def test_exact_transport_matches_pot(x64):
    xs, ys, xt, yt, xnew = _domains()
    tr = da.fit_exact(xs, xt)
    assert tr.converged and tr.plan.dtype == jnp.float64 and tr.g is None
    ref = pot.da.EMDTransport().fit(Xs=xs, Xt=xt)
    # Random continuous data: the optimal vertex is unique, and both simplex
    # solvers end on it, so the plans agree to rounding.
    np.testing.assert_allclose(tr.plan, ref.coupling_, atol=1e-12)
    for pts in (xs, xnew):  # barycentric projection and out of sample
        np.testing.assert_allclose(
            da.transform(tr, pts), ref.transform(Xs=pts), atol=1e-10
        )
    np.testing.assert_allclose(
        da.transfer_labels(tr, ys, 3), ref.transform_labels(ys), atol=1e-10
    )
    # Semi-supervised: half the target labels known, POT's limit_max=10.
    yt_part = np.where(np.arange(len(yt)) % 2 == 0, yt, -1)
    semi = da.fit_exact(xs, xt, ys=ys, yt=yt_part)
    ref = pot.da.EMDTransport(limit_max=10).fit(Xs=xs, ys=ys, Xt=xt, yt=yt_part)
    np.testing.assert_allclose(semi.plan, ref.coupling_, atol=1e-12)
    np.testing.assert_allclose(
        da.transform(semi, xnew), ref.transform(Xs=xnew), atol=1e-10
    )
    known = yt_part >= 0
    mixed = (ys[:, None] != yt_part[None, :]) & known[None, :]
    assert np.sum(np.asarray(semi.plan)[mixed]) == 0.0
    # Weighted marginals against POT's emd on the same cost.
    a = np.linspace(1.0, 2.0, len(xs))
    b = np.linspace(2.0, 1.0, len(xt))
    weighted = da.fit_exact(xs, xt, a=a, b=b)
    cost = pot.dist(xs, xt)
    np.testing.assert_allclose(
        weighted.plan, pot.emd(a / a.sum(), b / b.sum(), cost), atol=1e-12
    )


def test_exact_transport_jit_vmap_float32():
    xs, _, xt, _, xnew = _domains(np.float32)
    shifts = jnp.array([0.0, 1.0], jnp.float32)
    fit = jax.jit(jax.vmap(lambda s: da.fit_exact(xs, xt + s)))
    batched = fit(shifts)
    assert batched.plan.dtype == jnp.float32 and bool(jnp.all(batched.converged))
    # float32: the same plans as POT's float64 ones unless the simplex meets
    # a near-tie (none here); masses carry float32 rounding, ~1e-7.
    for k, shift in enumerate((0.0, 1.0)):
        ref = pot.da.EMDTransport().fit(
            Xs=xs.astype(np.float64), Xt=xt.astype(np.float64) + shift
        )
        np.testing.assert_allclose(batched.plan[k], ref.coupling_, atol=1e-6)
    one = jax.tree.map(lambda leaf: leaf[1], batched)
    with pytest.raises(ValueError, match="ys"):
        da.fit_exact(xs, xt, yt=np.zeros(len(xt), int))
    with pytest.raises(ValueError, match="out_of_sample='continuous'"):
        da.transform(one, xnew, out_of_sample="continuous")
