"""The documentation is true: its examples, links and options are real.

1. The examples of docs/routing.md and of the README are real: replay them
   and compare. Each ```console block of the page holds commands
   (``$ c4 ...``) and what they print. ``c4 route --table FILE 'REQUEST'``
   (optionally ``| jq .``) and ``c4 check FILE`` are replayed; FILE is
   either a file of the repository or the name of an example document shown
   on the page, taken from the nearest ```json / ```toml block above the
   command. Other commands (shell pipelines) are left out. When this test
   fails, update the page with the real output.
2. Every relative link of README.md, docs/*.md and benchmarks/README.md
   leads to a file, and its ``#anchor`` to a heading of that file.
3. Every option a page gives a ``c4`` command (``c4 kamailio ... --shm``,
   ``.venv/bin/c4 db token create --tenant``) is an option of that command,
   as its ``--help`` lists it. When this fails, correct the page.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import orjson
import pytest
from test_repo import anchors, broken_links  # tests/ is on sys.path, as for conftest's imports

from c4kemi.cli import build_parser, main, route_line
from c4kemi.core.table import load_table

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "routing.md"

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def examples(page: Path = PAGE) -> list[tuple[int, str, list[str], dict[str, str]]]:
    """(line, command, expected output lines, documents shown above it)."""
    text = page.read_text()
    shown: dict[str, str] = {}  # suffix -> the latest json / toml block
    found = []
    for block in _BLOCK.finditer(text):
        language, body = block.group(1), block.group(2)
        if language in ("json", "toml"):
            shown[language] = body
            continue
        if language != "console":
            continue
        line = text.count("\n", 0, block.start()) + 2
        command, output, start = None, [], line
        for offset, row in enumerate(body.splitlines()):
            if row.startswith("$ "):
                if command is not None:
                    found.append((start, command, output, dict(shown)))
                command, output, start = row[2:], [], line + offset
            else:
                output.append(row)
        if command is not None:
            found.append((start, command, output, dict(shown)))
    return found


def parse(command: str) -> tuple[str, str | None, bool] | None:
    """(table file, request or None for check, piped to jq); None: not replayed."""
    words = shlex.split(command)
    jq = words[-3:] == ["|", "jq", "."]
    if jq:
        words = words[:-3]
    if words[:2] == ["c4", "route"] and len(words) == 5 and words[2] == "--table":
        return words[3], words[4], jq
    if words[:2] == ["c4", "check"] and len(words) == 3 and not jq:
        return words[2], None, False
    return None


def replay(command: str, shown: dict[str, str], tmp_path: Path, capsys) -> list[str]:
    """What the command prints, as lines."""
    table_file, request, jq = parse(command)
    if (ROOT / table_file).is_file():
        path = ROOT / table_file
    else:
        suffix = Path(table_file).suffix.lstrip(".")
        assert suffix in shown, f"{table_file} is neither in the repository nor shown above the command"
        path = tmp_path / table_file
        path.write_text(shown[suffix])
    if request is not None:
        reply = route_line(load_table(path), request)
        if jq:
            return json.dumps(orjson.loads(reply), indent=2, ensure_ascii=False).splitlines()
        return [reply.decode()]
    capsys.readouterr()
    main(["check", str(path)])
    captured = capsys.readouterr()
    return (captured.err + captured.out).replace(str(path), table_file).splitlines()


EXAMPLES = [example for example in examples() if parse(example[1]) is not None]


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 15, "the console blocks of docs/routing.md are no longer recognised"


@pytest.mark.parametrize("line, command, output, shown", EXAMPLES, ids=[f"line-{e[0]}" for e in EXAMPLES])
def test_example_output_is_real(line, command, output, shown, tmp_path, capsys):
    actual = replay(command, shown, tmp_path, capsys)
    assert actual == output, f"docs/routing.md line {line}: update the output of `{command[:60]}...`"


README_EXAMPLES = [example for example in examples(ROOT / "README.md") if parse(example[1]) is not None]


def test_the_readme_has_examples():
    assert len(README_EXAMPLES) >= 2, "the README's first table is no longer shown with c4 check and c4 route"


@pytest.mark.parametrize("line, command, output, shown", README_EXAMPLES, ids=[f"line-{e[0]}" for e in README_EXAMPLES])
def test_readme_example_output_is_real(line, command, output, shown, tmp_path, capsys):
    actual = replay(command, shown, tmp_path, capsys)
    assert actual == output, f"README.md line {line}: update the output of `{command[:60]}...`"


# -- Links and command-line options of every page ---------------------------
#
# The README is short and sends the reader to the guides of docs/: a link
# that leads nowhere, or an option that no command has, is a dead end. The
# link checker is tests/test_repo.py's (one implementation of GitHub's
# heading slugs); here it is run on exactly the pages a reader goes through.

DOCS = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md")})
LINKED_PAGES = DOCS + [ROOT / "benchmarks" / "README.md"]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


@pytest.mark.parametrize("page", LINKED_PAGES, ids=page_id)
def test_relative_links_and_anchors_resolve(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


_FENCED = re.compile(r"^ {0,3}(```|~~~)([^\n]*)\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)
_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_C4 = re.compile(r"(?<![\w.-])c4[ \t]+")  # `c4 ...`, `.venv/bin/c4 ...`; not c4kemi, not c4-foo
_OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
_COMMENT = re.compile(r"(?:^|(?<=\s))#.*")
_STOP = {"|", "||", "&&", ";", "&"}  # the command ends: a pipe, another command


def command_units(text: str) -> list[tuple[int, str]]:
    """(line, text) of each piece of a page that may name a c4 command.

    Code blocks give one unit per command line (``\\`` continuations joined,
    ``#`` comments dropped; in a block with ``$ `` prompts, only the prompt
    lines). Outside code blocks, each inline code span is a unit, joined
    with the option spans that follow it separated by blanks only
    (``c4 serve`` ``--backlog``).
    """
    units: list[tuple[int, str]] = []
    prose_parts, end = [], 0
    for block in _FENCED.finditer(text):
        prose_parts.append((end, text[end : block.start()]))
        end = block.end()
        language = block.group(2).strip().lower()
        if language in ("json", "toml", "python", "py"):
            continue
        first = text.count("\n", 0, block.start(3)) + 1
        rows = block.group(3).splitlines()
        prompted = any(row.startswith("$ ") for row in rows)
        logical, start = "", None
        for offset, row in enumerate(rows):
            if start is None:
                if prompted and not row.startswith("$ "):
                    continue
                start = first + offset
                row = row[2:] if prompted else row
            if row.endswith("\\"):
                logical += row[:-1] + " "
                continue
            units.append((start, _COMMENT.sub("", logical + row)))
            logical, start = "", None
        if start is not None:
            units.append((start, _COMMENT.sub("", logical)))
    prose_parts.append((end, text[end:]))
    for offset, prose in prose_parts:
        spans = list(_SPAN.finditer(prose))
        for index, span in enumerate(spans):
            content = span.group(2)
            if not _C4.search(content):
                continue
            following, last = [], span
            for after in spans[index + 1 :]:
                if prose[last.end() : after.start()].strip() or not after.group(2).startswith("--"):
                    break
                following.append(after.group(2))
                last = after
            line = text.count("\n", 0, offset + span.start()) + 1
            units.append((line, " ".join([content, *following])))
    return units


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """The options ``--help`` lists (a suppressed one exists but is not documented)."""
    return {option for action in parser._actions if action.help != argparse.SUPPRESS for option in action.option_strings}


def named_options(unit: str, root: argparse.ArgumentParser) -> list[tuple[str, str, bool]]:
    """(command, option, known) for each option a unit gives a c4 command."""
    found = []
    for match in _C4.finditer(unit):
        parser, command = root, ["c4"]
        for word in unit[match.end() :].split():
            if word in _STOP or _C4.fullmatch(word + " "):
                break
            bare = word.strip("[](){}'\",")
            subcommands = _subcommands(parser)
            if bare in subcommands:
                parser, command = subcommands[bare], [*command, bare]
                continue
            for option in _OPTION.findall(word):
                option = option.split("=")[0]
                found.append((" ".join(command), option, option in _options(parser)))
    return found


def option_problems(page: Path, root: argparse.ArgumentParser | None = None) -> list[str]:
    root = root or build_parser()
    problems = []
    for line, unit in command_units(page.read_text()):
        for command, option, known in named_options(unit, root):
            if not known:
                where = " ".join(unit.split())[:100]
                problems.append(f"{page_id(page)}:{line}: `{command}` has no option {option} (not in `{command} --help`): `{where}`")
    return problems


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_option_a_page_names_exists(page):
    problems = option_problems(page)
    assert not problems, "\n".join(problems)


def test_the_option_finder_sees_the_pages_commands():
    root = build_parser()
    seen = {(command, option) for page in DOCS for _, unit in command_units(page.read_text()) for command, option, _ in named_options(unit, root)}
    assert len(seen) >= 40, f"only {len(seen)} (command, option) pairs found: the finder no longer reads the pages"
    for expected in [
        ("c4 kamailio", "--shm-reserve"),
        ("c4 serve", "--backlog"),
        ("c4 route", "--explain"),
        ("c4 db token create", "--tenant"),
        ("c4 kamailio", "--cdr-db"),
        ("c4 serve", "--api-listen"),
    ]:
        assert expected in seen, f"{expected} is named in the docs but the finder missed it"


def test_the_option_finder_catches_what_it_must(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `c4 serve --port 8080 --bogus-one` or `c4 serve` `--bogus-two`, not `--bogus-prose`.\n"
        "The `c4 kamailio` option `--max-inflight` and `--dsn` of `c4 db follow` are fine.\n"
        "\n```sh\n"
        ".venv/bin/c4 kamailio --mode kemi \\\n"
        "    [--workers 8] [--bogus-three 1]   # c4 serve --bogus-comment\n"
        "c4 db token create --tenant acme --bogus-four && c4 check --bogus-five FILE\n"
        "c4 db export | jq --bogus-jq .\n"
        "```\n"
        "\n```console\n$ c4 route --table t.json --bogus-six\noutput: c4 serve --bogus-output\n```\n"
        '\n```json\n{"x": "c4 serve --bogus-json"}\n```\n'
    )
    problems = option_problems(page)
    reported = [(p.split(": ")[0].rsplit(":", 1)[1], p.split("`")[1], p.split("has no option ")[1].split()[0]) for p in problems]
    assert reported == [
        ("5", "c4 kamailio", "--bogus-three"),
        ("7", "c4 db token create", "--bogus-four"),
        ("7", "c4 check", "--bogus-five"),
        ("12", "c4 route", "--bogus-six"),
        ("1", "c4 serve", "--bogus-one"),
        ("1", "c4 serve", "--bogus-two"),
    ], problems


def test_the_link_checker_knows_github_slugs():
    assert {"capacity-and-overload", "the-routing-apis-connections-http-mode", "2-one-copy-per-node-and-a-start-that-compiles-once", "tenants"} <= anchors(
        "## Capacity and overload\n## The routing API's connections (HTTP mode)\n## 2. One copy per node, and a start that compiles once\n### `tenants`\n"
    )
