"""One training loop for every generative method: chunks, progress, checkpoints.

:func:`train` runs a method of :data:`METHODS` (GAN family in
:mod:`~densax.generative.gans`, diffusion in
:mod:`~densax.generative.diffusion`) through the same machinery:

* **Compiled chunks.** The networks are split (``nnx.split``) into static
  graph definitions and a pure parameter pytree; a chunk of ``chunk_size``
  steps is one jitted ``lax.scan`` over that pytree. A Python loop over chunks
  reports progress, evaluates the metric and writes checkpoints.
* **Reproducible.** Step ``s`` draws all its randomness from
  ``fold_in(key, s)``, so the same seed gives bit-identical parameters
  whatever the chunk size, and a run resumed from a checkpoint continues
  exactly as if it had not stopped.
* **Data parallel.** With ``mesh`` (a 1D ``jax.sharding.Mesh``) the chunk runs
  under ``jax.shard_map``: every device holds the (small) dataset and the
  replicated parameters, draws the *global* batch's indices and noise from
  the step's key and processes its own rows; losses average over the global
  batch with ``psum``, so gradients are those of single-device training on
  the same batch.
* **NaN guard.** A step whose losses or new parameters are not finite is not
  applied: the chunk stops, training stops, a ``RuntimeWarning`` says which
  step and which loss, and the result (``finite=False``) holds the last good
  state, which is also checkpointed.
* **Divergence check.** A method with a proper objective (``"flow"``: the
  negative log-likelihood; ``"ddpm"``: the denoising loss at one fixed draw
  of timesteps and noise) is scored on up to 4096 evenly spaced training
  rows before step 0 and after the last step; a run that ends above its
  start (worse than its initialisation, a finite failure the NaN guard
  cannot see) gets ``diverged=True``, a ``message`` and a ``RuntimeWarning``.
* **Checkpoints** (``checkpoint=path``) after every chunk: parameters,
  optimiser states, step, key and history, in msgpack
  (:mod:`~densax.generative.checkpoint`); ``resume=True`` continues from the
  file if it exists.

The metric, evaluated after every chunk, is the sliced 2-Wasserstein distance
(:func:`densax.metrics.sw2`) between ``eval_size`` generated samples and up
to ``eval_size`` points of ``eval_data`` (default: the training data), with
fixed evaluation noise so that its trace shows the training progress only.
"""

import dataclasses
import functools
import hashlib
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from densax import _validate, metrics
from densax.generative import checkpoint as ckpt
from densax.generative import diffusion, flows, gans
from densax.generative.method import Method, StepContext, all_finite

__all__ = [
    "METHODS",
    "History",
    "Progress",
    "TrainResult",
    "TrainState",
    "sample",
    "train",
]

METHODS: dict[str, Method] = {**gans.METHODS, **diffusion.METHODS, **flows.METHODS}


class TrainState(NamedTuple):
    """Everything a training run carries from one step to the next."""

    params: dict[str, Any]  # network name -> pure dict of parameter arrays
    opt_state: dict[str, Any]  # network name -> Optax state
    step: jax.Array  # [] int32, optimisation steps completed
    key: jax.Array  # [] typed PRNG key; step s draws from fold_in(key, s)


class History(NamedTuple):
    """What happened during training (host NumPy arrays)."""

    losses: dict[str, np.ndarray]  # loss name -> [steps] value at every step
    chunk_step: np.ndarray  # [chunks] int, step count at the end of each chunk
    steps_per_s: np.ndarray  # [chunks] float, throughput of each chunk (eval excluded)
    sw2: np.ndarray  # [chunks] float, SW2 to eval data after each chunk (NaN: off)


class Progress(NamedTuple):
    """What ``callback`` receives after every chunk."""

    method: str  # the method's name
    step: int  # steps completed
    num_steps: int  # steps requested
    losses: dict[str, float]  # mean of each loss over the chunk
    sw2: float  # the metric after the chunk (NaN when eval_size=0)
    steps_per_s: float  # throughput of the chunk (the first includes compilation)
    samples: jax.Array | None  # [eval_size, d] the samples scored, or None


