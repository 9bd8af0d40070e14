"""pytest never imports the benchmark scripts.

Some of them (``bench_ot.py``, ``bench_ot_exact.py``, ...) are top-level
scripts: importing one runs it and rewrites its committed results. The test
suite (``testpaths``: ``tests``, ``densax``) never collects this folder; this
keeps ``pytest benchmarks`` or ``pytest .`` from doing so either.
"""

__all__ = ["collect_ignore_glob"]

collect_ignore_glob = ["*.py"]
