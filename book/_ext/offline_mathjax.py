"""Serve MathJax 3 from an installed package, so equations render with no network.

The ``mathjax`` package (PyPI: django-static-mathjax) ships MathJax's ``es5`` build. Its files
are copied to ``<html>/mathjax/`` after the build and ``mathjax_path`` points there; Sphinx
resolves a relative ``mathjax_path`` against ``_static/``, hence the leading ``../``.
"""

import shutil
from pathlib import Path

ENTRY = "tex-mml-chtml.js"


def _es5() -> Path:
    import mathjax

    root = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (root / ENTRY).is_file():
        raise RuntimeError(f"MathJax not found at {root}; install the book extra (django-static-mathjax)")
    return root


def _configure(app, config):
    _es5()
    config.mathjax_path = f"../mathjax/{ENTRY}"


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copytree(_es5(), Path(app.outdir) / "mathjax", dirs_exist_ok=True)


def setup(app):
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
