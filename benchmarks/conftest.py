"""pytest never imports the benchmark scripts.

They are scripts (each runs from its ``main()``), timed by ``run.py``, not
tests: the test suite (``testpaths``: ``tests``, ``densax``) never collects
this folder, and this keeps ``pytest benchmarks`` or ``pytest .`` from
importing them (and their peers) either.
"""

__all__ = ["collect_ignore_glob"]

collect_ignore_glob = ["*.py"]
