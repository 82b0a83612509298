"""The c4 command: check and route, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pytest

from c4kemi.cli import EXAMPLE_TABLE
from c4kemi.core.decision import decide, encode
from c4kemi.core.table import compile_table
from tables import BASE_DOCUMENT, document, request


def c4(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c4kemi.cli", *args], input=stdin, capture_output=True, timeout=60)


@pytest.fixture
def table_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(BASE_DOCUMENT))
    return path


# (request, expected destinations, expected code) covering the cases of
# docs/routing.md's decision rules.
CORPUS = [
    ("inbound", request("192.0.2.1", "0612345678"), ["sip:0612345678@10.0.0.10:5060", "sip:0612345678@10.0.0.11:5060"], None),
    ("inbound longest DID", request("192.0.2.1", "+39612345901"), ["sip:39612345901@10.0.1.10"], None),
    ("outbound", request("10.0.0.10", "0298765432"), ["sip:0298765432@192.0.2.10:5060", "sip:+39298765432@198.51.100.20:5060;transport=tcp"], None),
    ("on-net", request("10.0.0.11", "0612345999"), ["sip:39612345999@10.0.1.10"], None),
    ("weights", request("10.0.0.10", "0044201234", call_id="w-1"), None, None),
    ("IPv6 source", request("2001:db8::5", "+39298765"), ["sip:0298765@192.0.2.10:5060"], None),
    ("tel: URI", request("192.0.2.1", "x", ruri="tel:+39612345678"), ["sip:0612345678@10.0.0.10:5060", "sip:0612345678@10.0.0.11:5060"], None),
    ("separators", request("192.0.2.1", "06 1234-5678"), ["sip:0612345678@10.0.0.10:5060", "sip:0612345678@10.0.0.11:5060"], None),
    ("anonymous", request("192.0.2.1", "0612345678", "anonymous"), ["sip:0612345678@10.0.0.10:5060", "sip:0612345678@10.0.0.11:5060"], None),
    ("unknown source", request("203.0.113.1", "0612345678"), None, 403),
    ("non-numeric", request("192.0.2.1", "alice"), None, 404),
    ("no DID", request("192.0.2.1", "+4930123"), None, 404),
]


def test_check_ok_prints_counts(table_file):
    result = c4("check", str(table_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"{table_file}: ok, version ")
    assert "2 tenants, 2 normalization_profiles, 3 ipbxs, 2 carriers, 3 trunks, 4 dids, 4 routes" in result.stdout.decode()


def test_check_bundled_example():
    assert c4("check", str(EXAMPLE_TABLE)).returncode == 0


def test_check_refused_lists_every_error(tmp_path):
    doc = document()
    doc["trunks"][0]["sources"] = ["nope"]
    doc["routes"][0]["trunks"] = ["ghost"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    result = c4("check", str(path))
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith(f"{path}: trunks[carrier-a-1].sources[0]: bad CIDR 'nope'")
    assert lines[1] == f"{path}: routes[0].trunks[0]: unknown trunk 'ghost'"
    assert lines[2] == f"{path}: refused, 2 error(s)"


def test_route_one_request(table_file):
    query = request("192.0.2.1", "0612345678")
    result = c4("route", "--table", str(table_file), json.dumps(query))
    assert result.returncode == 0
    assert result.stdout == encode(decide(compile_table(BASE_DOCUMENT), query)) + b"\n"


def test_route_corpus_on_stdin_agrees_with_the_rules(table_file):
    lines = [json.dumps(query).encode() for _, query, _, _ in CORPUS]
    lines.insert(3, b"{not json")
    lines.insert(5, b'{"source_ip": "192.0.2.1"}')
    result = c4("route", "--table", str(table_file), stdin=b"\n".join(lines) + b"\n")
    assert result.returncode == 0, result.stderr
    replies = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(replies) == len(CORPUS) + 2
    assert replies.pop(5) == {"error": "missing required member 'from_uri'"}
    assert replies.pop(3)["error"].startswith("malformed JSON")
    table = compile_table(BASE_DOCUMENT)
    for (name, query, destinations, code), reply, raw in zip(CORPUS, replies, [
        line for i, line in enumerate(result.stdout.splitlines()) if i not in (3, 5)
    ]):
        assert raw == encode(decide(table, query)), name
        if code is not None:
            assert reply["rtjson"]["code"] == code, name
        elif destinations is not None:
            assert [route["uri"] for route in reply["rtjson"]["routes"]] == destinations, name
        else:
            assert len(reply["rtjson"]["routes"]) == 3, name


def test_route_bad_request_argument_exits_1(table_file):
    result = c4("route", "--table", str(table_file), '{"source_ip": 1}')
    assert result.returncode == 1
    assert orjson.loads(result.stdout) == {"error": "member 'source_ip' must be a string, not int"}


def test_route_with_a_bad_table_exits_1(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"tenants": [{"name": 1}]}')
    result = c4("route", "--table", str(path), "{}")
    assert result.returncode == 1
    assert "tenants[0].name" in result.stderr.decode()


def test_route_never_prints_a_traceback(tmp_path):
    # A template re.sub rejects used to pass the check and fail every call
    # it matched with a traceback; now the table is refused, entity named.
    doc = document()
    doc["normalization_profiles"][0]["to_e164"][0]["replace"] = "0\\q1"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    result = c4("route", "--table", str(path), json.dumps(request("192.0.2.1", "0612345678")))
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert "normalization_profiles[it].to_e164[0].replace: bad replacement" in result.stderr.decode()


def test_route_batch_goes_on_after_an_internal_error(monkeypatch):
    # A bug in the decision (simulated: no document can cause one) gives one
    # error line for that request, and the next request is still answered.
    from c4kemi import cli

    table = compile_table(BASE_DOCUMENT)
    calls = []

    def flaky_decide(table, query):
        calls.append(query)
        if len(calls) == 1:
            raise ZeroDivisionError("boom")
        return decide(table, query)

    monkeypatch.setattr(cli, "decide", flaky_decide)
    query = request("192.0.2.1", "0612345678")
    first = cli.route_line(table, json.dumps(query))
    assert orjson.loads(first) == {"error": "internal error: ZeroDivisionError: boom"}
    assert cli.route_line(table, json.dumps(query)) == encode(decide(table, query))


@pytest.mark.parametrize(
    "text, error",
    [
        ('{"tenants": [{"name": "a"}], "tenants": []}', "not valid JSON: duplicate key 'tenants'"),
        ('{"tenants": [{"name": "a", "name": "b"}]}', "not valid JSON: duplicate key 'name' in the object named 'a'"),
        ('{"tenants": [], "carriers": [], "trunks": [{"name": "t", "carrier": "c", "target": "sip:1.2.3.4", "fr_timer": 100000000000000000000}]}',
         "trunks[t].fr_timer: must be an integer from 1 to 3600000, got 100000000000000000000"),
        ("[" * 100000, "not valid JSON: nested too deeply"),
    ],
)
def test_check_refuses_duplicate_keys_and_huge_integers(tmp_path, text, error):
    path = tmp_path / "t.json"
    path.write_text(text)
    result = c4("check", str(path))
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert f"{path}: {error}" in result.stderr.decode()


def test_check_warns_about_host_name_targets(tmp_path):
    doc = document()
    doc["trunks"][0]["target"] = "sip:sbc.carrier-a.example:5060"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    result = c4("check", str(path))
    assert result.returncode == 0
    assert f"{path}: warning: trunks[carrier-a-1].target: host name 'sbc.carrier-a.example' is looked up by DNS" in result.stderr.decode()
