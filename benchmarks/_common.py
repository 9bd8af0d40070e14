"""Shared helpers for the benchmark scripts: timing, memory, environment, results.

Every ``benchmarks/bench_<topic>.py`` script follows the same pattern:

1. ``args = parse_args(__doc__)`` (adds ``--quick``, ``--out``, ``--repeat``);
2. ``threads = limit_peer_threads()`` fixes and reports the BLAS/OpenMP
   threads of the NumPy-based peers;
3. for each case, run densax and every peer on the *same* data in this
   process, timing jitted functions after a warm-up with :func:`time_fn`
   (which blocks on JAX outputs), and compute each implementation's accuracy
   against a reference;
4. build one :func:`record` per (case, implementation), then
   ``write_results("<topic>", records, args)``, which fills the ratios, writes
   ``benchmarks/results/<device>/<topic>.json`` (``.../quick/`` with
   ``--quick``) and a markdown table beside it, and prints the table.

A record's ``ratio`` is ``time of this implementation / time of densax`` for
the same case and dtype: above 1 means densax is faster.
"""

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import re
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

__all__ = [
    "RESULTS_DIR",
    "device_tag",
    "environment",
    "host_peak_bytes",
    "jax_memory_bytes",
    "limit_peer_threads",
    "markdown_table",
    "parse_args",
    "record",
    "recorder",
    "time_fn",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PEERS = ("numpy", "scipy", "sklearn", "ot", "ott", "gmmx", "optax", "flax")


def parse_args(
    description: str | None, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The common command line: ``--quick``, ``--out DIR``, ``--repeat N``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for a smoke run (<1 min)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results/<device>[/quick])",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed repetitions after warm-up"
    )
    return parser.parse_args(argv)


def device_tag() -> str:
    """A folder name for the default device: ``cpu``, ``gpu-nvidia-h100...``."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return "cpu"
    kind = re.sub(r"[^a-z0-9]+", "-", dev.device_kind.lower()).strip("-")
    return f"{dev.platform}-{kind}"


def limit_peer_threads(n: int | None = None) -> dict[str, Any]:
    """Fixes the BLAS/OpenMP thread pools of the NumPy-based peers.

    Args:
      n: threads per pool; defaults to ``os.cpu_count()`` (what the peers would
        use anyway, now stated explicitly).

    Returns:
      ``{"limit": n, "pools": [...]}`` describing each pool, for the record.
    """
    n = n or os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return {"limit": n, "pools": "threadpoolctl not installed"}
    threadpool_limits(limits=n)
    pools = [
        {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
        for p in threadpool_info()
    ]
    return {"limit": n, "pools": pools}


def environment(threads: dict[str, Any] | None = None) -> dict[str, Any]:
    """Device, versions of JAX and of every importable peer, threads, date."""
    dev = jax.devices()[0]
    versions = {"jax": jax.__version__, "jaxlib": jax.lib.__version__}
    for name in PEERS:
        try:
            versions[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            pass
    return {
        "device": device_tag(),
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "n_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "x64_enabled": bool(jax.config.read("jax_enable_x64")),
        "versions": versions,
        "threads": threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    repeat: int = 5,
    budget_s: float = 30.0,
) -> dict[str, float]:
    """Times ``fn(*args)``: one warm-up call, then up to ``repeat`` timed calls.

    JAX outputs are waited for with ``jax.block_until_ready``, so asynchronous
    dispatch is not mistaken for speed; NumPy peers are timed the same way.
    Timed calls stop early once ``budget_s`` seconds are spent (at least one
    timed call always runs), so slow peers do not dominate a run.

    Returns:
      ``{"time_s": median, "min_s": best, "n_runs": k, "first_s": warm-up}``;
      ``first_s`` includes compilation for jitted functions.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times: list[float] = []
    spent = 0.0
    while len(times) < max(repeat, 1) and (not times or spent < budget_s):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return {
        "time_s": statistics.median(times),
        "min_s": min(times),
        "n_runs": len(times),
        "first_s": first,
    }


