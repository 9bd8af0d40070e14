"""The documentation site: it builds with warnings as errors, its internal links
resolve, it documents every public name, and its examples follow the API.

The site is built once per session (about 30 s, no notebook is executed) into a
temporary folder. Skipped when the ``docs`` extra (Sphinx, MyST-NB, furo) is not
installed. The examples of the pages are checked statically here (every
``densax`` name and keyword they use exists); running them all takes minutes,
so that test is ``slow`` (``pytest -m slow tests/test_docs.py``).
"""

import ast
import html.parser
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(
    [DOCS / "index.md", DOCS / "getting_started.md", *DOCS.glob("user_guide/*.md")]
)
BLOCKS = [
    (page, i, code)
    for page in PAGES
    for i, code in enumerate(
        re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    )
]


def _docs_extension():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        return importlib.import_module("densax_docs")
    finally:
        sys.path.remove(str(DOCS / "_ext"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("sphinx", "myst_nb", "furo"):
        pytest.importorskip(module, reason="the docs extra is not installed")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    cmd += ["-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    return proc, out / "html"


def test_site_builds_with_warnings_as_errors(site):
    proc, html_dir = site
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (html_dir / "index.html").exists()


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.urls = set(), []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            elif name in ("href", "src") and value:
                self.urls.append(value)


def _parse(path, cache={}):  # noqa: B006 (a cache on purpose)
    if path not in cache:
        parser = _Links()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = parser
    return cache[path]


def test_internal_links_resolve(site):
    """Every relative href/src of every page names a file (and an anchor in it)."""
    proc, html_dir = site
    assert (html_dir / "index.html").exists(), proc.stderr[-2000:]
    broken, n_links = [], 0
    for page in sorted(html_dir.rglob("*.html")):
        for url in _parse(page).urls:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):
                continue  # external: not checked (no network)
            n_links += 1
            target = page if not parts.path else page.parent / unquote(parts.path)
            if target.is_dir():
                target = target / "index.html"
            if not target.resolve().is_file():
                broken.append(f"{page.relative_to(html_dir)}: {url} (no file)")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                if fragment not in _parse(target.resolve()).ids:
                    broken.append(f"{page.relative_to(html_dir)}: {url} (no anchor)")
    assert n_links > 1000, n_links
    assert not broken, "\n".join(broken[:50])


def test_every_public_name_is_documented(site):
    proc, html_dir = site
    assert (html_dir / "index.html").exists(), proc.stderr[-2000:]
    ext = _docs_extension()
    modules = ext.public_modules()
    documented, missing = set(modules), []
    for modname in modules:
        module = importlib.import_module(modname)
        page = html_dir / "api" / f"{modname}.html"
        assert page.exists(), modname
        assert f"module-{modname}" in _parse(page).ids, f"{modname} not documented"
        for name in ext.public_names(modname):
            if inspect.ismodule(getattr(module, name)):
                continue
            home = ext.home_module(modname, name, documented)
            if f"{home}.{name}" not in _parse(html_dir / "api" / f"{home}.html").ids:
                missing.append(f"{modname}.{name} (on {home})")
    assert not missing, missing
    assert {"densax.gmm", "densax.kde", "densax.ot"} <= documented


def test_every_notebook_device_and_changelog_has_a_page(site):
    proc, html_dir = site
    assert (html_dir / "index.html").exists(), proc.stderr[-2000:]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert (html_dir / "notebooks" / f"{nb.stem}.html").exists(), nb.name
    for device in (ROOT / "benchmarks" / "results").iterdir():
        if device.is_dir() and any(device.glob("*.md")):
            page = html_dir / "benchmarks" / f"{device.name}.html"
            assert page.exists(), device.name
            n_png = len(list(device.glob("*.png")))
            assert page.read_text().count("<img") >= n_png, device.name
    assert (html_dir / "changelog.html").exists()
    for chapter in ("gaussians_mixtures", "kde", "divergences", "optimal_transport"):
        assert (html_dir / "user_guide" / f"{chapter}.html").exists(), chapter


def _densax_aliases(tree):
    """Local names bound to densax modules by the block's imports."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "densax"
        ):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                try:
                    obj = importlib.import_module(full)
                except ImportError:
                    obj = getattr(importlib.import_module(node.module), alias.name)
                aliases[alias.asname or alias.name] = obj
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("densax"):
                    aliases[alias.asname or alias.name.split(".")[0]] = (
                        importlib.import_module(alias.name.split(".")[0])
                    )
    return aliases


@pytest.mark.parametrize(
    "page, index, code",
    BLOCKS,
    ids=[f"{p.relative_to(DOCS)}[{i}]" for p, i, _ in BLOCKS],
)
def test_examples_use_the_current_api(page, index, code):
    """Each ``module.name(...)`` of an example exists and takes its keywords.

    Static and fast: a renamed function or keyword fails here, without running
    the examples (``test_example_runs`` does, with ``-m slow``).
    """
    tree = ast.parse(code)
    aliases = _densax_aliases(tree)
    problems = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and inspect.ismodule(aliases.get(node.value.id))
        ):
            continue
        module = aliases[node.value.id]
        if not hasattr(module, node.attr):
            problems.append(f"{module.__name__}.{node.attr} does not exist")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (
            isinstance(owner, ast.Name) and inspect.ismodule(aliases.get(owner.id))
        ):
            continue
        func = getattr(aliases[owner.id], node.func.attr, None)
        if func is None or not callable(func):
            continue
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        for keyword in node.keywords:
            if keyword.arg and keyword.arg not in params:
                problems.append(f"{func.__module__}.{func.__name__}: no {keyword.arg}=")
    assert aliases, "the block imports nothing from densax"
    assert not problems, problems


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, index, code",
    BLOCKS,
    ids=[f"{p.relative_to(DOCS)}[{i}]" for p, i, _ in BLOCKS],
)
def test_example_runs(page, index, code):
    exec(
        compile(code, f"{page.name}[python block {index}]", "exec"),
        {"__name__": "docs"},
    )


@pytest.mark.slow
def test_every_image_renders_in_chromium(site):
    """docs/check_rendered.py on the built site (skipped without Chromium)."""
    import shutil

    if not any(shutil.which(n) for n in ("chromium", "chromium-browser")):
        pytest.skip("no Chromium (Debian: apt-get install chromium)")
    proc, html_dir = site
    assert (html_dir / "index.html").exists(), proc.stderr[-2000:]
    sys.path.insert(0, str(DOCS))
    try:
        check_rendered = importlib.import_module("check_rendered")
    finally:
        sys.path.remove(str(DOCS))
    pages = sorted(
        str(p.relative_to(html_dir))
        for p in html_dir.rglob("*.html")
        if not p.relative_to(html_dir).parts[0].startswith("_")
    )
    report = check_rendered.check(html_dir, pages)
    assert len(report) == len(pages)
    broken = [
        (entry["page"], img["src"])
        for entry in report
        for img in entry["images"]
        if not img["naturalWidth"]
    ]
    assert not broken, broken
    assert sum(len(entry["images"]) for entry in report) > 0
