"""Where c4 health-sync finds the targets to watch: the node's feed, or the routing API (real feed, real aiohttp app).

What it does with them in Kamailio is tested end to end (tests/e2e/test_health.py).
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import pytest

from c4http.app import make_app
from c4http.views import ROUTING_KEY_HEADER
from c4http.web import HEALTH_TARGETS_PATH
from c4kemi.core.health import probe_targets, settings_line
from c4kemi.node.health_sync import api_targets, feed_targets
from c4kemi.node.launch_options import add_arguments
from c4kemi.node.launch_plan import plan
from c4kemi.sources.feed_writer import FeedWriter
from c4kemi.sources.store import FileTableSource
from tables import document

KEY = "0123456789abcdef" * 4


def with_health(doc: dict) -> dict:
    doc["trunks"][0]["health"] = {"probe_interval": 30, "alive_codes": ["2xx", "404"]}
    return doc


def test_settings_line_is_what_the_config_reads():
    assert settings_line(None) == "10;3;2;0;60;10;any"
    assert settings_line({"probe_interval": 0, "down_after": 1, "alive_codes": ["2xx", "404"]}) == "0;1;2;0;60;10;2xx,404"


def test_trunks_sharing_a_target_share_one_entry_with_the_first_ones_settings():
    trunks = [{"name": "t1", "target": "sip:192.0.2.1", "health": {"probe_interval": 5}},
              {"name": "t2", "target": "sip:192.0.2.1", "health": {"probe_interval": 50}}]
    ipbxs = [{"name": "p", "targets": ["sip:192.0.2.1", "sip:192.0.2.2"]}]
    targets = probe_targets(trunks, ipbxs)
    assert list(targets) == ["sip:192.0.2.1", "sip:192.0.2.2"]
    assert targets["sip:192.0.2.1"].users == ("trunk t1", "trunk t2", "ipbx p")
    assert targets["sip:192.0.2.1"].line.startswith("5;")
    assert targets["sip:192.0.2.2"].line == settings_line(None)


def test_the_feed_gives_its_targets_once_per_generation(tmp_path):
    writer = FeedWriter(tmp_path / "feed")
    doc = with_health(document())
    writer.publish(doc)
    read = feed_targets(tmp_path / "feed")

    generation, targets = read(None)
    assert targets == probe_targets(doc["trunks"], doc["ipbxs"])
    assert targets[doc["trunks"][0]["target"]].line.startswith("30;")
    assert read(generation) is None  # nothing new

    doc["trunks"][0]["health"]["probe_interval"] = 60  # a trunk change: a new generation
    writer.publish(doc)
    generation2, targets = read(generation)
    assert generation2 != generation and targets[doc["trunks"][0]["target"]].line.startswith("60;")


def test_no_feed_yet_is_an_error_the_loop_waits_out(tmp_path):
    with pytest.raises(OSError):
        feed_targets(tmp_path / "nothing")(None)


@pytest.fixture
async def served(aiohttp_server, tmp_path):
    path = tmp_path / "table.json"
    path.write_bytes(orjson.dumps(with_health(document())))
    return await aiohttp_server(make_app(FileTableSource(path), routing_key=KEY))


async def test_the_api_gives_the_node_its_targets_with_the_routing_key_only(served, aiohttp_client):
    client = await aiohttp_client(served)
    async with client.get(HEALTH_TARGETS_PATH) as response:
        assert response.status == 401
    async with client.get(HEALTH_TARGETS_PATH, headers={ROUTING_KEY_HEADER: KEY}) as response:
        assert response.status == 200
        etag = response.headers["ETag"]
        body = await response.json()
    doc = with_health(document())
    expected = probe_targets(doc["trunks"], doc["ipbxs"])
    assert {uri: (line, tuple(users)) for uri, line, users in body["targets"]} == {
        t.uri: (t.line, t.users) for t in expected.values()}
    async with client.get(HEALTH_TARGETS_PATH, headers={ROUTING_KEY_HEADER: KEY, "If-None-Match": etag}) as response:
        assert response.status == 304


async def test_health_sync_reads_the_api_as_the_node_does(served):
    base = f"http://127.0.0.1:{served.port}"
    read = api_targets(base, KEY)
    version, targets = await asyncio.to_thread(read, None)
    doc = with_health(document())
    assert targets == probe_targets(doc["trunks"], doc["ipbxs"])
    assert await asyncio.to_thread(read, version) is None  # 304
    with pytest.raises(OSError, match="HTTP 401"):
        await asyncio.to_thread(api_targets(base, "wrong"), None)


@pytest.mark.parametrize("mode, extra, source", [
    ("kemi", ["--table", "TABLE"], "--feed"),
    ("http", ["--serve-api", "--table", "TABLE"], "--feed"),
    ("http", [], "--api"),
])
def test_every_node_runs_health_sync(tmp_path, mode, extra, source):
    table = tmp_path / "t.json"
    table.write_bytes(orjson.dumps(document()))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--mode", mode, "--dry-run", "--secret-file", str(tmp_path / "s"),
                                       *[str(table) if a == "TABLE" else a for a in extra]])
    args.listen = ["udp:127.0.0.1:5060"]
    launch, command = plan(args, tmp_path)
    sync = [h for h in launch.helpers if "health-sync" in h.argv]
    assert len(sync) == 1 and source in sync[0].argv and "--kamailio-rpc" in sync[0].argv
    assert ("C4_ROUTING_KEY" in sync[0].env) == (source == "--api")
    assert "C4_HEALTH_FROM_HOST=\"127.0.0.1:5060\"" in command
