r"""Semi-discrete optimal transport: a density model to a weighted point cloud.

Transport ``mu`` (any model that samples: ``model.sample(key, n) -> [n, d]``,
the density contract of densax) onto ``nu = sum_j b_j delta_{y_j}``. The
problem has one dual variable per target point, the weights ``g`` [m], and
the **semi-dual** (Genevay et al. 2016)

.. math::
   H(g) = \mathbb{E}_{x \sim \mu}\big[g^c(x)\big] + \langle b, g\rangle,
   \qquad g^c(x) = \min_j\; c(x, y_j) - g_j

is concave; its gradient is ``b - mu(L_j(g))``, the target masses minus the
masses of the **Laguerre cells** ``L_j(g) = {x : c(x, y_j) - g_j <= c(x, y_k)
- g_k for all k}`` (power cells for the squared Euclidean cost). With entropic
regularisation ``epsilon > 0`` the minimum becomes a soft minimum,
``g^c(x) = -epsilon log sum_j b_j exp((g_j - c(x, y_j)) / epsilon)``, and the
cells soft assignments; the value is the entropic cost ``min_P <P, c> +
epsilon KL(P | mu x nu)`` (the problem of ``densax.ot.sinkhorn``).

:func:`solve` maximises ``H`` by stochastic gradient ascent on fresh samples
of ``mu`` at each step (a step size decaying as ``1 / sqrt(k)``, the gradient
scaled by ``1 / b_j``, and the iterates averaged over the second half of the
run), then measures the result on an independent evaluation sample: the cost
``H(g)`` with its Monte Carlo standard error, and the L1 error between the
target masses and the cell masses, which decides ``converged``.
:func:`assign` and :func:`transport_map` evaluate the resulting map.

References:
  Genevay, A., Cuturi, M., Peyré, G. and Bach, F. (2016). Stochastic
  optimization for large-scale optimal transport. NeurIPS.
  Mérigot, Q. (2011). A multiscale approach to optimal transport. Comput.
  Graph. Forum 30, 1583–1592.
  Peyré, G. and Cuturi, M. (2019). Computational Optimal Transport, §5.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from typing import NamedTuple
  >>> class Normal(NamedTuple):
  ...     mean: jax.Array
  ...     def sample(self, key, n):
  ...         return self.mean + jax.random.normal(key, (n, self.mean.shape[0]))
  >>> y = jnp.array([[-1.0, 0.0], [1.0, 0.0]])
  >>> out = solve(jax.random.key(0), Normal(jnp.zeros(2)), y, max_iter=200)
  >>> out.g.shape, bool(out.converged)
  ((2,), True)
  >>> assign(out, jnp.array([[-3.0, 0.0], [2.0, 1.0]])).tolist()
  [0, 1]
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from ott.geometry import costs

from densax import _validate
from densax.ot.maps import _pairwise

__all__ = ["SemidiscreteOutput", "assign", "solve", "transport_map"]

_HIGHEST = lax.Precision.HIGHEST
_EVAL_CHUNK = 4096


class SemidiscreteOutput(NamedTuple):
    """Dual weights of a semi-discrete problem and their evaluation."""

    g: jax.Array  # [m] dual weights (-inf where b_j = 0); see solve's Returns
    cost: jax.Array  # [] semi-dual value H(g) on the evaluation sample
    cost_se: jax.Array  # [] Monte Carlo standard error of cost
    mass_error: jax.Array  # [] sum_j |b_j - mass of cell j|, evaluation sample
    converged: jax.Array  # [] bool: mass_error <= tol
    n_iter: jax.Array  # [] int32 stochastic steps taken (max_iter)
    trace: jax.Array  # [max_iter] semi-dual of each step's batch
    epsilon: jax.Array  # [] regularisation (0: unregularised, Laguerre cells)
    y: jax.Array  # [m, d] target points
    b: jax.Array  # [m] target weights, normalised to sum 1
    cost_fn: costs.CostFn  # ground cost


def _logits(cost_fn, x, y, g, log_b, eps):
    """``[k, m]`` scores ``g_j - c(x, y_j)`` (+ ``eps log b_j`` when entropic)."""
    scores = g[None, :] - _pairwise(cost_fn, x, y)
    if eps is None:
        return scores
    return scores + eps * log_b[None, :]


def _c_transform(scores, eps):
    """``(g^c(x) [k], assignment weights [k, m])`` from the scores."""
    if eps is None:
        top = jnp.max(scores, axis=1)
        idx = jnp.argmax(scores, axis=1)
        return -top, jax.nn.one_hot(idx, scores.shape[1], dtype=scores.dtype)
    return (
        -eps * jax.nn.logsumexp(scores / eps, axis=1),
        jax.nn.softmax(scores / eps, axis=1),
    )


@functools.partial(
    jax.jit, static_argnames=("batch_size", "max_iter", "n_eval", "hard")
)
def _solve(
    key, model, y, b, eps, lr, tol, cost_fn, *, batch_size, max_iter, n_eval, hard
):
    dtype = y.dtype
    m = y.shape[0]
    active = b > 0
    safe_b = jnp.where(active, b, 1.0)
    log_b = jnp.where(active, jnp.log(safe_b), -jnp.inf)
    e = None if hard else eps
    k_scale, k_run, k_eval = jax.random.split(key, 3)
    # The cost scale E_x sum_j b_j c(x, y_j), on a first batch, sets the step.
    x0 = model.sample(k_scale, batch_size).astype(dtype)
    scale = lax.stop_gradient(jnp.mean(_pairwise(cost_fn, x0, y) @ b))
    scale = jnp.where(scale > 0, scale, 1.0)
    start = max_iter // 2

    def step(carry, inputs):
        g, g_sum = carry
        k, it = inputs
        x = model.sample(k, batch_size).astype(dtype)
        gc, pi = _c_transform(
            _logits(cost_fn, x, y, jnp.where(active, g, -jnp.inf), log_b, e), e
        )
        value = jnp.mean(gc) + b @ jnp.where(active, g, 0.0)
        grad = (b - jnp.mean(pi, axis=0)) / safe_b
        g = g + lr * scale / jnp.sqrt(1.0 + it / m) * jnp.where(active, grad, 0.0)
        g_sum = g_sum + jnp.where(it >= start, g, 0.0)
        return (g, g_sum), value

    zeros = jnp.zeros(m, dtype)
    keys = jax.random.split(k_run, max_iter)
    steps = jnp.arange(max_iter, dtype=dtype)
    (_, g_sum), trace = lax.scan(step, (zeros, zeros), (keys, steps))
    g = g_sum / (max_iter - start)
    g = g - b @ jnp.where(active, g, 0.0)
    # No derivative through the optimisation: at the optimum dH/dg = 0, so the
    # derivative of H at fixed g is the derivative of the cost (envelope).
    g = lax.stop_gradient(jnp.where(active, g, -jnp.inf))

    n_chunks = -(-n_eval // _EVAL_CHUNK)

    def evaluate(k):
        x = model.sample(k, _EVAL_CHUNK).astype(dtype)
        gc, pi = _c_transform(_logits(cost_fn, x, y, g, log_b, e), e)
        return jnp.sum(gc), jnp.sum(gc * gc), jnp.sum(pi, axis=0)

    s1, s2, mass = lax.map(evaluate, jax.random.split(k_eval, n_chunks))
    total = n_chunks * _EVAL_CHUNK
    mean = jnp.sum(s1) / total
    var = jnp.maximum(jnp.sum(s2) / total - mean * mean, 0.0)
    cost = mean + b @ jnp.where(active, g, 0.0)
    err = jnp.sum(jnp.abs(b - jnp.sum(mass, axis=0) / total))
    if not hard:  # the convention of sinkhorn: P = exp((f + g - c) / eps)
        g = g + eps * log_b
    return SemidiscreteOutput(
        g=g,
        cost=cost,
        cost_se=jnp.sqrt(var / total),
        mass_error=err,
        converged=err <= tol,
        n_iter=jnp.int32(max_iter),
        trace=trace,
        epsilon=eps,
        y=y,
        b=b,
        cost_fn=cost_fn,
    )


def solve(
    key: jax.Array,
    model: Any,
    y: Any,
    *,
    b: Any = None,
    epsilon: float = 0.0,
    cost_fn: costs.CostFn | None = None,
    batch_size: int = 256,
    max_iter: int = 1000,
    learning_rate: float = 0.1,
    n_eval: int = 1 << 16,
    tol: float = 0.05,
    validate: bool = True,
) -> SemidiscreteOutput:
    r"""Semi-discrete OT from a density model to a weighted point cloud.

    Stochastic gradient ascent on the semi-dual (see the module docstring):
    at step ``k`` a fresh batch ``x ~ model`` gives the unbiased gradient
    estimate ``b - mean_x pi(x)`` (``pi`` the hard or soft cell assignment),
    scaled by ``1 / b_j`` and by the cost scale ``E sum_j b_j c(x, y_j)``,
    with step ``learning_rate / sqrt(1 + k / m)``; the returned weights are
    the average of the iterates of the second half. Every step costs one
    ``[batch_size, m]`` cost matrix.

    The result is then measured on ``n_eval`` fresh samples: ``cost`` is
    ``H(g)``, a lower bound of the optimal cost when ``epsilon = 0`` (any
    ``g`` is dual feasible), equal to it at the optimum, with ``cost_se`` its
    Monte Carlo standard error; ``mass_error = sum_j |b_j - mu(L_j)|``.
    ``converged`` is ``mass_error <= tol``. Even at the exact optimum the
    estimate has a floor of about ``sqrt(2 m / (pi n_eval))`` (sampling
    noise), so ``tol`` must be larger than that.

    Differentiable: ``cost`` has the derivative of ``H`` at the returned
    ``g`` (held fixed; the envelope theorem makes it the derivative of the
    optimal cost at the optimum) with respect to ``y``, and with respect to
    the model's parameters through reparameterised samples.

    Args:
      key: a PRNG key (all the randomness: the batches and the evaluation).
      model: the source measure: any pytree with a method ``sample(key, n) ->
        [n, d]`` usable under ``jit`` (every densax density model).
      y: [m, d] target points.
      b: [m] non-negative target weights (uniform by default; normalised). A
        zero weight gives ``g_j = -inf``: the point receives nothing.
      epsilon: entropic regularisation ``>= 0``, in the units of the cost;
        0 (default) solves the unregularised problem (Laguerre cells).
      cost_fn: an ott-jax ``CostFn``; default ``SqEuclidean()``.
      batch_size: samples per step (static).
      max_iter: number of steps (static); also the length of ``trace``.
      learning_rate: the step factor (see above); the default suits costs of
        the scale of the data's spread.
      n_eval: evaluation samples (rounded up to a multiple of 4096).
      tol: tolerance on ``mass_error`` for ``converged``.
      validate: check ``y`` and ``b`` eagerly.

    Returns:
      A :class:`SemidiscreteOutput`. Its ``g`` has the gauge ``<b, g> = 0``
      when ``epsilon = 0`` (Laguerre weights: cell ``j`` is where ``c(x, y_j)
      - g_j`` is smallest). When ``epsilon > 0`` it follows the convention
      of ``densax.ot.sinkhorn`` (the weights ``b`` absorbed: the plan is
      ``exp((f(x) + g_j - c(x, y_j)) / epsilon) dmu(x)``), so it is
      comparable with ``sinkhorn(...).g`` up to a constant.

    Raises:
      TypeError: ``model`` has no ``sample`` method; non-numeric inputs.
      ValueError: wrong shapes, ``epsilon < 0``, non-positive sizes; eagerly,
        non-finite ``y`` or invalid ``b``.

    References:
      Genevay, Cuturi, Peyré and Bach (2016), Algorithm 2 (averaged SGD on
      the semi-dual).
    """
    if not callable(getattr(model, "sample", None)):
        raise TypeError(
            f"model must have a method sample(key, n), got {type(model).__name__}"
        )
    y = _validate.as_float(y, "y", ndim=2)
    _validate.check_finite(y, "y", validate)
    m = y.shape[0]
    if m == 0:
        raise ValueError("y must hold at least one point")
    b = _validate.check_weights(
        jnp.ones(m, y.dtype) if b is None else b,
        "b",
        (m,),
        dtype=y.dtype,
        validate=validate,
    )
    b = b / jnp.sum(b)
    if not isinstance(epsilon, (int, float)) or epsilon < 0:
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
    batch_size = _validate.check_int(batch_size, "batch_size", minimum=1)
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=2)
    n_eval = _validate.check_int(n_eval, "n_eval", minimum=1)
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    cost_fn = costs.SqEuclidean() if cost_fn is None else cost_fn
    if not isinstance(cost_fn, costs.CostFn):
        raise TypeError(f"cost_fn must be an ott CostFn, got {type(cost_fn).__name__}")
    return _solve(
        key,
        model,
        y,
        b,
        jnp.asarray(epsilon, y.dtype),
        jnp.asarray(learning_rate, y.dtype),
        jnp.asarray(tol, y.dtype),
        cost_fn,
        batch_size=batch_size,
        max_iter=max_iter,
        n_eval=n_eval,
        hard=epsilon == 0,
    )


def _scores(result: SemidiscreteOutput, x: Any):
    x = _validate.as_float(x, "x", ndim=2, dtype=result.y.dtype)
    _validate.check_same_last_dim(x, result.y, "x", "result.y")
    return x


def assign(result: SemidiscreteOutput, x: Any) -> jax.Array:
    """The Laguerre cell of each point: ``argmin_j c(x, y_j) - g_j``.

    Args:
      result: a :class:`SemidiscreteOutput`.
      x: [k, d] points.

    Returns:
      [k] int32 indices into ``result.y`` (for an entropic solution, the most
      likely target).

    Example:
      See the module docstring.
    """
    x = _scores(result, x)
    return _assign(x, result)


@jax.jit
def _assign(x, result):
    scores = result.g[None, :] - _pairwise(result.cost_fn, x, result.y)
    return jnp.argmax(scores, axis=1).astype(jnp.int32)


def transport_map(result: SemidiscreteOutput, x: Any) -> jax.Array:
    """The transport map of a semi-discrete solution at new points.

    Unregularised: ``T(x) = y_{assign(x)}`` (piecewise constant on the
    Laguerre cells). Entropic: the barycentric map ``sum_j pi_j(x) y_j`` with
    ``pi(x) = softmax((g_j - c(x, y_j)) / epsilon)`` (the entropic map of
    ``densax.ot.maps.entropic_map``).

    Args:
      result: a :class:`SemidiscreteOutput`.
      x: [k, d] points.

    Returns:
      [k, d] images.

    Example:
      See the module docstring.
    """
    x = _scores(result, x)
    return _map(x, result)


@jax.jit
def _map(x, result):
    eps = result.epsilon
    scores = result.g[None, :] - _pairwise(result.cost_fn, x, result.y)
    soft = jax.nn.softmax(scores / jnp.where(eps > 0, eps, 1.0), axis=1)
    hard = jax.nn.one_hot(jnp.argmax(scores, axis=1), result.y.shape[0], dtype=x.dtype)
    pi = jnp.where(eps > 0, soft, hard)
    return jnp.matmul(pi, result.y, precision=_HIGHEST)
