"""Sphinx extension that generates densax's pages from the repository.

At ``builder-inited``, before Sphinx reads any source, it writes (only when
their text changes, so incremental builds stay incremental):

- ``docs/api/``: one page per public module of densax (found by walking the
  package, skipping ``_private`` names), documenting every name of the
  module's ``__all__``, with the fields of its NamedTuples and dataclasses and
  their shape comments taken from the source;
- ``docs/notebooks/``: the committed ``notebooks/*.ipynb``, rendered from their
  outputs by myst-nb (never executed);
- ``docs/benchmarks/``: one page per ``benchmarks/results/<device>/``, with the
  environment of each topic's run, its markdown table and its plot;
- ``docs/changelog.md``: ``CHANGELOG.md`` of the repository root;
- ``docs/_generated/readme_start.md``: README's opening paragraph and its two
  commands, for the getting-started page.

It also adds the ``densax-notebook-figures`` directive, which shows every
figure stored in a notebook's outputs (the user guide uses it).

Every generated path is listed in ``.gitignore``; files left from an earlier
build (a renamed module, a removed device) are deleted.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import shutil
import textwrap
import tokenize
from pathlib import Path
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"

# The course's order for the modules it knows; others follow, sorted.
_ORDER = (
    "densax",
    "densax.gaussian",
    "densax.gmm",
    "densax.kde",
    "densax.divergences",
    "densax.ot",
    "densax.generative",
    "densax.metrics",
    "densax.datasets",
    "densax.density",
)


# ------------------------------------------------------------------ utilities


def _write(path: Path, text: str, written: set[Path]) -> None:
    """Writes ``text`` to ``path`` unless it already holds exactly that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written.add(path.resolve())
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _copy(src: Path, dst: Path, written: set[Path]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    written.add(dst.resolve())
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)


def _prune(folder: Path, written: set[Path]) -> None:
    """Deletes what an earlier build generated in ``folder`` and this one did not."""
    if not folder.exists():
        return
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path.resolve() not in written:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _rst_escape(text: str) -> str:
    """Plain text (a source comment) made safe inside reST markup."""
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def _summary(obj) -> str:
    """The first paragraph of a public object's docstring (not its type's)."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)):
        if isinstance(obj, dict):
            return "A ``dict``: " + ", ".join(f"``{key!r}``" for key in obj)
        if isinstance(obj, (tuple, list, frozenset)):
            return ", ".join(f"``{item!r}``" for item in obj)
        return ""
    return _first_line(obj)


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ")


# ------------------------------------------------------------- API reference


def public_modules() -> list[str]:
    """Every public module of densax: no component starts with ``_``."""
    import densax

    names = ["densax"]
    for info in pkgutil.walk_packages(densax.__path__, "densax."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    rank = {name: i for i, name in enumerate(_ORDER)}

    def key(name: str):  # a submodule follows its package
        top = ".".join(name.split(".")[:2])
        return (rank.get(top, len(rank)), top, name)

    return sorted(names, key=key)


def public_names(modname: str) -> list[str]:
    """The module's ``__all__`` (a module without one documents nothing)."""
    module = importlib.import_module(modname)
    return list(getattr(module, "__all__", []))


