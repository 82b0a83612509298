"""Trunk health settings and a route's when_all_down: the document, the decision's call, explain, PostgreSQL, the API.

Health itself is Kamailio's (a target marked down is skipped at relay
time); here what the Python side owes it: the checks (c4kemi/core/health.py
through entity_checks), the settings kept as given, ``when_all_down``
carried from the document through every path a route takes (compile,
digest, incremental change, feed, the change log) to the C4-Call, and an
rtjson that does not move.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from test_api import ADMIN, Api, db
from test_db import with_conn
from test_db_follow import Node, exported_table, imported
from test_incremental import table_view

from c4http.app import make_app
from c4http.openapi import description
from c4kemi.core.decision import call_json, decide, decide_call, encode
from c4kemi.core.document import DocumentError, validate_document, validate_entity
from c4kemi.core.explain import explain, render_text
from c4kemi.core.health import DEFAULTS, LIMITS, probe_targets, settings_line
from c4kemi.core.table import apply_changes, compile_table, compile_validated, document_version, route_digest, update_table
from c4kemi.db.changes import read_changes
from c4kemi.db.documents import connect, export_document, import_document
from c4kemi.sources.feed_reader import FeedTableSource
from c4kemi.sources.feed_writer import FeedWriter
from c4kemi.sources.store import FileTableSource
from tables import document, request

OUTBOUND_39 = ("10.0.0.10", "0298765432")  # acme-pbx to an Italian number: route acme/39
OUTBOUND_44 = ("10.0.0.10", "0044201234")  # route acme/44
INBOUND_DID = ("192.0.2.1", "0612345678")  # carrier-a-1 to a DID of acme-pbx: no route


def with_health() -> dict:
    doc = document()
    doc["trunks"][0]["health"] = {"down_after": 5, "probe_interval": 30, "alive_codes": ["2xx", "404"]}
    doc["ipbxs"][0]["health"] = {"probe_interval": 0, "failure_percent": 50, "failure_window": 120, "failure_min_calls": 20}
    doc["routes"][0]["when_all_down"] = "refuse"  # acme/39
    doc["routes"][2]["when_all_down"] = "try"  # acme/44
    return doc


def errors_of(doc) -> list[str]:
    with pytest.raises(DocumentError) as info:
        validate_document(doc)
    return info.value.errors


# -- the document ------------------------------------------------------------------------


def test_health_and_when_all_down_are_kept_as_given_and_absent_ones_stay_absent():
    checked = validate_document(with_health())
    trunks = {t["name"]: t for t in checked["trunks"]}
    # as given, no default filled in; members in the order of health.DEFAULTS
    assert list(trunks["carrier-a-1"]["health"].items()) == [("probe_interval", 30), ("alive_codes", ["2xx", "404"]), ("down_after", 5)]
    assert "health" not in trunks["carrier-b-1"] and "health" not in trunks["carrier-b-2"]
    ipbxs = {i["name"]: i for i in checked["ipbxs"]}
    assert ipbxs["acme-pbx"]["health"] == {"probe_interval": 0, "failure_percent": 50, "failure_window": 120, "failure_min_calls": 20}
    assert "health" not in ipbxs["acme-branch"]
    routes = {(r["tenant"], r["prefix"]): r for r in checked["routes"]}
    assert routes["acme", "39"]["when_all_down"] == "refuse"
    assert routes["acme", "44"]["when_all_down"] == "try"  # the default, but written: read back as written
    assert "when_all_down" not in routes["acme", ""] and "when_all_down" not in routes["globex", ""]
    # Without them the checked document is what it was.
    assert "health" not in str(validate_document(document())) and "when_all_down" not in str(validate_document(document()))
    # null is absent (a PATCH sends it to remove one); {} is kept (every default)
    doc = document()
    doc["trunks"][0]["health"] = None
    doc["ipbxs"][1]["health"] = {}
    doc["routes"][0]["when_all_down"] = None
    checked = validate_document(doc)
    assert "health" not in checked["trunks"][0] and checked["ipbxs"][1]["health"] == {}
    assert "when_all_down" not in checked["routes"][0]


def test_every_health_member_at_its_bounds_is_taken():
    for key, (low, high) in LIMITS.items():
        for value in (low, high):
            doc = document()
            doc["trunks"][1]["health"] = {key: value}
            doc["ipbxs"][2]["health"] = {key: value}
            checked = validate_document(doc)
            assert checked["trunks"][1]["health"] == {key: value} and checked["ipbxs"][2]["health"] == {key: value}
    for codes in (["200"], ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"], ["100", "699", "404", "405"], ["2xx"] * 20):
        doc = document()
        doc["trunks"][1]["health"] = {"alive_codes": codes}
        assert validate_document(doc)["trunks"][1]["health"] == {"alive_codes": codes}


BOUND_ERRORS = [
    (key, value, f"must be an integer from {low} to {high}, got {value}")
    for key, (low, high) in LIMITS.items() for value in (low - 1, high + 1)
]


@pytest.mark.parametrize("key, value, message", BOUND_ERRORS)
def test_a_health_member_out_of_bounds_is_refused_naming_entity_and_field(key, value, message):
    doc = document()
    doc["trunks"][0]["health"] = {key: value}
    doc["ipbxs"][0]["health"] = {key: value}
    assert errors_of(doc) == [f"ipbxs[acme-pbx].health.{key}: {message}", f"trunks[carrier-a-1].health.{key}: {message}"]


HEALTH_KEYS = ", ".join(DEFAULTS)
CODE_ERROR = 'must be a reply code ("100" to "699") or a class such as "2xx"'


@pytest.mark.parametrize(
    "health, expected",
    [
        ({"probe_interval": 99999}, ["trunks[carrier-a-1].health.probe_interval: must be an integer from 0 to 3600, got 99999"]),
        ({"probe_interval": "10"}, ["trunks[carrier-a-1].health.probe_interval: must be an integer from 0 to 3600, got '10'"]),
        ({"down_after": 3.0}, ["trunks[carrier-a-1].health.down_after: must be an integer from 0 to 100, got 3.0"]),
        ({"up_after": True}, ["trunks[carrier-a-1].health.up_after: must be an integer from 1 to 100, got True"]),
        ({"failure_percent": None}, ["trunks[carrier-a-1].health.failure_percent: must be an integer from 0 to 100, got None"]),
        ({"failure_window": 10**40}, ["trunks[carrier-a-1].health.failure_window: must be an integer from 10 to 3600, got a huge integer"]),
        ({"probe_intervall": 5}, [f"trunks[carrier-a-1].health.probe_intervall: unknown field (known: {HEALTH_KEYS})"]),
        (5, [f"trunks[carrier-a-1].health: must be an object with some of {HEALTH_KEYS}"]),
        ([{"probe_interval": 5}], [f"trunks[carrier-a-1].health: must be an object with some of {HEALTH_KEYS}"]),
        ("probe_interval=5", [f"trunks[carrier-a-1].health: must be an object with some of {HEALTH_KEYS}"]),
        ({"alive_codes": []}, ['trunks[carrier-a-1].health.alive_codes: must be a list of 1 to 20 reply codes such as "200" or "2xx"']),
        ({"alive_codes": ["200"] * 21}, ['trunks[carrier-a-1].health.alive_codes: must be a list of 1 to 20 reply codes such as "200" or "2xx"']),
        ({"alive_codes": "2xx"}, ['trunks[carrier-a-1].health.alive_codes: must be a list of 1 to 20 reply codes such as "200" or "2xx"']),
        ({"alive_codes": ["2XX"]}, [f"trunks[carrier-a-1].health.alive_codes[0]: {CODE_ERROR}, got '2XX'"]),
        ({"alive_codes": ["200", 404]}, [f"trunks[carrier-a-1].health.alive_codes[1]: {CODE_ERROR}, got 404"]),
        ({"alive_codes": ["700", "099", "20", "2000", " 200", "x00", "2x"]},
         [f"trunks[carrier-a-1].health.alive_codes[{i}]: {CODE_ERROR}, got {c!r}"
          for i, c in enumerate(["700", "099", "20", "2000", " 200", "x00", "2x"])]),
        # every problem at once
        ({"down_after": -1, "up_after": 0, "nope": 1},
         [f"trunks[carrier-a-1].health.nope: unknown field (known: {HEALTH_KEYS})",
          "trunks[carrier-a-1].health.down_after: must be an integer from 0 to 100, got -1",
          "trunks[carrier-a-1].health.up_after: must be an integer from 1 to 100, got 0"]),
    ],
)
def test_a_bad_health_object_is_refused_naming_entity_and_field(health, expected):
    doc = document()
    doc["trunks"][0]["health"] = health
    assert errors_of(doc) == expected


def test_health_is_a_field_of_trunks_and_ipbxs_only():
    doc = document()
    doc["carriers"][0]["health"] = {}
    doc["tenants"][0]["health"] = {}
    doc["routes"][0]["health"] = {}
    doc["trunks"][0]["when_all_down"] = "refuse"
    assert errors_of(doc) == [
        "tenants[acme].health: unknown field",
        "carriers[carrier-a].health: unknown field",
        "trunks[carrier-a-1].when_all_down: unknown field",
        "routes[0].health: unknown field",
    ]


@pytest.mark.parametrize("value, shown", [("Refuse", ", got 'Refuse'"), ("", ", got ''"), (1, ", got 1"), (True, ", got True"),
                                          (["refuse"], ""), ({"refuse": True}, ""), ("x" * 100, "")])
def test_a_bad_when_all_down_is_refused_naming_the_route(value, shown):
    doc = document()
    doc["routes"][1]["when_all_down"] = value
    assert errors_of(doc) == [f'routes[1].when_all_down: must be "try" (the default) or "refuse"{shown}']
    # checked alone (the feed's writer, the API), the route is named by its key
    refs = {"tenants": ["acme"], "trunks": {"carrier-b-1": {"carrier": "carrier-b"}}, "carriers": {"carrier-b": {"tenant": "acme"}}}
    with pytest.raises(DocumentError) as info:
        validate_entity("routes", doc["routes"][1], refs)
    assert info.value.errors == [f'routes[acme/].when_all_down: must be "try" (the default) or "refuse"{shown}']
    good = validate_entity("routes", {**doc["routes"][1], "when_all_down": "refuse"}, refs)
    assert good == {"tenant": "acme", "prefix": "", "trunks": [{"trunk": "carrier-b-1", "priority": 1, "weight": 1}],
                    "when_all_down": "refuse"}


def test_validate_entity_checks_health_as_the_document_does():
    refs = {"tenants": ["acme"], "carriers": {"carrier-b": {"tenant": "acme"}}}
    trunk = {"name": "t9", "carrier": "carrier-b", "target": "sip:192.0.2.99", "health": {"up_after": 4, "probe_interval": 60}}
    assert list(validate_entity("trunks", trunk, refs)["health"].items()) == [("probe_interval", 60), ("up_after", 4)]
    with pytest.raises(DocumentError) as info:
        validate_entity("ipbxs", {"name": "p9", "tenant": "acme", "targets": ["sip:10.9.9.9"], "health": {"up_after": 0}}, refs)
    assert info.value.errors == ["ipbxs[p9].health.up_after: must be an integer from 1 to 100, got 0"]


# -- the settings Kamailio gets ---------------------------------------------------------------


def test_targets_of_several_trunks_and_ipbxs_share_the_first_one_s_settings():
    assert settings_line(None) == settings_line({}) == settings_line(dict(DEFAULTS))
    assert settings_line({"down_after": 0}) != settings_line(None)
    checked = validate_document(with_health())
    # carrier-b-2 and an IPBX on carrier-a-1's target: one health, the first one's settings (trunks first)
    checked["trunks"][2]["target"] = "sip:192.0.2.10:5060"
    checked["ipbxs"][2]["targets"] = ["sip:192.0.2.10:5060"]
    targets = probe_targets(checked["trunks"], checked["ipbxs"])
    shared = targets["sip:192.0.2.10:5060"]
    assert shared.users == ("trunk carrier-a-1", "trunk carrier-b-2", "ipbx globex-pbx")
    assert shared.line == settings_line(checked["trunks"][0]["health"]) != settings_line(None)
    assert targets["sip:10.0.0.11:5060"].line == settings_line(checked["ipbxs"][0]["health"])
    assert targets["sip:10.0.0.11:5060"].users == ("ipbx acme-pbx",)
    assert targets["sip:198.51.100.20:5060;transport=tcp"].line == settings_line(None)
    assert len(targets) == 5


# -- the decision and its call ------------------------------------------------------------------


def test_the_call_says_when_all_down_only_for_a_refusing_route():
    table = compile_table(with_health())
    _, call = decide_call(table, request(*OUTBOUND_39))
    assert call["when_all_down"] == "refuse" and list(call)[-1] == "when_all_down"
    assert call_json(call).endswith('"when_all_down":"refuse"}')
    _, call = decide_call(table, request(*OUTBOUND_44))  # "try" written: nothing added
    assert call["direction"] == "outbound" and "when_all_down" not in call
    _, call = decide_call(table, request("10.0.0.10", "0033123456"))  # acme's default route, no when_all_down
    assert call["direction"] == "outbound" and "when_all_down" not in call
    _, call = decide_call(table, request(*INBOUND_DID))  # to an IPBX: no route
    assert call["direction"] == "inbound" and "when_all_down" not in call
    _, call = decide_call(table, request("10.0.0.10", "39612345678"))  # on-net, though the number starts 39: a DID, no route
    assert call["direction"] == "on-net" and "when_all_down" not in call
    # the call is otherwise exactly the one without the fields
    plain = compile_table(document())
    for query in (request(*OUTBOUND_39), request(*OUTBOUND_44), request(*INBOUND_DID)):
        with_fields = dict(decide_call(table, query)[1])
        with_fields.pop("when_all_down", None)
        assert with_fields == decide_call(plain, query)[1]


def test_the_rtjson_is_the_same_bytes_with_or_without_health_and_when_all_down():
    plain, fields = compile_table(document()), compile_table(with_health())
    queries = [request(*OUTBOUND_39), request(*OUTBOUND_44), request(*INBOUND_DID), request("10.0.0.10", "0033123456"),
               request("203.0.113.1", "0612345678"), request("192.0.2.1", "0799999999")]
    for query in queries:
        assert encode(decide(fields, query)) == encode(decide(plain, query))
        assert encode(decide_call(fields, query)[0]) == encode(decide(plain, query))
    assert b"when_all_down" not in encode(decide(fields, request(*OUTBOUND_39)))


def test_when_all_down_is_part_of_the_route_s_digest_and_try_is_the_default():
    plain = validate_document(document())
    refuse, try_ = document(), document()
    refuse["routes"][0]["when_all_down"] = "refuse"
    try_["routes"][0]["when_all_down"] = "try"
    refuse, try_ = validate_document(refuse), validate_document(try_)
    assert route_digest(refuse["routes"][0]) != route_digest(plain["routes"][0])
    assert route_digest(try_["routes"][0]) == route_digest(plain["routes"][0])  # the same compiled route, the same digest
    versions = {name: compile_validated(doc).version for name, doc in (("plain", plain), ("refuse", refuse), ("try", try_))}
    assert versions["refuse"] != versions["plain"] == versions["try"]
    assert document_version(refuse) == versions["refuse"] and document_version(try_) == versions["try"]
    # health is in the base collections: a change there is a new version too
    health = document()
    health["trunks"][1]["health"] = {"probe_interval": 5}
    assert compile_table(health).version != versions["plain"]


def test_an_incremental_change_of_when_all_down_gives_the_full_compile():
    doc = document()
    table = compile_validated(validate_document(doc))
    doc["routes"][0]["when_all_down"] = "refuse"
    changed = update_table(table, validate_document(doc))
    assert changed.sources is table.sources  # a route change, not a full compile
    assert changed.find_route("acme", "39").when_all_down == "refuse"
    assert table_view(changed) == table_view(compile_validated(validate_document(doc)))
    assert changed.version == document_version(validate_document(doc)) != table.version
    assert decide_call(changed, request(*OUTBOUND_39))[1]["when_all_down"] == "refuse"
    assert "when_all_down" not in decide_call(table, request(*OUTBOUND_39))[1]  # the old table is untouched
    # and back, with apply_changes told what changed (as a feed reader is)
    route = validate_entity("routes", document()["routes"][0], {
        "tenants": ["acme"], "trunks": {"carrier-a-1": {"carrier": "carrier-a"}, "carrier-b-1": {"carrier": "carrier-b"}},
        "carriers": {"carrier-a": {"tenant": None}, "carrier-b": {"tenant": "acme"}},
    })
    back = apply_changes(changed, routes={("acme", "39"): route})
    assert back.version == table.version and "when_all_down" not in decide_call(back, request(*OUTBOUND_39))[1]


def test_a_change_of_when_all_down_goes_through_the_feed_as_a_change_set(tmp_path):
    writer = FeedWriter(tmp_path / "feed")
    doc = document()
    writer.publish(json.loads(json.dumps(doc)))
    reader = FeedTableSource(tmp_path / "feed", check_interval=0)
    before = reader.current()
    doc["routes"][0]["when_all_down"] = "refuse"
    assert writer.publish(json.loads(json.dumps(doc))) == "changes"
    reader.refresh()
    table = reader.current()
    assert table.sources is before.sources and reader.seq == 1  # applied as a change set
    assert table_view(table) == table_view(compile_validated(validate_document(doc)))
    assert decide_call(table, request(*OUTBOUND_39))[1]["when_all_down"] == "refuse"
    late = FeedTableSource(tmp_path / "feed", check_interval=0)  # the snapshot and the change set
    assert late.current().find_route("acme", "39").when_all_down == "refuse"
    # a bad value is refused as the whole-document check refuses it, nothing published
    doc["routes"][0]["when_all_down"] = "later"
    with pytest.raises(DocumentError, match=r"routes\[acme/39\]\.when_all_down"):
        writer.publish(json.loads(json.dumps(doc)))
    # "try" in place of nothing: a change as written, the same table
    doc["routes"][0]["when_all_down"] = "try"
    assert writer.publish(json.loads(json.dumps(doc))) == "changes"
    reader.refresh()
    assert reader.current().find_route("acme", "39").when_all_down == "try"
    assert reader.current().version == compile_table(document()).version
    # a health change is a base collection's: a new snapshot
    doc["trunks"][0]["health"] = {"down_after": 1}
    assert writer.publish(json.loads(json.dumps(doc))) == "snapshot"
    reader.refresh()
    assert reader.current().base["trunks"][0]["health"] == {"down_after": 1}
    writer.close()


# -- c4 route --explain -----------------------------------------------------------------------


def test_explain_says_health_is_kamailio_s_and_what_refuse_does():
    table = compile_table(with_health())
    refusing = explain(table, request(*OUTBOUND_39))
    assert refusing["route"]["when_all_down"] == "refuse"
    text = render_text(refusing)
    health = ("health    applied by Kamailio at relay time: a target marked down is skipped like a trunk at its channel limit;"
              " this decision does not depend on health")
    assert health in text
    assert "          when_all_down refuse: a call whose targets are all down gets 503 at once" in text
    assert text.index(health) < text.index("result    outbound")
    for query in (request(*OUTBOUND_44), request(*INBOUND_DID)):
        text = render_text(explain(table, query))
        assert health in text and "when_all_down refuse" not in text
    assert explain(table, request(*OUTBOUND_44))["route"]["when_all_down"] == "try"
    assert "health    " not in render_text(explain(table, request("203.0.113.1", "0612345678")))  # refused: nothing relayed


# -- PostgreSQL ----------------------------------------------------------------------------------


def test_health_and_when_all_down_survive_import_and_export(pg_dsn):
    checked = validate_document(with_health())
    asyncio.run(with_conn(pg_dsn, lambda c: import_document(c, checked)))
    exported, _ = asyncio.run(with_conn(pg_dsn, export_document))
    for name in ("ipbxs", "trunks", "routes"):
        key = (lambda e: (e["tenant"], e["prefix"])) if name == "routes" else (lambda e: e["name"])
        assert sorted(exported[name], key=key) == sorted(checked[name], key=key), name
    trunk = {t["name"]: t for t in exported["trunks"]}["carrier-a-1"]
    assert list(trunk["health"]) == ["probe_interval", "alive_codes", "down_after"]  # the document's order, not jsonb's
    assert validate_document(exported) == validate_document(json.loads(json.dumps(exported)))
    # removed by the next import: gone
    asyncio.run(with_conn(pg_dsn, lambda c: import_document(c, validate_document(document()))))
    exported, _ = asyncio.run(with_conn(pg_dsn, export_document))
    assert "health" not in json.dumps(exported) and "when_all_down" not in json.dumps(exported)


def test_the_schema_refuses_what_is_no_health_object_or_when_all_down(pg_dsn):
    import asyncpg

    async def attempts(conn) -> list[str]:
        await import_document(conn, validate_document(document()))
        refused = []
        for sql in ("UPDATE trunks SET health = '[1]' WHERE name = 'carrier-a-1'",
                    "UPDATE ipbxs SET health = '5' WHERE name = 'acme-pbx'",
                    "UPDATE routes SET when_all_down = 'never' WHERE tenant = 'acme' AND prefix = '39'"):
            try:
                await conn.execute(sql)
            except asyncpg.CheckViolationError as exc:
                refused.append(exc.table_name)
        await conn.execute("UPDATE trunks SET health = '{\"up_after\": 3}' WHERE name = 'carrier-a-1'")
        await conn.execute("UPDATE routes SET when_all_down = 'refuse' WHERE tenant = 'acme' AND prefix = '39'")
        return refused

    assert asyncio.run(with_conn(pg_dsn, attempts)) == ["trunks", "ipbxs", "routes"]
    exported, _ = asyncio.run(with_conn(pg_dsn, export_document))
    assert {t["name"]: t for t in exported["trunks"]}["carrier-a-1"]["health"] == {"up_after": 3}
    assert {(r["tenant"], r["prefix"]): r for r in exported["routes"]}["acme", "39"]["when_all_down"] == "refuse"


async def test_a_when_all_down_written_in_sql_reaches_the_feed_as_a_change_set(pg_dsn, tmp_path):
    """c4 db follow --feed: an UPDATE of the routes row alone (no route_trunks) is logged by key and published."""
    await imported(pg_dsn)
    node = Node(pg_dsn, tmp_path / "feed")
    await node.start()
    conn = await connect(pg_dsn)
    try:
        seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM routing_changes")
        await conn.execute("UPDATE routes SET when_all_down = 'refuse' WHERE tenant = 'acme' AND prefix = '39'")
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            _, changes = await read_changes(conn, seq)
        assert changes is not None and changes[0] == {}
        assert changes[1] == {("acme", "39"): {
            "tenant": "acme", "prefix": "39", "trunks": [{"trunk": "carrier-a-1", "priority": 0, "weight": 1},
                                                          {"trunk": "carrier-b-1", "priority": 1, "weight": 1}],
            "when_all_down": "refuse",
        }}  # fmt: skip
        await node.follower._check(conn)
        table = node.table()
        assert (node.follower.documents, node.follower.change_sets) == (1, 1)
        assert table.find_route("acme", "39").when_all_down == "refuse"
        assert decide_call(table, request(*OUTBOUND_39))[1]["when_all_down"] == "refuse"
        assert table_view(table) == table_view(await exported_table(pg_dsn))
        # back to absent
        await conn.execute("UPDATE routes SET when_all_down = NULL WHERE tenant = 'acme' AND prefix = '39'")
        await node.follower._check(conn)
        assert node.follower.change_sets == 2 and "when_all_down" not in decide_call(node.table(), request(*OUTBOUND_39))[1]
        # a trunk's health: a small collection, a whole document
        await conn.execute("UPDATE trunks SET health = '{\"down_after\": 0}' WHERE name = 'carrier-b-2'")
        await node.follower._check(conn)
        assert node.follower.documents == 2
        assert {t["name"]: t for t in node.table().base["trunks"]}["carrier-b-2"]["health"] == {"down_after": 0}
    finally:
        await conn.close()
        node.publisher.writer.close()


# -- the provisioning API -----------------------------------------------------------------------


async def test_the_api_sets_reads_changes_and_removes_health_and_when_all_down(aiohttp_client, pg_dsn, tmp_path):
    await db(pg_dsn, lambda c: import_document(c, validate_document(document())))
    table = tmp_path / "table.json"
    table.write_text("{}")
    api = Api(await aiohttp_client(make_app(FileTableSource(table), dsn=pg_dsn, api_token=ADMIN)))

    health = {"alive_codes": ["2xx"], "probe_interval": 15}
    status, trunk, _ = await api("POST", "/api/v1/trunks", {"name": "t-new", "carrier": "carrier-b", "target": "sip:198.51.100.40",
                                                            "health": health})
    assert status == 201 and trunk["health"] == {"probe_interval": 15, "alive_codes": ["2xx"]}
    status, trunk, _ = await api("GET", "/api/v1/trunks/t-new")
    assert status == 200 and list(trunk["health"].items()) == [("probe_interval", 15), ("alive_codes", ["2xx"])]
    # PATCH replaces the whole object
    status, trunk, _ = await api("PATCH", "/api/v1/trunks/t-new", {"health": {"down_after": 1}})
    assert (status, trunk["health"]) == (200, {"down_after": 1})
    status, trunk, _ = await api("PATCH", "/api/v1/trunks/t-new", {"health": None})
    assert status == 200 and "health" not in trunk
    status, ipbx, _ = await api("PATCH", "/api/v1/ipbxs/acme-pbx", {"health": {"failure_percent": 40}})
    assert (status, ipbx["health"]) == (200, {"failure_percent": 40})
    status, ipbxs, _ = await api("GET", "/api/v1/ipbxs?tenant=acme")
    assert [i.get("health") for i in ipbxs["items"]] == [None, {"failure_percent": 40}]  # acme-branch, acme-pbx

    status, route, _ = await api("POST", "/api/v1/routes", {"tenant": "acme", "prefix": "49", "trunks": ["t-new"], "when_all_down": "refuse"})
    assert (status, route["when_all_down"]) == (201, "refuse")
    status, route, _ = await api("PATCH", "/api/v1/routes/acme/39", {"when_all_down": "refuse"})
    assert status == 200 and route == {"tenant": "acme", "prefix": "39", "when_all_down": "refuse", "trunks": [
        {"trunk": "carrier-a-1", "priority": 0, "weight": 1}, {"trunk": "carrier-b-1", "priority": 1, "weight": 1}]}
    status, route, _ = await api("PATCH", "/api/v1/routes/acme/39", {"trunks": ["carrier-b-2"]})  # other fields keep it
    assert (status, route["when_all_down"]) == (200, "refuse")
    status, route, _ = await api("PATCH", "/api/v1/routes/acme/39", {"when_all_down": "try"})
    assert (status, route["when_all_down"]) == (200, "try")
    status, route, _ = await api("PATCH", "/api/v1/routes/acme/49", {"when_all_down": None})
    assert status == 200 and "when_all_down" not in route
    status, route, _ = await api("GET", "/api/v1/routes/acme/")
    assert status == 200 and "when_all_down" not in route

    # bad values: refused by the checks of c4 check, the field named, nothing stored
    status, body, _ = await api("PATCH", "/api/v1/trunks/carrier-b-2", {"health": {"probe_interval": 99999}})
    assert status == 422
    assert body["errors"] == ["trunks[carrier-b-2].health.probe_interval: must be an integer from 0 to 3600, got 99999"]
    status, body, _ = await api("POST", "/api/v1/ipbxs", {"name": "p-bad", "tenant": "acme", "targets": ["sip:10.5.5.5"],
                                                          "health": {"alive_codes": ["2XX"], "speed": 1}})
    assert status == 422 and body["errors"] == [
        f"ipbxs[p-bad].health.speed: unknown field (known: {HEALTH_KEYS})",
        f"ipbxs[p-bad].health.alive_codes[0]: {CODE_ERROR}, got '2XX'",
    ]
    status, body, _ = await api("PATCH", "/api/v1/routes/acme/44", {"when_all_down": "sometimes"})
    assert (status, body["errors"]) == (422, ['routes[acme/44].when_all_down: must be "try" (the default) or "refuse", got \'sometimes\''])

    exported, _ = await db(pg_dsn, export_document)
    assert "health" not in {t["name"]: t for t in exported["trunks"]}["carrier-b-2"]
    assert "when_all_down" not in {(r["tenant"], r["prefix"]): r for r in exported["routes"]}["acme", "44"]
    assert {i["name"]: i for i in exported["ipbxs"]}["acme-pbx"]["health"] == {"failure_percent": 40}
    assert {(r["tenant"], r["prefix"]): r for r in exported["routes"]}["acme", "39"]["when_all_down"] == "try"
    validate_document(exported)  # what the API stored, c4 check takes


def test_the_openapi_description_states_the_fields_and_their_bounds():
    schemas = description()["components"]["schemas"]
    for name in ("Trunk", "Ipbx"):
        health = schemas[name]["properties"]["health"]
        assert health["additionalProperties"] is False and list(health["properties"]) == list(DEFAULTS)
        for key, (low, high) in LIMITS.items():
            member = health["properties"][key]
            assert (member["minimum"], member["maximum"], member["default"]) == (low, high, DEFAULTS[key])
        assert (health["properties"]["alive_codes"]["minItems"], health["properties"]["alive_codes"]["maxItems"]) == (1, 20)
    assert schemas["Route"]["properties"]["when_all_down"]["enum"] == ["try", "refuse", None]
    assert "when_all_down" not in schemas["Route"]["required"] and "health" not in schemas["Trunk"]["required"]