def jax_memory_bytes(jitted: Any, *args: Any, **kwargs: Any) -> int | None:
    """Peak device memory XLA plans for a jitted call (arguments+outputs+temps).

    Uses the compiled executable's ``memory_analysis()``; returns ``None`` where
    the backend does not report it.
    """
    try:
        stats = jitted.lower(*args, **kwargs).compile().memory_analysis()
    except Exception:  # not every backend implements memory_analysis
        return None
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def host_peak_bytes(fn: Callable[..., Any], *args: Any) -> int:
    """Peak Python/NumPy heap allocation during ``fn(*args)`` (``tracemalloc``)."""
    tracemalloc.start()
    try:
        fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)


def record(
    case: str,
    impl: str,
    dtype: str,
    timing: dict[str, float] | None,
    *,
    accuracy: dict[str, float] | None = None,
    unit: str = "per call",
    size: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result row.

    Args:
      case: the problem, e.g. ``"n=100000 d=16 K=16 full"``.
      impl: ``"densax"`` or the peer's name (``"sklearn"``, ``"scipy"``...).
      dtype: ``"float32"`` or ``"float64"``.
      timing: the output of :func:`time_fn`, or ``None`` if it did not run
        (say why in ``extra["note"]``).
      accuracy: error measures against the reference, printed beside times.
      unit: what ``time_s`` measures (``"per EM iteration"``...).
      size: the problem size used as x-axis in time-vs-size plots.
      **extra: anything else worth keeping (``peak_mb``, ``n_iter``...).
    """
    row: dict[str, Any] = {"case": case, "impl": impl, "dtype": dtype, "unit": unit}
    row.update(timing or {"time_s": None})
    row["accuracy"] = accuracy or {}
    row["size"] = size
    row.update(extra)
    return row


def recorder(
    show: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], Callable[..., dict[str, Any]]]:
    """A results list and the function that fills it: ``(records, add)``.

    ``add(*args, **kwargs)`` appends ``record(*args, **kwargs)`` to
    ``records``, passes the row to ``show`` (e.g. a print of it) and returns
    it.
    """
    records: list[dict[str, Any]] = []

    def add(*args: Any, **kwargs: Any) -> dict[str, Any]:
        row = record(*args, **kwargs)
        records.append(row)
        if show is not None:
            show(row)
        return row

    return records, add


def _add_ratios(records: list[dict[str, Any]]) -> None:
    base = {
        (r["case"], r["dtype"], r["unit"]): r["time_s"]
        for r in records
        if r["impl"] == "densax" and r["time_s"]
    }
    for r in records:
        ref = base.get((r["case"], r["dtype"], r["unit"]))
        r["ratio"] = r["time_s"] / ref if ref and r["time_s"] else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """A markdown table: case, dtype, impl, time, ratio, accuracy, extras."""
    acc_keys = sorted({k for r in records for k in r["accuracy"]})
    extra_keys = [
        k
        for k in (
            "peak_mb",
            "maxrss_mb",
            "n_iter",
            "steps_per_s",
            "samples_per_s",
            "cpu_s",
            "note",
        )
        if any(k in r for r in records)
    ]
    head = [
        "case",
        "dtype",
        "impl",
        "time",
        "unit",
        "time / densax",
        *acc_keys,
        *extra_keys,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [
            r["case"],
            r["dtype"],
            r["impl"],
            _fmt_time(r["time_s"]),
            r["unit"],
            _fmt(r.get("ratio")),
            *(_fmt(r["accuracy"].get(k)) for k in acc_keys),
            *(_fmt(r.get(k)) for k in extra_keys),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    topic: str,
    records: list[dict[str, Any]],
    args: argparse.Namespace,
    threads: dict[str, Any] | None = None,
) -> Path:
    """Fills ratios, writes ``<topic>.json`` and ``<topic>.md``, prints the table.

    Returns:
      The path of the JSON file.
    """
    _add_ratios(records)
    out = args.out or (RESULTS_DIR / device_tag() / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "topic": topic,
        "quick": bool(args.quick),
        "environment": environment(threads),
        "records": records,
    }
    path = out / f"{topic}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    table = markdown_table(records)
    (out / f"{topic}.md").write_text(f"# {topic}\n\n{table}")
    print(table)
    print(f"wrote {path}")
    return path
