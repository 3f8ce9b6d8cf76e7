"""The book's tooling (em.book) and the book itself.

Fast tests work on a throwaway project in a temp folder (a tiny chapter, the repo's
_config.yml and vendored MathJax) and need only a Python kernel.  Tests marked ``slow`` run every
real chapter on the ``smoke`` profile: nbval over the sources, and a forced execution with a fake
API key in the environment that must not leak into any output.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from em import book
from em.book import BookError, BuildOptions, ChapterFailure, Project

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "sk-test-DO-NOT-LEAK-123"
SANITIZE = REPO / "tests" / "nbval_sanitize.cfg"


# ------------------------------------------------------------------------------ helpers


def _notebook(params_src: str, *body: str, title: str = "# A tiny chapter\n\nWith math: $y = s x^2$.") -> nbformat.NotebookNode:
    params = new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(title), params] + [new_code_cell(b) for b in body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


TINY_PARAMS = 'n_points: int = 20  # points on the curve\nscale: float = 1.0  # y scale\nlabel: str = "tiny"'
TINY_BODY = (
    "import matplotlib.pyplot as plt\nimport numpy as np\n"
    "x = np.arange(n_points)\nfig, ax = plt.subplots(figsize=(4, 3))\n"
    "ax.plot(x, scale * x ** 2)\nax.set_xlabel('x (points)')\nax.set_ylabel('y (units)')\nplt.show()",
    "print(label, n_points, scale)",
)


def make_project(root: Path, chapters: dict[str, nbformat.NotebookNode],
                 params: dict[str, dict[str, str]], toc_extra: str = "") -> Project:
    """A minimal book: the repo's config and MathJax, index.md, the given chapters and
    parameter files (profile -> chapter -> YAML text), a toc listing them, and a frozen copy of
    the em package (so its fingerprint does not move while someone edits em/)."""
    (root / "book").mkdir(parents=True)
    shutil.copytree(REPO / "em", root / "em", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "_config.yml", root / "_config.yml")
    shutil.copytree(REPO / "book" / "_vendor", root / "book" / "_vendor")
    shutil.copy2(REPO / "book" / "favicon.svg", root / "book" / "favicon.svg")
    (root / "book" / "index.md").write_text("# Test book\n\nA throwaway book for the tests.\n")
    for name, nb in chapters.items():
        nbformat.write(nb, root / "book" / f"{name}.ipynb")
    for profile, files in params.items():
        (root / "parameters" / profile).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / "parameters" / profile / f"{name}.yaml").write_text(text)
    entries = "".join(f"      - file: {name}\n" for name in chapters) + toc_extra
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: index\nparts:\n  - caption: Tests\n    numbered: true\n"
        f"    chapters:\n{entries}")
    return Project(root=root, book_dir=root / "book", config=root / "_config.yml",
                   toc=root / "_toc.yml", params_dir=root / "parameters",
                   package_dir=root / "em")


@pytest.fixture
def tiny(tmp_path: Path) -> Project:
    return make_project(tmp_path, {"01_tiny": _notebook(TINY_PARAMS, *TINY_BODY)},
                        {"default": {"01_tiny": "n_points: 10\nscale: 2.5\n"},
                         "smoke": {"01_tiny": "n_points: 5\n"}})


def _quiet(**kw) -> BuildOptions:
    return BuildOptions(progress=False, **kw)


# ------------------------------------------------------------------------------ toc and parameters


def test_toc_lists_chapters_in_order(tiny: Project) -> None:
    assert [c.name for c in book.toc_chapters(tiny)] == ["01_tiny"]


def test_toc_entry_without_a_file_is_a_clear_error(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"01_tiny": _notebook(TINY_PARAMS)}, {},
                           toc_extra="      - file: 02_not_written_yet\n")
    with pytest.raises(BookError, match=r"02_not_written_yet.*book/02_not_written_yet\.ipynb"):
        book.toc_chapters(project)


def test_select_chapters_by_number_name_or_path(tiny: Project) -> None:
    chapters = book.toc_chapters(tiny)
    for key in ("01_tiny", "01", "tiny", "book/01_tiny.ipynb"):
        assert [c.name for c in book.select_chapters(chapters, [key])] == ["01_tiny"]
    with pytest.raises(BookError, match="'99' is not a chapter"):
        book.select_chapters(chapters, ["99"])


def test_unknown_parameter_is_named_with_its_file(tiny: Project) -> None:
    (tiny.params_dir / "default" / "01_tiny.yaml").write_text("n_pointz: 10\n")
    with pytest.raises(BookError) as err:
        book.check_parameters(tiny, book.toc_chapters(tiny), "default")
    msg = str(err.value)
    assert "'n_pointz'" in msg and "parameters/default/01_tiny.yaml" in msg
    assert "n_points" in msg  # the declared names are listed to help fix the typo


def test_wrongly_typed_parameter_is_named(tiny: Project) -> None:
    (tiny.params_dir / "default" / "01_tiny.yaml").write_text("n_points: ten\nscale: 2\n")
    with pytest.raises(BookError, match=r"'n_points' is str 'ten' but declared int"):
        book.check_parameters(tiny, book.toc_chapters(tiny), "default")


def test_missing_parameter_file_is_named(tiny: Project) -> None:
    with pytest.raises(BookError, match=r"parameter file missing: parameters/paper/01_tiny\.yaml"):
        book.check_parameters(tiny, book.toc_chapters(tiny), "paper")


def test_chapter_without_parameters_cell_is_an_error(tmp_path: Path) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# No parameters"), new_code_cell("x = 1")])
    project = make_project(tmp_path, {"01_bare": nb}, {"default": {"01_bare": ""}})
    with pytest.raises(BookError, match="01_bare.ipynb: no cell tagged 'parameters'"):
        book.check_parameters(project, book.toc_chapters(project), "default")


def test_cli_reports_bad_parameters_before_executing(tiny: Project, capsys) -> None:
    (tiny.params_dir / "smoke" / "01_tiny.yaml").write_text("bogus: 1\n")
    rc = book.main(["build", "--profile", "smoke", "--quiet"], project=tiny)
    assert rc == 2
    assert "unknown parameter 'bogus'" in capsys.readouterr().err
    assert not (tiny.root / "_build" / "smoke" / "book" / "01_tiny.ipynb").exists()


def test_declarations_papermill_cannot_read_are_named(tmp_path: Path) -> None:
    params = ("steps: int = 5  # optimizer steps (0 = none)\n"
              "rows: int | None = None  # rows\n"
              "seed: int = 0  # fine")
    project = make_project(tmp_path, {"01_p": _notebook(params)}, {"default": {"01_p": "seed: 1\n"}})
    declared = book.declared_parameters(project.book_dir / "01_p.ipynb")
    assert {n: d.papermill_sees_it for n, d in declared.items()} == {
        "steps": False, "rows": False, "seed": True}
    with pytest.raises(BookError) as err:
        book.check_parameters(project, book.toc_chapters(project), "default")
    msg = str(err.value)
    assert "book/01_p.ipynb: parameters cell line 1: papermill cannot read `steps: int = 5" in msg
    assert "line 2" in msg and "line 3" not in msg


def test_type_checks() -> None:
    assert book._type_problem(3, "int") is None
    assert book._type_problem(3, "float") is None
    assert book._type_problem(True, "int") is not None
    assert book._type_problem(None, "Optional[int]") is None
    assert book._type_problem(None, "int | None") is None
    assert book._type_problem(None, "int") is not None
    assert book._type_problem(["a"], "list[str]") is None
    assert book._type_problem("a", "list[str]") is not None
    assert book._type_problem("anything", "SomeClass") is None  # unknown types are not guessed


# ------------------------------------------------------------------------------ fingerprints


def test_source_hash_ignores_outputs_and_injected_cell(tmp_path: Path) -> None:
    nb = _notebook(TINY_PARAMS, "print(1)")
    path = tmp_path / "a.ipynb"
    nbformat.write(nb, path)
    before = book.notebook_source_hash(path)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    injected = new_code_cell("# Parameters\nn_points = 3\n")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    nbformat.write(nb, path)
    assert book.notebook_source_hash(path) == before
    nb.cells[3].source = "print(2)"
    nbformat.write(nb, path)
    assert book.notebook_source_hash(path) != before


def test_staleness_follows_parameters_notebook_and_em(tiny: Project, tmp_path: Path) -> None:
    report = book.build(tiny, _quiet(html=False))
    assert report.executed == ["01_tiny"] and not report.failures
    chapters = book.toc_chapters(tiny)

    def reasons() -> list[str]:
        values = book.check_parameters(tiny, chapters, "default")
        return book.chapter_status(tiny, "default", chapters, tiny.book_dir, values)["01_tiny"]

    assert reasons() == []
    params = tiny.params_dir / "default" / "01_tiny.yaml"
    params.write_text("n_points: 10   # a comment changes nothing\nscale: 2.5\n")
    assert reasons() == []
    params.write_text("n_points: 11\nscale: 2.5\n")
    assert reasons() == ["parameters changed (parameters/default/01_tiny.yaml)"]
    rc = book.main(["status"], project=tiny)
    assert rc == 1
    # a second build re-executes exactly the stale chapter, and then it is fresh
    again = book.build(tiny, _quiet(html=False))
    assert again.executed == ["01_tiny"]
    assert reasons() == [] and book.main(["status"], project=tiny) == 0
    assert book.build(tiny, _quiet(html=False)).executed == []
    # --no-execute reports instead of running
    params.write_text("n_points: 12\nscale: 2.5\n")
    report = book.build(tiny, _quiet(html=False, execute="none"))
    assert report.executed == [] and "01_tiny" in report.stale
    # an edit to the chapter's own cells (not its outputs) makes it stale
    book.build(tiny, _quiet(html=False))
    nb = nbformat.read(tiny.book_dir / "01_tiny.ipynb", as_version=4)
    nb.cells[-1].source = "print(label, n_points, scale, 'edited')"
    nbformat.write(nb, tiny.book_dir / "01_tiny.ipynb")
    assert reasons() == ["notebook source changed"]
    # the em package is part of the fingerprint (the driver itself is not)
    book.build(tiny, _quiet(html=False))
    assert reasons() == []
    (tiny.package_dir / "book.py").write_text("# the driver changed\n", encoding="utf-8")
    assert reasons() == []
    (tiny.package_dir / "metrics_extra.py").write_text("X = 1\n")
    assert reasons() == ["em package changed"]


def test_executed_notebook_is_retagged_and_stamped(tiny: Project) -> None:
    book.build(tiny, _quiet(html=False))
    nb = nbformat.read(tiny.book_dir / "01_tiny.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert ["parameters", "remove-cell"] in tags
    assert ["injected-parameters", "hide-input"] in tags
    stamp = nb.metadata[book.FINGERPRINT_KEY]
    assert stamp["profile"] == "default" and stamp["parameters_file"] == "parameters/default/01_tiny.yaml"
    printed = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stdout"]
    assert printed[0]["text"] == "tiny 10 2.5\n"  # the profile's values were used
    assert nb.metadata["papermill"]["input_path"] == "book/01_tiny.ipynb"  # no absolute paths


def test_non_default_profile_leaves_book_untouched(tiny: Project) -> None:
    source = (tiny.book_dir / "01_tiny.ipynb").read_bytes()
    report = book.build(tiny, _quiet(profile="smoke", html=False))
    assert report.executed == ["01_tiny"]
    assert (tiny.book_dir / "01_tiny.ipynb").read_bytes() == source
    executed = nbformat.read(tiny.root / "_build" / "smoke" / "book" / "01_tiny.ipynb", as_version=4)
    assert executed.metadata[book.FINGERPRINT_KEY]["profile"] == "smoke"
    assert (tiny.root / "_build" / "smoke" / "book" / "index.md").is_file()  # pages synced


# ------------------------------------------------------------------------------ failures and secrets


def test_failing_chapter_names_cell_and_error(tmp_path: Path, capsys) -> None:
    bad = _notebook("divisor: int = 1", "x = 10", "y = x / divisor", "print(y)")
    good = _notebook(TINY_PARAMS, "print('fine')")
    project = make_project(tmp_path, {"01_bad": bad, "02_good": good},
                           {"default": {"01_bad": "divisor: 0\n", "02_good": ""}})
    original = (project.book_dir / "01_bad.ipynb").read_bytes()
    report = book.build(project, _quiet())
    assert [f.chapter for f in report.failures] == ["01_bad"]
    msg = str(report.failures[0])
    assert "ZeroDivisionError" in msg and "y = x / divisor" in msg and "cell 4" in msg
    assert report.executed == ["02_good"]  # the others were still tried
    assert report.html_dir is None  # no HTML after a failure
    assert (project.book_dir / "01_bad.ipynb").read_bytes() == original  # source untouched
    assert (project.root / "_build" / "failed" / "default" / "01_bad.ipynb").is_file()
    assert book.main(["build", "--quiet"], project=project) == 1
    assert "01_bad: cell 4" in capsys.readouterr().err


def test_fail_fast_stops_at_first_failure(tmp_path: Path) -> None:
    bad = _notebook("divisor: int = 1", "1 / divisor")
    project = make_project(tmp_path, {"01_bad": bad, "02_good": _notebook(TINY_PARAMS, "1")},
                           {"default": {"01_bad": "divisor: 0\n", "02_good": ""}})
    report = book.build(project, _quiet(fail_fast=True, html=False))
    assert [f.chapter for f in report.failures] == ["01_bad"] and report.executed == []


def test_secret_in_output_is_never_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    leaky = _notebook("show: bool = True", "import os\nprint(os.environ['OPENAI_API_KEY'][::-1][::-1])")
    project = make_project(tmp_path, {"01_leaky": leaky}, {"default": {"01_leaky": ""}})
    report = book.build(project, _quiet(html=False))
    assert report.failures and "OPENAI_API_KEY" in str(report.failures[0])
    assert FAKE_KEY not in str(report.failures[0])
    for path in project.root.rglob("*.ipynb"):
        assert FAKE_KEY not in path.read_text(), path


def test_secret_in_an_error_is_redacted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    nb = _notebook("show: bool = True", "import os\nraise ValueError('bad key ' + os.environ['OPENAI_API_KEY'])")
    project = make_project(tmp_path, {"01_raises": nb}, {"default": {"01_raises": ""}})
    report = book.build(project, _quiet(html=False))
    msg = str(report.failures[0])
    assert "ValueError: bad key <redacted>" in msg and FAKE_KEY not in msg
    assert "held a secret and was deleted" in msg
    assert not (project.root / "_build" / "failed" / "default" / "01_raises.ipynb").exists()


def test_find_secrets() -> None:
    env = {"OPENAI_API_KEY": FAKE_KEY, "MY_TOKEN": "abcdefghij", "SHORT_KEY": "1", "HOME": "/root"}
    assert book.find_secrets("nothing here", env) == []
    assert book.find_secrets(f"key={FAKE_KEY}", env) != []
    assert book.find_secrets("abcdefghij", env) == ["the value of $MY_TOKEN"]
    assert book.find_secrets("/root", env) == []  # not a secret-named variable
    assert book.find_secrets("sk-proj-abcdefghijklmnopqrstuv", {}) != []
    assert book.find_secrets("OPENAI_API_KEY=abcdefgh12345", {}) != []
    assert book.find_secrets("task-force and OPENAI_API_KEY is read from the env", {}) == []
    assert book.redact(f"key {FAKE_KEY} token abcdefghij", env) == "key <redacted> token <redacted>"


def _secret_hits(text: str) -> list[str]:
    return book.find_secrets(text)


def test_committed_notebooks_hold_no_secrets() -> None:
    notebooks = sorted((REPO / "book").rglob("*.ipynb"))
    assert notebooks, "no notebooks under book/"
    for path in notebooks:
        assert _secret_hits(path.read_text(encoding="utf-8")) == [], path


# ------------------------------------------------------------------------------ HTML


def test_external_resources_are_detected(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text(
        '<html><head><script src="https://cdn.example.org/require.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.com/x.css">'
        '<link rel="canonical" href="https://example.org/page"></head>'
        '<body><a href="https://arxiv.org/abs/2506.11613">paper</a><img src="_images/a.png">'
        '<div style="background: url(https://img.example.org/b.png)"></div></body></html>')
    (tmp_path / "s.css").write_text("@font-face { src: url('https://fonts.example.com/f.woff2'); }")
    found = sorted(u for _, u in book.external_resources(tmp_path))
    assert found == ["//fonts.example.com/x.css", "https://cdn.example.org/require.js",
                     "https://fonts.example.com/f.woff2", "https://img.example.org/b.png"]


def test_tiny_book_builds_strict_offline_html(tiny: Project) -> None:
    report = book.build(tiny, _quiet())
    html = report.html_dir
    assert html == tiny.root / "_build" / "html"
    page = (html / "01_tiny.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)  # code is split into highlighted spans
    assert "n_points = 10" in text  # the injected values stay (input collapsed)
    assert "n_points: int = 20" not in text  # the source parameters cell is removed
    assert re.search(r'<img[^>]+src="_images/[^"]+\.png"', page)  # the figure is there
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert "_static/mathjax/tex-mml-chtml.js" in page  # the page has math: MathJax is local
    assert book.external_resources(html) == []
    import yaml

    extensions = yaml.safe_load(tiny.config.read_text())["sphinx"]["config"]["extensions"]
    assert "sphinx.ext.intersphinx" not in extensions and "sphinx_thebe" not in extensions


def test_stderr_in_a_chapter_fails_the_strict_build(tmp_path: Path) -> None:
    noisy = _notebook("x: int = 1", "import warnings\nwarnings.warn('chapter problem')")
    project = make_project(tmp_path, {"01_noisy": noisy}, {"default": {"01_noisy": ""}})
    with pytest.raises(ChapterFailure, match="jupyter-book build failed"):
        book.build(project, _quiet())


# ------------------------------------------------------------------------------ the real book


def test_repo_toc_chapters_have_valid_parameters_for_every_profile() -> None:
    project = Project.at(REPO)
    chapters = book.toc_chapters(project)  # fails, naming it, while a listed chapter is missing
    assert chapters and chapters[0].name == "01_introduction"
    for profile in book.PROFILES:
        book.check_parameters(project, chapters, profile)


def test_vendored_mathjax_is_complete() -> None:
    mj = REPO / "book" / "_vendor" / "mathjax"
    assert (mj / "tex-mml-chtml.js").stat().st_size > 500_000
    fonts = list((mj / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) >= 20


def run_nbval(project: Project, profile: str, workdir: Path, sanitize: Path | None = SANITIZE
              ) -> subprocess.CompletedProcess:
    """nbval (lax) over every chapter's source parameterised with ``profile`` (papermill
    --prepare-only), in a synced copy of book/ so relative paths behave as in a real build, with
    the kernel environment of a real build and a fake API key set."""
    import papermill

    chapters = book.toc_chapters(project)
    values = book.check_parameters(project, chapters, profile)
    site = workdir / "book"
    book.sync_site(project, site, chapters)
    for chapter in chapters:
        papermill.execute_notebook(str(chapter.source), str(site / chapter.source.name),
                                   parameters=values[chapter.name], prepare_only=True,
                                   progress_bar=False, kernel_name="python3")
    with book.kernel_environment(project):
        env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY}
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
             "--nbval-current-env", "-o", "addopts=", "--rootdir", str(site)]
            + ([f"--nbval-sanitize-with={sanitize}"] if sanitize else [])
            + [str(site / c.source.name) for c in chapters],
            cwd=site, env=env, capture_output=True, text=True, timeout=1800)


def test_nbval_machinery_on_tiny_book(tiny: Project, tmp_path: Path) -> None:
    proc = run_nbval(tiny, "smoke", tmp_path / "nbval")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b[1-9]\d* passed", proc.stdout), proc.stdout[-2000:]
    # and it fails when a chapter cannot run with the profile's values
    (tiny.params_dir / "smoke" / "01_tiny.yaml").write_text("n_points: -1\n")
    nbformat.write(_notebook(TINY_PARAMS, "assert n_points > 0, 'need points'"),
                   tiny.book_dir / "01_tiny.ipynb")
    proc = run_nbval(tiny, "smoke", tmp_path / "nbval2")
    assert proc.returncode != 0 and "need points" in proc.stdout


def test_nbval_sanitizer_masks_profile_dependent_numbers(tmp_path: Path) -> None:
    """A cell tagged nbval-check-output keeps its default-profile output in book/; re-run on the
    smoke profile its numbers differ, and only the sanitizer makes the comparison pass."""
    nb = _notebook(TINY_PARAMS, "print(f'loss {scale * 0.1234:.4f} after {n_points} steps "
                                "({scale * 12.5:.1f}% done) at 2025-06-13T10:00:00')")
    nb.cells[-1].metadata["tags"] = ["nbval-check-output"]
    project = make_project(tmp_path / "p", {"01_tiny": nb},
                           {"default": {"01_tiny": "n_points: 10\nscale: 2.5\n"},
                            "smoke": {"01_tiny": "n_points: 5\n"}})
    assert book.build(project, _quiet(html=False)).executed == ["01_tiny"]
    assert run_nbval(project, "smoke", tmp_path / "a").returncode == 0
    unsanitized = run_nbval(project, "smoke", tmp_path / "b", sanitize=None)
    assert unsanitized.returncode != 0 and "0.3085" in unsanitized.stdout


@pytest.mark.slow
def test_nbval_every_chapter_on_smoke_profile(tmp_path: Path) -> None:
    proc = run_nbval(Project.at(REPO), "smoke", tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_smoke_build_leaks_no_key(monkeypatch) -> None:
    """Execute every chapter on the smoke profile with a fake key in the environment, build the
    HTML (the browser test reuses it), and find the key nowhere."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    project = Project.at(REPO)
    report = book.build(project, _quiet(profile="smoke", execute="all"))
    assert not report.failures, "\n".join(map(str, report.failures))
    out = REPO / "_build" / "smoke"
    for path in list((out / "book").glob("*.ipynb")) + list(report.html_dir.rglob("*.html")):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert FAKE_KEY not in text, path
        assert _secret_hits(text) == [], path
