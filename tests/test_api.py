"""The provisioning API (/api/v1) on a real PostgreSQL and a real aiohttp server.

Every collection through every verb, every error class, PATCH semantics,
keyset paging over thousands of DIDs, tenant isolation, password masking,
the OpenAPI description's completeness, and a round trip: a table built
through the API exports to a document ``c4 check`` accepts.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp import web
from ports import free_tcp_port
from test_http_service import c4_command
from yarl import URL

from c4http.app import make_app
from c4http.openapi import description
from c4http.provisioning import MASK
from c4http.queries import COLLECTIONS
from c4kemi.core.document import validate_document
from c4kemi.db.documents import connect, export_document, import_document
from c4kemi.db.tokens import create_token, revoke_token
from c4kemi.sources.store import FileTableSource
from tables import BASE_DOCUMENT, document

ADMIN = "admin-token-for-tests"
SECRET = "p"  # the password of carrier-a-1 in BASE_DOCUMENT
KEYS = {"dids": ("prefix",), "routes": ("tenant", "prefix")}


def key_of(collection: str, item: dict) -> tuple:
    return tuple(item[key] for key in KEYS.get(collection, ("name",)))


def url(collection: str, item: dict | None = None) -> str:
    if item is None:
        return f"/api/v1/{collection}"
    return f"/api/v1/{collection}/" + "/".join(key_of(collection, item))


def same_document(a: dict, b: dict) -> bool:
    """Equal documents, whatever the order of each collection."""
    def key(item):
        return json.dumps(item, sort_keys=True)

    return all(sorted(map(key, a.get(name, []))) == sorted(map(key, b.get(name, []))) for name in COLLECTIONS)


def masked_doc(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for trunk in doc["trunks"]:
        if trunk["auth"]:
            trunk["auth"]["password"] = MASK
    return doc


async def db(dsn: str, action):
    conn = await connect(dsn)
    try:
        return await action(conn)
    finally:
        await conn.close()


class Api:
    """A client of the API with a token, collecting every reply body (for leak checks)."""

    def __init__(self, client, token: str | None = ADMIN, seen: list | None = None) -> None:
        self.client, self.token = client, token
        self.seen = [] if seen is None else seen

    def as_(self, token: str | None) -> Api:
        return Api(self.client, token, self.seen)

    async def __call__(self, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
        headers = dict(headers or {})
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            raw = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=raw, headers=headers) as response:
            text = await response.text()
            self.seen.append(text)
            data = json.loads(text) if text and response.content_type == "application/json" else None
            return response.status, data, response.headers

    async def all(self, collection: str, **query) -> list[dict]:
        items, cursor = [], None
        while True:
            params = {**query, **({"cursor": cursor} if cursor else {})}
            path = url(collection) + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
            status, page, _ = await self("GET", path)
            assert status == 200, page
            items += page["items"]
            cursor = page["next"]
            if cursor is None:
                return items


@pytest.fixture
def table_file(tmp_path: Path) -> Path:
    path = tmp_path / "table.json"
    path.write_bytes(orjson.dumps(document()))
    return path


@pytest.fixture
async def seeded(pg_dsn) -> dict:
    """The base document in the database, and a token for each tenant."""

    async def seed(conn):
        await import_document(conn, validate_document(document()))
        return {tenant: (await create_token(conn, tenant))[1] for tenant in ("acme", "globex")}

    return {"dsn": pg_dsn, "tokens": await db(pg_dsn, seed)}


@pytest.fixture
async def api(aiohttp_client, seeded, table_file) -> Api:
    client = await aiohttp_client(make_app(FileTableSource(table_file), dsn=seeded["dsn"], api_token=ADMIN))
    return Api(client)


# --- reading -------------------------------------------------------------------------


async def test_lists_and_items_are_the_exported_document_with_passwords_masked(api, seeded):
    exported, _ = await db(seeded["dsn"], export_document)
    expected = masked_doc(exported)
    for collection in COLLECTIONS:
        items = await api.all(collection)
        assert items == expected[collection], collection
        for item in items:
            status, got, _ = await api("GET", url(collection, item))
            assert (status, got) == (200, item), collection
    # the default route (empty prefix) is addressed with a trailing slash
    status, route, _ = await api("GET", "/api/v1/routes/acme/")
    assert status == 200 and route["prefix"] == "" and route["tenant"] == "acme"


async def test_tenant_filter(api):
    for collection, expected in (
        ("ipbxs", ["acme-branch", "acme-pbx"]),
        ("carriers", ["carrier-b"]),
        ("trunks", ["carrier-b-1", "carrier-b-2"]),
        ("dids", ["39612345", "396123459", "3970"]),
        ("routes", [("acme", ""), ("acme", "39"), ("acme", "44")]),
    ):
        items = await api.all(collection, tenant="acme")
        keys = [key_of(collection, i) if collection == "routes" else key_of(collection, i)[0] for i in items]
        assert keys == expected, collection
    status, body, _ = await api("GET", "/api/v1/tenants?tenant=acme")
    assert status == 400 and "no tenant filter" in body["error"]


async def test_no_such_item_is_404(api):
    for path in (
        "/api/v1/tenants/nobody", "/api/v1/normalization_profiles/nope", "/api/v1/ipbxs/nope", "/api/v1/carriers/nope",
        "/api/v1/trunks/nope", "/api/v1/dids/999", "/api/v1/routes/acme/999", "/api/v1/routes/nobody/",
    ):
        for method, body in (("GET", None), ("PATCH", {}), ("DELETE", None)):
            status, reply, _ = await api(method, path, body)
            assert status == 404 and reply["error"].endswith(": not found"), (method, path)
    status, reply, _ = await api("GET", "/api/v1/widgets")
    assert status == 404 and "error" in reply


# --- writing: every collection, every verb ---------------------------------------------

NEW = {
    "tenants": ({"name": "initech"}, {"name": "initech"}),
    "normalization_profiles": ({"name": "fr", "country_code": "33"}, {"ld_prefix": "0"}),
    "ipbxs": (
        {"name": "acme-pbx-2", "tenant": "acme", "targets": ["sip:10.0.2.10"], "sources": ["10.0.2.0/24"]},
        {"fr_timer": 1000, "sources": ["10.0.3.0/24", "10.0.4.1"]},
    ),
    "carriers": ({"name": "carrier-c"}, {"tenant": "globex"}),
    "trunks": (
        {"name": "carrier-a-2", "carrier": "carrier-a", "target": "sip:192.0.2.20", "sources": ["192.0.2.32/28"]},
        {"normalization": "it", "auth": {"username": "a", "password": "new-secret", "realm": "r"}},
    ),
    "dids": ({"tenant": "globex", "prefix": "4421", "ipbx": "globex-pbx"}, {"match": "4421[0-9]+"}),
    "routes": ({"tenant": "globex", "prefix": "33", "trunks": ["carrier-a-1"]}, {"trunks": [{"trunk": "carrier-a-1", "weight": 2.5}]}),
}


@pytest.mark.parametrize("collection", COLLECTIONS)
async def test_create_read_patch_delete(api, seeded, collection):
    item, patch = NEW[collection]
    status, created, headers = await api("POST", url(collection), item)
    assert status == 201, created
    expected = validate_document(_with(collection, item))
    checked = next(i for i in expected[collection] if key_of(collection, i) == key_of(collection, item))
    assert created == checked
    assert headers["Location"] == url(collection, item)
    assert (await api("GET", headers["Location"]))[1] == created

    status, patched, _ = await api("PATCH", url(collection, item), patch)
    assert status == 200, patched
    want = {**created, **patch}
    if collection == "ipbxs":
        want["sources"] = ["10.0.3.0/24", "10.0.4.1/32"]
    if collection == "trunks":
        want["auth"] = {**patch["auth"], "password": MASK}
    if collection == "routes":
        want["trunks"] = [{"trunk": "carrier-a-1", "priority": 0, "weight": 2.5}]
    assert patched == want
    assert (await api("GET", url(collection, item)))[1] == want
    exported, _ = await db(seeded["dsn"], export_document)
    stored = next(i for i in exported[collection] if key_of(collection, i) == key_of(collection, item))
    assert masked_doc({**{c: [] for c in COLLECTIONS}, collection: [stored]})[collection][0] == want

    status, again, _ = await api("POST", url(collection), item)
    assert status == 409 and again["error"].endswith("already exists"), again

    status, body, _ = await api("DELETE", url(collection, item))
    assert (status, body) == (204, None)
    assert (await api("GET", url(collection, item)))[0] == 404
    assert (await api("DELETE", url(collection, item)))[0] == 404
    exported, _ = await db(seeded["dsn"], export_document)
    assert same_document(exported, validate_document(document()))


def _with(collection: str, item: dict) -> dict:
    doc = document()
    doc[collection].append(item)
    return doc


async def test_default_route_is_addressable(api):
    status, route, _ = await api("PATCH", "/api/v1/routes/globex/", {"trunks": ["carrier-a-1"], "prefix": ""})
    assert status == 200 and route == {"tenant": "globex", "prefix": "", "trunks": [{"trunk": "carrier-a-1", "priority": 0, "weight": 1}]}
    assert (await api("DELETE", "/api/v1/routes/globex/"))[0] == 204
    status, created, headers = await api("POST", "/api/v1/routes", {"tenant": "globex", "prefix": "", "trunks": ["carrier-a-1"]})
    assert status == 201 and headers["Location"] == "/api/v1/routes/globex/"


async def test_patch_merges_fields_and_checks_the_result(api):
    _, before, _ = await api("GET", "/api/v1/ipbxs/acme-branch")
    status, after, _ = await api("PATCH", "/api/v1/ipbxs/acme-branch", {"fr_inv_timer": 45000})
    assert status == 200 and after == {**before, "fr_inv_timer": 45000}
    # the merged item is checked whole: an error anywhere refuses the PATCH and changes nothing
    status, body, _ = await api("PATCH", "/api/v1/ipbxs/acme-branch", {"fr_timer": 0, "targets": []})
    assert status == 422
    assert body["errors"] == [
        "ipbxs[acme-branch].targets: must be a non-empty list of SIP URIs",
        "ipbxs[acme-branch].fr_timer: must be an integer from 1 to 3600000, got 0",
    ]
    assert (await api("GET", "/api/v1/ipbxs/acme-branch"))[1] == after
    # null means "not set" where the document allows it
    status, trunk, _ = await api("PATCH", "/api/v1/trunks/carrier-a-1", {"normalization": None, "auth": None})
    assert status == 200 and trunk["normalization"] is None and trunk["auth"] is None


@pytest.mark.parametrize("path, patch, field", [
    ("/api/v1/tenants/acme", {"name": "acme2"}, "tenants[acme].name"),
    ("/api/v1/trunks/carrier-a-1", {"name": "carrier-a-9"}, "trunks[carrier-a-1].name"),
    ("/api/v1/dids/4420", {"prefix": "4421"}, "dids[4420].prefix"),
    ("/api/v1/routes/acme/39", {"prefix": "40"}, "routes[acme/39].prefix"),
    ("/api/v1/routes/acme/39", {"tenant": "globex"}, "routes[acme/39].tenant"),
])  # fmt: skip
async def test_keys_cannot_change(api, path, patch, field):
    status, body, _ = await api("PATCH", path, patch)
    assert status == 422 and body["error"] == f"{field}: cannot change; create a new item and delete this one"


# --- the checks of c4 check ------------------------------------------------------------

INVALID = [
    ("trunks", {"name": "t", "carrier": "carrier-a", "target": "sip:192.0.2.99", "fr_timer": 0},
     ["trunks[t].fr_timer: must be an integer from 1 to 3600000, got 0"]),
    ("trunks", {"name": "t", "carrier": "ghost", "target": "sip:u@192.0.2.99", "color": "blue"},
     ["trunks[t].color: unknown field", "trunks[t].carrier: unknown carrier 'ghost'",
      "trunks[t].target: must be a SIP URI like 'sip:192.0.2.10:5060' (host, port, parameters; no user part), "
      "got 'sip:u@192.0.2.99': not of the form sip:host[:port][;params]"]),
    ("ipbxs", {"name": "i", "tenant": "acme", "targets": ["sip:10.9.9.9"], "sources": ["10.9.0.1/16"], "normalization": "fr"},
     ["ipbxs[i].sources[0]: bad CIDR '10.9.0.1/16': 10.9.0.1/16 has host bits set",
      "ipbxs[i].normalization: unknown normalization profile 'fr'"]),
    ("normalization_profiles", {"name": "bad", "to_e164": [{"match": "^(3+)+4$", "replace": "1"}]},
     ["normalization_profiles[bad].to_e164[0].match: nested repetition (a quantifier inside a repeated group) can take exponential time"]),
    ("dids", {"tenant": "acme", "prefix": "+39", "ipbx": "globex-pbx"},
     ["dids[+39].prefix: must be a string of one or more digits (E.164 without '+'), got '+39'",
      "dids[+39].ipbx: IPBX 'globex-pbx' belongs to tenant 'globex', not 'acme'"]),
    ("routes", {"tenant": "globex", "prefix": "1", "trunks": ["carrier-b-1", {"trunk": "carrier-a-1", "weight": -1}]},
     ["routes[globex/1].trunks[0]: trunk 'carrier-b-1' belongs to carrier 'carrier-b' of tenant 'acme'",
      "routes[globex/1].trunks[1].weight: must be a number from 0 to 1000000"]),
    ("carriers", {"name": "c", "tenant": "nobody"}, ["carriers[c].tenant: unknown tenant 'nobody'"]),
    ("tenants", {"name": "bad\nname"}, ["tenants[?].name: must be at most 200 characters without control characters"]),
]  # fmt: skip


@pytest.mark.parametrize("collection, item, errors", INVALID, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(INVALID)])
async def test_invalid_items_are_422_with_the_errors_of_c4_check(api, seeded, collection, item, errors):
    status, body, _ = await api("POST", url(collection), item)
    assert status == 422 and body["errors"] == errors and body["error"] == "; ".join(errors)
    # c4 check refuses the same item in a document, with the same message but for the name of the entity
    with pytest.raises(ValueError) as refused:
        validate_document(_with(collection, item))
    suffixes = {error.split("]", 1)[1] for error in refused.value.errors}
    assert {error.split("]", 1)[1] for error in errors} <= suffixes
    exported, _ = await db(seeded["dsn"], export_document)
    assert same_document(exported, validate_document(document()))  # nothing stored


# --- conflicts -------------------------------------------------------------------------


@pytest.mark.parametrize("path, used_by", [
    ("/api/v1/trunks/carrier-a-1", "routes"),
    ("/api/v1/tenants/acme", "carriers"),
    ("/api/v1/ipbxs/acme-pbx", "dids"),
    ("/api/v1/normalization_profiles/it", "ipbxs"),
    ("/api/v1/carriers/carrier-b", "trunks"),
])  # fmt: skip
async def test_deleting_what_is_in_use_is_409(api, seeded, path, used_by):
    status, body, _ = await api("DELETE", path)
    assert status == 409 and "in use by " in body["error"], body
    assert (await api("GET", path))[0] == 200


async def test_conflicts_with_other_items_are_409(api, seeded):
    status, body, _ = await api("POST", "/api/v1/trunks", {"name": "t", "carrier": "carrier-a", "target": "sip:192.0.2.99", "sources": ["10.0.0.10"]})
    assert status == 409 and body["error"] == "trunks[t].sources: 10.0.0.10/32 is also a source of ipbxs[acme-pbx]"
    status, body, _ = await api("PATCH", "/api/v1/ipbxs/globex-pbx", {"sources": ["192.0.2.0/28"]})
    assert status == 409 and body["error"] == "ipbxs[globex-pbx].sources: 192.0.2.0/28 is also a source of trunks[carrier-a-1]"
    # a DID's IPBX moving to another tenant
    status, body, _ = await api("PATCH", "/api/v1/ipbxs/globex-pbx", {"tenant": "acme"})
    assert status == 409 and body["error"] == "ipbxs[globex-pbx]: in use by dids; change or delete those first"
    exported, _ = await db(seeded["dsn"], export_document)
    assert same_document(exported, validate_document(document()))


async def test_route_trunk_owner_is_checked_at_commit(api, seeded):
    # carrier-a's trunk carries globex's default route: carrier-a cannot become acme's own
    status, body, _ = await api("PATCH", "/api/v1/carriers/carrier-a", {"tenant": "acme"})
    assert status == 422
    assert body["error"] == "carriers[carrier-a].tenant: trunk carrier-a-1 belongs to carrier carrier-a of tenant acme, not globex"
    # nor may a trunk that globex uses move to acme's carrier
    status, body, _ = await api("PATCH", "/api/v1/trunks/carrier-a-1", {"carrier": "carrier-b"})
    assert status == 422 and body["error"].startswith("trunks[carrier-a-1].carrier: trunk carrier-a-1 belongs to carrier carrier-b")
    exported, _ = await db(seeded["dsn"], export_document)
    assert same_document(exported, validate_document(document()))


# --- bad requests ----------------------------------------------------------------------


async def test_bad_requests_are_400_or_415(api):
    for raw, message in (
        (b"{", "malformed JSON"),
        (b"[1]", "must be a JSON object, not list"),
        (b'{"name": "a", "name": "b"}', "duplicate key 'name'"),
    ):
        status, body, _ = await api("POST", "/api/v1/tenants", raw=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and message in body["error"], raw
        status, body, _ = await api("PATCH", "/api/v1/tenants/acme", raw=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and message in body["error"], raw
    status, body, _ = await api("POST", "/api/v1/tenants", raw=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    for query, message in (
        ("limit=0", "limit must be an integer from 1 to 1000"),
        ("limit=1001", "limit must be"),
        ("limit=x", "limit must be"),
        ("cursor=!!", "bad cursor"),
        ("cursor=WyJhIiwiYiJd", "bad cursor"),  # ["a","b"]: a route's key, not a DID's
        ("color=blue", "unknown query parameter"),
    ):
        status, body, _ = await api("GET", f"/api/v1/dids?{query}")
        assert status == 400 and message in body["error"], query
    status, body, _ = await api("PUT", "/api/v1/tenants/acme", {})
    assert status == 405
    status, body, _ = await api("POST", "/api/v1/tenants", {"name": "x" * 70000})
    assert status == 413 and "exceeds the limit of 65536 bytes" in body["error"]
    # a NUL PostgreSQL cannot store is refused by the checks, as c4 check does: 422, not a 500
    status, body, _ = await api("PATCH", "/api/v1/dids/4420", {"match": "4420\u0000"})
    assert status == 422 and body["error"].startswith("dids[4420].match: '4420\\x00' contains a NUL character"), body


# --- authentication ----------------------------------------------------------------------


def api_routes(app: web.Application, prefix: str = ""):
    """(method, path template) of every route of an application and its sub-applications."""
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:
            yield from api_routes(info["app"])
            continue
        for route in resource:
            if route.method != "HEAD":
                yield route.method, resource.canonical


async def test_every_api_route_needs_a_valid_token(api, seeded, table_file):
    async def revoked(conn):
        token_id, token = await create_token(conn, "acme")
        await revoke_token(conn, token_id)
        return token

    revoked_token = await db(seeded["dsn"], revoked)
    app = make_app(FileTableSource(table_file), dsn="postgresql:///x", api_token=ADMIN)
    routes = [(m, p) for m, p in api_routes(app) if p.startswith("/api/v1/") and p != "/api/v1/openapi.json"]
    assert len(routes) == 5 * len(COLLECTIONS) + 1  # and GET /api/v1/cdrs
    for method, template in routes:
        path = template.replace("{name}", "acme").replace("{tenant}", "acme").replace("{prefix}", "39")
        for headers in ({}, {"Authorization": "Basic YWRtaW46eA=="}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {revoked_token}"},
                        {"Authorization": f"Bearer {ADMIN}x"}):  # fmt: skip
            status, body, response_headers = await api.as_(None)(method, path, {} if method in ("POST", "PATCH") else None, headers=headers)
            assert status == 401, (method, path, headers)
            assert response_headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
            assert "error" in body
    # the description needs none
    status, spec, _ = await api.as_(None)("GET", "/api/v1/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")


async def test_without_a_database_there_is_no_api(aiohttp_client, table_file):
    client = await aiohttp_client(make_app(FileTableSource(table_file), api_token=ADMIN))
    status, body, _ = await Api(client)("GET", "/api/v1/tenants")
    assert status == 404 and body["error"] == "no such resource: /api/v1/tenants"


async def test_database_down_is_503_and_routing_goes_on(aiohttp_client, table_file, tmp_path):
    dsn = f"postgresql://postgres@/nope?host={tmp_path}&port=1"
    client = await aiohttp_client(make_app(FileTableSource(table_file), dsn=dsn, api_token=ADMIN))
    status, body, _ = await Api(client)("GET", "/api/v1/tenants")
    assert status == 503 and body["error"].startswith("database unavailable")
    status, body, _ = await Api(client).as_("c4t_some-tenant-token")("GET", "/api/v1/dids")
    assert status == 503
    async with client.get("/health") as response:
        assert response.status == 200


# --- tenants see their own -----------------------------------------------------------------


async def test_a_tenant_token_sees_and_changes_only_its_own(api, seeded):
    acme, globex = api.as_(seeded["tokens"]["acme"]), api.as_(seeded["tokens"]["globex"])
    # Another tenant's items do not exist: every verb is a 404.
    for path in ("/api/v1/ipbxs/globex-pbx", "/api/v1/dids/4420", "/api/v1/routes/globex/"):
        for method, body in (("GET", None), ("PATCH", {}), ("PATCH", {"tenant": "acme"}), ("DELETE", None)):
            status, reply, _ = await acme(method, path, body)
            assert status == 404, (method, path)
            assert reply["error"].endswith(": not found")
    for path in ("/api/v1/carriers/carrier-b", "/api/v1/trunks/carrier-b-1", "/api/v1/trunks/carrier-b-2"):
        assert (await globex("GET", path))[0] == 404
    # Lists never leak, whatever the filter.
    for collection in ("ipbxs", "dids", "routes"):
        mine = await acme.all(collection)
        assert mine and {i["tenant"] for i in mine} == {"acme"}, collection
        assert await acme.all(collection, tenant="globex") == []
    assert [c["name"] for c in await globex.all("carriers")] == ["carrier-a"]
    assert [t["name"] for t in await globex.all("trunks")] == ["carrier-a-1"]
    assert await globex.all("trunks", tenant="acme") == []
    assert [c["name"] for c in await acme.all("carriers")] == ["carrier-a", "carrier-b"]
    assert len(await acme.all("normalization_profiles")) == 2
    # Creating for another tenant is 403, whether it exists or not.
    for collection, item in (
        ("ipbxs", {"name": "x", "tenant": "globex", "targets": ["sip:10.7.7.7"]}),
        ("dids", {"tenant": "globex", "prefix": "4429", "ipbx": "globex-pbx"}),
        ("routes", {"tenant": "nobody", "prefix": "1", "trunks": ["carrier-a-1"]}),
    ):
        status, body, _ = await acme("POST", url(collection), item)
        assert status == 403 and "own tenant" in body["error"], collection
    # References to another tenant's items are unknown, not "someone else's".
    status, body, _ = await acme("POST", "/api/v1/dids", {"tenant": "acme", "prefix": "4429", "ipbx": "globex-pbx"})
    assert status == 422 and body["error"] == "dids[4429].ipbx: unknown IPBX 'globex-pbx'"
    status, body, _ = await globex("POST", "/api/v1/routes", {"prefix": "1", "trunks": ["carrier-b-1"]})
    assert status == 422 and body["error"] == "routes[globex/1].trunks[0]: unknown trunk 'carrier-b-1'"
    status, body, _ = await globex("POST", "/api/v1/ipbxs", {"name": "g2", "targets": ["sip:10.8.8.8"], "sources": ["10.0.0.10"]})
    assert status == 409 and body["error"] == "ipbxs[g2].sources: 10.0.0.10/32 is also a source of another IPBX or trunk"
    # Admin-only collections and writes.
    for method, path, body in (
        ("GET", "/api/v1/tenants", None), ("GET", "/api/v1/tenants/acme", None), ("POST", "/api/v1/tenants", {"name": "x"}),
        ("DELETE", "/api/v1/tenants/acme", None), ("POST", "/api/v1/normalization_profiles", {"name": "x"}),
        ("PATCH", "/api/v1/normalization_profiles/it", {}), ("POST", "/api/v1/carriers", {"name": "x", "tenant": "acme"}),
        ("PATCH", "/api/v1/carriers/carrier-b", {}), ("DELETE", "/api/v1/trunks/carrier-b-2", None),
        ("PATCH", "/api/v1/trunks/carrier-b-1", {"fr_timer": 1000}),
    ):
        status, reply, _ = await acme(method, path, body)
        assert status == 403, (method, path)
    # Its own: every verb; the tenant may be left out.
    status, pbx, _ = await acme("POST", "/api/v1/ipbxs", {"name": "acme-3", "targets": ["sip:10.0.9.9"], "sources": ["10.0.9.0/24"]})
    assert status == 201 and pbx["tenant"] == "acme"
    assert (await acme("POST", "/api/v1/dids", {"prefix": "3988", "ipbx": "acme-3"}))[0] == 201
    assert (await acme("PATCH", "/api/v1/dids/3988", {"match": "3988[0-9]{3}"}))[0] == 200
    assert (await acme("POST", "/api/v1/routes", {"prefix": "33", "trunks": ["carrier-b-2", "carrier-a-1"]}))[0] == 201
    assert (await acme("PATCH", "/api/v1/routes/acme/33", {"trunks": ["carrier-a-1"]}))[0] == 200
    assert (await acme("DELETE", "/api/v1/routes/acme/33"))[0] == 204
    assert (await acme("DELETE", "/api/v1/ipbxs/acme-3"))[0] == 409  # its DID uses it
    assert (await acme("DELETE", "/api/v1/dids/3988"))[0] == 204
    assert (await acme("DELETE", "/api/v1/ipbxs/acme-3"))[0] == 204
    exported, _ = await db(seeded["dsn"], export_document)
    assert same_document(exported, validate_document(document()))
    assert not any("globex-pbx'" in text and "belongs" in text for text in api.seen)


# --- secrets -------------------------------------------------------------------------------


async def test_passwords_are_write_only(api, seeded, caplog):
    caplog.set_level(logging.INFO, "c4.api")
    password = "Zq-very-secret-7"
    trunk = {"name": "t-auth", "carrier": "carrier-a", "target": "sip:192.0.2.99",
             "auth": {"username": "u", "password": password, "realm": "r"}}  # fmt: skip

    async def stored() -> str:
        exported, _ = await db(seeded["dsn"], export_document)
        return next(t for t in exported["trunks"] if t["name"] == "t-auth")["auth"]["password"]

    status, created, _ = await api("POST", "/api/v1/trunks", trunk)
    assert status == 201 and created["auth"] == {"username": "u", "password": MASK, "realm": "r"}
    assert await stored() == password  # c4 db export has it
    # Sending the mask back (a GET, edited, PATCHed) keeps the password.
    status, patched, _ = await api("PATCH", "/api/v1/trunks/t-auth", {"auth": {**created["auth"], "username": "v"}, "fr_timer": 1500})
    assert status == 200 and patched["auth"] == {"username": "v", "password": MASK, "realm": "r"}
    assert await stored() == password
    status, _, _ = await api("PATCH", "/api/v1/trunks/t-auth", {"fr_inv_timer": 20000})
    assert await stored() == password
    # The mask is never a password: not on create, not where none is stored.
    status, body, _ = await api("POST", "/api/v1/trunks", {**trunk, "name": "t2", "auth": {**trunk["auth"], "password": MASK}})
    assert status == 422 and "auth.password" in body["error"]
    status, body, _ = await api("PATCH", "/api/v1/trunks/carrier-b-2", {"auth": {"username": "u", "password": MASK, "realm": "r"}})
    assert status == 422 and "auth.password" in body["error"]
    # Errors never echo it: a duplicate, a bad field beside it, a bad password.
    assert (await api("POST", "/api/v1/trunks", trunk))[0] == 409
    assert (await api("PATCH", "/api/v1/trunks/t-auth", {"auth": {"username": "u", "password": password + "2", "realm": "r"}, "fr_timer": 0}))[0] == 422
    assert (await api("PATCH", "/api/v1/trunks/t-auth", {"auth": {"username": "u", "password": password + "\r\n", "realm": "r"}}))[0] == 422
    assert (await api("PATCH", "/api/v1/trunks/t-auth", {"auth": {"username": "u", "password": password, "realm": "r", "x": 1}}))[0] == 422
    status, body, _ = await api("POST", "/api/v1/trunks", {**trunk, "name": "t3", "sources": ["10.0.0.10"]})
    assert status == 409
    await api.all("trunks")
    await api.as_(seeded["tokens"]["globex"]).all("trunks")
    assert (await api("GET", "/api/v1/trunks/carrier-a-1"))[1]["auth"]["password"] == MASK
    assert api.seen and not any(password in text for text in api.seen)
    assert "event=api_change method=PATCH item=trunks[t-auth] by=admin" in caplog.text  # the audit line
    assert password not in caplog.text
    assert not any(f'"password":"{SECRET}"' in text for text in api.seen)
    # A new password does replace it.
    assert (await api("PATCH", "/api/v1/trunks/t-auth", {"auth": {"username": "u", "password": "fresh", "realm": "r"}}))[0] == 200
    assert await stored() == "fresh"


# --- paging ---------------------------------------------------------------------------------


async def test_keyset_paging_walks_thousands_of_dids(api, seeded):
    count = 5000

    async def bulk(conn):
        await conn.copy_records_to_table(
            "dids", columns=["prefix", "tenant", "ipbx"],
            records=[(f"1{n:07d}", "globex" if n % 3 else "acme", "globex-pbx" if n % 3 else "acme-pbx") for n in range(count)],
        )  # fmt: skip

    await db(seeded["dsn"], bulk)
    exported, _ = await db(seeded["dsn"], export_document)
    every = sorted(d["prefix"] for d in exported["dids"])
    assert len(every) == count + 4
    for limit in (1000, 333):
        pages, cursor, walked = 0, None, []
        while True:
            status, page, _ = await api("GET", f"/api/v1/dids?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200 and len(page["items"]) <= limit
            walked += [d["prefix"] for d in page["items"]]
            pages += 1
            cursor = page["next"]
            if cursor is None:
                break
        assert walked == every  # in key order, none twice, none missing
        assert pages == -(-len(every) // limit)
    status, page, _ = await api("GET", "/api/v1/dids")
    assert len(page["items"]) == 100 and page["next"]
    acme_dids = await api.as_(seeded["tokens"]["acme"]).all("dids", limit=250)
    assert [d["prefix"] for d in acme_dids] == sorted(d["prefix"] for d in exported["dids"] if d["tenant"] == "acme")
    assert [d["prefix"] for d in await api.all("dids", tenant="globex", limit=1000)] == sorted(
        d["prefix"] for d in exported["dids"] if d["tenant"] == "globex"
    )


async def test_routes_page_on_tenant_and_prefix(api):
    for n in range(30):
        assert (await api("POST", "/api/v1/routes", {"tenant": "globex" if n % 2 else "acme", "prefix": f"7{n}", "trunks": ["carrier-a-1"]}))[0] == 201
    walked = await api.all("routes", limit=7)
    keys = [(r["tenant"], r["prefix"]) for r in walked]
    assert len(keys) == 34 and len(set(keys)) == 34 and keys == sorted(keys)


# --- the description --------------------------------------------------------------------------


def test_openapi_describes_every_route_and_nothing_else(table_file):
    app = make_app(FileTableSource(table_file), dsn="postgresql:///x", api_token=ADMIN)
    served = {(method.lower(), path) for method, path in api_routes(app)}
    described = {
        (method, path)
        for path, item in description()["paths"].items()
        for method in item if method in ("get", "post", "patch", "delete", "put")
    }  # fmt: skip
    assert served == described
    spec = description()
    for path, item in spec["paths"].items():  # every path parameter is declared
        names = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
    for schema in spec["components"]["schemas"].values():
        assert set(schema.get("required", ())) <= set(schema.get("properties", {}))


# --- the round trip ------------------------------------------------------------------------------


async def test_a_table_built_through_the_api_passes_c4_check(aiohttp_client, pg_dsn, table_file, tmp_path):
    client = await aiohttp_client(make_app(FileTableSource(table_file), dsn=pg_dsn, api_token=ADMIN))
    admin = Api(client)
    for collection in ("tenants", "normalization_profiles", "carriers", "ipbxs", "trunks"):
        for item in BASE_DOCUMENT[collection]:
            status, body, _ = await admin("POST", url(collection), item)
            assert status == 201, body
    tokens = await db(pg_dsn, lambda conn: create_token(conn, "acme"))
    acme = admin.as_(tokens[1])
    for collection in ("dids", "routes"):
        for item in BASE_DOCUMENT[collection]:
            caller = acme if item["tenant"] == "acme" else admin
            status, body, _ = await caller("POST", url(collection), item)
            assert status == 201, body
    exported = subprocess.run([*c4_command(), "db", "export", "--dsn", pg_dsn], capture_output=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    path = tmp_path / "exported.json"
    path.write_bytes(exported.stdout)
    checked = subprocess.run([*c4_command(), "check", str(path)], capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert b": ok, version" in checked.stdout
    assert same_document(orjson.loads(exported.stdout), validate_document(document()))


# --- a real c4 serve: --routing-from and --api-listen ----------------------------------------------


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("C4_DSN", "C4_API_TOKEN")}
    return {**env, **extra}


class Serve:
    def __init__(self, *args: str, tmp_path: Path, port: int, env: dict | None = None) -> None:
        self.log = tmp_path / f"serve-{port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*c4_command(), "serve", *args], stdout=log, stderr=subprocess.STDOUT, env=env or environment()
            )

    async def wait(self, session: aiohttp.ClientSession, url: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                async with session.get(url) as response:
                    if response.status in (200, 401):
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "c4 serve did not come up: " + self.log.read_text()
            await asyncio.sleep(0.1)

    def stop(self) -> str:
        self.process.terminate()
        try:
            assert self.process.wait(timeout=30) == 0, self.log.read_text()
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return self.log.read_text()


QUERY = {"source_ip": "192.0.2.1", "from_uri": "sip:1@a", "to_uri": "sip:0612345678@b"}


async def test_c4_serve_routing_from_and_api_listen(seeded, table_file, tmp_path):
    routing_port, api_port, open_port = free_tcp_port(), free_tcp_port(), free_tcp_port()
    # the database and the admin token from the environment, as in production
    # with a database, the routing table comes from it too
    closed = Serve("--table-cache", str(tmp_path / "cache.json"), "--port", str(routing_port), "--routing-from", "10.0.0.0/8",
                   "--routing-from", "::1/128", "--api-listen", f"127.0.0.1:{api_port}",
                   tmp_path=tmp_path, port=routing_port, env=environment(C4_DSN=seeded["dsn"], C4_API_TOKEN=ADMIN))  # fmt: skip
    opened = Serve("--table", str(table_file), "--port", str(open_port), "--routing-from", "127.0.0.1/32",
                   tmp_path=tmp_path, port=open_port)  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            base, api_base, open_base = (f"http://127.0.0.1:{p}" for p in (routing_port, api_port, open_port))
            await closed.wait(session, f"{base}/health")
            await closed.wait(session, f"{api_base}/api/v1/openapi.json")
            await opened.wait(session, f"{open_base}/health")
            # 127.0.0.1 is not in 10.0.0.0/8 or ::1: no routes, and no credentials
            async with session.post(f"{base}/kamailio/rtjson", json=QUERY) as response:
                assert response.status == 403
                body = await response.json()
                assert body == {"error": "127.0.0.1 may not ask for routes (see --routing-from)"}
            async with session.post(f"{open_base}/kamailio/rtjson", json=QUERY) as response:
                assert response.status == 200 and (await response.json())["rtjson"]["success"]
            async with session.get(f"{base}/metrics") as response:
                assert 'c4_routing_bad_requests_total{reason="forbidden_source"} 1.0' in await response.text()
            # the API is on its own listener only, and the routing endpoint is not there
            headers = {"Authorization": f"Bearer {seeded['tokens']['acme']}"}
            async with session.get(f"{api_base}/api/v1/dids", headers=headers) as response:
                assert response.status == 200 and {d["tenant"] for d in (await response.json())["items"]} == {"acme"}
            async with session.get(f"{api_base}/api/v1/tenants", headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                assert response.status == 200 and len((await response.json())["items"]) == 2
            async with session.get(f"{base}/api/v1/dids", headers=headers) as response:
                assert response.status == 404
            async with session.post(f"{api_base}/kamailio/rtjson", json=QUERY) as response:
                assert response.status == 404
            async with session.get(f"{open_base}/api/v1/openapi.json") as response:
                assert response.status == 404  # no --dsn: no API
    finally:
        log = closed.stop()
        opened.stop()
    assert "api=127.0.0.1:" in log


def test_c4_serve_refuses_api_listen_without_a_database(table_file):
    result = subprocess.run(
        [*c4_command(), "serve", "--table", str(table_file), "--api-listen", "127.0.0.1:1"],
        capture_output=True, timeout=60, env=environment(),
    )  # fmt: skip
    assert result.returncode == 2 and b"--api-listen needs a database" in result.stderr
    bad = subprocess.run([*c4_command(), "serve", "--table", str(table_file), "--routing-from", "10.0.0.1/8"], capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"has host bits set" in bad.stderr


def test_routing_from_unit(table_file):
    from c4http.views import source_filter

    allowed = source_filter(["127.0.0.0/8", "2001:db8::/32"])
    assert allowed("127.0.0.1") and allowed("::ffff:127.0.0.5") and allowed("2001:db8::1")
    assert not allowed("10.0.0.1") and not allowed(None) and not allowed("") and not allowed("::1")


async def test_names_are_url_encoded_in_paths(api):
    for name in ("carrier a", "carrier/b", "é?#%"):
        status, created, headers = await api("POST", "/api/v1/carriers", {"name": name})
        assert status == 201, created
        location = URL(headers["Location"], encoded=True)
        assert location.raw_path == "/api/v1/carriers/" + quote(name, safe="")
        status, got, _ = await api("GET", location)
        assert (status, got) == (200, {"name": name, "tenant": None}), location
        assert (await api("PATCH", location, {"name": name}))[0] == 200
        assert (await api("DELETE", location))[0] == 204
