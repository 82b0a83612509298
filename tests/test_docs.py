"""The examples of docs/routing.md are real: replay them and compare.

Each ```console block of the page holds commands (``$ c4 ...``) and what
they print. ``c4 route --table FILE 'REQUEST'`` (optionally ``| jq .``) and
``c4 check FILE`` are replayed; FILE is either a file of the repository or
the name of an example document shown on the page, taken from the nearest
```json / ```toml block above the command. Other commands (shell pipelines)
are left out. When this test fails, update the page with the real output.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import orjson
import pytest

from c4kemi.cli import main, route_line
from c4kemi.table import load_table

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "routing.md"

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def examples() -> list[tuple[int, str, list[str], dict[str, str]]]:
    """(line, command, expected output lines, documents shown above it)."""
    text = PAGE.read_text()
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
