"""The c4http service: the real aiohttp app on real table files, and `c4 serve`.

Every reply is checked against ``encode(decide(table, query))``, the bytes
the CLI dry run and KEMI mode produce, so the service cannot drift from them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from ports import free_tcp_port
from prometheus_client.parser import text_string_to_metric_families

from c4http.app import make_app
from c4http.logfmt import logfmt
from c4http.web import RTJSON_PATH
from c4kemi.core.decision import decide, encode
from c4kemi.core.table import load_table
from c4kemi.sources.store import FileTableSource
from tables import document, request

JSON_HEADERS = {"Content-Type": "application/json"}

# name -> (query, expected outcome): "inbound"/"outbound" (routes), or the refusal code.
CORPUS = {
    "inbound-did": (request("192.0.2.1", "0612345678", "0033123456789"), "inbound"),
    "inbound-longer-did": (request("192.0.2.5", "0612345699"), "inbound"),
    "inbound-did-regex": (request("192.0.2.1", "0701234"), "inbound"),
    "inbound-shared-carrier-other-tenant": (request("192.0.2.1", "+442012345"), "inbound"),
    "inbound-no-did": (request("192.0.2.1", "0699999999"), 404),
    "inbound-anonymous": (request("198.51.100.20", "+39612345678", "anonymous"), "inbound"),
    "outbound-national": (request("10.0.0.10", "0287654321"), "outbound"),
    "outbound-weighted": (request("10.0.0.11", "00441234567", call_id="w-1@host"), "outbound"),
    "outbound-weighted-other-call": (request("10.0.0.11", "00441234567", call_id="w-2@host"), "outbound"),
    "outbound-on-net-did": (request("10.0.1.7", "39612345678"), "outbound"),
    "outbound-default-route": (request("10.0.1.7", "15551234567"), "outbound"),
    "outbound-ipv6": (request("2001:db8::5", "33123456789"), "outbound"),
    "outbound-tel-uri": (request("10.0.0.10", "x", ruri="tel:06-1234-5678", to_uri="tel:0612345678"), "outbound"),
    "outbound-not-a-number": (request("10.0.0.10", "alice"), 404),
    "outbound-no-route": (request("2001:db8::5", "alice"), 404),
    "unknown-source-v4": (request("203.0.113.9", "0612345678"), 403),
    "unknown-source-v6": (request("2001:db8:1::1", "0612345678"), 403),
    "minimal-members": ({"source_ip": "192.0.2.1", "from_uri": "sip:1@a", "to_uri": "sip:0612345678@b"}, "inbound"),
}


def write_table(path: Path, doc: dict | bytes) -> Path:
    """Replace the table file atomically, as a deploy would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(doc if isinstance(doc, bytes) else orjson.dumps(doc))
    os.replace(tmp, path)
    return path


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    return write_table(tmp_path / "table.json", document())


@pytest.fixture
def source(table_path: Path) -> FileTableSource:
    # check_interval=0: every request re-stats the file, so a rewrite shows
    # on the very next request without waiting.
    return FileTableSource(table_path, check_interval=0)


@pytest.fixture
async def client(aiohttp_client, source):
    return await aiohttp_client(make_app(source, max_body=4096))


async def post(client, query, headers=JSON_HEADERS):
    body = query if isinstance(query, bytes) else orjson.dumps(query)
    return await client.post(RTJSON_PATH, data=body, headers=headers)


async def metric_samples(client) -> dict:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


GOOD = CORPUS["inbound-did"][0]


async def assert_serves_good_request(client, table_path: Path) -> None:
    response = await post(client, GOOD)
    assert response.status == 200
    assert await response.read() == encode(decide(load_table(table_path), GOOD))


# --- replies ---------------------------------------------------------------


