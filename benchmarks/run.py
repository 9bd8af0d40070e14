"""Runs densax's benchmarks and gathers their results: the README's main job.

Runs every ``benchmarks/bench_*.py`` (or the topics named with ``--only``) in
its own process, one after the other, so that no two benchmarks share the
machine. Each script writes ``results/<device>/<topic>.json`` and a markdown
table; this runner then writes, for every device found under ``results/``
(a GPU machine's results land beside the CPU ones):

* ``benchmarks/RESULTS.md``: one combined table per topic and device (time,
  ratio to densax, accuracy against the reference), with the environment;
* ``results/<device>/<topic>.png``: time against problem size, log-log.

With ``--quick`` everything goes under ``results/<device>/quick/`` instead
(and ``RESULTS.md`` there), leaving the committed full-size results alone.

Usage::

    python benchmarks/run.py --quick              # every topic, small sizes
    python benchmarks/run.py --only gmm kde       # two topics, full sizes
    python benchmarks/run.py --report-only        # rebuild RESULTS.md and plots
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULTS_DIR, device_tag, markdown_table  # noqa: E402


def _scripts(only: list[str] | None) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {f"bench_{name}.py" for name in only}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            names = ", ".join(s.stem.removeprefix("bench_") for s in scripts)
            raise SystemExit(f"unknown topic(s) {sorted(unknown)}; available: {names}")
        scripts = [s for s in scripts if s.name in wanted]
    return scripts


def _run(script: Path, out: Path, quick: bool, timeout: float) -> dict:
    cmd = [
        sys.executable,
        str(script),
        "--out",
        str(out),
        *(["--quick"] if quick else []),
    ]
    print(f"\n=== {script.name} {'--quick' if quick else ''}", flush=True)
    log = out / f"{script.stem}.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    elapsed = time.perf_counter() - t0
    status = "ok" if rc == 0 else f"failed ({rc}); see {log}"
    print(f"    {status} in {elapsed:.1f} s", flush=True)
    if rc != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
    return {"script": script.name, "returncode": rc, "seconds": round(elapsed, 1)}


def _load(folder: Path) -> list[dict]:
    results = []
    for path in sorted(folder.glob("*.json")):
        payload = json.loads(path.read_text())
        if isinstance(payload, dict) and "records" in payload:
            results.append(payload)
    return results


def _plot(payload: dict, path: Path) -> bool:
    rows = [r for r in payload["records"] if r.get("size") and r.get("time_s")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list] = {}
    for r in rows:
        series.setdefault((r["impl"], r["dtype"], r["unit"]), []).append(
            (r["size"], r["time_s"])
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    for (impl, dtype, unit), pts in sorted(series.items()):
        pts.sort()
        style = "-" if impl == "densax" else "--"
        sizes, times = zip(*pts, strict=True)
        ax.loglog(sizes, times, style, marker="o", label=f"{impl} {dtype} ({unit})")
    ax.set_xlabel("problem size")
    ax.set_ylabel("time [s]")
    ax.set_title(f"{payload['topic']} on {payload['environment']['device_kind']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _environment_line(env: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    threads = env.get("threads") or {}
    return (
        f"{env['device_kind']} ({env['platform']}, {env['n_devices']} device(s), "
        f"{env['cpu_count']} CPU cores, peer threads {threads.get('limit', '?')}); "
        f"{versions}; {env['date']}"
    )


def report(folders: list[Path], out_md: Path) -> None:
    """Writes the combined markdown report and the plots for ``folders``."""
    sections = [
        "# densax benchmark results\n",
        "Written by `python benchmarks/run.py`. `time / densax` is the time of "
        "each implementation divided by densax's on the same case and dtype "
        "(above 1: densax is faster). Accuracy columns compare each result with "
        "the reference named in the topic's script.\n",
    ]
    for folder in folders:
        payloads = _load(folder)
        if not payloads:
            continue
        sections.append(f"\n## {folder.relative_to(RESULTS_DIR)}\n")
        for payload in payloads:
            topic = payload["topic"]
            sections.append(f"\n### {topic}\n")
            sections.append(
                f"Environment: {_environment_line(payload['environment'])}\n"
            )
            png = folder / f"{topic}.png"
            if _plot(payload, png):
                sections.append(f"\n![{topic}]({png.relative_to(out_md.parent)})\n")
            sections.append("\n" + markdown_table(payload["records"]))
    out_md.write_text("\n".join(sections))
    print(f"wrote {out_md}")


def _summary(folder: Path) -> None:
    """Prints each topic's table (the quick run's answer on the terminal)."""
    for payload in _load(folder):
        print(f"\n## {payload['topic']}\n")
        print(markdown_table(payload["records"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 3 min)")
    parser.add_argument("--only", nargs="+", metavar="TOPIC", help="e.g. gmm kde ot")
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild RESULTS.md and plots"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="per-script limit in seconds"
    )
    args = parser.parse_args(argv)

    device = device_tag()
    out = RESULTS_DIR / device / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    if not args.report_only:
        runs = [_run(s, out, args.quick, args.timeout) for s in _scripts(args.only)]
        (out / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
        failures = [r for r in runs if r["returncode"] != 0]
    if args.quick:
        _summary(out)
        report([out], out / "RESULTS.md")
    else:
        folders = sorted(p for p in RESULTS_DIR.iterdir() if p.is_dir())
        report(folders, HERE / "RESULTS.md")
    if failures:
        print(f"{len(failures)} benchmark(s) failed: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
