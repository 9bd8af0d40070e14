"""Executes every ```python block of README.md, in order, so the README stays true."""

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
