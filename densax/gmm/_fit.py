"""The EM fit: the fast engine's loop, restarts, the CPU ``vmap`` seam, derivatives."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from densax import _validate
from densax.gmm._engine import _blocks_for, _em_iteration
from densax.gmm._implicit import at_fixed_point
from densax.gmm._init import INIT_METHODS, _initial_params
from densax.gmm._model import (
    COVARIANCE_TYPES,
    GaussianMixture,
    _check_data,
    _check_nonnegative,
    _check_params,
)

__all__ = ["DIFFERENTIATION", "FitResult", "fit"]

DIFFERENTIATION = ("implicit", "unroll")


class FitResult(NamedTuple):
    """The output of :func:`fit`."""

    model: GaussianMixture  # the fitted mixture (after the last M-step)
    # [] float: mean log-likelihood at the last E-step, i.e. of the parameters
    # before the last M-step (scikit-learn's lower_bound_); -inf if max_iter=0.
    log_likelihood: jax.Array
    n_iter: jax.Array  # [] int32: EM iterations run
    converged: jax.Array  # [] bool: the change of log_likelihood fell below tol
    # [max_iter] float: log_likelihood after each iteration (scikit-learn's
    # lower_bounds_); NaN from index n_iter on.
    trace: jax.Array


@_validate.public(optional_key=True)
def fit(
    key: jax.Array,
    x: jax.Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    init: str = "kmeans++",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    sample_weight: jax.Array | None = None,
    init_params: GaussianMixture | None = None,
    differentiation: str = "implicit",
    axis_name: str | None = None,
    validate: bool = True,
) -> FitResult:
    """Fits a Gaussian mixture by EM, with scikit-learn's stopping rule.

    The iterations run in one ``lax.while_loop``: each computes the mean
    log-likelihood of the current parameters (E-step) and the new parameters
    (M-step), and the loop stops when that log-likelihood changed by less
    than ``tol`` (``tol=0``: run ``max_iter`` iterations), after ``max_iter``
    iterations, or when it is not finite (``converged=False``). With
    ``n_init > 1`` the restarts run in parallel (``vmap``; the feature block
    is shared, so each E-step is one wider matmul) and the restart with the
    highest final log-likelihood is returned, as scikit-learn does. Under
    ``jax.vmap`` over datasets, the fits run one after the other on CPU (a
    ``lax.map``: faster there, each fit's data staying in cache) and as one
    batched computation on accelerators.

    Derivatives of ``result.model`` (``jax.grad``, ``jax.vjp``, ``jax.jvp``)
    w.r.t. ``x``, ``sample_weight``, ``reg_covar`` and ``init_params``:

    * ``differentiation="implicit"`` (default): by implicit differentiation at
      the EM fixed point ``params = M(E(params; x, w))`` (implicit function
      theorem): the tangent solves ``(I - dT/dparams) dparams = dT/dx dx +
      ...`` with the textbook :func:`em_step` as ``T``, by GMRES inside
      ``lax.custom_linear_solve`` (so reverse mode solves the transposed
      system). No iteration is stored. The derivative w.r.t. ``init_params``
      is zero (a converged fixed point does not depend on where EM started);
      ``log_likelihood`` and ``trace`` carry no derivative (use
      ``log_prob(result.model, x)``). Exact as far as EM converged: tighten
      ``tol`` for precise derivatives. The linearised system is
      ``[n, K, d]``-sized per matrix-vector product (the direct form).
    * ``"unroll"``: through the iterations themselves (a ``lax.scan`` of
      ``max_iter`` steps, the steps after convergence skipped): derivatives
      of the finite iteration, also w.r.t. ``init_params``, at the memory
      cost of every iteration's intermediates.

    Args:
      key: a PRNG key (initialisation; unused when ``init_params`` is given).
      x: [n, d] samples.
      n_components: the number of components K.
      covariance_type: one of :data:`COVARIANCE_TYPES`.
      init: the initialisation method, one of :data:`INIT_METHODS` (see
        :func:`init`).
      n_init: the number of restarts.
      max_iter: the maximum number of EM iterations (0: return the
        initialisation).
      tol: the convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to the covariances' diagonal.
      sample_weight: optional [n] non-negative sample weights: the fit
        maximises ``sum_i w_i log p(x_i)``. Only their ratios matter: they
        are rescaled to mean one first (so any scale, 1e-30 or 1e30, gives
        the same fit).
      init_params: starting :class:`GaussianMixture` (with ``n_init=1``), e.g.
        from :func:`init` with user-given weights, means or precisions; or
        the :class:`FitResult` of an earlier fit, a warm start (scikit-learn's
        ``warm_start``): its model, and its ``log_likelihood`` as the value
        the first iteration's is compared with, so that refits with
        ``max_iter=1`` report ``converged`` once the change falls below
        ``tol``. A bare model starts the comparison from ``-inf``.
      differentiation: ``"implicit"`` or ``"unroll"`` (see above).
      axis_name: inside ``shard_map``/``pmap`` over shards of ``x`` (and
        ``sample_weight``), the mapped axis: the sufficient statistics are
        ``psum``-ed, so every shard returns the unsharded fit (up to
        summation order). The initialisation gathers the data (see
        :func:`init`); pass ``init_params`` to avoid it.
      validate: eager value checks of ``x``, ``sample_weight`` and
        ``init_params``.

    Returns:
      A :class:`FitResult`: parameters, final mean log-likelihood, number of
      iterations, convergence flag, per-iteration log-likelihoods.

    Half-precision data (float16, bfloat16) are fitted in float32 and the
    result returned in their dtype. ``reg_covar`` and ``tol`` may be traced
    (e.g. to differentiate with respect to ``reg_covar``); eagerly they must
    be finite and non-negative.

    Raises:
      ValueError: unknown option, bad shapes, ``n < n_components``, no feature,
        ``init_params`` of another K, d or covariance type, ``n_init > 1``
        with ``init_params``; eagerly, non-finite ``x`` or invalid weights.
      TypeError: a non-integer ``n_components``, ``n_init`` or ``max_iter``.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (400, 2))
      >>> res = fit(jax.random.key(1), x, 2)
      >>> res.model.means.shape, bool(res.converged), int(res.n_iter) > 1
      ((2, 2), True, True)
    """
    if init_params is None:
        _validate.check_key(key)  # unused (may be None) with init_params
    x, w, k = _check_data(x, n_components, sample_weight, validate, min_samples=-1)
    _validate.check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    _validate.check_choice(init, "init", INIT_METHODS)
    n_init = _validate.check_int(n_init, "n_init", minimum=1)
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=0)
    tol = _check_nonnegative(tol, "tol", x.dtype)
    reg_covar = _check_nonnegative(reg_covar, "reg_covar", x.dtype)
    _validate.check_choice(differentiation, "differentiation", DIFFERENTIATION)
    ll0 = jnp.asarray(-jnp.inf, x.dtype)
    if isinstance(init_params, FitResult):  # a warm start: its log-likelihood too
        ll0 = _validate.as_float(
            init_params.log_likelihood, "init_params.log_likelihood", ndim=0
        ).astype(x.dtype)
        init_params = init_params.model
    if init_params is not None:
        if n_init != 1:
            raise ValueError("n_init must be 1 when init_params is given")
        init_params = _check_params(
            init_params, x.shape[1], x.dtype, validate, "init_params"
        )
        if init_params.covariance_type != covariance_type:
            raise ValueError(
                f"init_params has covariance_type {init_params.covariance_type!r}, "
                f"but covariance_type={covariance_type!r}"
            )
        if init_params.weights.shape[0] != k:
            raise ValueError(
                f"init_params has {init_params.weights.shape[0]} components, "
                f"but n_components={k}"
            )
    return _fit(
        key,
        x,
        w,
        init_params,
        ll0,
        tol,
        reg_covar,
        n_components=k,
        covariance_type=covariance_type,
        method=init,
        n_init=n_init,
        max_iter=max_iter,
        axis_name=axis_name,
        differentiation=differentiation,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "n_components",
        "covariance_type",
        "method",
        "n_init",
        "max_iter",
        "axis_name",
        "differentiation",
    ),
)
def _fit(key, x, w, init_params, ll0, tol, reg_covar, *, differentiation, **static):
    """:func:`_fit_one`, with its static options, batched by ``vmap`` or a loop."""
    unroll = differentiation == "unroll"
    # Only the weights' ratios matter: mean one, so that the floor is relative.
    w = _validate.normalize_weights(w, static["axis_name"])
    one = _sequential_on_cpu(functools.partial(_fit_one, unroll=unroll, **static))
    if unroll:
        return one(key, x, w, init_params, ll0, tol, reg_covar)
    # The engine runs on constants; the derivatives come from the fixed point.
    args = jax.lax.stop_gradient((x, w, init_params, ll0, tol, reg_covar))
    result = one(key, *args)
    model = at_fixed_point(result.model, x, w, reg_covar, static["axis_name"])
    return result._replace(model=model)


def _sequential_on_cpu(fn):
    """``fn`` whose ``vmap`` is a loop on CPU, and a batched computation elsewhere.

    The one place where :func:`fit` depends on the platform (the "seam"):
    batched fits on CPU run faster one after the other (each
    fit's features then stay in cache between the E-step and the M-step, and
    each skips its own padding); accelerators keep the batched matmuls. The
    result is the same either way. ``custom_vmap`` picks the rule,
    ``platform_dependent`` the platform, and a ``custom_jvp`` sends
    derivatives (and their batching) through ``fn`` itself.
    """
    fn_vmap = jax.custom_batching.custom_vmap(fn)

    @fn_vmap.def_vmap
    def rule(axis_size, in_batched, *args):
        del axis_size
        leaves, tree = jax.tree.flatten(args)
        pairs = list(zip(leaves, jax.tree.leaves(in_batched), strict=True))
        batched = [leaf for leaf, flag in pairs if flag]

        def call(batched_leaves):  # one problem: the batched leaves' slices
            it = iter(batched_leaves)
            full = [next(it) if flag else leaf for leaf, flag in pairs]
            return fn(*jax.tree.unflatten(tree, full))

        out = jax.lax.platform_dependent(
            batched,
            cpu=lambda b: jax.lax.map(call, b),
            default=jax.vmap(call),
        )
        return out, jax.tree.map(lambda _: True, out)

    # Derivatives (forward mode, the loop being a while_loop) and their
    # batching go through ``fn`` itself.
    fn_jvp = jax.custom_jvp(fn_vmap)
    fn_jvp.defjvp(lambda primals, tangents: jax.jvp(fn, primals, tangents))
    return fn_jvp


def _fit_one(
    key,
    x,
    w,
    init_params,
    ll0,
    tol,
    reg_covar,
    *,
    n_components,
    covariance_type,
    method,
    n_init,
    max_iter,
    axis_name,
    unroll,
):
    """One fit (one dataset): the cells and features, then EM from each start."""
    blocks = _blocks_for(x, w, n_components, covariance_type, axis_name)
    run = functools.partial(
        _run_em,
        blocks,
        ll0=ll0,
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        axis_name=axis_name,
        unroll=unroll,
    )
    if init_params is not None:
        return run(init_params)

    def restart(key):
        params = _initial_params(
            key,
            x,
            w,
            blocks,
            reg_covar,
            n_components,
            covariance_type,
            method,
            axis_name,
        )
        return run(params)

    # The restarts share the blocks: each E-step is one wider matmul.
    results = jax.vmap(restart)(jax.random.split(key, n_init))
    ll = results.log_likelihood
    best = jnp.argmax(jnp.where(jnp.isnan(ll), -jnp.inf, ll))
    return jax.tree.map(lambda a: a[best], results)


def _run_em(blocks, params, *, ll0, tol, reg_covar, max_iter, axis_name, unroll):
    """The EM loop on blocked features.

    A ``while_loop``, or with ``unroll`` a ``scan`` of ``max_iter`` steps
    (reverse-differentiable) that skips the steps after the stop. ``ll0`` is
    the log-likelihood the first iteration's is compared with (-inf, or a warm
    start's).
    """
    dtype = blocks.w.dtype

    def cond(state):
        i, _, ll, converged, _ = state
        return (i < max_iter) & ~converged & ((i == 0) | jnp.isfinite(ll))

    def body(state):
        i, params, ll_prev, _, trace = state
        params, ll = _em_iteration(blocks, params, reg_covar, axis_name)
        converged = jnp.abs(ll - ll_prev) < tol
        return i + 1, params, ll, converged, trace.at[i].set(ll)

    state = (
        jnp.zeros((), jnp.int32),
        params,
        jnp.asarray(ll0, dtype),
        jnp.zeros((), bool),
        # One slot at least: the loop body is traced even when max_iter = 0.
        jnp.full((max(max_iter, 1),), jnp.nan, dtype),
    )
    if unroll:

        def step(state, _):
            return jax.lax.cond(cond(state), body, lambda s: s, state), None

        state, _ = jax.lax.scan(step, state, length=max_iter)
    else:
        state = jax.lax.while_loop(cond, body, state)
    n_iter, params, ll, converged, trace = state
    ll = jnp.where(n_iter > 0, ll, -jnp.inf)  # max_iter = 0: no E-step ran
    converged = converged & jnp.isfinite(ll)
    return FitResult(params, ll, n_iter, converged, trace[:max_iter])
