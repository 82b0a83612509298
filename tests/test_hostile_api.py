"""Hostile input on a real aiohttp server and a real PostgreSQL: never a 500, never a forged log line.

A NUL or another control character, or a lone surrogate, in the decoded
path, a query parameter or a header is a 400 naming the part; so are cursors
and times that decode to what PostgreSQL or Python cannot hold. Every logged
value is escaped, so a ``%0A`` in a URL cannot start a line of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from typing import Any

import orjson
import pytest
from test_api import ADMIN, seeded, table_file  # noqa: F401  (fixtures)
from yarl import URL

from c4http.app import make_app
from c4http.logfmt import logfmt
from c4kemi.sources.store import FileTableSource
from tables import request

AUTH = {"Authorization": f"Bearer {ADMIN}"}
FORGED = "event=api_change item=x by=admin"
FORGED_URL = "%0Aevent=api_change%20item=x%20by=admin"


@pytest.fixture
async def client(aiohttp_client, seeded, table_file):  # noqa: F811
    app = make_app(FileTableSource(table_file), dsn=seeded["dsn"], api_token=ADMIN)

    async def boom(request):
        raise ValueError(f"cannot read {(await request.json())['x']}")  # a bug quoting its input: see the 500 test

    app.router.add_post("/boom", boom)
    return await aiohttp_client(app)


async def call(client, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """``path`` sent as it is written (percent-escapes and all), with the admin token: the status and JSON (or text) reply."""
    headers = {**AUTH, "Content-Type": "application/json"}
    async with client.request(method, URL(path, encoded=True), data=body, headers=headers) as response:
        return response.status, await response.json() if response.content_type == "application/json" else await response.text()


def cursor(value) -> str:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def log_lines(caplog) -> list[str]:
    """Every line the captured records would write, tracebacks included."""
    return caplog.text.splitlines()


# --- bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "error"), [
    (b'{"name": "t\\ud800x"}', "body member name holds U+D800: lone surrogates are not allowed"),
    (b'{"name": "t", "\\udfff": 1}', "a body member name ('\\udfff') holds U+DFFF: lone surrogates are not allowed"),
    (b'{"name": "t", "max_channels": [{"a": "\\ud83d"}]}', "body member max_channels[0].a holds U+D83D: lone surrogates are not allowed"),
])  # fmt: skip
async def test_a_lone_surrogate_in_a_body_is_a_400_naming_the_member(client, body, error):
    status, reply = await call(client, "POST", "/api/v1/tenants", body)
    assert (status, reply) == (400, {"error": error})
    status, reply = await call(client, "PATCH", "/api/v1/tenants/acme", body)
    assert (status, reply) == (400, {"error": error})


# --- one check for the path, the query and the headers ----------------------------


@pytest.mark.parametrize(
    ("method", "path", "part", "char"),
    [
        ("GET", "/api/v1/tenants/a%00b", "the path", "U+0000"),
        ("GET", "/api/v1/dids/39%00", "the path", "U+0000"),
        ("GET", "/api/v1/routes/acme%00/39", "the path", "U+0000"),
        ("DELETE", "/api/v1/tenants/a%0Db", "the path", "U+000D"),
        ("GET", "/api/v1/tenants/a%C2%85", "the path", "U+0085"),  # a C1 control (NEL), in UTF-8
        ("GET", "/api/v1/dids?tenant=a%00", "query parameter 'tenant'", "U+0000"),
        ("GET", "/api/v1/dids?ten%00ant=a", "query parameter name 'ten\\x00ant'", "U+0000"),
        ("GET", "/api/v1/cdrs?number=%00", "query parameter 'number'", "U+0000"),
        ("GET", "/api/v1/cdrs?tenant=acme%0A", "query parameter 'tenant'", "U+000A"),
        ("GET", "/api/v1/openapi.json?x=%1B", "query parameter 'x'", "U+001B"),  # no token needed there
        ("POST", "/kamailio/rtjson%00", "the path", "U+0000"),
        ("POST", "/kamailio/explain?format=text%00", "query parameter 'format'", "U+0000"),
    ],
)
async def test_control_characters_in_path_and_query_are_a_400_naming_the_part(client, method, path, part, char):
    body = orjson.dumps(request("192.0.2.1", "0612345678")) if path.startswith("/kamailio") else None
    status, reply = await call(client, method, path, body)
    assert status == 400, reply
    assert reply["error"].startswith(f"{part} holds {char}:"), reply


async def raw_exchange(client, head: bytes) -> tuple[int, dict]:
    """A request written byte by byte (no client would send these headers)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + b"Host: c4\r\nConnection: close\r\n\r\n")
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_a_header_that_is_not_utf8_is_a_400_naming_it(client):
    status, reply = await raw_exchange(client, b"GET /health HTTP/1.1\r\nX-Forwarded-For: \xff\xfe\r\n")
    assert status == 400 and reply["error"].startswith("header 'X-Forwarded-For' holds U+DCFF:"), reply
    status, _ = await raw_exchange(client, b"GET /health HTTP/1.1\r\nUser-Agent: caf\xc3\xa9\ttab\r\n")
    assert status == 200  # UTF-8 and tabs are fine


