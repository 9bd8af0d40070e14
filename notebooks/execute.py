"""Executes notebooks at full size and writes them back with their outputs.

The committed notebooks carry their outputs (figures included), so that they
can be read on GitHub and on the documentation site without running them.
After changing a notebook, or an API it uses, run::

    python notebooks/execute.py                       # every notebook
    python notebooks/execute.py 05_optimal_transport  # some of them

``tests/test_notebooks.py`` runs them at small sizes and checks that the
committed copies were executed top to bottom with every figure present.
Needs the ``notebooks`` extra (nbclient, nbformat, ipykernel, matplotlib).
"""

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["execute"]

HERE = Path(__file__).resolve().parent


def execute(path: Path, timeout: int = 1800) -> float:
    """Executes ``path`` top to bottom in place; returns the seconds it took."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env_path = os.pathsep.join(
        filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])
    )
    os.environ["PYTHONPATH"] = env_path  # this checkout's densax in the kernel
    # Figures are captured by the kernel's inline backend (not Agg).
    os.environ.pop("MPLBACKEND", None)
    os.environ.pop("DENSAX_NOTEBOOK_SMALL", None)
    t0 = time.perf_counter()
    nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook stems (default: all)")
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names]
        if len(paths) != len(args.names):
            sys.exit(f"unknown notebook among {args.names}")
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main()
