"""Channel limits in the document, the decision's call, the database and the API (docs/routing.md, "Channel limits")."""

from __future__ import annotations

import asyncio

import pytest
from test_api import ADMIN, db
from test_db import with_conn

from c4http.app import make_app
from c4kemi.core.decision import call_json, decide, decide_call, encode
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.table import compile_table
from c4kemi.db.documents import export_document, import_document
from c4kemi.sources.store import FileTableSource
from tables import document, request


def limited() -> dict:
    doc = document()
    doc["tenants"][0]["max_channels"] = 10
    doc["trunks"][0].update(max_channels=2, max_cps=5)
    doc["trunks"][1]["max_channels"] = 0
    return doc


def errors_of(doc) -> list[str]:
    with pytest.raises(DocumentError) as info:
        validate_document(doc)
    return info.value.errors


def test_limits_are_kept_and_absent_ones_stay_absent():
    checked = validate_document(limited())
    assert checked["tenants"] == [{"name": "acme", "max_channels": 10}, {"name": "globex"}]
    trunks = {t["name"]: t for t in checked["trunks"]}
    assert (trunks["carrier-a-1"]["max_channels"], trunks["carrier-a-1"]["max_cps"]) == (2, 5)
    assert trunks["carrier-b-1"]["max_channels"] == 0 and "max_cps" not in trunks["carrier-b-1"]
    assert "max_channels" not in trunks["carrier-b-2"]
    # Without limits the checked document (and so the table version) is what it was.
    assert "max_channels" not in str(validate_document(document()))
    # null is "no limit", as a PATCH sends it to remove one.
    doc = document()
    doc["tenants"][0]["max_channels"] = None
    assert validate_document(doc)["tenants"][0] == {"name": "acme"}


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["tenants"][0].update(max_channels=-1), "tenants[acme].max_channels: must be an integer from 0 to 1000000, got -1"),
        (lambda d: d["tenants"][0].update(max_channels="5"), "tenants[acme].max_channels: must be an integer from 0 to 1000000, got '5'"),
        (lambda d: d["tenants"][0].update(max_cps=5), "tenants[acme].max_cps: unknown field"),
        (lambda d: d["trunks"][0].update(max_channels=True), "trunks[carrier-a-1].max_channels: must be an integer from 0 to 1000000, got True"),
        (lambda d: d["trunks"][0].update(max_channels=1_000_001), "trunks[carrier-a-1].max_channels: must be an integer from 0 to 1000000, got 1000001"),
        (lambda d: d["trunks"][0].update(max_cps=0), "trunks[carrier-a-1].max_cps: must be an integer from 1 to 100000, got 0"),
        (lambda d: d["trunks"][0].update(max_cps=2.5), "trunks[carrier-a-1].max_cps: must be an integer from 1 to 100000, got 2.5"),
        (lambda d: d["ipbxs"][0].update(max_channels=3), "ipbxs[acme-pbx].max_channels: unknown field"),
    ],
)
def test_bad_limits_are_refused_naming_entity_and_field(mutate, expected):
    doc = document()
    mutate(doc)
    assert expected in errors_of(doc)


def test_the_rtjson_is_the_same_bytes_with_or_without_limits():
    plain, with_limits = compile_table(document()), compile_table(limited())
    for query in (request("10.0.0.10", "39298765432"), request("192.0.2.1", "0612345678"), request("10.0.0.10", "4412345")):
        assert encode(decide(with_limits, query)) == encode(decide(plain, query))
        assert decide_call(with_limits, query)[0] == decide(plain, query)