# --- what the general check cannot see: decoded cursors and times ------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/tenants?cursor=" + cursor(["a\x00"]),
        "/api/v1/routes?cursor=" + cursor(["acme", "3\x009"]),
        "/api/v1/tenants?cursor=" + cursor(b'["\\ud800"]'),  # a lone surrogate, escaped in the JSON
        "/api/v1/cdrs?cursor=" + cursor(["0001-01-01T00:00:00+14:00", "0" * 32]),  # before year 1 in UTC
        "/api/v1/cdrs?cursor=" + cursor(["9999-12-31T23:00:00-14:00", "0" * 32]),  # after 9999 in UTC
        "/api/v1/cdrs?cursor=" + cursor(["2026-11-26T17:00:00+00:00", 5]),
        "/api/v1/cdrs?cursor=" + cursor(["2026-11-26T17:00:00", "0" * 32]),  # no time zone: not one of ours
        "/api/v1/cdrs?cursor=" + cursor(["2026-11-26T17:00:00+00:00\x00", "0" * 32]),
        "/api/v1/cdrs?cursor=" + cursor([None, "0" * 32]),
    ],
)
async def test_cursors_that_decode_to_what_the_database_cannot_take_are_a_400(client, path):
    status, reply = await call(client, "GET", path)
    assert status == 400 and reply["error"].startswith("bad cursor"), reply


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=0001-01-01T00:00:00%2B14:00", "since"),  # valid, but before year 1 once in UTC
        ("until=9999-12-31T23:59:59-14:00", "until"),  # after 9999 once in UTC
        ("since=2026-11-26T17:00:00%2B24:00", "since"),  # no such offset
        ("until=10000-01-01T00:00:00Z", "until"),
    ],
)
async def test_times_out_of_range_are_a_400_naming_the_field(client, query, field):
    status, reply = await call(client, "GET", f"/api/v1/cdrs?{query}")
    assert status == 400 and reply["error"].startswith(f"{field} must be an ISO 8601 time"), reply


async def test_the_extreme_times_in_range_are_fine(client):
    status, reply = await call(client, "GET", "/api/v1/cdrs?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59.999999%2B00:00")
    assert status == 200 and reply == {"items": [], "next": None}
    status, reply = await call(client, "GET", "/api/v1/cdrs?since=0001-01-01T00:00:00-14:00")  # later in UTC: fine
    assert status == 200, reply


# --- the routing endpoints ----------------------------------------------------------


@pytest.fixture
async def routing(aiohttp_client, table_file):  # noqa: F811
    return await aiohttp_client(make_app(FileTableSource(table_file)))


@pytest.mark.parametrize("path", ["/kamailio/rtjson", "/kamailio/explain", "/kamailio/explain?format=text"])
async def test_routing_queries_with_control_characters_are_answered_not_500(routing, caplog, path):
    for member in ("source_ip", "ruri", "from_uri", "to_uri", "call_id", "from_name", "event"):
        for value in ("a\x00b", f"x\n{FORGED}", "\x1b[2J", "\u2028", "\U0010ffff"):
            query = {**request("203.0.113.9", "0612345678"), member: value}  # an unknown source: a logged refusal
            with caplog.at_level(logging.INFO, logger="c4.http"):
                status, _ = await call(routing, "POST", path, orjson.dumps(query))
            assert status in (200, 400), (member, value)
    assert not any(line.startswith("event=api_change") for line in log_lines(caplog))
    if path == "/kamailio/rtjson":  # the routing endpoint logs its refusals, values and all
        assert any(r.getMessage().startswith("event=refusal") for r in caplog.records)


