"""references.bib: parses with bibtexparser v2, complete entries, and every citation resolves."""

import re
import unicodedata
from pathlib import Path

import bibtexparser
import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = bibtexparser.parse_file(str(ROOT / "references.bib"))
ENTRIES = LIBRARY.entries

# Fields each entry type needs (author or editor for books); every entry also needs a venue.
REQUIRED = {
    "article": {"author", "title", "journal", "year"},
    "inproceedings": {"author", "title", "booktitle", "year"},
    "incollection": {"author", "title", "booktitle", "publisher", "year"},
    "book": {"title", "publisher", "year"},
    "misc": {"author", "title", "year", "howpublished"},
    "techreport": {"author", "title", "institution", "year"},
    "phdthesis": {"author", "title", "school", "year"},
}


def fields(entry):
    return {k.lower(): v.value for k, v in entry.fields_dict.items()}


def test_parses_without_errors_and_is_large_enough():
    assert not LIBRARY.failed_blocks, [b.error for b in LIBRARY.failed_blocks]
    assert len(ENTRIES) >= 80


def test_no_duplicate_keys_or_works():
    keys = [e.key for e in ENTRIES]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    titles = [re.sub(r"[^a-z0-9]", "", fields(e)["title"].lower()) for e in ENTRIES]
    assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)
    dois = [fields(e)["doi"].lower() for e in ENTRIES if "doi" in fields(e)]
    assert len(dois) == len(set(dois))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.key)
def test_entry_has_required_fields_and_an_identifier(entry):
    f = fields(entry)
    assert entry.entry_type.lower() in REQUIRED, f"{entry.key}: unsupported type {entry.entry_type}"
    missing = REQUIRED[entry.entry_type.lower()] - set(f)
    if entry.entry_type.lower() == "book" and not ({"author", "editor"} & set(f)):
        missing.add("author/editor")
    assert not missing, f"{entry.key} lacks {sorted(missing)}"
    assert {"doi", "eprint", "url"} & set(f), f"{entry.key} has no doi, eprint or url"
    assert re.fullmatch(r"(1[89]|20)\d\d", f["year"]), f"{entry.key}: year {f['year']!r}"
    if "doi" in f:
        assert re.fullmatch(r"10\.\d{4,9}/\S+", f["doi"]), f"{entry.key}: doi must be bare, got {f['doi']!r}"
    if "eprint" in f:
        assert f.get("archiveprefix", "").lower() == "arxiv", f"{entry.key}: eprint needs archivePrefix = arXiv"


def ascii_fold(text):
    text = re.sub(r"\\[\"'`^~=.uvHc]\{?(\w)\}?", r"\1", text)  # LaTeX accents: {\"u} -> u
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", text.lower())


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.key)
def test_key_is_firstauthor_year_titleword(entry):
    f = fields(entry)
    m = re.fullmatch(r"([a-z]+)(\d{4})([a-z0-9]+)", entry.key)
    assert m, f"{entry.key} is not firstauthorYEARword"
    names = f.get("author") or f.get("editor")
    first = names.split(" and ")[0]
    surname = first.split(",")[0] if "," in first else first.split()[-1]
    assert m.group(1) == ascii_fold(surname), f"{entry.key}: first author surname is {surname!r}"
    assert m.group(2) == f["year"], f"{entry.key}: year field is {f['year']}"
    words = {re.sub(r"[^a-z0-9]", "", w) for w in ascii_fold_words(f["title"])}
    assert m.group(3) in words, f"{entry.key}: {m.group(3)!r} is not a word of the title"


def ascii_fold_words(title):
    """The title's words, lowercased ASCII, each both split at hyphens and joined ("k-means++" gives
    "k", "means" and "kmeans"), with possessives dropped ("computing's" gives "computing")."""
    title = re.sub(r"[{}]", "", title)
    title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    title = re.sub(r"'s\b", "", title)
    words = re.split(r"[\s:/]+", title)
    return words + [part for w in words for part in w.split("-")]


CITE = re.compile(r"\{(?:cite|cite:p|cite:t|cite:ps|cite:ts|cite:author|cite:year|cite:empty)\}`([^`]+)`")


def cited_keys():
    keys = {}
    for path in sorted((ROOT / "book").rglob("*")):
        if path.suffix in (".md", ".ipynb") and ".ipynb_checkpoints" not in path.parts:
            for match in CITE.finditer(path.read_text()):
                for key in match.group(1).split(","):
                    keys.setdefault(key.strip(), path.relative_to(ROOT))
    return keys


def test_every_cited_key_exists():
    known = {e.key for e in ENTRIES}
    cited = cited_keys()
    assert cited, "the book cites nothing"
    missing = {k: str(v) for k, v in cited.items() if k not in known}
    assert not missing, f"cited but not in references.bib: {missing}"


def test_bibliography_page_lists_every_entry():
    page = (ROOT / "book" / "bibliography.md").read_text()
    assert re.search(r"```\{bibliography\}\s*\n:all:", page)