def test_corpus_covers_every_outcome(table_path):
    table = load_table(table_path)
    seen = {}
    for name, (query, expected) in CORPUS.items():
        rt = decide(table, query)["rtjson"]
        if not rt["success"]:
            got = rt["code"]
        else:
            got = {"trunk": "inbound", "ipbx": "outbound"}[table.sources.lookup(query["source_ip"]).kind]
        assert got == expected, name
        seen.setdefault(expected, []).append(name)
    assert set(seen) == {"inbound", "outbound", 403, 404}
    # inbound goes to IPBX targets, outbound (off-net) to trunks
    inbound = decide(table, CORPUS["inbound-did"][0])["rtjson"]["routes"]
    assert [r["dst_uri"] for r in inbound] == ["sip:10.0.0.10:5060", "sip:10.0.0.11:5060"]
    outbound = decide(table, CORPUS["outbound-national"][0])["rtjson"]["routes"]
    assert [r["dst_uri"] for r in outbound] == ["sip:192.0.2.10:5060", "sip:198.51.100.20:5060;transport=tcp"]


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_reply_is_byte_identical_to_the_core(client, table_path, name):
    query, _ = CORPUS[name]
    response = await post(client, query)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.read()
    assert body == encode(decide(load_table(table_path), query))


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON"])
async def test_json_content_type_variants_are_accepted(client, table_path, content_type):
    response = await post(client, GOOD, headers={"Content-Type": content_type})
    assert response.status == 200
    assert await response.read() == encode(decide(load_table(table_path), GOOD))


async def test_extra_members_are_ignored(client, table_path):
    query = dict(GOOD, unknown={"nested": [1, 2]}, source_port=None)
    response = await post(client, query)
    assert response.status == 200
    assert await response.read() == encode(decide(load_table(table_path), GOOD))


async def test_many_concurrent_requests_each_get_their_own_reply(client, table_path):
    table = load_table(table_path)
    names = sorted(CORPUS) * 5
    responses = await asyncio.gather(*(post(client, CORPUS[name][0]) for name in names))
    for name, response in zip(names, responses):
        assert await response.read() == encode(decide(table, CORPUS[name][0])), name


# --- bad input ---------------------------------------------------------------

