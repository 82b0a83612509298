"""The routing endpoint answers only a caller holding the node's routing key (real aiohttp app).

Its replies carry trunk passwords; an address filter cannot tell the node's
Kamailio from any other local process, the key can.
"""

from __future__ import annotations

import orjson
import pytest

from c4http.app import make_app
from c4http.views import ROUTING_KEY_HEADER
from c4http.web import RTJSON_PATH
from c4kemi.sources.store import FileTableSource
from tables import document, request

KEY = "0123456789abcdef" * 4
PASSWORD = "p"  # carrier-a-1's in tables.BASE_DOCUMENT


@pytest.fixture
async def keyed(aiohttp_client, tmp_path):
    path = tmp_path / "table.json"
    path.write_bytes(orjson.dumps(document()))
    return await aiohttp_client(make_app(FileTableSource(path), routing_key=KEY))


OUTBOUND = request("10.0.0.10", "0298765432")  # acme-pbx to Italy: carrier-a-1 first, with its auth


@pytest.mark.parametrize("headers", [{}, {ROUTING_KEY_HEADER: ""}, {ROUTING_KEY_HEADER: KEY[:-1]},
                                     {ROUTING_KEY_HEADER: KEY + "0"}, {ROUTING_KEY_HEADER: "é" * 64}])  # fmt: skip
async def test_without_the_key_no_route_and_no_password(keyed, headers):
    async with keyed.post(RTJSON_PATH, data=orjson.dumps(OUTBOUND), headers={"Content-Type": "application/json", **headers}) as response:
        body = await response.read()
        assert response.status == 401, body
        assert orjson.loads(body)["error"].startswith(f"missing or wrong {ROUTING_KEY_HEADER}")
        assert b'"password"' not in body


async def test_with_the_key_the_reply_is_the_decision(keyed):
    async with keyed.post(RTJSON_PATH, data=orjson.dumps(OUTBOUND), headers={"Content-Type": "application/json", ROUTING_KEY_HEADER: KEY}) as response:
        assert response.status == 200
        routes = (await response.json())["rtjson"]["routes"]
        assert routes[0]["auth"]["password"] == PASSWORD
