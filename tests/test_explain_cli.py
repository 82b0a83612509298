"""``c4 route --explain``, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pytest

from c4kemi.core.decision import decide
from c4kemi.core.explain import explain
from c4kemi.core.table import compile_table
from tables import document, request

SECRET = "s3cret-Pa55"


def c4(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c4kemi.cli", *args], input=stdin, capture_output=True, timeout=60)


@pytest.fixture
def doc() -> dict:
    doc = document()
    doc["trunks"][0]["auth"]["password"] = SECRET
    return doc


@pytest.fixture
def table_file(tmp_path, doc):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(doc))
    return path


def test_explain_text_for_a_person(table_file):
    query = request("10.0.0.10", "0044201234", call_id="w-1")
    result = c4("route", "--table", str(table_file), "--explain", json.dumps(query))
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "source    10.0.0.10 is in 10.0.0.10/32: IPBX acme-pbx (tenant acme; profile it)" in text
    assert "intl prefix '00' stripped" in text
    assert "4420 (tenant globex, IPBX globex-pbx): not used: DID of tenant globex, not acme" in text
    assert "route     tenant acme, prefix '44'" in text
    assert "3. carrier-b-2  priority 5  weight 1" in text
    assert "result    outbound: 3 branch(es), tried in this order" in text
    assert SECRET not in text
    assert "password ***" in text
    assert not text.lstrip().startswith("{")  # text, not JSON


def test_explain_json_is_the_explanation_and_decides_reply(table_file, doc):
    query = request("10.0.0.10", "0298765432")
    result = c4("route", "--table", str(table_file), "--explain", "--json", json.dumps(query))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"\n") == 1
    table = compile_table(doc)
    got = orjson.loads(result.stdout)
    assert got == orjson.loads(orjson.dumps(explain(table, query)))
    assert got["reply"] == decide(table, query)  # the reply as the contract has it, auth included
    assert got["consistent"] is True
    assert [t["trunk"] for t in got["trunk_order"]] == ["carrier-a-1", "carrier-b-1"]


def test_explain_refusals(table_file):
    result = c4("route", "--table", str(table_file), "--explain", json.dumps(request("203.0.113.7", "0612345678")))
    assert result.returncode == 0
    assert "refused 403 Forbidden: no trunk or IPBX source CIDR holds 203.0.113.7" in result.stdout.decode()
    result = c4("route", "--table", str(table_file), "--explain", "--json", json.dumps(request("192.0.2.1", "+397012345")))
    got = orjson.loads(result.stdout)
    assert got["outcome"]["code"] == 404
    assert got["dids"]["considered"][0]["verdict"] == "match_failed"


@pytest.mark.parametrize("as_json", [False, True])
def test_explain_batch_on_stdin_goes_on_after_bad_lines(table_file, as_json):
    lines = [
        json.dumps(request("192.0.2.1", "0612345678")),
        "{not json",
        '{"source_ip": "192.0.2.1"}',
        "[1]",
        json.dumps(request("203.0.113.7", "0612345678")),
    ]
    flags = ["--explain", "--json"] if as_json else ["--explain"]
    result = c4("route", "--table", str(table_file), *flags, stdin="\n".join(lines).encode() + b"\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""  # no traceback
    out = result.stdout.decode()
    errors = [line for line in out.splitlines() if line.startswith('{"error"')]
    assert [orjson.loads(e)["error"] for e in errors][1:] == ["missing required member 'from_uri'", "request must be a JSON object, not list"]
    assert orjson.loads(errors[0])["error"].startswith("malformed JSON")
    if as_json:
        replies = [orjson.loads(line) for line in out.splitlines()]
        assert len(replies) == 5
        assert replies[0]["kind"] == "inbound" and replies[4]["outcome"]["code"] == 403
    else:
        assert out.count("result    inbound: 2 branch(es)") == 1
        assert out.count("result    refused 403 Forbidden") == 1


def test_explain_one_bad_request_exits_1(table_file):
    result = c4("route", "--table", str(table_file), "--explain", '{"source_ip": 1}')
    assert result.returncode == 1
    assert orjson.loads(result.stdout) == {"error": "member 'source_ip' must be a string, not int"}
    assert result.stderr == b""


def test_route_without_explain_is_unchanged(table_file, doc):
    query = request("10.0.0.10", "0298765432")
    result = c4("route", "--table", str(table_file), json.dumps(query))
    assert orjson.loads(result.stdout) == decide(compile_table(doc), query)