class TrainResult(NamedTuple):
    """The outcome of :func:`train`."""

    generator: nnx.Module  # z -> x; "ddpm": denoiser (x_t, t) -> eps; "flow": Flow
    critic: nnx.Module | None  # the critic/discriminator x -> [1], or None
    state: TrainState  # final parameters, optimiser states, step and key
    history: History  # losses per step, metric and throughput per chunk
    method: str  # the method's name
    options: Any  # the method's options (frozen dataclass, defaults filled in)
    finite: bool  # False when the NaN guard stopped the run
    message: str  # why training stopped early or diverged, or ""
    diverged: bool = False  # its score ended above its start ("flow", "ddpm")


class _Static(NamedTuple):
    """The static configuration of the compiled chunk (hashable)."""

    method: str
    options: Any
    graphdefs: tuple[tuple[str, Any], ...]
    batch_size: int
    chunk_size: int
    mesh: Mesh | None


def _context(static: _Static, data: jax.Array, num_steps: jax.Array) -> StepContext:
    method = METHODS[static.method]
    axis_name = None if static.mesh is None else static.mesh.axis_names[0]
    return StepContext(
        data=data,
        batch_size=static.batch_size,
        graphdefs=dict(static.graphdefs),
        optimizers=method.optimizers(static.options, num_steps),
        options=static.options,
        axis_name=axis_name,
        n_shards=1 if static.mesh is None else static.mesh.size,
    )


def _chunk(state: TrainState, data: jax.Array, stop: jax.Array, static: _Static):
    """Runs steps until ``stop`` or ``chunk_size`` steps or a non-finite step.

    ``stop`` is the run's ``num_steps`` (traced: the horizon of learning-rate
    schedules, without recompiling for another run length).
    """
    ctx = _context(static, data, stop)
    step_fn = METHODS[static.method].step

    def attempt(state):
        key = jax.random.fold_in(state.key, state.step)
        params, opt_state, losses = step_fn(ctx, state.params, state.opt_state, key)
        ok = all_finite(losses) & all_finite(params)
        new = TrainState(params, opt_state, state.step + 1, state.key)
        # The NaN guard: a non-finite step is not applied.
        kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        return kept, losses, ~ok

    loss_shapes = jax.eval_shape(lambda s: attempt(s)[1], state)

    def skip(state):
        nan = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), loss_shapes)
        return state, nan, jnp.array(False)

    def body(carry, _):
        state, failed = carry
        active = (state.step < stop) & ~failed
        state, losses, bad = lax.cond(active, attempt, skip, state)
        return (state, failed | bad), losses

    (state, failed), losses = lax.scan(
        body, (state, jnp.array(False)), None, length=static.chunk_size
    )
    return state, losses, failed


@functools.partial(jax.jit, static_argnames="static")
def _run_chunk(state: TrainState, data: jax.Array, stop: jax.Array, static: _Static):
    fn = functools.partial(_chunk, static=static)
    if static.mesh is not None:
        fn = jax.shard_map(
            fn, mesh=static.mesh, in_specs=(P(), P(), P()), out_specs=(P(), P(), P())
        )
    return fn(state, data, stop)


@functools.partial(jax.jit, static_argnames=("method", "options", "graphdef", "n"))
def _evaluate(params, key, reference, *, method, options, graphdef, n):
    k_sample, k_proj = jax.random.split(key)
    model = nnx.merge(graphdef, params)
    x = METHODS[method].sample(model, options, k_sample, n, reference.dtype)
    return metrics.sw2(k_proj, x, reference), x


def _options(method: str, options: dict[str, Any]) -> Any:
    cls = METHODS[method].options
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
            f"its options are {', '.join(allowed)}"
        )
    return cls(**options)


