"""Channel limits in the document, the decision's call, the database and the API (docs/routing.md, "Channel limits")."""

from __future__ import annotations

import asyncio

import pytest
from test_api import ADMIN, db
from test_db import with_conn

from c4http.app import make_app
from c4kemi.db.documents import export_document, import_document
from c4kemi.decision import call_json, decide, decide_call, encode
from c4kemi.document import DocumentError, validate_document
from c4kemi.store import FileTableSource
from c4kemi.table import compile_table
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
        "routes": [{"trunk": "carrier-a-1", "max": 2, "cps": 5}, {"trunk": "carrier-b-1", "max": 0, "cps": -1}],
    }  # fmt: skip
    _, inbound = decide_call(table, request("192.0.2.1", "0612345678"))
    assert inbound["direction"] == "inbound" and inbound["tenant"] == "acme"
    assert (inbound["source"], inbound["source_kind"], inbound["source_max"], inbound["source_cps"]) == ("carrier-a-1", "trunk", 2, 5)
    # an IPBX with two targets: two rtjson routes, no trunk
    assert inbound["routes"] == [{"trunk": "", "max": -1, "cps": -1}] * 2
    _, onnet = decide_call(table, request("10.0.1.1", "39612345678"))
    assert (onnet["direction"], onnet["tenant"]) == ("on-net", "acme")
    _, globex = decide_call(table, request("2001:db8::1", "0044123"))
    assert (globex["tenant"], globex["tenant_max"]) == ("globex", -1)
    # refusals count nothing
    assert decide_call(table, request("203.0.113.1", "0612345678"))[1] is None
    assert decide_call(table, request("192.0.2.1", "0799999999"))[1] is None
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
