"""Build driver for the book: execute chapters with papermill, then build strict, offline HTML.

Usage (the README's build command is the first line)::

    python -m em.book build                                  # default profile, whole book
    python -m em.book build --profile smoke                  # the fast profile the tests use
    python -m em.book build --profile paper --chapter 03     # one chapter, the paper's settings
    python -m em.book build --no-execute                     # HTML from what is executed now
    python -m em.book status [--profile P]                   # which chapters are stale, and why
    python -m em.book vendor-mathjax                         # refresh book/_vendor/mathjax from npm

Layout (why it is this way)
---------------------------
* ``_toc.yml`` (repo root) is the list of chapters.  Every entry with a ``book/<name>.ipynb`` is a
  chapter; a Markdown entry (``index.md``) is a static page; an entry with neither is an error.
* ``book/<name>.ipynb`` is both the chapter's source and, for the **default** profile, its
  executed form: papermill executes it and the result is written back *in place* (atomically,
  only when every cell ran).  So the notebooks stay thin and their ``parameters`` cell stays
  visible to anyone who opens them, the committed default-profile chapters carry their outputs
  (the HTML builds without re-running anything), and there is exactly one file per chapter.
* Other profiles never touch ``book/``: ``--profile smoke`` executes into ``_build/smoke/book/``
  (a git-ignored copy of ``book/``) and builds its HTML from there into
  ``_build/smoke/_build/html``.  ``--out-dir`` moves that folder.  The default profile's HTML
  goes to ``_build/html``.
* ``parameters/<profile>/<name>.yaml`` holds the values papermill injects.  Before anything is
  executed, every selected chapter's file must exist and name only parameters that the
  notebook's ``parameters`` cell declares, with matching simple types, and every declaration
  must be readable by ``papermill.inspect_notebook`` (else ``papermill --help-notebook`` hides
  it); otherwise one error lists every problem, file, line and parameter named.

Execution details
-----------------
* The kernel is this interpreter (the venv's ipykernel): a private kernelspec named ``python3``
  pointing at ``sys.executable`` is put first on ``JUPYTER_PATH`` while executing, so no
  ``ipykernel install`` is needed and a user-wide ``python3`` kernelspec cannot hijack the run.
  The folder holding ``em/`` is prepended to ``PYTHONPATH`` so chapters import this checkout's
  ``em``, installed or not.
* The kernel runs in the folder of the executed notebook (``book/`` for default), like
  ``papermill --cwd book``.  ``EM_CACHE_DIR`` defaults to ``<repo>/.em-cache`` so every profile
  and working directory share one artefact cache.
* Progress bars inside chapters are switched off (``TQDM_DISABLE``): they are stderr output,
  which the strict build reports as warnings.  Progress is papermill's per-cell bar instead.
* After a successful run, cells tagged ``parameters`` get ``remove-cell`` and the
  ``injected-parameters`` cell gets ``hide-input``, and the notebook's metadata gets an
  ``em_book`` fingerprint: hashes of the parameter values, of the notebook's source (cell types
  and sources, outputs and the injected cell excluded) and of the ``em`` package's files
  (``em/book.py`` excluded: the driver does not change results).  A chapter is *stale* when any
  of the three differ; ``build`` re-executes exactly the stale chapters (``--force``: all
  selected; ``--no-execute``: none, and it says which are stale and why).
* A failing chapter is reported with its cell (index and execution count), exception name and
  value; the partially executed notebook is kept in ``_build/failed/<profile>/`` for reading.
  The driver goes on with the other chapters (``--fail-fast`` stops at the first failure), then
  exits 1 without building HTML.
* Before an executed notebook is written anywhere, it is scanned for secrets: the values of
  environment variables whose names end in ``_KEY``, ``_TOKEN``, ``_SECRET`` or ``PASSWORD``, and
  anything shaped like an OpenAI key.  A hit fails the chapter and nothing is written; error
  messages are printed with such values replaced by ``<redacted>``.

HTML
----
``jupyter-book build <site> --config _config.yml --toc _toc.yml -W -n --keep-going --all``:
strict, never incremental, notebooks not executed by Sphinx.  MathJax is served from
``book/_vendor/mathjax`` (1.7 MB, committed).  After the build every page and stylesheet is
checked for resources (scripts, styles, fonts, images, frames) loaded from ``http(s)://``; any
such reference fails the build.  ``nb_output_stderr: warn`` makes any stderr output left in an
executed chapter (a Python warning, a log line) a Sphinx warning, so the strict build fails on
it: fix the cause, or tag the cell ``remove-stderr`` when the output is known to be harmless.

Exit codes: 0 success; 1 a chapter failed, the HTML build failed, or (``status``) a chapter is
stale; 2 bad input (toc, parameters, options).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("default", "smoke", "paper")
#: The profile whose executed chapters live (and are committed) in book/ itself.
IN_PLACE_PROFILE = "default"
FINGERPRINT_KEY = "em_book"
MATHJAX_NPM_SPEC = "mathjax@3"
#: Files under em/ that do not influence chapter results (excluded from the fingerprint).
_FINGERPRINT_EXCLUDE = {"book.py"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)
_SECRET_SHAPES = (
    ("an OpenAI-style key (sk-...)", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")),
    ("an OPENAI_API_KEY assignment", re.compile(r"OPENAI_API_KEY[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9_\-]{8,}")),
)


class BookError(Exception):
    """A problem with the book's inputs or options, reported as one message without a traceback."""


