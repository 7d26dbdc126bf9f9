"""The project stands on its own: code cites only documents inside the repository, and the
documents it cites say what exists.

- No source, test, benchmark, template or config file names a document kept outside the
  repository (SECURITY.md, DESIGN.md, PRODUCT.md, STYLE.md, anything under "shared/"): a reader
  of the code must be able to follow every reference. Cite docs/architecture.md,
  docs/security-model.md or a public standard instead.
- Every "docs/<name>.md" a file mentions exists, and so does the section it names, when it names
  one as "docs/<name>.md#<anchor>" or "docs/<name>.md, '<Heading>'".
- Every repository path the docs name in backticks (`gateway/security/links.py`) exists, and every link
  between the docs resolves, so the docs cannot drift from the tree unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED_DIRS = ("gateway", "inbound", "outbound", "portal", "tests", "bench")
SCANNED_ROOT_FILES = ("README.md", "config.example.toml", "pyproject.toml")
SUFFIXES = frozenset({".py", ".toml", ".html", ".txt", ".md"})
SELF = Path(__file__).resolve()

# Documents that live outside this repository. (Spelled in pieces so this file does not match.)
OUTSIDE = re.compile(r"\b(?:" + "|".join(("SECURITY", "DESIGN", "PRODUCT", "STYLE")) + r")\.md\b|\bshared" + "/")
# "docs/x.md", optionally with "#anchor" or ", 'Heading'"; not part of a longer path or URL.
DOCS_REF = re.compile(
    r"(?<![\w/.-])docs/([\w.-]+\.md)(?:#([\w-]+)|,\s*['\"\u2018\u201c]([^'\"\u2019\u201d\n]{1,80})['\"\u2019\u201d])?"
)
# A repository path in backticks in the docs: `gateway/security/links.py`, `tests/support/`.
REPO_PATH = re.compile(r"`((?:gateway|inbound|outbound|portal|tests|bench|docs|scripts)/[\w./-]*)`")
# A markdown link to another doc or to a section: [text](security-model.md#keys), [text](#keys).
MD_LINK = re.compile(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_ROOT_FILES if (ROOT / name).is_file()]
    for top in SCANNED_DIRS:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    files += [p for p in DOCS.rglob("*.md")] if DOCS.is_dir() else []
    return sorted(p for p in files if p.resolve() != SELF and ".venv" not in p.parts and "__pycache__" not in p.parts)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_\[\]()]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(doc: Path) -> list[str]:
    return [m.group(1) for m in HEADING.finditer(doc.read_text(encoding="utf-8"))]


def where(path: Path, text: str, index: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, index) + 1}"


def test_code_cites_no_document_outside_the_repository() -> None:
    found = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{where(path, text, m.start())}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not found, "cite docs/architecture.md, docs/security-model.md or a public standard instead:\n" + \
        "\n".join(found)


def test_every_docs_path_cited_in_code_exists() -> None:
    missing = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in DOCS_REF.finditer(text):
            name, anchor, title = m.groups()
            doc = DOCS / name
            if not doc.is_file():
                missing.append(f"{where(path, text, m.start())}: docs/{name} does not exist")
                continue
            titles = headings(doc)
            if anchor and anchor not in {slug(t) for t in titles}:
                missing.append(f"{where(path, text, m.start())}: docs/{name} has no section #{anchor}")
            if title and title.strip().lower() not in {t.lower() for t in titles}:
                missing.append(f"{where(path, text, m.start())}: docs/{name} has no section {title!r}")
    assert not missing, "\n".join(missing)


def test_docs_name_only_files_that_exist() -> None:
    docs = sorted(DOCS.glob("*.md"))
    assert {d.name for d in docs} >= {"architecture.md", "security-model.md"}
    missing = []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for m in REPO_PATH.finditer(text):
            if not (ROOT / m.group(1)).exists():
                missing.append(f"{where(doc, text, m.start())}: {m.group(1)}")
    assert not missing, "the docs name paths that are not in the repository:\n" + "\n".join(missing)


def test_links_between_docs_resolve() -> None:
    broken = []
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for m in MD_LINK.finditer(text):
            target_name, anchor = m.groups()
            if target_name is None and anchor is None:
                continue
            target = doc.parent / target_name if target_name else doc
            if not target.is_file():
                broken.append(f"{where(doc, text, m.start())}: {target_name} does not exist")
            elif anchor and anchor not in {slug(t) for t in headings(target)}:
                broken.append(f"{where(doc, text, m.start())}: {target.name} has no section #{anchor}")
    assert not broken, "\n".join(broken)


def test_slugs_follow_github_anchors() -> None:
    assert slug("Where each rule lives") == "where-each-rule-lives"
    assert slug("Flow (a): an outbound secure message, from the API to the wire") == \
        "flow-a-an-outbound-secure-message-from-the-api-to-the-wire"
    assert slug("Opening is a POST") == "opening-is-a-post"