def test_the_call_names_tenant_direction_source_and_one_trunk_per_route():
    table = compile_table(limited())
    _, outbound = decide_call(table, request("10.0.0.10", "0298765432"))
    assert outbound == {
        "tenant": "acme", "direction": "outbound", "tenant_max": 10,
        "source": "acme-pbx", "source_kind": "ipbx", "source_max": -1, "source_cps": -1,
        "calling": "39611111111", "called": "39298765432",
        "routes": [{"trunk": "carrier-a-1", "max": 2, "cps": 5, "name": "carrier-a-1", "uri": "sip:192.0.2.10:5060"},
                   {"trunk": "carrier-b-1", "max": 0, "cps": -1, "name": "carrier-b-1", "uri": "sip:198.51.100.20:5060;transport=tcp"}],
    }  # fmt: skip
    _, inbound = decide_call(table, request("192.0.2.1", "0612345678"))
    assert inbound["direction"] == "inbound" and inbound["tenant"] == "acme"
    assert (inbound["source"], inbound["source_kind"], inbound["source_max"], inbound["source_cps"]) == ("carrier-a-1", "trunk", 2, 5)
    # an IPBX with two targets: two rtjson routes, no trunk
    assert [(r["trunk"], r["max"], r["cps"], r["name"]) for r in inbound["routes"]] == [("", -1, -1, "acme-pbx")] * 2
    assert [r["uri"] for r in inbound["routes"]] == ["sip:10.0.0.10:5060", "sip:10.0.0.11:5060"]
    _, onnet = decide_call(table, request("10.0.1.1", "39612345678"))
    assert (onnet["direction"], onnet["tenant"]) == ("on-net", "acme")
    _, globex = decide_call(table, request("2001:db8::1", "0044123"))
    assert (globex["tenant"], globex["tenant_max"]) == ("globex", -1)
    # refusals count nothing: a 403 has no call, a 404 only what the call record keeps (no routes)
    assert decide_call(table, request("203.0.113.1", "0612345678"))[1] is None
    assert decide_call(table, request("192.0.2.1", "0799999999"))[1] == {
        "tenant": None, "direction": "inbound", "source": "carrier-a-1", "source_kind": "trunk",  # a shared carrier's
        "calling": "39611111111", "called": "39799999999",
    }  # fmt: skip
    # ASCII JSON for the C4-Call header, whatever the names
    assert call_json({"tenant": "zoé"}) == '{"tenant":"zo\\u00e9"}'


def test_limits_survive_import_and_export(pg_dsn):
    checked = validate_document(limited())
    asyncio.run(with_conn(pg_dsn, lambda c: import_document(c, checked)))
    exported, _ = asyncio.run(with_conn(pg_dsn, export_document))
    assert exported["tenants"] == checked["tenants"]
    assert sorted(exported["trunks"], key=lambda t: t["name"]) == sorted(checked["trunks"], key=lambda t: t["name"])
    # a limit removed by the next import is gone
    asyncio.run(with_conn(pg_dsn, lambda c: import_document(c, validate_document(document()))))
    exported, _ = asyncio.run(with_conn(pg_dsn, export_document))
    assert exported["tenants"] == [{"name": "acme"}, {"name": "globex"}]
    assert not any("max_channels" in t for t in exported["trunks"])


async def test_the_api_sets_reads_and_removes_limits(aiohttp_client, pg_dsn, tmp_path):
    from test_api import Api

    await db(pg_dsn, lambda c: import_document(c, validate_document(document())))
    table = tmp_path / "table.json"
    table.write_text("{}")
    api = Api(await aiohttp_client(make_app(FileTableSource(table), dsn=pg_dsn, api_token=ADMIN)))

    status, tenant, _ = await api("PATCH", "/api/v1/tenants/acme", {"max_channels": 30})
    assert (status, tenant) == (200, {"name": "acme", "max_channels": 30})
    status, tenant, _ = await api("POST", "/api/v1/tenants", {"name": "initech", "max_channels": 0})
    assert (status, tenant) == (201, {"name": "initech", "max_channels": 0})
    status, trunk, _ = await api("PATCH", "/api/v1/trunks/carrier-b-2", {"max_channels": 4, "max_cps": 2})
    assert status == 200 and (trunk["max_channels"], trunk["max_cps"]) == (4, 2)
    status, body, _ = await api("PATCH", "/api/v1/trunks/carrier-b-2", {"max_cps": 0})
    assert status == 422 and "trunks[carrier-b-2].max_cps: must be an integer from 1 to 100000" in body["error"]
    status, trunk, _ = await api("PATCH", "/api/v1/trunks/carrier-b-2", {"max_channels": None})
    assert status == 200 and "max_channels" not in trunk and trunk["max_cps"] == 2
    exported, _ = await db(pg_dsn, export_document)
    assert {t["name"]: t for t in exported["tenants"]}["acme"] == {"name": "acme", "max_channels": 30}
    assert {t["name"]: t for t in exported["trunks"]}["carrier-b-2"]["max_cps"] == 2


