"""Executes every ```python block of README.md, in order, so the README stays true."""

import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    code = BLOCKS[index]
    exec(
        compile(code, f"README.md[python block {index}]", "exec"),
        {"__name__": "readme"},
    )


def test_api_table_lists_every_public_module():
    """The README's module table names every public module (the site's API
    reference, checked by tests/test_docs.py, documents every name in them)."""
    import sys

    sys.path.insert(0, str(README.parent / "docs" / "_ext"))
    try:
        ext = importlib.import_module("densax_docs")
    finally:
        sys.path.pop(0)
    table = README.read_text().split("## API reference", 1)[1].split("\n## ", 1)[0]
    modules = [m for m in ext.public_modules() if m != "densax"]
    missing = [m for m in modules if f"`{m}`" not in table]
    assert not missing, missing