@dataclass(frozen=True)
class Project:
    """Where the book's pieces live.  Tests point it at a throwaway copy."""

    root: Path
    book_dir: Path
    config: Path
    toc: Path
    params_dir: Path
    package_dir: Path

    @classmethod
    def at(cls, root: str | Path = REPO_ROOT) -> "Project":
        root = Path(root).resolve()
        return cls(root=root, book_dir=root / "book", config=root / "_config.yml",
                   toc=root / "_toc.yml", params_dir=root / "parameters", package_dir=root / "em")

    def params_file(self, profile: str, chapter: str) -> Path:
        return self.params_dir / profile / f"{chapter}.yaml"

    def rel(self, path: Path) -> str:
        """A path as shown to people: relative to the repo when inside it."""
        for candidate in (Path(os.path.abspath(path)), Path(path).resolve()):
            try:
                return candidate.relative_to(self.root).as_posix()
            except ValueError:
                continue
        return str(path)


@dataclass(frozen=True)
class Chapter:
    """One executable chapter: ``book/<name>.ipynb``."""

    name: str
    source: Path


# --------------------------------------------------------------------------------------------
# The table of contents


def _toc_files(node: Any) -> Iterator[str]:
    """Every ``file``/``root`` entry of a jb-book toc, in reading order."""
    if isinstance(node, dict):
        if isinstance(node.get("root"), str):
            yield node["root"]
        if isinstance(node.get("file"), str):
            yield node["file"]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                yield from _toc_files(child)
    elif isinstance(node, list):
        for child in node:
            yield from _toc_files(child)