# --- live counts: the client of Kamailio's JSON-RPC socket ----------------------------------


class FakeKamailio:
    """A jsonrpcs datagram socket answering dlg.profile_get_size from a dict (or an error)."""

    def __init__(self, path, sizes: dict) -> None:
        import socket
        import threading

        self.sizes = sizes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        import json

        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            request = json.loads(data)
            params = tuple(request["params"])
            if params[0] == "nope":
                reply = {"jsonrpc": "2.0", "error": {"code": 404, "message": "Profile not found"}, "id": request["id"]}
            else:
                reply = {"jsonrpc": "2.0", "result": self.sizes.get(params, 0), "id": request["id"]}
            self.sock.sendto(json.dumps(reply).encode(), peer)

    def close(self) -> None:
        self.sock.close()


def test_live_counts_ask_kamailio_for_every_tenant_and_trunk_of_the_table():
    import tempfile
    from pathlib import Path

    from c4kemi.call.channels import KamailioRpc, RpcError, channel_names, live_channels, live_counts

    table = compile_table(limited())
    assert channel_names(table) == (["acme", "globex"], ["carrier-a-1", "carrier-b-1", "carrier-b-2"])
    with tempfile.TemporaryDirectory(prefix="c4t-") as tmp:
        path = Path(tmp) / "rpc.sock"
        fake = FakeKamailio(path, {("c4_tenant",): 3, ("c4_tenant", "acme"): 3, ("c4_trunk", "carrier-a-1"): 2})
        try:
            rpc = KamailioRpc(str(path))
            assert live_counts(rpc, table) == {
                "calls": 3,
                "tenants": {"acme": 3, "globex": 0},
                "trunks": {"carrier-a-1": 2, "carrier-b-1": 0, "carrier-b-2": 0},
            }
            assert live_channels(rpc, table) == {
                "calls": 3,
                "tenants": [{"name": "acme", "calls": 3, "max_channels": 10}, {"name": "globex", "calls": 0}],
                "trunks": [
                    {"name": "carrier-a-1", "calls": 2, "max_channels": 2, "max_cps": 5},
                    {"name": "carrier-b-1", "calls": 0, "max_channels": 0},
                    {"name": "carrier-b-2", "calls": 0},
                ],
            }
            with pytest.raises(RpcError, match="Profile not found"):
                rpc.call("dlg.profile_get_size", "nope", "x")
        finally:
            fake.close()
    with pytest.raises(RpcError, match="Kamailio RPC socket"):
        KamailioRpc(str(path), timeout=0.2).calls("dlg.profile_get_size", [("c4_tenant", "acme")])


async def test_channels_without_kamailio_rpc_is_a_clear_503(aiohttp_client, tmp_path):
    table = tmp_path / "table.json"
    table.write_text("{}")
    client = await aiohttp_client(make_app(FileTableSource(table)))
    async with client.get("/channels") as response:
        assert response.status == 503 and "--kamailio-rpc" in (await response.json())["error"]
    client = await aiohttp_client(make_app(FileTableSource(table), kamailio_rpc=str(tmp_path / "none.sock")))
    async with client.get("/channels") as response:
        assert response.status == 503 and "Kamailio did not give the counts" in (await response.json())["error"]
    async with client.get("/metrics") as response:
        assert "c4_kamailio_up 0.0" in await response.text()
