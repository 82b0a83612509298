"""The repository stands alone: nothing in it points outside it.

A clone must carry every document it refers to. These tests fail when a
tracked file mentions the design notes that live outside the repository,
or when a relative link in the Markdown documentation leads nowhere.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not match itself.
OUTSIDE_REFERENCES = ("../" + "shared", "DESIGN" + ".md")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    return [path for path in out.decode().split("\0") if path]


def test_no_tracked_file_refers_outside_the_repository():
    found = []
    for path in tracked_files():
        file = ROOT / path
        if not file.is_file():  # deleted in the working tree, not yet staged
            continue
        for number, line in enumerate(file.read_bytes().splitlines(), 1):
            for needle in OUTSIDE_REFERENCES:
                if needle.encode() in line:
                    found.append(f"{path}:{number}: {needle}")
    assert not found, "refer to docs/routing.md instead:\n" + "\n".join(found)


# -- Markdown links ---------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:id|name)=\"([^\"]+)\"", re.I)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def without_code(text: str) -> str:
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Link targets of a Markdown text, code blocks and code spans left out."""
    text = without_code(text)
    return _INLINE_LINK.findall(text) + _REFERENCE.findall(text)


def anchors(text: str) -> set[str]:
    """The fragment names GitHub gives a Markdown file's headings."""
    found, seen = set(_HTML_ANCHOR.findall(text)), {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(markdown: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``markdown`` to no file (or heading) inside ``root``."""
    text = markdown.read_text()
    problems = []
    for target in links(text):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http:, https:, mailto: ...: not a file of the repository
        path, _, fragment = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        where = f"{markdown.relative_to(root)}: ({target})"
        if not file.is_relative_to(root):
            problems.append(f"{where} leads outside the repository")
        elif not file.exists():
            problems.append(f"{where} leads to no file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            problems.append(f"{where}: {file.name} has no heading #{fragment}")
    return problems


def markdown_files() -> list[Path]:
    files = {ROOT / "README.md", *ROOT.glob("docs/*.md")}
    files.update(ROOT / path for path in tracked_files() if path.endswith(".md"))
    return sorted(file for file in files if file.is_file())


def test_docs_exist():
    assert (ROOT / "docs" / "routing.md").is_file()


def test_relative_markdown_links_lead_to_files_in_the_repository():
    files = markdown_files()
    assert ROOT / "README.md" in files
    problems = [problem for file in files for problem in broken_links(file)]
    assert not problems, "\n".join(problems)


def test_link_checker_sees_what_it_must(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n\n## The `rule` (one)\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#the-rule-one) [ok](#top) [web](https://example.com/x)\n"
        "<a id=\"top\"></a>\n"
        "`[code](nowhere.md)`\n\n```\n[code](nowhere.md)\n```\n"
        "[missing](docs/b.md) [anchor](docs/a.md#nope) [out](../elsewhere.md)\n"
        "[ref]: docs/c.md\n"
    )
    problems = broken_links(tmp_path / "README.md", tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "(docs/b.md) leads to no file",
        "(docs/a.md#nope): a.md has no heading #nope",
        "(../elsewhere.md) leads outside the repository",
        "(docs/c.md) leads to no file",
    ]
