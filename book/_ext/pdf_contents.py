"""Check a PDF of the book: every page of the table of contents must appear in it, by its title.

Used by ``make pdf``: ``python book/_ext/pdf_contents.py _toc.yml _build/pdf/<name>.pdf``.
Exits with status 1, naming the missing titles, if any title is not found in the PDF's text.
"""

import json
import re
import sys
from pathlib import Path

import yaml
from pypdf import PdfReader


def _files(node) -> list[str]:
    found = [node["file"]] if isinstance(node, dict) and "file" in node else []
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return found + [f for child in children if isinstance(child, (dict, list)) for f in _files(child)]


def _title(root: Path, name: str) -> str:
    for suffix in (".md", ".ipynb"):
        path = root / f"{name}{suffix}"
        if path.exists():
            text = path.read_text() if suffix == ".md" else "\n".join(
                "".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
            return re.search(r"^# (.+)$", text, re.M).group(1).strip()
    raise FileNotFoundError(f"no page for {name!r} in the table of contents")


def _plain(text: str) -> str:
    return re.sub(r"\W+", " ", text).strip().lower()


def main(toc: str, pdf: str) -> int:
    root = Path(toc).parent
    tree = yaml.safe_load(Path(toc).read_text())
    titles = [_title(root, tree["root"])] + [_title(root, f) for f in _files(tree.get("parts", []))]
    reader = PdfReader(pdf)
    text = _plain(" ".join(page.extract_text() or "" for page in reader.pages))
    missing = [t for t in titles if _plain(t) not in text]
    print(f"{pdf}: {len(reader.pages)} pages; {len(titles) - len(missing)} of {len(titles)} pages of the book found")
    for t in missing:
        print(f"  missing: {t}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
