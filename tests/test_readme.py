"""Executes every ```python block of README.md, in order, so the README stays true."""

import importlib
import inspect
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


MODULES = (
    "density",
    "gaussian",
    "gmm",
    "kde",
    "divergences",
    "ot",
    "cluster",
    "datasets",
    "metrics",
    "image_metrics",
    "generative",
    "generative.losses",
    "generative.diffusion",
    "generative.flows",
    "generative.checkpoint",
    "generative.models",
    "generative.image_nets",
)


@pytest.mark.parametrize("module", MODULES)
def test_api_reference_lists_every_public_name(module):
    mod = importlib.import_module(f"densax.{module}")
    text = README.read_text()
    section = text.split(f"**`densax.{module}`**", 1)[1].split("\n\n**", 1)[0]
    for name in mod.__all__:
        if not inspect.ismodule(getattr(mod, name)):
            assert f"`{name}" in section, f"densax.{module}.{name} missing in README"