def _fingerprint(data: jax.Array) -> str:
    """A cheap hash of ``data``: its shape, dtype and up to 1024 evenly spaced rows."""
    stride = max(1, -(-data.shape[0] // 1024))
    rows = np.ascontiguousarray(jax.device_get(data[::stride]))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((data.shape, str(data.dtype))).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


def _describe(
    method: str,
    options: Any,
    data: jax.Array,
    batch_size: int,
    num_steps: int,
    key: jax.Array,
) -> dict:
    """The JSON description checked when resuming (callables by name only).

    Everything but ``num_steps`` must match to resume (a run may be extended).
    """

    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, tuple):
            return [plain(u) for u in v]
        return type(v).__name__

    opts = {
        f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)
    }
    return {
        "method": method,
        "options": opts,
        "data_shape": list(data.shape),
        "dtype": str(data.dtype),
        "data_fingerprint": _fingerprint(data),
        "key": jax.random.key_data(key).tobytes().hex(),
        "batch_size": batch_size,
        "num_steps": num_steps,
    }


def _as_key(key: Any) -> jax.Array:
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype != jnp.uint32:
        raise TypeError(
            f"key must be a PRNG key (jax.random.key), got dtype {key.dtype}"
        )
    return jax.random.wrap_key_data(key)


def _initial_state(spec: Method, opts: Any, data: jax.Array, num_steps: int, key):
    """The networks' graph definitions and the state before step 0."""
    nets = spec.networks(opts, data.shape[1], data.dtype, nnx.Rngs(key))
    if spec.prepare is not None:
        spec.prepare(nets, data)
    split = {name: nnx.split(net, nnx.Param) for name, net in nets.items()}
    graphdefs = {name: g for name, (g, _) in split.items()}
    params = {name: nnx.to_pure_dict(s) for name, (_, s) in split.items()}
    optimizers = spec.optimizers(opts, num_steps)
    opt_state = {name: optimizers[name].init(p) for name, p in params.items()}
    return graphdefs, TrainState(params, opt_state, jnp.array(0, jnp.int32), key)


_SCORE_ROWS = 4096  # training rows of the divergence check


@functools.partial(jax.jit, static_argnames=("method", "options", "graphdefs"))
def _score(params, x, *, method, options, graphdefs):
    """[] the method's score of the networks ``params`` on ``x`` (see Method)."""
    nets = {name: nnx.merge(g, params[name]) for name, g in graphdefs}
    return METHODS[method].score(nets, options, x)


def _divergence(method: str, start: float, end: float, rows: int) -> str:
    return (
        f"the {method} training objective on {rows} training points rose from "
        f"{start:.4g} at initialisation to {end:.4g} after training: the run "
        f"diverged and the model is worse than its starting point. Lower the "
        f"learning rate or clip the gradients (e.g. optimizer=optax.chain("
        f"optax.clip_by_global_norm(1.0), optax.adam(...)))."
    )


def _failure(losses: dict[str, np.ndarray], done: int, good_steps: int) -> str:
    bad = ", ".join(f"{k}={float(v[done]):.4g}" for k, v in losses.items())
    return (
        f"non-finite loss or parameters at step {good_steps + 1} ({bad}); training "
        f"stopped and the result holds the state after step {good_steps}, the last "
        f"finite one. Lower the learning rate or check the data."
    )


def _history_from_dict(d: dict) -> History:
    return History(
        {k: np.asarray(v) for k, v in d["losses"].items()},
        np.asarray(d["chunk_step"]),
        np.asarray(d["steps_per_s"]),
        np.asarray(d["sw2"]),
    )


def _home(tree: Any, like: jax.Array) -> Any:
    """``tree`` on the device of ``like``.

    After sharded chunks the state is replicated over the mesh; evaluation
    and the returned result use one copy, so that later programs on them
    (metrics, sampling) are single-device programs, where host callbacks
    (e.g. ``densax.ot``'s sorts) are safe.
    """

    def local(v):
        return isinstance(v, jax.Array) and not v.is_fully_addressable

    if not any(local(v) for v in jax.tree.leaves(tree)):
        return jax.device_put(tree, like.sharding)  # one process: one transfer
    # A mesh over several processes: no process can address the whole
    # replicated state; each keeps its first local copy (all copies are equal).
    return jax.tree.map(
        lambda v: (
            v.addressable_data(0) if local(v) else jax.device_put(v, like.sharding)
        ),
        tree,
    )