OVERSIZED = orjson.dumps(dict(GOOD, padding="x" * 5000))
BAD_INPUT = {
    # name: (body, headers, status, reason label, text the error must contain)
    "malformed-json": (b'{"source_ip": ', JSON_HEADERS, 400, "malformed_json", "malformed JSON"),
    "empty-body": (b"", JSON_HEADERS, 400, "malformed_json", "malformed JSON"),
    "invalid-utf8": (b'{"source_ip": "\xff"}', JSON_HEADERS, 400, "malformed_json", "malformed JSON"),
    "array": (b"[1, 2]", JSON_HEADERS, 400, "not_object", "JSON object, not list"),
    "string": (b'"sip:x@y"', JSON_HEADERS, 400, "not_object", "JSON object, not str"),
    "null": (b"null", JSON_HEADERS, 400, "not_object", "JSON object, not NoneType"),
    "missing-source-ip": (orjson.dumps({k: v for k, v in GOOD.items() if k != "source_ip"}), JSON_HEADERS, 400, "invalid_request", "'source_ip'"),
    "missing-from-uri": (orjson.dumps({k: v for k, v in GOOD.items() if k != "from_uri"}), JSON_HEADERS, 400, "invalid_request", "'from_uri'"),
    "null-to-uri": (orjson.dumps(dict(GOOD, to_uri=None)), JSON_HEADERS, 400, "invalid_request", "'to_uri'"),
    "mistyped-source-ip": (orjson.dumps(dict(GOOD, source_ip=1921682)), JSON_HEADERS, 400, "invalid_request", "'source_ip' must be a string"),
    "mistyped-call-id": (orjson.dumps(dict(GOOD, call_id=["a"])), JSON_HEADERS, 400, "invalid_request", "'call_id' must be a string"),
    "not-an-ip": (orjson.dumps(dict(GOOD, source_ip="gateway.example")), JSON_HEADERS, 400, "invalid_request", "'source_ip'"),
    "oversized": (OVERSIZED, JSON_HEADERS, 413, "body_too_large", f"request body of {len(OVERSIZED)} bytes exceeds the limit of 4096 bytes"),
    "text-plain": (orjson.dumps(GOOD), {"Content-Type": "text/plain"}, 415, "unsupported_media_type", "text/plain"),
    "form": (orjson.dumps(GOOD), {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "application/json"),
    "latin1-charset": (orjson.dumps(GOOD), {"Content-Type": "application/json; charset=latin-1"}, 415, "unsupported_media_type", "UTF-8"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
async def test_bad_input_is_a_json_4xx_and_service_keeps_serving(client, table_path, name, caplog):
    body, headers, status, reason, text = BAD_INPUT[name]
    before = await metric_samples(client)
    with caplog.at_level(logging.INFO, logger="c4.http"):
        response = await client.post(RTJSON_PATH, data=body, headers=headers)
    assert response.status == status
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert text in error
    after = await metric_samples(client)
    key = ("c4_routing_bad_requests_total", (("reason", reason),))
    assert after[key] == before[key] + 1
    assert after[("c4_routing_decisions_total", ())] == before[("c4_routing_decisions_total", ())]
    lines = [r.getMessage() for r in caplog.records if r.name == "c4.http"]
    assert any(line.startswith("event=bad_request") and f"status={status}" in line and f"reason={reason}" in line for line in lines), lines
    await assert_serves_good_request(client, table_path)


async def test_missing_content_type_is_read_as_json(client, table_path):
    response = await client.post(RTJSON_PATH, data=orjson.dumps(GOOD), skip_auto_headers=["Content-Type"])
    assert response.status == 200
    assert await response.read() == encode(decide(load_table(table_path), GOOD))


async def test_oversized_chunked_body_is_413(client, table_path):
    """No Content-Length to check up front: the limit applies while reading."""

    async def chunks():
        yield b'{"padding": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = await client.post(RTJSON_PATH, data=chunks(), headers=JSON_HEADERS)
    assert response.status == 413
    assert "exceeds the limit of 4096 bytes" in (await response.json())["error"]
    await assert_serves_good_request(client, table_path)


async def test_body_at_the_limit_is_accepted(client, table_path):
    body = orjson.dumps(GOOD)
    query = dict(GOOD, padding="x" * (4096 - len(body) - len(',"padding":""')))
    data = orjson.dumps(query)
    assert len(data) == 4096
    response = await post(client, data)
    assert response.status == 200
    assert await response.read() == encode(decide(load_table(table_path), query))


@pytest.mark.parametrize(
    "method, path, status, text",
    [
        ("GET", "/nowhere", 404, "no such resource: /nowhere"),
        ("POST", "/kamailio", 404, "no such resource: /kamailio"),
        ("GET", RTJSON_PATH, 405, "method GET not allowed on /kamailio/rtjson; use POST"),
        ("PUT", RTJSON_PATH, 405, "use POST"),
        ("POST", "/health", 405, "method POST not allowed on /health"),
        ("DELETE", "/metrics", 405, "not allowed on /metrics"),
    ],
)
async def test_unknown_path_and_wrong_method_are_json(client, table_path, method, path, status, text):
    response = await client.request(method, path, data=b"{}", headers=JSON_HEADERS)
    assert response.status == status
    assert response.content_type == "application/json"
    assert text in (await response.json())["error"]
    if status == 405:
        assert response.headers["Allow"]
    await assert_serves_good_request(client, table_path)


# --- logging -----------------------------------------------------------------


@pytest.mark.parametrize("name, code", [("unknown-source-v4", 403), ("inbound-no-did", 404)])
async def test_refusal_logs_one_structured_line(client, name, code, caplog):
    query, _ = CORPUS[name]
    with caplog.at_level(logging.INFO, logger="c4.http"):
        response = await post(client, query)
    assert (await response.json())["rtjson"]["code"] == code
    lines = [r.getMessage() for r in caplog.records if r.name == "c4.http"]
    assert len(lines) == 1, lines
    fields = dict(pair.split("=", 1) for pair in lines[0].split(" ") if "=" in pair)
    assert fields["event"] == "refusal"
    assert fields["code"] == str(code)
    assert fields["source_ip"] == query["source_ip"]
    assert fields["call_id"] == query["call_id"]


async def test_routed_call_logs_nothing(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="c4.http"):
        response = await post(client, GOOD)
    assert response.status == 200
    assert [r for r in caplog.records if r.name == "c4.http"] == []


def test_logfmt_quotes_what_is_not_a_plain_token():
    line = logfmt(event="refusal", reason="No Route", ruri='sip:"x"@h\r\n', ip="2001:db8::5", skipped=None, code=404)
    assert line == 'event=refusal reason="No Route" ruri="sip:\\"x\\"@h\\r\\n" ip=2001:db8::5 code=404'


# --- health and metrics ----------------------------------------------------------


async def test_health_reports_table_and_uptime(client, table_path):
    response = await client.get("/health")
    assert response.status == 200
    health = await response.json()
    table = load_table(table_path)
    assert health["status"] == "ok"
    assert health["table"]["version"] == table.version
    assert health["table"]["counts"] == {name: len(items) for name, items in document().items()}
    assert health["uptime_seconds"] >= 0
    assert health["reloads"] == 0 and health["failed_reloads"] == 0


async def test_metrics_count_requests_refusals_and_latency(client, table_path):
    before = await metric_samples(client)
    for name in ("inbound-did", "outbound-national", "unknown-source-v4", "unknown-source-v6", "inbound-no-did"):
        await post(client, CORPUS[name][0])
    await post(client, b"{", JSON_HEADERS)
    after = await metric_samples(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert delta("c4_routing_requests_total") == 6
    assert delta("c4_routing_decisions_total") == 5
    assert delta("c4_routing_refusals_total", code="403") == 2
    assert delta("c4_routing_refusals_total", code="404") == 1
    assert delta("c4_routing_bad_requests_total", reason="malformed_json") == 1
    assert delta("c4_decision_seconds_count") == 5
    assert delta("c4_decision_seconds_bucket", le="+Inf") == 5
    assert after[("c4_decision_seconds_sum", ())] > before[("c4_decision_seconds_sum", ())]
    version = load_table(table_path).version
    assert after[("c4_table_info", (("version", version),))] == 1
    assert after[("c4_table_entities", (("collection", "dids"),))] == len(document()["dids"])
    assert after[("c4_table_reloads_total", ())] == 0
    assert after[("c4_table_failed_reloads_total", ())] == 0


async def test_each_app_has_its_own_registry(aiohttp_client, source):
    first = await aiohttp_client(make_app(source))
    second = await aiohttp_client(make_app(source))
    await post(first, GOOD)
    assert (await metric_samples(first))[("c4_routing_requests_total", ())] == 1
    assert (await metric_samples(second))[("c4_routing_requests_total", ())] == 0


# --- live reload ---------------------------------------------------------------


def rerouted_document() -> dict:
    """The base document with the 39612345 DID moved to another IPBX."""
    doc = document()
    doc["dids"][0]["ipbx"] = "acme-branch"
    return doc


async def test_rewritten_table_routes_the_next_request_differently(client, table_path):
    old_version = load_table(table_path).version
    first = await (await post(client, GOOD)).read()
    assert orjson.loads(first)["rtjson"]["routes"][0]["dst_uri"] == "sip:10.0.0.10:5060"

    write_table(table_path, rerouted_document())
    second = await (await post(client, GOOD)).read()
    new_table = load_table(table_path)
    assert second == encode(decide(new_table, GOOD))
    assert orjson.loads(second)["rtjson"]["routes"][0]["dst_uri"] == "sip:10.0.1.10"

    health = await (await client.get("/health")).json()
    assert health["reloads"] == 1
    assert health["table"]["version"] == new_table.version != old_version
    samples = await metric_samples(client)
    assert samples[("c4_table_info", (("version", new_table.version),))] == 1
    assert samples[("c4_table_reloads_total", ())] == 1


@pytest.mark.parametrize(
    "broken",
    [
        b'{"tenants": [',  # not JSON
        orjson.dumps(document(dids=[{"tenant": "acme", "prefix": "39", "ipbx": "no-such-pbx"}])),  # dangling reference
        orjson.dumps(dict(document(), surprise=[])),  # unknown key
    ],
    ids=["not-json", "dangling-reference", "unknown-key"],
)
async def test_broken_table_is_refused_and_old_table_keeps_serving(client, table_path, broken, caplog):
    good_table = load_table(table_path)
    expected = encode(decide(good_table, GOOD))
    with caplog.at_level(logging.ERROR, logger="c4.store"):
        write_table(table_path, broken)
        response = await post(client, GOOD)
    assert response.status == 200
    assert await response.read() == expected
    assert any("refused" in r.getMessage() for r in caplog.records if r.name == "c4.store")
    health = await (await client.get("/health")).json()
    assert health["table"]["version"] == good_table.version
    assert health["failed_reloads"] == 1 and health["reloads"] == 0
    assert (await metric_samples(client))[("c4_table_failed_reloads_total", ())] == 1

    # a fixed document is picked up again
    write_table(table_path, rerouted_document())
    response = await post(client, GOOD)
    assert await response.read() == encode(decide(load_table(table_path), GOOD))
    assert (await (await client.get("/health")).json())["reloads"] == 1


async def wait_for(predicate, what: str, limit: float = 20.0) -> None:
    """Poll until predicate() holds; the limit only stops a hung test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def test_refresh_task_reloads_without_traffic(aiohttp_client, table_path):
    # As `c4 serve` runs it: the request path never stats, only the task reloads.
    source = FileTableSource(table_path, check_interval=math.inf)
    client = await aiohttp_client(make_app(source, refresh_interval=0.05))
    assert await (await post(client, GOOD)).read() == encode(decide(load_table(table_path), GOOD))

    write_table(table_path, b"not a table")
    await wait_for(lambda: source.counters.failed_reloads == 1, "the broken table to be refused")
    assert await (await post(client, GOOD)).read() == encode(decide(source.current(), GOOD))
    assert orjson.loads(await (await post(client, GOOD)).read())["rtjson"]["routes"][0]["dst_uri"] == "sip:10.0.0.10:5060"

    write_table(table_path, rerouted_document())
    await wait_for(lambda: source.counters.reloads == 1, "the new table to be loaded")
    body = await (await post(client, GOOD)).read()
    assert orjson.loads(body)["rtjson"]["routes"][0]["dst_uri"] == "sip:10.0.1.10"
    assert body == encode(decide(load_table(table_path), GOOD))


# --- the real `c4 serve` ------------------------------------------------------------


def c4_command() -> list[str]:
    script = Path(sys.executable).parent / "c4"
    return [str(script)] if script.exists() else [sys.executable, "-m", "c4kemi.cli"]


async def test_c4_serve_answers_over_real_http_and_stops_on_sigterm(table_path, tmp_path):
    port = free_tcp_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*c4_command(), "serve", "--table", str(table_path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"{base}/health") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not await healthy():
                assert process.poll() is None, log_path.read_text()
                assert loop.time() < deadline, "c4 serve did not come up: " + log_path.read_text()
                await asyncio.sleep(0.1)

            table = load_table(table_path)
            for name in ("inbound-did", "outbound-weighted", "unknown-source-v4", "inbound-no-did"):
                query = CORPUS[name][0]
                async with session.post(f"{base}{RTJSON_PATH}", data=orjson.dumps(query), headers=JSON_HEADERS) as response:
                    assert response.status == 200
                    body = await response.read()
                assert body == encode(decide(table, query)), name
                cli = subprocess.run(
                    [*c4_command(), "route", "--table", str(table_path), orjson.dumps(query).decode()],
                    capture_output=True,
                    check=True,
                )
                assert cli.stdout == body + b"\n", name  # the same bytes as the dry run

            async with session.post(f"{base}{RTJSON_PATH}", data=b"[]", headers=JSON_HEADERS) as response:
                assert response.status == 400
                assert "JSON object" in (await response.json())["error"]

            # the server's own refresh task picks up a rewritten file, with no traffic needed
            write_table(table_path, rerouted_document())
            expected = encode(decide(load_table(table_path), GOOD))
            deadline = loop.time() + 30
            while True:
                async with session.get(f"{base}/health") as response:
                    if (await response.json())["reloads"] == 1:
                        break
                assert loop.time() < deadline, "c4 serve did not reload: " + log_path.read_text()
                await asyncio.sleep(0.1)
            async with session.post(f"{base}{RTJSON_PATH}", data=orjson.dumps(GOOD), headers=JSON_HEADERS) as response:
                assert await response.read() == expected
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    output = log_path.read_text()
    assert returncode == 0, output
    assert "event=refusal code=403" in output
    assert "event=stopped" in output
    assert "aiohttp.access" not in output  # access log off by default


def test_c4_serve_refuses_to_start_on_a_bad_table(tmp_path):
    bad = write_table(tmp_path / "bad.json", orjson.dumps(document(dids=[{"tenant": "nobody", "prefix": "1", "ipbx": "acme-pbx"}])))
    result = subprocess.run([*c4_command(), "serve", "--table", str(bad), "--port", str(free_tcp_port())], capture_output=True, timeout=60)
    assert result.returncode == 1
    assert b"refusing to start" in result.stderr
    assert b"nobody" in result.stderr  # the error names the problem


def children(pid: int) -> list[tuple[int, str]]:
    """The child processes of PID with their command lines (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[1]) == pid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return found


def feed_writers(pid: int) -> list[tuple[int, str]]:
    return [(child, cmd) for child, cmd in children(pid) if " feed --table " in cmd]


async def test_c4_serve_takes_a_document_through_its_own_feed_writer_and_restarts_it(table_path, tmp_path):
    """c4 serve --table: changes arrive as change sets from a c4 feed it runs; a writer that dies is started again."""
    port = free_tcp_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([*c4_command(), "serve", "--table", str(table_path), "--port", str(port)],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async def health() -> dict | None:
                try:
                    async with session.get(f"{base}/health") as response:
                        return await response.json()
                except aiohttp.ClientConnectionError:
                    return None

            await wait_for(lambda: process.poll() is None and bool(feed_writers(process.pid)), "c4 feed under c4 serve")
            ((writer, command),) = feed_writers(process.pid)
            feed_dir = Path(command.split(" --out ")[1].split()[0])
            assert feed_dir.is_dir() and (feed_dir.stat().st_mode & 0o077) == 0  # private: it holds trunk passwords
            deadline = asyncio.get_running_loop().time() + 30
            while await health() is None:
                assert process.poll() is None and asyncio.get_running_loop().time() < deadline, log_path.read_text()
                await asyncio.sleep(0.1)

            os.kill(writer, signal.SIGKILL)
            await wait_for(lambda: [pid for pid, _ in feed_writers(process.pid) if pid != writer], "the writer started again")
            ((restarted, _),) = feed_writers(process.pid)
            write_table(table_path, rerouted_document())
            expected = encode(decide(load_table(table_path), GOOD))
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                async with session.post(f"{base}{RTJSON_PATH}", data=orjson.dumps(GOOD), headers=JSON_HEADERS) as response:
                    if await response.read() == expected:
                        break
                assert asyncio.get_running_loop().time() < deadline, "the change never arrived: " + log_path.read_text()
                await asyncio.sleep(0.1)
            assert (await health())["table"]["version"] == load_table(table_path).version
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    output = log_path.read_text()
    assert returncode == 0, output
    assert "event=feed_writer_exited" in output and "restarts=1" in output
    assert not feed_dir.exists(), "the feed directory is removed with the service"
    assert not Path(f"/proc/{restarted}").exists(), "the writer is stopped with the service"