def home_module(modname: str, name: str, documented: set[str]) -> str:
    """Where ``modname.name`` is documented: the public module defining it.

    A class or function re-exported from another public module (say
    ``densax.generative.GANOptions`` from ``densax.generative.gans``) is
    documented once, on its defining module's page; one defined in a private
    module (``densax.ot._config``) is documented where it is re-exported.
    """
    obj = getattr(importlib.import_module(modname), name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return modname
    defining = getattr(obj, "__module__", None)
    if (
        defining
        and defining != modname
        and defining in documented
        and name in public_names(defining)
    ):
        return defining
    return modname


def _field_comments(cls) -> list[tuple[str, str, str]]:
    """(name, annotation, comment) of each annotated field of a class body.

    The comment is the one on the field's line, or the ``#`` lines just above
    it: the shape comments the project's conventions put on every field.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return []
    lines = source.splitlines()
    comments: dict[int, str] = {}
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        for tok in tokens:
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    classdef = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if classdef is None:
        return []
    fields = []
    for stmt in classdef.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        lineno = stmt.lineno
        text = [comments[lineno]] if lineno in comments else []
        above = lineno - 1
        block = []
        while above in comments and lines[above - 1].lstrip().startswith("#"):
            block.insert(0, comments[above])
            above -= 1
        text = block + text
        annotation = ast.get_source_segment(source, stmt.annotation) or ""
        fields.append((stmt.target.id, annotation, " ".join(text)))
    return fields


def _module_page(modname: str, documented: set[str]) -> str:
    module = importlib.import_module(modname)
    title = f"``{modname}``"
    out = [
        title,
        "=" * len(title),
        "",
        f".. automodule:: {modname}",
        "   :no-members:",
        "",
    ]
    names = public_names(modname)
    submodules = [n for n in names if inspect.ismodule(getattr(module, n))]
    local, elsewhere = [], []
    for name in names:
        if name in submodules:
            continue
        home = home_module(modname, name, documented)
        (local if home == modname else elsewhere).append((name, home))
    if submodules:
        out += [".. rubric:: Modules", "", ".. list-table::", ""]
        for name in submodules:
            sub = getattr(module, name).__name__
            out += [
                f"   * - :mod:`{name} <{sub}>`",
                f"     - {_first_line(getattr(module, name))}",
            ]
        out.append("")
    if local or elsewhere:
        # A table of our own rather than autosummary's, which cuts the summary
        # at the first ". " even inside a literal (``Linear -> ... -> Linear``).
        out += [".. rubric:: Summary", "", ".. list-table::", "   :widths: 30 70", ""]
        for name, home in sorted(local + elsewhere, key=lambda item: item[0].lower()):
            obj = getattr(module, name)
            role = (
                "class"
                if inspect.isclass(obj)
                else "func"
                if inspect.isfunction(obj)
                else "data"
            )
            suffix = "()" if role == "func" else ""
            out.append(f"   * - :py:{role}:`{name}{suffix} <{home}.{name}>`")
            out.append(f"     - {_summary(obj)}")
        out.append("")
    for name, _ in local:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            out += [
                f".. autoclass:: {modname}.{name}",
                "   :members:",
                "   :show-inheritance:",
                "",
            ]
        elif callable(obj) and not isinstance(obj, (tuple, list, dict, str)):
            out += [f".. autofunction:: {modname}.{name}", ""]
        else:
            out += [f".. autodata:: {modname}.{name}"]
            if len(repr(obj)) > 80:
                out.append("   :no-value:")
            out.append("")
    return "\n".join(out)


def generate_api(written: set[Path]) -> list[str]:
    """Writes ``api/index.md`` and one ``api/<module>.rst`` per public module."""
    modules = public_modules()
    documented = set(modules)
    rows = []
    for modname in modules:
        _write(
            DOCS / "api" / f"{modname}.rst", _module_page(modname, documented), written
        )
        summary = _md_cell(_first_line(importlib.import_module(modname)))
        rows.append(f"| {{mod}}`{modname}` | {summary} |")
    index = [
        "# API reference",
        "",
        "Generated from the docstrings of every public module, over its",
        "`__all__`: shapes, options, references and a runnable example for each",
        "name. Fields of results and parameters list the shape comments of the source.",
        "",
        "| module | |",
        "|---|---|",
        *rows,
        "",
        "```{toctree}",
        ":hidden:",
        "",
        *modules,
        "```",
        "",
    ]
    _write(DOCS / "api" / "index.md", "\n".join(index), written)
    return modules


def _md_cell(text: str) -> str:
    """A docstring's reST first line as a MyST table cell (roles become literals)."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return text.replace("|", "\\|")


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Hides NamedTuple fields' "Alias for field number N" (Fields lists them)."""
    doc = getattr(obj, "__doc__", None) or ""
    if isinstance(doc, str) and doc.startswith("Alias for field number"):
        return True
    return None


def resolve_reexport(app, env, node, contnode):
    """``missing-reference``: ``densax.generative.train`` links to its home.

    A re-exported name is documented once, on its defining module's page; a
    reference through the package that re-exports it is resolved to that page.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("densax."):
        return None
    modname, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(modname), name)
    except (ImportError, AttributeError):
        return None
    home = getattr(obj, "__module__", None)
    if not home or home == modname or not home.startswith("densax"):
        return None
    domain = env.get_domain("py")
    fromdoc = node.get("refdoc", "")
    return domain.resolve_xref(
        env, fromdoc, app.builder, node["reftype"], f"{home}.{name}", node, contnode
    )


def drop_object_base(app, name, obj, options, bases):
    """``Bases: object`` says nothing: keep the line for real bases only."""
    if object in bases:
        bases.remove(object)


def describe_data(app, what, name, obj, options, lines):
    """Constants: drop the docstring of their type, list a mapping's keys."""
    if what != "data" or not name.startswith("densax."):
        return
    if "\n".join(lines).strip() == inspect.cleandoc(type(obj).__doc__ or ""):
        lines.clear()
    if isinstance(obj, dict) and obj:
        keys = ", ".join(f"``{key!r}``" for key in obj)
        lines += ["", f"A ``dict`` with the keys {keys}.", ""]


def add_fields(app, what, name, obj, options, lines):
    """Appends a Fields list (annotation and shape comment) to class docstrings."""
    if what != "class" or not name.startswith("densax."):
        return
    fields = _field_comments(obj)
    if not fields:
        return
    lines += ["", ".. rubric:: Fields", ""]
    for field, annotation, comment in fields:
        lines.append(
            f"- ``{field}`` (``{annotation}``)"
            + (f": {_rst_escape(comment)}" if comment else "")
        )
    lines.append("")


# ---------------------------------------------------------------- notebooks


def _notebook_title(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def _notebook_has_outputs(path: Path) -> bool:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return any(
        c.get("outputs") for c in nb.get("cells", []) if c.get("cell_type") == "code"
    )


def generate_notebooks(written: set[Path]) -> None:
    """Copies the notebooks into ``notebooks/`` and writes their index page."""
    rows, entries = [], []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        _copy(path, DOCS / "notebooks" / path.name, written)
        note = "" if _notebook_has_outputs(path) else " (committed without outputs)"
        rows.append(
            f"| [{path.name}]({path.stem}.ipynb) | {_notebook_title(path)}{note} |"
        )
        entries.append(path.stem)
    text = [
        "# Notebooks",
        "",
        "One notebook per chapter of the course, rendered here from the outputs",
        "committed in `notebooks/` (the site never runs them; the test suite runs",
        "them at small sizes). Open them with Jupyter after",
        '`pip install -e ".[notebooks]"` to run them at full size.',
        "",
        "| notebook | |",
        "|---|---|",
        *rows,
        "",
        "```{toctree}",
        ":hidden:",
        "",
        *entries,
        "```",
        "",
    ]
    _write(DOCS / "notebooks" / "index.md", "\n".join(text), written)


def notebook_figures(stem: str) -> list[tuple[str, bytes]]:
    """(caption, PNG bytes) of every figure in a committed notebook's outputs.

    The caption is the first line of the markdown cell before the figure's cell.
    """
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    figures, caption = [], ""
    for cell in nb.get("cells", []):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            first = next((ln for ln in source.splitlines() if ln.strip()), "")
            caption = first.lstrip("#").strip()
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("image/png")
            if data:
                png = base64.b64decode(
                    "".join(data) if isinstance(data, list) else data
                )
                figures.append((caption, png))
    return figures


class NotebookFigures(SphinxDirective):
    """``densax-notebook-figures``: every figure of ``notebooks/<stem>.ipynb``."""

    required_arguments = 1
    option_spec: ClassVar = {"max": directives.nonnegative_int}

    def run(self):
        """A figure (image and caption) per PNG output of the notebook."""
        stem = self.arguments[0]
        path = ROOT / "notebooks" / f"{stem}.ipynb"
        if not path.exists():
            raise self.error(f"densax-notebook-figures: no notebook {path}")
        self.env.note_dependency(str(path))
        figures = notebook_figures(stem)
        if "max" in self.options:
            figures = figures[: self.options["max"]]
        result = []
        if not figures:
            para = nodes.paragraph()
            para += nodes.Text(
                f"The notebook {stem}.ipynb is committed without outputs: run it "
                "to see its figures."
            )
            result.append(nodes.note("", para))
            return result
        folder = GENERATED / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (caption, png) in enumerate(figures):
            digest = hashlib.sha1(png).hexdigest()[:10]
            name = f"{stem}_{i}_{digest}.png"
            target = folder / name
            if not target.exists():
                target.write_bytes(png)
            figure = nodes.figure(classes=["densax-nb-figure"])
            text = caption or f"{stem}, figure {i + 1}"
            figure += nodes.image(uri=f"/_generated/figures/{name}", alt=text)
            figure += nodes.caption("", text)
            result.append(figure)
        return result


# --------------------------------------------------------------- benchmarks


def _environment(record: dict) -> str:
    """The run's environment in one line, as ``benchmarks/RESULTS.md`` has it."""
    env = record.get("environment")
    if not isinstance(env, dict):
        return str(env or "")
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    threads = (env.get("threads") or {}).get("limit", "?")
    return (
        f"{env.get('device_kind', '?')} ({env.get('platform', '?')}, "
        f"{env.get('n_devices', '?')} device(s), {env.get('cpu_count', '?')} CPU "
        f"cores, peer threads {threads}); {versions}; {env.get('date', '')}"
    )


def generate_benchmarks(written: set[Path]) -> list[str]:
    """Writes ``benchmarks/<device>.md`` per results folder, and the index."""
    results = ROOT / "benchmarks" / "results"
    devices = (
        sorted(p for p in results.iterdir() if p.is_dir()) if results.exists() else []
    )
    entries = []
    for device in devices:
        topics = sorted(
            {p.stem for p in device.glob("*.md")}
            | {p.stem for p in device.glob("*.json")}
        )
        if not topics:
            continue
        page = [
            f"# Benchmarks: {device.name}",
            "",
            f"Every table and plot of `benchmarks/results/{device.name}/`, as",
            "`python benchmarks/run.py` wrote them. `time / densax` is each",
            "implementation's time divided by densax's on the same case and dtype",
            "(above 1: densax is faster); the accuracy columns compare each result",
            "with the reference named in the topic's script.",
            "",
        ]
        for topic in topics:
            page += [f"## {topic}", ""]
            json_path = device / f"{topic}.json"
            if json_path.exists():
                try:
                    record = json.loads(json_path.read_text(encoding="utf-8"))
                except json.JSONDecodeError:
                    record = {}
                env = _environment(record) if isinstance(record, dict) else ""
                quick = isinstance(record, dict) and record.get("quick")
                if env:
                    page += [
                        f"Environment: {_md_text(env)}"
                        + (" (quick sizes)" if quick else ""),
                        "",
                    ]
            png = device / f"{topic}.png"
            if png.exists():
                _copy(png, DOCS / "benchmarks" / device.name / png.name, written)
                page += [
                    "```{image} " + f"{device.name}/{png.name}",
                    f":alt: {topic}: time against problem size on {device.name}",
                    "```",
                    "",
                ]
            md_path = device / f"{topic}.md"
            if md_path.exists():
                text = md_path.read_text(encoding="utf-8").splitlines()
                # The file's own title goes; its other headings sit below ours.
                body = [
                    "##" + ln if ln.startswith("#") else ln
                    for ln in text
                    if not ln.startswith("# ")
                ]
                # A compact, scrollable table (docs/_static/densax.css).
                page += ["::::{container} densax-bench", *body, "::::", ""]
        _write(DOCS / "benchmarks" / f"{device.name}.md", "\n".join(page), written)
        entries.append(device.name)
    index = [
        "# Benchmarks",
        "",
        "`python benchmarks/run.py` runs every `benchmarks/bench_*.py` in its own",
        "process (`--quick` for small sizes, `--only gmm kde` for a subset) and writes",
        "`benchmarks/results/<device>/`: one JSON record, one markdown table and one",
        "log-log plot of time against problem size per topic. Each peer runs on the",
        "same data in the same process, after warm-up, with its threads fixed to the",
        "machine's cores. One page per device found:",
        "",
        *(
            [f"- [{name}]({name}.md)" for name in entries]
            or ["- (no results committed yet)"]
        ),
        "",
        "```{toctree}",
        ":hidden:",
        "",
        *entries,
        "```",
        "",
    ]
    _write(DOCS / "benchmarks" / "index.md", "\n".join(index), written)
    return entries


def _md_text(text: str) -> str:
    return re.sub(r"([\\`*_|<>\[\]])", r"\\\1", text)


# ------------------------------------------------- changelog, README opening


_REPO_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def _unlink_repo_paths(text: str) -> str:
    """Links to repository files (not pages of the site) become plain paths.

    ``[RESULTS](benchmarks/RESULTS.md)`` in the changelog or the README would
    be a broken cross-reference here: it becomes ``RESULTS (`benchmarks/...`)``.
    """

    def repl(match):
        label, path = match.group(1), match.group(2)
        if label.strip("`") == path:
            return f"`{path}`"
        return f"{label} (`{path}`)"

    return _REPO_LINK.sub(repl, text)


def generate_changelog(written: set[Path]) -> None:
    """Writes ``changelog.md`` from the root ``CHANGELOG.md``.

    The text is copied (not included) so that its links to repository files
    can be turned into plain paths.
    """
    changelog = ROOT / "CHANGELOG.md"
    if changelog.exists():
        text = _unlink_repo_paths(changelog.read_text(encoding="utf-8"))
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        if not first.startswith("# "):
            text = "# Changelog\n\n" + text
    else:
        text = "# Changelog\n\nNo `CHANGELOG.md` in the repository yet.\n"
    _write(DOCS / "changelog.md", text, written)


def generate_readme_start(written: set[Path]) -> None:
    """README's first paragraph and its first ```bash block (the two commands)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = readme.split("\n", 1)[1] if readme.startswith("# ") else readme
    paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
    intro = next(
        (p for p in paragraphs if not p.startswith(("#", "```", "|", "!"))), ""
    )
    match = re.search(r"```bash\n.*?```", readme, flags=re.DOTALL)
    commands = match.group(0) if match else ""
    intro = _unlink_repo_paths(intro)
    _write(GENERATED / "readme_start.md", f"{intro}\n\n{commands}\n", written)


# -------------------------------------------------------------------- setup


def generate(app) -> None:
    """``builder-inited``: writes every generated page before Sphinx reads."""
    written: set[Path] = set()
    generate_api(written)
    generate_notebooks(written)
    generate_benchmarks(written)
    generate_changelog(written)
    generate_readme_start(written)
    for folder in ("api", "notebooks", "benchmarks"):
        _prune(DOCS / folder, written)
    # Figures are written by the directive while reading: keep them all.


def setup(app):
    """Registers the generator, the autodoc hooks and the directive."""
    app.connect("builder-inited", generate)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    app.connect("autodoc-process-bases", drop_object_base)
    app.connect("missing-reference", resolve_reexport)
    app.connect("autodoc-process-docstring", describe_data)
    app.connect("autodoc-process-docstring", add_fields)
    app.add_directive("densax-notebook-figures", NotebookFigures)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
