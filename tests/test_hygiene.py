"""Repository hygiene: notebooks, table of contents, configuration, and environment files."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
PAGES = sorted(p for p in BOOK.rglob("*") if p.suffix in (".md", ".ipynb") and ".ipynb_checkpoints" not in p.parts)


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "the book has no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_committed_clean(path):
    for cell in code_cells(path):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_imports_nncompress_and_ends_with_claims(path):
    cells = code_cells(path)
    source = "\n".join("".join(c["source"]) for c in cells)
    assert re.search(r"^\s*(import nncompress|from nncompress)", source, re.M), path
    assert "assert" in "".join(cells[-1]["source"]), f"{path}: the last code cell must assert the claims"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_hold_no_control_characters(path):
    # a "\a" typed in a Python string that wrote the page became U+0007 and ate the "a" of "\alpha"
    text = path.read_text() if path.suffix == ".md" else "".join(
        "".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    bad = sorted({f"U+{ord(ch):04X}" for ch in text if ord(ch) < 32 and ch not in "\n\t"})
    assert not bad, f"{path}: control characters {bad}"


def toc_files(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file"):
                yield value
            else:
                yield from toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from toc_files(item)


TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
ENTRIES = list(toc_files(TOC))


def resolve(entry):
    hits = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb") if (ROOT / f"{entry}{ext}").exists()]
    return hits


@pytest.mark.parametrize("entry", ENTRIES)
def test_toc_entry_exists(entry):
    assert len(resolve(entry)) == 1, f"_toc.yml entry {entry!r} must match exactly one .md or .ipynb"


def test_every_page_is_in_the_toc():
    listed = {p for e in ENTRIES for p in resolve(e)}
    missing = [str(p.relative_to(ROOT)) for p in PAGES if p not in listed]
    assert not missing, f"pages missing from _toc.yml: {missing}"
    assert len(ENTRIES) == len(set(ENTRIES)), "duplicate _toc.yml entries"


CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def test_config_essentials():
    assert CONFIG["execute"]["execute_notebooks"] == "cache"
    assert CONFIG["sphinx"]["config"]["bibtex_reference_style"] == "author_year"
    assert CONFIG["bibtex_bibfiles"] == ["references.bib"]
    assert {".venv", "_build", "src", "tests"} <= set(CONFIG["exclude_patterns"])
    assert CONFIG["launch_buttons"]["binderhub_url"] and CONFIG["launch_buttons"]["colab_url"]
    assert CONFIG["repository"]["url"].startswith("https://")
    assert CONFIG["html"]["use_repository_button"]
    assert re.fullmatch(r"20\d\d(-20\d\d)?", str(CONFIG["copyright"]))


def test_mathjax_is_served_locally_not_from_a_cdn():
    text = (ROOT / "_config.yml").read_text()
    assert "cdn" not in text.lower() and "mathjax_path" not in text  # set by the local extension
    assert "offline_mathjax" in CONFIG["sphinx"]["local_extensions"]
    assert not (ROOT / "_static").exists() and not list(BOOK.rglob("_static"))


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("book", "test"):
        reqs += project["optional-dependencies"][extra]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def environment_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in env["dependencies"]
    assert "-e ." in pip, "environment.yml must install the package itself"
    return {Requirement(r).name.lower(): Requirement(r) for r in pip if not r.startswith("-")}


def test_environment_yml_agrees_with_pyproject():
    py, env = pyproject_requirements(), environment_requirements()
    assert set(py) == set(env), f"only in pyproject: {set(py) - set(env)}; only in environment.yml: {set(env) - set(py)}"
    for name, req in py.items():
        if name == "torch":  # environment.yml pins the version the Makefile installs
            pinned = str(env[name].specifier).removeprefix("==")
            assert req.specifier.contains(pinned), f"torch {pinned} does not satisfy pyproject's {req.specifier}"
            assert f"TORCH := torch=={pinned}" in (ROOT / "Makefile").read_text()
        else:
            assert req.specifier == env[name].specifier, name


def test_ci_runs_exactly_the_two_commands():
    run = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in run.splitlines() if line.strip().startswith("make ")]
    assert commands == ["make test", "make book"]
    assert "../shared/data" in run


def test_book_cache_is_the_one_make_book_reads():
    from conftest import book_cache_dir

    assert book_cache_dir() == ROOT / CONFIG["execute"]["cache"]


def test_notebooks_executed_by_nbval_are_found_in_the_book_cache(tmp_path):
    import nbformat
    from jupyter_cache import get_cache

    from conftest import cache_executed

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.nbformat_minor = 4
    nb.cells = [nbformat.v4.new_markdown_cell("{glue:text}`x`"), nbformat.v4.new_code_cell("glue('x', 1)"),
                nbformat.v4.new_code_cell("x", metadata={"tags": ["keep"]})]
    for cell in nb.cells:
        cell.pop("id", None)
    path = tmp_path / "book" / "demo.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, str(path))
    glued = {"output_type": "display_data", "data": {"application/papermill.record/text/plain": "1"},
             "metadata": {"scrapbook": {"name": "x", "mime_prefix": "application/papermill.record/"}}}
    result = {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": 7}
    cache_executed(path, [[glued], [result]], tmp_path / "cache", seconds=1.5)
    # what myst_nb does in `execute_notebooks: cache` mode, on the notebook as committed
    _, merged = get_cache(str(tmp_path / "cache")).merge_match_into_notebook(nbformat.read(str(path), as_version=4))
    code = [c for c in merged.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2] and code[1].metadata == {"tags": ["keep"]}
    assert code[0].outputs[0].metadata["scrapbook"]["name"] == "x" and code[1].outputs[0].execution_count == 2
    with pytest.raises(ValueError, match="2 code cells"):
        cache_executed(path, [[glued]], tmp_path / "cache")  # a notebook that did not run to the end


def test_results_silenced_by_a_semicolon_are_not_cached(tmp_path):
    # under nbval, `plt.ylabel(...);` still returns its result; cached, it became a second figure
    # output with the cell's figure name, and the book build failed on the duplicate target
    import nbformat

    from conftest import executed_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("plt.plot([1, 2])\nplt.ylabel('y');  # label"),
                nbformat.v4.new_code_cell("plt.ylabel('y')")]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, str(path))
    result = {"output_type": "execute_result", "data": {"text/plain": "Text(0, 0.5, 'y')"}, "metadata": {},
              "execution_count": 1}
    figure = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
              "metadata": {}}
    silenced, shown = [c.outputs for c in executed_notebook(path, [[result, figure], [result, figure]]).cells]
    assert [o.output_type for o in silenced] == ["display_data"]
    assert [o.output_type for o in shown] == ["execute_result", "display_data"]
