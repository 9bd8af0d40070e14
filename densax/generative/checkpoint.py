"""Checkpoints of a training run: msgpack files, no pickle.

A checkpoint holds everything needed to continue a run exactly where it
stopped: the parameters and optimiser states of every network, the step
count and the run's PRNG key (as raw key data plus the PRNG implementation's
name), together with the loss history and a small JSON description of the run
(method, options, data shape, the key, a fingerprint of the data) that
:func:`densax.generative.train` checks before resuming. It is written with
``flax.serialization`` (msgpack of the state pytrees' ``to_state_dict``),
atomically: the file is written beside the target and renamed over it, so
an interrupted save never leaves a truncated checkpoint.

Restoring needs a *target*, a state of the same structure (the freshly
initialised state of the run), as ``flax.serialization.from_state_dict`` does;
the arrays' values come from the file, bit for bit.
"""

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

__all__ = ["load", "save"]

_FORMAT = "densax.generative.checkpoint/1"


def save(
    path: str | os.PathLike, state: Any, *, history: Any = None, meta: Any = None
) -> Path:
    """Writes ``state`` (a pytree holding one PRNG key field ``key``) to ``path``.

    Args:
      path: the checkpoint file.
      state: a ``NamedTuple`` pytree of arrays with a typed PRNG key in its
        ``key`` field (e.g. :class:`densax.generative.TrainState`).
      history: optional pytree of NumPy arrays saved beside the state.
      meta: optional JSON-serialisable description of the run.

    Returns:
      The path written.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from typing import NamedTuple
      >>> class S(NamedTuple):
      ...     w: jax.Array
      ...     key: jax.Array
      >>> s = S(jnp.arange(3.0), jax.random.key(1))
      >>> f = save(tempfile.mkdtemp() + "/run.ckpt", s, meta={"step": 3})
      >>> restored, _, meta = load(f, s)
      >>> restored.w.tolist(), meta
      ([0.0, 1.0, 2.0], {'step': 3})
    """
    path = Path(path)
    key = state.key
    raw = state._replace(key=jax.random.key_data(key))
    payload = {
        "format": _FORMAT,
        "key_impl": str(jax.random.key_impl(key)),
        "meta": json.dumps(meta),
        "state": serialization.to_state_dict(jax.device_get(raw)),
        "history": serialization.to_state_dict(history),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(payload))
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike, target: Any) -> tuple[Any, Any, Any]:
    """Reads a checkpoint written by :func:`save`.

    Every array is checked against ``target``: same structure, shapes and
    dtypes; a ``step`` field, if any, must be a non-negative integer.

    Args:
      path: the checkpoint file.
      target: a state of the same structure as the saved one (its values are
        ignored; its ``key`` field must hold a typed PRNG key).

    Returns:
      ``(state, history, meta)``: the state as JAX arrays with its key
      re-wrapped, the history as saved (nested dicts of NumPy arrays, or
      None) and the description.

    Raises:
      ValueError: naming the file, for every way it cannot be read: missing
        or unreadable, not a densax checkpoint (corrupt, truncated, crafted),
        or a structure, shape or dtype that does not match ``target``.
    """
    try:
        return _load(Path(path), target)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"cannot read the checkpoint {path}: {err}") from err
    except Exception as err:
        raise ValueError(
            f"cannot read the checkpoint {path}: {type(err).__name__}: {err}"
        ) from err


def _load(path: Path, target: Any) -> tuple[Any, Any, Any]:
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except OSError:
        raise
    except Exception as err:
        raise ValueError(
            f"{path} is not a densax.generative checkpoint (corrupt or "
            f"truncated: {type(err).__name__}: {err})"
        ) from err
    fields = {"format", "key_impl", "meta", "state", "history"}
    if (
        not isinstance(payload, dict)
        or payload.get("format") != _FORMAT
        or not fields <= set(payload)
        or not isinstance(payload["state"], dict)
        or not isinstance(payload["key_impl"], str)
        or not isinstance(payload["meta"], str)
    ):
        raise ValueError(f"{path} is not a densax.generative checkpoint")
    raw_target = target._replace(key=jax.random.key_data(target.key))
    try:
        raw = serialization.from_state_dict(raw_target, payload["state"])
    except Exception as err:
        raise ValueError(
            f"the checkpoint {path} does not match this run's networks: {err}"
        ) from err
    pairs = list(zip(jax.tree.leaves(raw), jax.tree.leaves(raw_target), strict=False))
    if len(pairs) != len(jax.tree.leaves(raw_target)) or len(
        jax.tree.leaves(raw)
    ) != len(pairs):
        raise ValueError(
            f"the checkpoint {path} does not match this run's networks: "
            "a different number of arrays"
        )
    for a, b in pairs:
        if not isinstance(a, (np.ndarray, np.generic, jax.Array)):
            raise ValueError(
                f"the checkpoint {path} holds a {type(a).__name__} where this "
                "run has an array"
            )
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"the checkpoint {path} does not match this run's networks: array "
                f"shapes differ, e.g. {np.shape(a)} saved vs {np.shape(b)} expected"
            )
        if np.asarray(a).dtype != np.dtype(b.dtype):
            raise ValueError(
                f"the checkpoint {path} does not match this run's networks: "
                f"dtypes differ, e.g. {np.asarray(a).dtype} saved vs "
                f"{np.dtype(b.dtype)} expected"
            )
    step = getattr(raw, "step", None)
    if step is not None and int(np.asarray(step)) < 0:
        raise ValueError(f"the checkpoint {path} has a negative step {int(step)}")
    raw = jax.tree.map(jnp.asarray, raw)
    key = jax.random.wrap_key_data(raw.key, impl=payload["key_impl"])
    history = payload["history"]
    if history is not None and not isinstance(history, dict):
        raise ValueError(f"the checkpoint {path} has a malformed history")
    try:
        meta = json.loads(payload["meta"])
    except json.JSONDecodeError as err:
        raise ValueError(
            f"the checkpoint {path} has a malformed description: {err}"
        ) from err
    return raw._replace(key=key), history, meta
