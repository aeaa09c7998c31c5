"""Shared helpers for the test suite, and the plugin that caches nbval's executed notebooks."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch


def blobs(n=600, seed=0):
    """A separable 10-class problem shaped like MNIST: class k lights up pixel block k.

    Returns ``(x, y)`` with ``x`` of shape ``(n, 1, 28, 28)`` and ``y`` of shape ``(n,)``.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for k in range(10):
        x[y == k, 0, 2 * k : 2 * k + 3, 5:20] += 2.0
    return x, y


@pytest.fixture(autouse=True)
def _seeded():
    """Seed torch, numpy and random before every test, so that no draw of a test is unseeded."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


# --- Notebooks execute once per CI run -------------------------------------------------------
# `make test` runs every notebook under nbval; `make book` builds with
# `execute_notebooks: cache`. For each notebook that nbval ran from the first cell to the last
# without a failure, this plugin writes the executed notebook (every output, including the
# display_data that myst_nb's glue reads) into the book's jupyter-cache, so `make book` finds it
# there and does not execute it again. `make book` alone still executes whatever is not cached.

ROOT = Path(__file__).resolve().parents[1]


def book_cache_dir(root: Path = ROOT) -> Path | None:
    """The jupyter-cache folder of the book's ``_config.yml``, or None if it does not cache."""
    import yaml

    execute = yaml.safe_load((root / "_config.yml").read_text()).get("execute", {})
    if execute.get("execute_notebooks") != "cache":
        return None
    return root / execute.get("cache", "_build/.jupyter_cache")


def _silenced(source: str, output) -> bool:
    """Whether IPython would not show ``output``: the result of a cell whose last line ends in ``;``.

    nbval runs cells without storing them in IPython's history, and IPython reads the ``;`` from
    that history, so under nbval ``plt.ylabel(...);`` still returns its result. Kept, that result
    becomes a second figure output, and a cell's figure name (``mystnb: figure: name``) is then
    defined twice in the book.
    """
    from IPython.core.displayhook import DisplayHook

    return output.get("output_type") == "execute_result" and DisplayHook.semicolon_at_end_of_expression(source)


def executed_notebook(path: Path, outputs: list[list]) -> "nbformat.NotebookNode":
    """The notebook at ``path`` with ``outputs[i]`` as its i-th code cell's outputs, numbered 1, 2, ...

    A result that IPython would have silenced (the cell ends in ``;``) is dropped, as in a
    notebook executed by Jupyter.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    if len(cells) != len(outputs):
        raise ValueError(f"{path} has {len(cells)} code cells, got outputs for {len(outputs)}")
    for count, (cell, outs) in enumerate(zip(cells, outputs), start=1):
        cell.execution_count = count
        cell.outputs = [nbformat.from_dict(dict(out)) for out in outs if not _silenced(cell.source, out)]
        for out in cell.outputs:
            if out.output_type == "execute_result":
                out.execution_count = count
    nbformat.validate(nb)
    return nb


def cache_executed(path: Path, outputs: list[list], cache_dir: Path, seconds: float | None = None) -> int:
    """Store the executed notebook in the jupyter-cache at ``cache_dir``; return its record's key."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    bundle = CacheBundleIn(executed_notebook(path, outputs), str(path), data={"execution_seconds": seconds})
    return get_cache(str(cache_dir)).cache_notebook_bundle(bundle, check_validity=True, overwrite=True).pk


class NotebookCache:
    """Collect the outputs of nbval's cells; cache each notebook that ran entirely and passed."""

    def __init__(self, cache_dir: Path, book_dir: Path = ROOT / "book"):
        self.cache_dir, self.book_dir = cache_dir, book_dir
        self.runs: dict[Path, dict] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = (yield).get_result()
        if type(item).__name__ != "IPyNbCell":
            return
        path = Path(str(item.fspath)).resolve()
        run = self.runs.setdefault(path, {"outputs": {}, "ok": True, "seconds": 0.0})
        run["ok"] &= not (report.failed or report.skipped)
        run["seconds"] += report.duration
        if report.when == "call" and report.passed:
            run["outputs"][item.cell_num] = list(item.test_outputs or [])

    def pytest_sessionfinish(self, session):
        for path, run in self.runs.items():
            outputs = [run["outputs"].get(i) for i in range(len(run["outputs"]))]
            if not (run["ok"] and self.book_dir in path.parents):
                continue
            try:
                cache_executed(path, outputs, self.cache_dir, run["seconds"])
            except ValueError:  # not every cell ran (e.g. -k or -x): the book executes it itself
                continue


def pytest_configure(config):
    """Register :class:`NotebookCache` for the whole session when nbval runs the book's notebooks."""
    import importlib.util

    nbval = getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)
    cache_dir = book_cache_dir() if nbval and importlib.util.find_spec("jupyter_cache") else None
    if cache_dir is not None:
        config.pluginmanager.register(NotebookCache(cache_dir), "nncompress-notebook-cache")
