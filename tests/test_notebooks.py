"""Executes every notebook top to bottom at small sizes, so none can rot.

Each notebook reads ``DENSAX_NOTEBOOK_SMALL=1`` (set here) in its first code
cell and shrinks its problem sizes and iteration counts accordingly. The
committed notebooks carry the outputs of a full-size run (their figures are
shown on GitHub and on the documentation site): the test also checks that
they were executed top to bottom and that every cell drawing a figure has its
figure committed.
"""

import os
from pathlib import Path

import pytest
from conftest import compile_flags

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DENSAX_NOTEBOOK_SMALL", "1")
    # The inline backend, as in Jupyter: figures become outputs to compare.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # A single device in the kernel, compiled with the rest of the suite's
    # compile-time flags (tests/conftest.py; small sizes: compile-bound); a
    # notebook's own XLA flags, if any, win.
    monkeypatch.setenv("XLA_FLAGS", compile_flags())
    # The kernel imports this checkout's densax even without an install.
    pythonpath = [str(ROOT), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, pythonpath)))
    committed = nbformat.read(path, as_version=4)
    _check_committed_outputs(path.name, committed)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    # In sync: every cell that draws a figure now has its figure committed.
    drawn = _cells_with_images(nb)
    assert drawn <= _cells_with_images(committed), (
        f"{path.name}: cells {sorted(drawn - _cells_with_images(committed))} draw a "
        "figure that is not committed: re-execute the notebook and commit it"
    )


def _cells_with_images(nb):
    return {
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
    }


def _check_committed_outputs(name, nb):
    """The committed notebook was executed top to bottom, every cell once."""
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{name} is committed with execution counts {counts}: execute it top to "
        "bottom (python notebooks/execute.py NAME) and commit it"
    )
