"""Sphinx configuration of densax's documentation site.

Why Sphinx (and not MkDocs): densax's docstrings are Google style with reST
roles (``:func:`fit```, ``:class:`GMMParams```, double-backtick literals).
Sphinx's autodoc + napoleon render them as written and resolve the roles into
links; mkdocstrings would show the roles as raw text. MyST lets the pages be
Markdown, myst-nb renders the committed notebooks with their outputs (never
executed here) and furo is a clean, light theme. It is also the stack of the
JAX libraries densax's users know (optax, ott-jax, flax, distrax).

Nothing in the site is hand-listed: ``_ext/densax_docs.py`` generates, at each
build, the API reference from every public module's ``__all__``, the notebook
pages from ``notebooks/*.ipynb``, the benchmarks page from
``benchmarks/results/<device>/`` and the changelog from ``CHANGELOG.md``.

Build (from the repository root, into the ignored ``docs/_build/html``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # this checkout's densax, installed or not
sys.path.insert(0, str(DOCS / "_ext"))
# One host device and no accelerator probing while autodoc imports densax.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import densax  # noqa: E402

project = "densax"
author = "the densax authors"
copyright = "the densax authors, Apache-2.0"
release = densax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "densax_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_generated",
    "README.md",
    "check_rendered.py",
    "**/.ipynb_checkpoints",
]
templates_path = []

# Notebooks are rendered from their committed outputs: never executed here.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# Warnings stay errors (-W), except two that only concern the notebooks' own
# styling: a heading level skipped in a markdown cell, and an output type
# (e.g. a progress-bar widget) that a static page cannot show.
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# API reference: Google docstrings, signatures without type clutter.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_preserve_defaults = True
autosummary_generate = False
add_module_names = False

html_theme = "furo"
html_title = f"densax {release}"
html_static_path = ["_static"]
html_css_files = ["densax.css"]
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {"navigation_with_keys": True}
