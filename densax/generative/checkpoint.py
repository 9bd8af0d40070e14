"""Checkpoints of a training run: msgpack files, no pickle.

A checkpoint holds everything needed to continue a run exactly where it
stopped: the parameters and optimiser states of every network, the step
count and the run's PRNG key (as raw key data plus the PRNG implementation's
name), together with the loss history and a small JSON description of the run
(method, options, data shape) that :func:`densax.generative.train` checks
before resuming. It is written with ``flax.serialization`` (msgpack of the
state pytrees' ``to_state_dict``), atomically: the file is written beside the
target and renamed over it, so an interrupted save never leaves a truncated
checkpoint.

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

    Args:
      path: the checkpoint file.
      target: a state of the same structure as the saved one (its values are
        ignored; its ``key`` field must hold a typed PRNG key).

    Returns:
      ``(state, history, meta)``: the state as JAX arrays with its key
      re-wrapped, the history as saved (nested dicts of NumPy arrays, or
      None) and the description.

    Raises:
      ValueError: the file is not a densax checkpoint, or its structure does
        not match ``target``.
    """
    payload = serialization.msgpack_restore(Path(path).read_bytes())
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a densax.generative checkpoint")
    raw_target = target._replace(key=jax.random.key_data(target.key))
    try:
        raw = serialization.from_state_dict(raw_target, payload["state"])
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(
            f"the checkpoint {path} does not match this run's networks: {err}"
        ) from err
    mismatch = [
        (np.shape(a), np.shape(b))
        for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(raw_target), strict=True)
        if np.shape(a) != np.shape(b)
    ]
    if mismatch:
        raise ValueError(
            f"the checkpoint {path} does not match this run's networks: array "
            f"shapes differ, e.g. {mismatch[0][0]} saved vs {mismatch[0][1]} expected"
        )
    raw = jax.tree.map(jnp.asarray, raw)
    key = jax.random.wrap_key_data(raw.key, impl=payload["key_impl"])
    return raw._replace(key=key), payload["history"], json.loads(payload["meta"])