def toc_chapters(project: Project) -> list[Chapter]:
    """The notebook chapters listed in ``_toc.yml``, in order.  A listed file that is missing is
    an error naming it, so a typo or a chapter that has not landed cannot silently vanish."""
    import yaml

    if not project.toc.is_file():
        raise BookError(f"table of contents not found: {project.rel(project.toc)}")
    try:
        toc = yaml.safe_load(project.toc.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BookError(f"{project.rel(project.toc)}: not valid YAML: {exc}") from None
    if not isinstance(toc, dict) or "root" not in toc:
        raise BookError(f"{project.rel(project.toc)}: expected a jb-book toc with a 'root' entry")
    chapters: list[Chapter] = []
    missing: list[str] = []
    for entry in _toc_files(toc):
        stem = re.sub(r"\.(ipynb|md|rst)$", "", entry)
        notebook = project.book_dir / f"{stem}.ipynb"
        if notebook.is_file():
            chapters.append(Chapter(name=stem, source=notebook))
        elif not any((project.book_dir / f"{stem}{ext}").is_file() for ext in (".md", ".rst")):
            missing.append(f"  {stem}: neither {project.rel(notebook)} nor a .md page exists")
    if missing:
        raise BookError(f"{project.rel(project.toc)} lists chapters that do not exist:\n"
                        + "\n".join(missing))
    return chapters


def select_chapters(chapters: Sequence[Chapter], wanted: Sequence[str] | None) -> list[Chapter]:
    """Chapters picked by name: ``03_model_organisms``, ``03``, ``model_organisms`` or a path."""
    if not wanted:
        return list(chapters)
    picked: list[Chapter] = []
    for raw in wanted:
        key = re.sub(r"\.ipynb$", "", Path(raw).name)
        hits = [c for c in chapters
                if key in (c.name, c.name.split("_", 1)[0], c.name.split("_", 1)[-1])]
        if len(hits) != 1:
            names = ", ".join(c.name for c in chapters) or "(none)"
            what = "is ambiguous" if hits else "is not a chapter in _toc.yml"
            raise BookError(f"--chapter {raw!r} {what}; chapters: {names}")
        if hits[0] not in picked:
            picked.append(hits[0])
    return picked


# --------------------------------------------------------------------------------------------
# Parameters


def load_parameters(path: Path, project: Project | None = None) -> dict[str, Any]:
    """The values of one ``parameters/<profile>/<chapter>.yaml`` (an empty file means none)."""
    import yaml

    shown = project.rel(path) if project else str(path)
    if not path.is_file():
        raise BookError(f"parameter file missing: {shown}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BookError(f"{shown}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BookError(f"{shown}: expected a mapping of parameter names to values, "
                        f"got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Declared:
    """One assignment of a chapter's ``parameters`` cell."""

    name: str
    type_name: str  # the annotation as written, "None" when there is none
    line: int  # 1-based, within the cell
    text: str  # the source line, for messages
    papermill_sees_it: bool  # whether papermill.inspect_notebook (and --help-notebook) lists it


def declared_parameters(source: Path) -> dict[str, Declared]:
    """The parameters a chapter declares, read with Python's own parser, and whether papermill's
    line-based parser also sees each one.  (papermill skips lines holding more than one ``=``,
    e.g. one inside the comment, and annotations with characters other than letters, digits,
    ``_``, ``[]`` and commas, e.g. ``int | None``; such a parameter still gets injected but is
    missing from ``papermill --help-notebook``.)  A chapter without a cell tagged
    ``parameters``, or whose parameters cell does not parse, is an error."""
    import ast
    import logging

    import nbformat
    import papermill

    nb = nbformat.read(source, as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise BookError(f"{source.name}: no cell tagged 'parameters' (every chapter needs one)")
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as exc:
        raise BookError(f"{source.name}: parameters cell line {exc.lineno}: {exc.msg}") from None
    pm_log = logging.getLogger("papermill")
    level, pm_log.level = pm_log.level, logging.ERROR  # its "Unable to parse" lines: reported below
    try:
        seen_by_papermill = set(papermill.inspect_notebook(str(source)))
    finally:
        pm_log.level = level
    lines = cell.source.splitlines()
    declared: dict[str, Declared] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            pairs = [(node.target.id, ast.unparse(node.annotation))]
        elif isinstance(node, ast.Assign):
            pairs = [(t.id, "None") for t in node.targets if isinstance(t, ast.Name)]
        else:
            continue
        for name, type_name in pairs:
            declared[name] = Declared(name, type_name, node.lineno, lines[node.lineno - 1].strip(),
                                      name in seen_by_papermill)
    return declared


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
    "list": (list,), "dict": (dict,), "tuple": (list,),
}


def _type_problem(value: Any, type_name: str) -> str | None:
    """Why ``value`` does not fit a declared annotation, or None.  Only plain types are checked
    (``int``, ``float``, ``str``, ``bool``, ``list[...]``, ``dict[...]`` and their Optional
    forms); anything fancier is left to the chapter."""
    text = type_name.replace(" ", "")
    optional = False
    if m := re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", text):
        text, optional = m.group(1), True
    parts = text.split("|")
    if "None" in parts and len(parts) > 1:
        optional = True
        parts = [p for p in parts if p != "None"]
    if len(parts) != 1:
        return None
    base = re.sub(r"^(typing\.)?", "", parts[0]).split("[", 1)[0].lower()
    allowed = _SIMPLE_TYPES.get(base)
    if allowed is None:
        return None
    if value is None:
        return None if optional else f"is null but declared {type_name}"
    if isinstance(value, bool) and bool not in allowed:
        return f"is a bool but declared {type_name}"
    if not isinstance(value, allowed):
        return f"is {type(value).__name__} {value!r} but declared {type_name}"
    return None


def parameter_problems(values: Mapping[str, Any], declared: Mapping[str, Declared],
                       params_file: str, notebook: str) -> list[str]:
    """Every mismatch between a parameter file and the notebook's ``parameters`` cell, and every
    declaration that papermill cannot read (so ``--help-notebook`` would hide it)."""
    problems = [f"{notebook}: parameters cell line {d.line}: papermill cannot read `{d.text}` "
                "(it skips a line with more than one '=', e.g. in the comment, and annotations "
                "like 'int | None': write Optional[int]); reword it"
                for d in declared.values() if not d.papermill_sees_it]
    for name, value in values.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "(none)"
            problems.append(f"{params_file}: unknown parameter {name!r} "
                            f"(not in the parameters cell of {notebook}; it declares: {known})")
            continue
        why = _type_problem(value, declared[name].type_name)
        if why:
            problems.append(f"{params_file}: parameter {name!r} {why} in {notebook}")
    return problems


def check_parameters(project: Project, chapters: Sequence[Chapter], profile: str
                     ) -> dict[str, dict[str, Any]]:
    """Load and validate every chapter's parameter file before anything runs.  Returns the values
    by chapter name; raises one :class:`BookError` listing all problems."""
    values: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for chapter in chapters:
        path = project.params_file(profile, chapter.name)
        try:
            values[chapter.name] = load_parameters(path, project)
            declared = declared_parameters(chapter.source)
        except BookError as exc:
            problems.append(str(exc))
            continue
        problems += parameter_problems(values[chapter.name], declared, project.rel(path),
                                       project.rel(chapter.source))
    if problems:
        raise BookError("bad parameters, nothing was executed:\n  " + "\n  ".join(problems))
    return values


# --------------------------------------------------------------------------------------------
# Fingerprints and staleness


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def notebook_source_hash(path: Path) -> str:
    """Hash of what a chapter *says*: each cell's type and source, in order.  Outputs, execution
    metadata, tags and papermill's injected-parameters cell are left out, so executing a notebook
    in place does not change its own hash."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in nb.get("cells", []):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        source = cell.get("source", "")
        cells.append([cell.get("cell_type"), "".join(source) if isinstance(source, list) else source])
    return _sha(json.dumps(cells, ensure_ascii=False).encode("utf-8"))


def package_hash(package_dir: Path) -> str:
    """Hash of every file of the ``em`` package (paths and contents), caches excluded."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if (not path.is_file() or "__pycache__" in rel.parts or path.suffix in {".pyc", ".pyo"}
                or rel.as_posix() in _FINGERPRINT_EXCLUDE):
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    """What an executed chapter was made from."""

    profile: str
    parameters: str
    notebook: str
    em: str

    def as_dict(self) -> dict[str, str]:
        return {"profile": self.profile, "parameters": self.parameters,
                "notebook": self.notebook, "em": self.em}


def fingerprint(project: Project, chapter: Chapter, profile: str, values: Mapping[str, Any],
                em_hash: str | None = None) -> Fingerprint:
    """The fingerprint a fresh execution of ``chapter`` under ``profile`` would carry.  Parameter
    values are hashed after parsing, so comments and formatting in the YAML do not matter."""
    from em.cache import stable_hash

    return Fingerprint(profile=profile, parameters=stable_hash(dict(values)),
                       notebook=notebook_source_hash(chapter.source),
                       em=em_hash or package_hash(project.package_dir))


def stale_reasons(executed: Path, expected: Fingerprint, params_file: str) -> list[str]:
    """Why the executed notebook at ``executed`` does not match ``expected``; [] when fresh."""
    if not executed.is_file():
        return ["never executed for this profile"]
    try:
        meta = json.loads(executed.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, json.JSONDecodeError) as exc:
        return [f"unreadable executed notebook ({exc})"]
    stored = meta.get(FINGERPRINT_KEY)
    if not isinstance(stored, dict):
        return ["not executed by em.book (no fingerprint in its metadata)"]
    reasons = []
    if stored.get("profile") != expected.profile:
        reasons.append(f"executed with profile {stored.get('profile')!r}, not {expected.profile!r}")
    if stored.get("parameters") != expected.parameters:
        reasons.append(f"parameters changed ({params_file})")
    if stored.get("notebook") != expected.notebook:
        reasons.append("notebook source changed")
    if stored.get("em") != expected.em:
        reasons.append("em package changed")
    return reasons


# --------------------------------------------------------------------------------------------
# Secrets


def secret_names(environ: Mapping[str, str]) -> list[str]:
    """Names of environment variables whose values must never be written (values ≥ 8 chars)."""
    return sorted(k for k, v in environ.items() if _SECRET_NAME.search(k) and len(v or "") >= 8)


def find_secrets(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """What secret-looking content ``text`` holds, described without repeating the secret."""
    environ = os.environ if environ is None else environ
    found = [f"the value of ${name}" for name in secret_names(environ) if environ[name] in text]
    found += [what for what, pattern in _SECRET_SHAPES if pattern.search(text)]
    return found


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret :func:`find_secrets` would find replaced by ``<redacted>``
    (error messages reach terminals and CI logs too)."""
    environ = os.environ if environ is None else environ
    for name in secret_names(environ):
        text = text.replace(environ[name], "<redacted>")
    for _, pattern in _SECRET_SHAPES:
        text = pattern.sub("<redacted>", text)
    return text


# --------------------------------------------------------------------------------------------
# Executing one chapter


@contextlib.contextmanager
def kernel_environment(project: Project) -> Iterator[None]:
    """Environment for the chapter kernels (see the module docstring), restored afterwards."""
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="em-book-kernels-") as tmp:
        spec_dir = Path(tmp) / "kernels" / "python3"
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)", "language": "python",
                "metadata": {"debugger": False, "supported_encryption": ["curve"]},
                "kernel_protocol_version": "5.5"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [tmp] + [p for p in saved.get("JUPYTER_PATH", "").split(os.pathsep) if p])
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(project.package_dir.parent)] + [p for p in saved.get("PYTHONPATH", "").split(os.pathsep) if p])
        os.environ.setdefault("EM_CACHE_DIR", str(project.root / ".em-cache"))
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def kernel_manager_class() -> type:
    """nbclient's kernel manager, with CurveZMQ encryption of the loopback channels switched on
    where pyzmq supports it (ipykernel otherwise warns about plain-text TCP on every start)."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    if "transport_encryption" not in AsyncKernelManager.class_traits() or not zmq.has("curve"):
        return AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

    return EncryptedKernelManager


def retag(nb: Any) -> None:
    """Hide parameter plumbing in the HTML: the source ``parameters`` cell is removed, papermill's
    ``injected-parameters`` cell shows its output only (its code stays one click away)."""
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
        if tags:
            cell.setdefault("metadata", {})["tags"] = tags


@dataclass
class ChapterFailure(Exception):
    """A chapter that did not execute: where and why, for one readable report."""

    chapter: str
    message: str
    kept: Path | None = None

    def __str__(self) -> str:
        where = f"\n    partial notebook: {self.kept}" if self.kept else ""
        return f"{self.chapter}: {self.message}{where}"


def _describe_error(exc: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        first = next((ln for ln in str(exc.source or "").splitlines() if ln.strip()), "")
        return (f"cell {exc.cell_index} (In [{exc.exec_count}]: {first.strip()[:80]!r}) raised "
                f"{exc.ename}: {exc.evalue}")
    return f"{type(exc).__name__}: {exc}"


def execute_chapter(project: Project, chapter: Chapter, profile: str, values: Mapping[str, Any],
                    dest: Path, stamp: Fingerprint, *, progress: bool = True) -> None:
    """Execute one chapter with papermill into ``dest`` (atomically; nothing is written on
    failure but a copy of the partial notebook under ``_build/failed/<profile>/``)."""
    import nbformat
    import papermill

    from em.cache import atomic_write_text

    work = project.root / "_build" / ".executing" / profile
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f"{chapter.name}.ipynb"
    tmp.unlink(missing_ok=True)
    bar: Any = {"desc": f"  {chapter.name}", "leave": False, "position": 1} if progress else False
    try:
        try:
            papermill.execute_notebook(
                str(chapter.source), str(tmp), parameters=dict(values), kernel_name="python3",
                language="python", cwd=str(dest.parent), progress_bar=bar, start_timeout=180,
                kernel_manager_class=kernel_manager_class())
        except Exception as exc:  # papermill, nbclient, kernel start: all reported the same way
            kept, message = None, redact(_describe_error(exc))
            if tmp.is_file():
                if find_secrets(tmp.read_text(encoding="utf-8")):
                    tmp.unlink()
                    message += " (the partial notebook held a secret and was deleted)"
                else:
                    kept = project.root / "_build" / "failed" / profile / f"{chapter.name}.ipynb"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, kept)
            raise ChapterFailure(chapter.name, message,
                                 Path(project.rel(kept)) if kept else None) from exc
        nb = nbformat.read(tmp, as_version=4)
        retag(nb)
        nb.metadata[FINGERPRINT_KEY] = {**stamp.as_dict(),
                                        "parameters_file": project.rel(project.params_file(profile, chapter.name))}
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                     "language": "python"}
        pm = nb.metadata.get("papermill", {})
        pm["input_path"] = project.rel(chapter.source)
        pm["output_path"] = project.rel(dest)
        text = nbformat.writes(nb) + "\n"
        leaks = find_secrets(text)
        if leaks:
            raise ChapterFailure(chapter.name, "refusing to write the executed notebook: it "
                                 "contains " + ", ".join(leaks) + " (print no secrets)")
        atomic_write_text(dest, text)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The site folder for non-default profiles


def _skip(rel: Path) -> bool:
    return any(p.startswith(".") or p in {"_build", "__pycache__"} for p in rel.parts)


def sync_site(project: Project, site: Path, chapters: Sequence[Chapter]) -> list[str]:
    """Make ``site`` a copy of ``book/`` whose chapters are this profile's executions.  Pages and
    assets are refreshed from ``book/``; a chapter never executed for the profile is copied from
    ``book/`` (default outputs).  Returns the names of those borrowed chapters."""
    chapter_files = {c.source.name for c in chapters}
    for path in project.book_dir.rglob("*"):
        rel = path.relative_to(project.book_dir)
        if _skip(rel) or not path.is_file() or (len(rel.parts) == 1 and rel.name in chapter_files):
            continue
        target = site / rel
        if (not target.is_file() or target.stat().st_size != path.stat().st_size
                or target.stat().st_mtime < path.stat().st_mtime):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    borrowed = []
    for chapter in chapters:
        target = site / chapter.source.name
        if not target.is_file():
            site.mkdir(parents=True, exist_ok=True)
            shutil.copy2(chapter.source, target)
            borrowed.append(chapter.name)
    return borrowed


# --------------------------------------------------------------------------------------------
# HTML: build and audit


class _ResourceParser(HTMLParser):
    """Collects URLs a browser would fetch on its own while loading a page (not plain links)."""

    _ATTRS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src",
              "video": "src", "embed": "src", "object": "data", "track": "src", "input": "src"}
    _LINK_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch",
                  "manifest", "apple-touch-icon", "preconnect", "dns-prefetch"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag in self._ATTRS and a.get(self._ATTRS[tag]):
            self.urls.append(a[self._ATTRS[tag]])
        if tag == "link" and set(a.get("rel", "").lower().split()) & self._LINK_RELS:
            self.urls.append(a.get("href", ""))
        if a.get("srcset"):
            self.urls += [part.strip().split(" ")[0] for part in a["srcset"].split(",")]
        if a.get("style"):
            self.urls += _css_urls(a["style"])


def _css_urls(css: str) -> list[str]:
    return (re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
            + re.findall(r"@import\s+['\"]([^'\"]+)", css))


def _external(url: str) -> bool:
    return bool(re.match(r"^(https?:)?//", url.strip(), re.IGNORECASE))


def external_resources(html_dir: Path) -> list[tuple[str, str]]:
    """(file, url) for every resource in the built site that would be fetched from off the
    machine: script/style/font/image/frame references in HTML and url()/@import in CSS."""
    hits: list[tuple[str, str]] = []
    for path in sorted(html_dir.rglob("*")):
        if path.suffix == ".html":
            parser = _ResourceParser()
            text = path.read_text(encoding="utf-8", errors="replace")
            parser.feed(text)
            urls = parser.urls + [u for block in re.findall(r"<style[^>]*>(.*?)</style>", text, re.S)
                                  for u in _css_urls(block)]
        elif path.suffix == ".css":
            urls = _css_urls(path.read_text(encoding="utf-8", errors="replace"))
        else:
            continue
        hits += [(path.relative_to(html_dir).as_posix(), u) for u in urls if _external(u)]
    return hits


def jupyter_book_command(project: Project, site: Path, out_dir: Path) -> list[str]:
    """The strict jupyter-book 1.x build of ``site`` with the repo's config and toc."""
    return [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
            "build", str(site), "--config", str(project.config), "--toc", str(project.toc),
            "--path-output", str(out_dir), "--builder", "html",
            "-W", "-n", "--keep-going", "--all"]


def build_html(project: Project, site: Path, out_dir: Path, *, echo: bool = True) -> Path:
    """Run the strict build, then the offline audit.  Returns the HTML folder."""
    for needed in (project.config, site / "_vendor" / "mathjax" / "tex-mml-chtml.js"):
        if not needed.is_file():
            raise BookError(f"missing {project.rel(needed)}"
                            + (" (run: python -m em.book vendor-mathjax)" if "mathjax" in str(needed) else ""))
    cmd = jupyter_book_command(project, site, out_dir)
    _say("$ jupyter-book " + " ".join(cmd[3:]))
    proc = subprocess.Popen(cmd, cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8", errors="replace")
    warnings: list[str] = []
    assert proc.stdout is not None
    plain_out = not sys.stdout.isatty()
    for line in proc.stdout:
        plain = _ANSI.sub("", line)
        if echo:
            sys.stdout.write(plain if plain_out else line)
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", plain):
            warnings.append(plain.rstrip())
    if proc.wait() != 0:
        listed = "\n  ".join(warnings[:50]) or "(no warning lines captured; see the output above)"
        raise ChapterFailure("HTML", f"jupyter-book build failed (strict: warnings are errors):\n  {listed}")
    html_dir = out_dir / "_build" / "html"
    leaks = external_resources(html_dir)
    if leaks:
        listed = "\n  ".join(f"{f}: {u}" for f, u in leaks[:30])
        raise ChapterFailure("HTML", f"{len(leaks)} resource(s) would be fetched from off the "
                             f"machine:\n  {listed}")
    return html_dir


# --------------------------------------------------------------------------------------------
# The build


@dataclass
class BuildOptions:
    """What ``python -m em.book build`` was asked to do."""

    profile: str = IN_PLACE_PROFILE
    chapters: list[str] = field(default_factory=list)
    execute: str = "stale"  # "stale" | "all" | "none"
    html: bool = True
    out_dir: Path | None = None
    fail_fast: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise BookError(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if self.execute not in ("stale", "all", "none"):
            raise BookError(f"execute must be stale, all or none, not {self.execute!r}")


@dataclass
class BuildReport:
    """What a build did, for the caller (tests) and the closing summary."""

    site: Path
    executed: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    stale: dict[str, list[str]] = field(default_factory=dict)
    failures: list[ChapterFailure] = field(default_factory=list)
    html_dir: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _say(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def site_and_out(project: Project, opts: BuildOptions) -> tuple[Path, Path]:
    """(folder holding the executed chapters, jupyter-book --path-output) for a build."""
    if opts.profile == IN_PLACE_PROFILE:
        return project.book_dir, (opts.out_dir or project.root).resolve()
    out = (opts.out_dir or project.root / "_build" / opts.profile).resolve()
    return out / "book", out


def chapter_status(project: Project, profile: str, chapters: Sequence[Chapter], site: Path,
                   values: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Stale reasons by chapter name ([] = fresh)."""
    em_hash = package_hash(project.package_dir)
    return {c.name: stale_reasons(site / c.source.name,
                                  fingerprint(project, c, profile, values[c.name], em_hash),
                                  project.rel(project.params_file(profile, c.name)))
            for c in chapters}


def build(project: Project, opts: BuildOptions) -> BuildReport:
    """Validate everything, execute what is needed, build and audit the HTML."""
    from tqdm import tqdm

    chapters = toc_chapters(project)
    selected = select_chapters(chapters, opts.chapters)
    values = check_parameters(project, selected, opts.profile)
    site, out_dir = site_and_out(project, opts)
    report = BuildReport(site=site)
    if opts.profile != IN_PLACE_PROFILE:
        picked = {c.name for c in selected}
        borrowed = [b for b in sync_site(project, site, chapters) if b not in picked]
        if borrowed and opts.html:
            _say(f"note: never executed for profile {opts.profile!r}, so shown with their "
                 f"default-profile outputs: {', '.join(borrowed)}")

    status = chapter_status(project, opts.profile, selected, site, values)
    todo = [c for c in selected if opts.execute == "all" or (opts.execute == "stale" and status[c.name])]
    for c in selected:
        if status[c.name] and c not in todo:
            report.stale[c.name] = status[c.name]
        elif not status[c.name] and c not in todo:
            report.fresh.append(c.name)
    if report.fresh:
        _say(f"up to date ({opts.profile}): {', '.join(report.fresh)}")
    for name, reasons in report.stale.items():
        _say(f"STALE ({opts.profile}) {name}: {'; '.join(reasons)}")

    if todo:
        em_hash = package_hash(project.package_dir)
        with kernel_environment(project):
            bar = tqdm(todo, desc=f"chapters [{opts.profile}]", unit="chapter",
                       disable=not opts.progress, position=0, file=sys.stderr)
            for chapter in bar:
                why = "; ".join(status[chapter.name]) or "forced"
                bar.set_postfix_str(chapter.name)
                _say(f"executing {chapter.name} ({why})")
                started = time.monotonic()
                try:
                    execute_chapter(project, chapter, opts.profile, values[chapter.name],
                                    site / chapter.source.name,
                                    fingerprint(project, chapter, opts.profile, values[chapter.name], em_hash),
                                    progress=opts.progress)
                except ChapterFailure as failure:
                    report.failures.append(failure)
                    _say(f"FAILED {failure}")
                    if opts.fail_fast:
                        break
                else:
                    report.executed.append(chapter.name)
                finally:
                    report.seconds[chapter.name] = time.monotonic() - started
            bar.close()
    if report.failures or not opts.html:
        return report
    report.html_dir = build_html(project, site, out_dir, echo=opts.progress)
    return report


# --------------------------------------------------------------------------------------------
# MathJax vendoring


def vendor_mathjax(project: Project, spec: str = MATHJAX_NPM_SPEC) -> Path:
    """Install MathJax 3 with npm into a temporary folder and copy the single-file build and its
    fonts into ``book/_vendor/mathjax`` (what Sphinx serves; ~1.7 MB, committed)."""
    npm = shutil.which("npm")
    if npm is None:
        raise BookError("npm not found: it is needed only to refresh book/_vendor/mathjax")
    dest = project.book_dir / "_vendor" / "mathjax"
    with tempfile.TemporaryDirectory(prefix="em-mathjax-") as tmp:
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", tmp, spec],
                       check=True, stdout=subprocess.DEVNULL)
        pkg = Path(tmp) / "node_modules" / "mathjax"
        version = json.loads((pkg / "package.json").read_text())["version"]
        staged = Path(tmp) / "staged"
        (staged / "output" / "chtml").mkdir(parents=True)
        shutil.copy2(pkg / "es5" / "tex-mml-chtml.js", staged / "tex-mml-chtml.js")
        shutil.copytree(pkg / "es5" / "output" / "chtml" / "fonts", staged / "output" / "chtml" / "fonts")
        shutil.copy2(pkg / "LICENSE", staged / "LICENSE")
        (staged / "VERSION").write_text(f"mathjax {version} (npm {spec}, es5 build)\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Environment summary for the introduction chapter


def environment_report() -> dict[str, str]:
    """Versions and hardware a chapter ran on, for the book's provenance lines."""
    import platform
    from importlib import metadata

    import torch

    try:
        em_version = metadata.version("em-organisms")
    except metadata.PackageNotFoundError:
        em_version = "source checkout (not pip-installed)"
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu"
    return {"em": em_version, "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "cpu cores": str(os.cpu_count()),
            "torch threads": str(torch.get_num_threads())}


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m em.book", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute stale chapters with papermill, then build strict HTML")
    s = sub.add_parser("status", help="list stale chapters (exit 1 when any is stale)")
    for q in (b, s):
        q.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
        q.add_argument("--profile", default=IN_PLACE_PROFILE, choices=PROFILES,
                       help="parameter set: parameters/<profile>/<chapter>.yaml (default: default)")
        q.add_argument("--chapter", action="append", default=[], metavar="NAME",
                       help="only this chapter (repeatable): 03_model_organisms, 03 or model_organisms")
        q.add_argument("--out-dir", type=Path, default=None,
                       help="where non-default executions and the HTML go; HTML lands in "
                            "OUT_DIR/_build/html (default: repo root for default, _build/<profile>)")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--no-execute", action="store_true",
                      help="execute nothing; report stale chapters and build HTML from what exists")
    mode.add_argument("--force", action="store_true", help="re-execute every selected chapter")
    b.add_argument("--no-html", action="store_true", help="execute only, skip the HTML build")
    b.add_argument("--fail-fast", action="store_true",
                   help="stop at the first failing chapter (default: try the others, then exit 1)")
    b.add_argument("--quiet", action="store_true", help="no progress bars or jupyter-book output")
    sub.add_parser("vendor-mathjax", help=f"refresh book/_vendor/mathjax from npm ({MATHJAX_NPM_SPEC})")
    return p


def main(argv: Sequence[str] | None = None, project: Project | None = None) -> int:
    args = _parser().parse_args(argv)
    project = project or Project.at(getattr(args, "root", REPO_ROOT))
    try:
        if args.command == "vendor-mathjax":
            dest = vendor_mathjax(project)
            size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
            _say(f"vendored MathJax into {project.rel(dest)} ({size / 1e6:.1f} MB)")
            return 0
        if args.command == "status":
            opts = BuildOptions(profile=args.profile, chapters=args.chapter, out_dir=args.out_dir)
            chapters = toc_chapters(project)
            selected = select_chapters(chapters, opts.chapters)
            values = check_parameters(project, selected, opts.profile)
            site, _ = site_and_out(project, opts)
            status = chapter_status(project, opts.profile, selected, site, values)
            for name, reasons in status.items():
                print(f"{'STALE' if reasons else 'fresh'}  {name}" + (f": {'; '.join(reasons)}" if reasons else ""))
            return 1 if any(status.values()) else 0
        opts = BuildOptions(profile=args.profile, chapters=args.chapter,
                            execute="none" if args.no_execute else "all" if args.force else "stale",
                            html=not args.no_html, out_dir=args.out_dir, fail_fast=args.fail_fast,
                            progress=not args.quiet)
        report = build(project, opts)
    except BookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ChapterFailure as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    if report.failures:
        print(f"\n{len(report.failures)} chapter(s) failed ({opts.profile}); no HTML was built:",
              file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    for name in report.executed:
        print(f"executed {name} in {report.seconds[name]:.0f} s ({opts.profile})", file=sys.stderr)
    if report.stale:
        print(f"warning: {len(report.stale)} chapter(s) are stale and were not re-executed "
              f"(--no-execute): {', '.join(report.stale)}", file=sys.stderr)
    if report.html_dir:
        print(f"HTML: {project.rel(report.html_dir)}/index.html", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
