"""POST /kamailio/explain on the real aiohttp app."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from c4http.app import make_app
from c4http.web import EXPLAIN_PATH, RTJSON_PATH
from c4kemi.core.decision import decide, encode
from c4kemi.core.explain import MASK, explain
from c4kemi.core.table import load_table
from c4kemi.sources.store import FileTableSource
from tables import document, request

JSON_HEADERS = {"Content-Type": "application/json"}
SECRET = "s3cret-Pa55"


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    doc = document()
    doc["trunks"][0]["auth"]["password"] = SECRET
    path = tmp_path / "table.json"
    path.write_bytes(orjson.dumps(doc))
    return path


@pytest.fixture
async def client(aiohttp_client, table_path):
    return await aiohttp_client(make_app(FileTableSource(table_path, check_interval=0), max_body=4096))


async def post_explain(client, query, path=EXPLAIN_PATH, headers=JSON_HEADERS):
    body = query if isinstance(query, bytes) else orjson.dumps(query)
    return await client.post(path, data=body, headers=headers)


async def test_explain_json_masks_the_password(client, table_path):
    query = request("10.0.0.10", "0298765432")
    response = await post_explain(client, query)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.read()
    assert SECRET.encode() not in body
    got = orjson.loads(body)
    table = load_table(table_path)
    expected = decide(table, query)
    expected["rtjson"]["routes"][0]["auth"]["password"] = MASK
    assert got["reply"] == expected  # decide's reply, the password masked
    assert got["consistent"] is True
    assert [t["trunk"] for t in got["trunk_order"]] == ["carrier-a-1", "carrier-b-1"]
    without_reply = {k: v for k, v in got.items() if k != "reply"}
    assert without_reply == {k: v for k, v in orjson.loads(orjson.dumps(explain(table, query))).items() if k != "reply"}


async def test_explain_text(client):
    response = await post_explain(client, request("10.0.0.10", "0298765432"), path=EXPLAIN_PATH + "?format=text")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert "route     tenant acme, prefix '39'" in text
    assert SECRET not in text


@pytest.mark.parametrize("query, code", [(request("203.0.113.7", "0612345678"), 403), (request("192.0.2.1", "+4930123"), 404)])
async def test_explain_refusals(client, table_path, query, code):
    response = await post_explain(client, query)
    assert response.status == 200
    got = await response.json()
    assert got["outcome"]["code"] == code and got["outcome"]["why"]
    assert got["reply"] == decide(load_table(table_path), query)


@pytest.mark.parametrize(
    "body, headers, status, text",
    [
        (b"{", JSON_HEADERS, 400, "malformed JSON"),
        (b"[]", JSON_HEADERS, 400, "JSON object, not list"),
        (b'{"source_ip": "192.0.2.1"}', JSON_HEADERS, 400, "'from_uri'"),
        (orjson.dumps(dict(request("192.0.2.1", "1"), source_ip="nope")), JSON_HEADERS, 400, "'source_ip'"),
        (orjson.dumps(request("192.0.2.1", "1")), {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"x": "' + b"y" * 5000 + b'"}', JSON_HEADERS, 413, "exceeds the limit of 4096 bytes"),
    ],
)
async def test_explain_bad_input_is_a_json_error(client, body, headers, status, text):
    response = await client.post(EXPLAIN_PATH, data=body, headers=headers)
    assert response.status == status
    assert response.content_type == "application/json"
    assert text in (await response.json())["error"]


async def test_unknown_format_is_400(client):
    response = await post_explain(client, request("192.0.2.1", "1"), path=EXPLAIN_PATH + "?format=xml")
    assert response.status == 400
    assert "format" in (await response.json())["error"]


async def test_explain_is_not_counted_as_routing_and_rtjson_still_serves(client, table_path, caplog):
    async def samples():
        text = await (await client.get("/metrics")).text()
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("c4_routing_")}

    before = await samples()
    with caplog.at_level(logging.INFO, logger="c4.http"):
        await post_explain(client, request("203.0.113.7", "0612345678"))
        await post_explain(client, b"{")
    assert await samples() == before
    assert [r for r in caplog.records if r.name == "c4.http"] == []
    query = request("10.0.0.10", "0298765432")
    response = await client.post(RTJSON_PATH, data=orjson.dumps(query), headers=JSON_HEADERS)
    assert await response.read() == encode(decide(load_table(table_path), query))  # the routing reply keeps its password


async def test_get_explain_is_405(client):
    response = await client.get(EXPLAIN_PATH)
    assert response.status == 405
    assert "use POST" in (await response.json())["error"]
