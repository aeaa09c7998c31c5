"""The package's conventions, checked on its source: techniques know nothing of architectures,
modules and functions stay small, and every public function documents its parameters and result."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nncompress"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "baselines" not in p.parts)
MODULE_LINES = 550  # "no module over about 500 lines"
FUNCTION_LINES = 50  # "no function over about 50 lines": signature and code, docstring excluded


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def _public(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node


def test_sources_were_found():
    assert len(SOURCES) >= 15


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_technique_branches_on_the_books_architectures(path):
    if path.name == "models.py":
        return
    text = path.read_text()
    assert not re.search(r"isinstance\(model, *\(?(MLP|LeNet5)", text)
    assert not re.search(r"\b(MLP|LeNet5)\b.*isinstance|isinstance\([^)]*\b(MLP|LeNet5)\b", text)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_module_is_small(path):
    assert len(path.read_text().splitlines()) <= MODULE_LINES


def _code_lines(node: ast.FunctionDef) -> int:
    """Lines of a function without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_functions_are_small(path):
    long = [f"{node.name} ({_code_lines(node)} lines)" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > FUNCTION_LINES]
    assert not long


def _takes_arguments(node: ast.FunctionDef) -> bool:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return bool([n for n in names if n not in ("self", "cls")] or args.vararg or args.kwarg)


def _returns_something(node: ast.FunctionDef) -> bool:
    returns = node.returns
    if returns is None:
        return any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(node))
    return not (isinstance(returns, ast.Constant) and returns.value is None)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_public_functions_document_parameters_and_results(path):
    missing = []
    for node in _public(ast.parse(path.read_text())):
        doc = ast.get_docstring(node) or ""
        if not doc:
            missing.append(f"{node.name}: no docstring")
        elif isinstance(node, ast.FunctionDef):
            if _takes_arguments(node) and "Parameters" not in doc:
                missing.append(f"{node.name}: no Parameters section")
            if _returns_something(node) and "Returns" not in doc and "Yields" not in doc:
                missing.append(f"{node.name}: no Returns section")
    assert not missing