def _log_line(p: Progress) -> str:
    width = len(str(p.num_steps))
    losses = "  ".join(f"{k} {v:.4g}" for k, v in p.losses.items())
    return (
        f"[{p.method}] step {p.step:>{width}}/{p.num_steps}  "
        f"{p.steps_per_s:7.1f} steps/s  {losses}  sw2 {p.sw2:.4g}"
    )


def train(
    key: jax.Array,
    data: Any,
    *,
    method: str,
    num_steps: int,
    batch_size: int | None = None,
    chunk_size: int = 250,
    eval_data: Any = None,
    eval_size: int = 1000,
    mesh: Mesh | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    verbose: bool = False,
    callback: Callable[[Progress], None] | None = None,
    validate: bool = True,
    **options: Any,
) -> TrainResult:
    """Trains a generative model of ``data`` with ``method``.

    A host-side driver (not itself jittable): it compiles one chunk of
    ``chunk_size`` steps and calls it until ``num_steps`` steps are done.

    Args:
      key: PRNG key: network initialisation, every step's randomness and the
        evaluation noise all derive from it.
      data: [n, d] training data.
      method: one of ``"gan"``, ``"wgan-clip"``, ``"wgan-gp"``, ``"sliced"``,
        ``"sinkhorn"``, ``"ddpm"``, ``"flow"`` (maximum likelihood; its
        density model is :func:`densax.generative.density` of the result).
      num_steps: total generator (or denoiser) steps; when resuming, the
        steps already in the checkpoint count. A finished run may be extended
        by resuming with a larger ``num_steps``: it continues from the saved
        state, the learning-rate schedules spanning the new ``num_steps``
        from there on (with ``lr_schedule="constant"`` the extended run is
        bit-identical to a run of the larger ``num_steps`` from the start; a
        cosine schedule is stretched to the new horizon).
      batch_size: global batch size (divisible by the number of devices in
        ``mesh``); default: the method's, 256 for the adversarial methods and
        ``"ddpm"``, 1024 for ``"sliced"`` and 512 for ``"sinkhorn"``
        (minibatch OT losses are biased towards blurred samples by
        O(1/sqrt(batch)); see :mod:`~densax.generative.gans`).
      chunk_size: steps per compiled chunk, i.e. between two progress
        reports, evaluations and checkpoints. Does not change the result.
      eval_data: [m, d] reference data of the metric (default: ``data``).
      eval_size: samples generated for the metric, compared with up to that
        many reference points; 0 turns evaluation off.
      mesh: a 1D device mesh to shard the batch over (data parallel).
      checkpoint: file to write a checkpoint to after every chunk.
      resume: continue from ``checkpoint`` if that file exists. The
        checkpoint's description must match this run: method, options,
        batch size, the data (shape, dtype and a hash of up to 1024 evenly
        spaced rows) and ``key``; only ``num_steps`` may grow.
      verbose: print one line per chunk (step, steps/s, losses, metric).
      callback: called with a :class:`Progress` after every chunk.
      validate: check that ``data`` is finite.
      **options: the method's options, e.g. ``learning_rate``, ``hidden``,
        ``n_critic``, ``gp_weight`` (see the options classes of
        :mod:`~densax.generative.gans` and :mod:`~densax.generative.diffusion`).

    Half-precision data (float16, bfloat16) are trained on in float32: the
    networks' parameters, the samples and the metric are float32.

    Returns:
      A :class:`TrainResult`; ``finite=False`` (with a ``message`` and a
      ``RuntimeWarning``) if the NaN guard stopped training, the state then
      being the last finite one; ``diverged=True`` (with a ``message`` and a
      ``RuntimeWarning``) if a finite run of a method with a proper objective
      (``"flow"``) ended worse on its training data than it started.

    Raises:
      ValueError: bad option values or shapes (no point, no feature),
        non-finite data, a checkpoint of another run (other key, data,
        options...) or holding more than ``num_steps`` steps, a checkpoint
        that cannot be read (naming the file).
      TypeError: unknown options, non-int counts.

    Example:
      >>> from densax import datasets, generative
      >>> x = datasets.eight_gaussians(jax.random.key(0), 512)
      >>> res = generative.train(jax.random.key(1), x, method="sliced",
      ...                        num_steps=20, batch_size=64, chunk_size=10,
      ...                        hidden=(32, 32))
      >>> res.history.losses["generator"].shape, int(res.state.step)
      ((20,), 20)
    """
    _validate.check_choice(method, "method", tuple(METHODS))
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    if batch_size is None:
        batch_size = METHODS[method].batch_size
    batch_size = _validate.check_int(batch_size, "batch_size", minimum=1)
    chunk_size = min(
        _validate.check_int(chunk_size, "chunk_size", minimum=1), num_steps
    )
    eval_size = _validate.check_int(eval_size, "eval_size", minimum=0)
    opts = _options(method, options)
    data = _validate.as_float(data, "data", ndim=2)
    if data.dtype in _validate.HALF_DTYPES:  # trained in float32 (documented)
        data = data.astype(jnp.float32)
    if data.shape[0] < 1:
        raise ValueError("data must hold at least one point")
    if data.shape[1] < 1:
        raise ValueError(f"data must have at least one feature, got {data.shape}")
    _validate.check_finite(data, "data", validate)
    eval_data = (
        data
        if eval_data is None
        else _validate.as_float(eval_data, "eval_data", ndim=2, dtype=data.dtype)
    )
    _validate.check_same_last_dim(data, eval_data, "data", "eval_data")
    if mesh is not None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh must be 1D, got axes {mesh.axis_names}")
        if batch_size % mesh.size:
            raise ValueError(
                f"batch_size ({batch_size}) must be divisible by the mesh size "
                f"({mesh.size})"
            )
    key = _as_key(key)

    k_init, k_train, k_eval = jax.random.split(key, 3)
    graphdefs, state = _initial_state(METHODS[method], opts, data, num_steps, k_init)
    state = state._replace(key=k_train)
    static = _Static(
        method, opts, tuple(graphdefs.items()), batch_size, chunk_size, mesh
    )
    describe = _describe(method, opts, data, batch_size, num_steps, key)
    score = None
    if METHODS[method].score is not None:  # scored before any checkpoint loads
        score_x = data[:: max(1, -(-data.shape[0] // _SCORE_ROWS))]
        score = functools.partial(
            _score,
            x=score_x,
            method=method,
            options=opts,
            graphdefs=static.graphdefs,
        )
        start_score = float(score(state.params))

    history = History({}, np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state, saved_history, meta = ckpt.load(checkpoint, state)
        same = lambda d: {k: v for k, v in d.items() if k != "num_steps"}
        if not isinstance(meta, dict) or same(meta) != same(describe):
            diff = sorted(
                k
                for k in set(describe) | set(meta if isinstance(meta, dict) else {})
                if k != "num_steps"
                and (meta.get(k) if isinstance(meta, dict) else None) != describe.get(k)
            )
            raise ValueError(
                f"checkpoint {checkpoint} belongs to another run (differs in "
                f"{', '.join(diff)}): saved {meta}, this run {describe}"
            )
        if int(state.step) > num_steps:
            raise ValueError(
                f"checkpoint {checkpoint} already holds {int(state.step)} steps, "
                f"more than num_steps={num_steps}"
            )
        try:
            history = _history_from_dict(saved_history)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(
                f"checkpoint {checkpoint} has a malformed history: {err}"
            ) from err

    if eval_size:
        k_ref, k_eval = jax.random.split(k_eval)
        pick = jax.random.permutation(k_ref, eval_data.shape[0])[:eval_size]
        reference = eval_data[pick]
        first_name = next(iter(graphdefs))
        evaluate = functools.partial(
            _evaluate,
            method=method,
            options=opts,
            graphdef=graphdefs[first_name],
            n=eval_size,
        )

    finite, message = True, ""
    stop = jnp.int32(num_steps)
    while int(state.step) < num_steps:
        start = int(state.step)
        t0 = time.perf_counter()
        new_state, losses, failed = _run_chunk(state, data, stop, static=static)
        done = int(new_state.step) - start  # waits for the chunk
        elapsed = time.perf_counter() - t0
        losses = {k: np.asarray(v) for k, v in losses.items()}
        state = new_state
        history = history._replace(
            losses={
                k: np.concatenate([history.losses.get(k, v[:0]), v[:done]])
                for k, v in losses.items()
            }
        )
        value, samples = math.nan, None
        if eval_size:
            value, samples = evaluate(
                _home(state.params[first_name], data), k_eval, reference
            )
            value = float(value)
        rate = done / elapsed if elapsed > 0 else math.nan
        history = history._replace(
            chunk_step=np.append(history.chunk_step, int(state.step)),
            steps_per_s=np.append(history.steps_per_s, rate),
            sw2=np.append(history.sw2, value),
        )
        if bool(failed):
            finite, message = False, _failure(losses, done, int(state.step))
        if checkpoint is not None:
            ckpt.save(checkpoint, state, history=history._asdict(), meta=describe)
        progress = Progress(
            method,
            int(state.step),
            num_steps,
            {
                k: float(np.mean(v[:done])) if done else math.nan
                for k, v in losses.items()
            },
            value,
            rate,
            samples,
        )
        if verbose:
            print(_log_line(progress), flush=True)
        if callback is not None:
            callback(progress)
        if not finite:
            warnings.warn(
                f"densax.generative.train: {message}", RuntimeWarning, stacklevel=2
            )
            break

    state = _home(state, data)
    diverged = False
    if finite and score is not None:
        end_score = float(score(state.params))
        diverged = end_score > start_score
        if diverged:
            message = _divergence(method, start_score, end_score, score_x.shape[0])
            warnings.warn(
                f"densax.generative.train: {message}", RuntimeWarning, stacklevel=2
            )
    models = {name: nnx.merge(g, state.params[name]) for name, g in graphdefs.items()}
    return TrainResult(
        generator=models[next(iter(models))],
        critic=models.get("critic"),
        state=state,
        history=history,
        method=method,
        options=opts,
        finite=finite,
        message=message,
        diverged=diverged,
    )


@functools.partial(
    jax.jit, static_argnames=("method", "options", "graphdef", "n", "sampler_options")
)
def _sample(params, key, *, method, options, graphdef, n, sampler_options):
    model = nnx.merge(graphdef, params)
    dtype = jax.tree.leaves(params)[0].dtype
    return METHODS[method].sample(
        model, options, key, n, dtype, **dict(sampler_options)
    )


def sample(
    key: jax.Array, result: TrainResult, n: int, **sampler_options: Any
) -> jax.Array:
    """Draws ``n`` samples from a trained model.

    Jitted (compiled once per ``n`` and sampler options) and vmappable over
    ``key``.

    Args:
      key: PRNG key.
      result: the output of :func:`train`.
      n: number of samples.
      **sampler_options: method-specific options; for ``"ddpm"``:
        ``sampler="ddpm" | "ddim"``, ``num_steps``, ``eta`` (see
        :func:`~densax.generative.diffusion.ddpm_sample` and
        :func:`~densax.generative.diffusion.ddim_sample`); none for the GAN
        family.

    Returns:
      [n, d] samples in the training data's dtype.

    Example:
      >>> from densax import datasets, generative
      >>> x = datasets.eight_gaussians(jax.random.key(0), 512)
      >>> res = generative.train(jax.random.key(1), x, method="sliced",
      ...                        num_steps=20, batch_size=64, chunk_size=10,
      ...                        hidden=(32, 32))
      >>> generative.sample(jax.random.key(2), res, 7).shape
      (7, 2)
    """
    n = _validate.check_int(n, "n", minimum=1)
    graphdef, params = nnx.split(result.generator, nnx.Param)
    return _sample(
        nnx.to_pure_dict(params),
        key,
        method=result.method,
        options=result.options,
        graphdef=graphdef,
        n=n,
        sampler_options=tuple(sorted(sampler_options.items())),
    )