async def test_a_routing_query_with_a_lone_surrogate_is_malformed_json(routing):
    status, reply = await call(routing, "POST", "/kamailio/rtjson", b'{"call_id": "\\ud800"}')
    assert status == 400 and reply["error"].startswith("malformed JSON"), reply


# --- the log -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/tenants/x{FORGED_URL}",
        f"/api/v1/tenants/x{FORGED_URL}%00",  # the NUL made a 500, whose log line quoted the path raw
        f"/api/v1/dids?tenant=x{FORGED_URL}%00",
        f"/api/v1/dids?x{FORGED_URL}=1",
        f"/kamailio/rtjson{FORGED_URL}",
    ],
)
async def test_a_newline_in_a_url_forges_no_log_line(client, caplog, path):
    with caplog.at_level(logging.INFO):
        status, _ = await call(client, "GET", path)
    lines = log_lines(caplog)
    assert not any(line.lstrip().startswith("event=api_change") for line in lines), lines
    assert status == 400
    refusal = [line for line in lines if "event=bad_request" in line and "reason=bad_text" in line]
    assert len(refusal) == 1, lines  # the refusal is logged, on one line
    if FORGED_URL in path.partition("?")[0]:
        assert "path=\"/" in refusal[0] and "\\nevent=api_change item=x by=admin" in refusal[0]  # quoted, escaped


async def test_an_internal_error_is_one_escaped_line(client, caplog):
    """A bug whose exception quotes the request: the 500's log line, traceback included, stays one line."""
    with caplog.at_level(logging.INFO, logger="c4.http"):
        async with client.post("/boom", json={"x": f"y\n{FORGED}\r\n"}) as response:
            assert response.status == 500
            assert await response.json() == {"error": "internal error"}
    messages = [r.getMessage() for r in caplog.records if r.name == "c4.http"]
    assert len(messages) == 1 and messages[0].startswith("event=internal_error method=POST path=/boom "), messages
    assert "\n" not in messages[0] and "\r" not in messages[0]
    fields = parse_logfmt(messages[0])
    assert fields["error"] == f"ValueError: cannot read y\n{FORGED}\r\n"
    assert fields["traceback"].startswith("Traceback (most recent call last):\n")


# --- logfmt ----------------------------------------------------------------------------

PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^" ]+)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """The pairs of a line, quoted values read as the JSON strings they are; the line must be only pairs."""
    pairs = PAIR.findall(line)
    assert " ".join(f"{key}={value}" for key, value in pairs) == line, line
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


HOSTILE_VALUES = [
    "sip:alice@example.com",
    "No Route",
    f"x\n{FORGED}",
    f"x\r{FORGED}",
    f'x" {FORGED} y="',
    "back\\slash\\",
    "nul\x00 esc\x1b[2J del\x7f nel\x85 ls\u2028 ps\u2029",
    "lone \ud800 surrogate \udcff",
    "",
    "tab\there",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_logfmt_values_cannot_break_the_line_or_fake_a_pair(value):
    line = logfmt(event="refusal", value=value, code=404)
    assert line.splitlines() == [line]  # str.splitlines knows every line break, U+2028 and NEL included
    assert line.isprintable()  # no control character, no lone surrogate: all escaped
    assert parse_logfmt(line) == {"event": "refusal", "value": value, "code": "404"}
    line.encode("utf-8")  # a handler can write it


def test_logfmt_keeps_plain_values_bare_and_quotes_as_before():
    line = logfmt(event="refusal", reason="No Route", ruri='sip:"x"@h\r\n', ip="2001:db8::5", item="trunks[t-1]", skipped=None, code=404)
    assert line == 'event=refusal reason="No Route" ruri="sip:\\"x\\"@h\\r\\n" ip=2001:db8::5 item=trunks[t-1] code=404'
