"""The provisioning API: the routing document's entities over HTTP, in PostgreSQL.

    GET    /api/v1/{collection}            list (keyset pages: limit, cursor; filter: tenant)
    POST   /api/v1/{collection}            create
    GET    /api/v1/{collection}/{name}     read       (tenants, normalization_profiles,
    PATCH  /api/v1/{collection}/{name}     change      ipbxs, carriers, trunks)
    DELETE /api/v1/{collection}/{name}     delete
           /api/v1/dids/{prefix}           the same for DIDs
           /api/v1/routes/{tenant}/{prefix}  and routes; the default route (prefix "")
                                             is /api/v1/routes/{tenant}/
    GET    /api/v1/cdrs                    call records (c4http/cdrs.py)
    GET    /api/v1/openapi.json            the OpenAPI 3 description (no token needed)

An item's JSON is its entry in the routing document in checked form (as
``c4 db export`` prints it), except that a trunk's ``auth.password`` reads
as ``***``. Every write is checked by ``c4kemi.document.validate_entity``,
the checks of ``c4 check``, against the names the caller may see; what
only the database can tell (a duplicate key, a source CIDR another entity
has, something still in use) is a 409. Docs: docs/api.md.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from aiohttp import web

from c4kemi.db.documents import setup_connection, tenant_blocks
from c4kemi.document import (
    DocumentError,
    _refuse_duplicate_keys,
    entity_where,
    validate_entity,
)
from c4kemi.overlaps import owner_name

from .app import DEFAULT_MAX_BODY, JSON, MAX_BODY, UTF8, error_response, json_errors
from .auth import ADMIN_TOKEN, PRINCIPAL, PUBLIC_PATHS, Principal, authenticate
from .logfmt import log_event

__all__ = [
    "ACCESS", "API_PREFIX", "COLLECTIONS", "DEFAULT_LIMIT", "MASK", "MAX_LIMIT", "POOL",
    "add_api", "api_listener", "make_api_app",
]

log = logging.getLogger("c4.api")

API_PREFIX = "/api/v1"
OPENAPI_PATH = "/openapi.json"
MASK = "***"  # what reads show for a trunk's auth.password
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

POOL = web.AppKey("c4_api_pool", asyncpg.Pool)
DSN = web.AppKey("c4_api_dsn", str)

# What a tenant token may do, by collection: read nothing / everything /
# its own tenant's items and the shared ones (carrier tenant NULL) / its own
# items; and whether it may write its own items. The admin token may do
# everything. Items a token may not read do not exist for it (404).
ACCESS = {
    "tenants": ("none", False),
    "normalization_profiles": ("all", False),
    "carriers": ("own+shared", False),
    "trunks": ("own+shared", False),
    "ipbxs": ("own", True),
    "dids": ("own", True),
    "routes": ("own", True),
}


@dataclass(frozen=True)
class Spec:
    """How one collection lives in the database."""

    name: str
    table: str
    keys: tuple[str, ...]  # the item fields that address it; never change
    select: str  # SELECT ... FROM ... (alias), no WHERE
    key_columns: tuple[str, ...]  # the keys as SQL
    tenant_column: str | None  # the owning tenant as SQL (None: the collection has no tenant)
    lock: str  # FOR UPDATE OF this alias


SPECS = {
    spec.name: spec
    for spec in (
        Spec(
            "tenants", "tenants", ("name",), "SELECT x.name, x.max_channels, x.number_blocks, x.address_blocks FROM tenants x",
            ("x.name",), None, "x",
        ),
        Spec(
            "normalization_profiles", "normalization_profiles", ("name",),
            "SELECT x.name, x.country_code, x.intl_prefix, x.ld_prefix, x.always_plus, x.to_e164, x.from_e164"
            " FROM normalization_profiles x",
            ("x.name",), None, "x",
        ),
        Spec("carriers", "carriers", ("name",), "SELECT x.name, x.tenant FROM carriers x", ("x.name",), "x.tenant", "x"),
        Spec(
            "ipbxs", "ipbxs", ("name",),
            "SELECT x.name, x.tenant, x.targets, x.normalization, x.fr_timer, x.fr_inv_timer, x.branch_flags,"
            " x.allow_wide_sources FROM ipbxs x",
            ("x.name",), "x.tenant", "x",
        ),
        Spec(
            "trunks", "trunks", ("name",),
            "SELECT x.name, x.carrier, x.target, x.normalization, x.fr_timer, x.fr_inv_timer, x.branch_flags,"
            " x.allow_wide_sources, x.auth_username, x.auth_password, x.auth_realm, x.max_channels, x.max_cps"
            " FROM trunks x JOIN carriers c ON c.name = x.carrier",
            ("x.name",), "c.tenant", "x",
        ),
        Spec("dids", "dids", ("prefix",), "SELECT x.tenant, x.prefix, x.ipbx, x.match FROM dids x", ("x.prefix",), "x.tenant", "x"),
        Spec(
            "routes", "routes", ("tenant", "prefix"), "SELECT x.tenant, x.prefix FROM routes x",
            ("x.tenant", "x.prefix"), "x.tenant", "x",
        ),
    )
}
COLLECTIONS = tuple(SPECS)

# Channel limits (tenants: max_channels; trunks: both): NULL in the
# database, absent from items, when not set.
LIMITS = ("max_channels", "max_cps")

# Tables whose rows belong to another's: "in use by route_trunks" is "in use by routes".
CHILD_TABLES = {"route_trunks": "routes", "sources": None, "api_tokens": None}
# The field of each collection the deferred route_trunk_owner trigger is about.
OWNER_FIELDS = {"routes": "trunks", "trunks": "carrier", "carriers": "tenant"}


def _audit(request: web.Request, where: str, warnings: list[str] = ()) -> None:
    """One line per change: what, and which token's tenant (never the token); one more per warning."""
    principal = request[PRINCIPAL]
    by = "admin" if principal.admin else f"tenant:{principal.tenant}"
    log_event(log, logging.INFO, "api_change", method=request.method, item=where, by=by, remote=request.remote)
    for warning in warnings:
        log_event(log, logging.WARNING, "api_overlap", item=where, by=by, warning=warning)


def _warning_headers(warnings: list[str], **headers: str) -> list[tuple[str, str]]:
    """An overlap an admin made on purpose, said back in Warning headers (code 199, one each, ASCII)."""
    quoted = (w.replace("\\", "\\\\").replace('"', '\\"').encode("ascii", "backslashreplace").decode() for w in warnings)
    return [*headers.items(), *(("Warning", f'199 c4 "{warning}"') for warning in quoted)]


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


def unavailable(exc: BaseException) -> web.Response:
    return error_response(503, f"database unavailable: {type(exc).__name__}", headers={"Retry-After": "1"})


def reply(body: Any, status: int = 200, headers: Any = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)


# -- the application ------------------------------------------------------------


def add_api(app: web.Application, dsn: str, api_token: str | None = None, *, pool_size: int = 10) -> None:
    """Serve the provisioning API of the database ``dsn`` under /api/v1 of ``app``."""
    api = web.Application(middlewares=[api_errors, authenticate])
    api[DSN] = dsn
    if api_token:
        api[ADMIN_TOKEN] = api_token
    api[PUBLIC_PATHS] = frozenset({API_PREFIX + OPENAPI_PATH})
    api.cleanup_ctx.append(_pool_context(pool_size))
    for name in COLLECTIONS:
        collection = api.router.add_resource(f"/{name}", name=name)
        collection.add_route("GET", list_items)
        collection.add_route("POST", create_item)
        if name == "routes":
            # [0-9]* also matches nothing: /routes/acme/ is acme's default route.
            item_path = "/routes/{tenant}/{prefix:[0-9]*}"
        elif name == "dids":
            item_path = "/dids/{prefix}"
        else:
            item_path = f"/{name}/{{name}}"
        item = api.router.add_resource(item_path, name=f"{name}-item")
        item.add_route("GET", get_item)
        item.add_route("PATCH", patch_item)
        item.add_route("DELETE", delete_item)
    from .cdrs import list_cdrs  # imports this module

    api.router.add_get("/cdrs", list_cdrs, name="cdrs")
    api.router.add_get(OPENAPI_PATH, openapi_description, name="openapi")
    app.add_subapp(API_PREFIX, api)


def make_api_app(dsn: str, api_token: str | None = None, *, max_body: int = DEFAULT_MAX_BODY) -> web.Application:
    """An application serving only the API (``c4 serve --api-listen``)."""
    app = web.Application(client_max_size=max_body, middlewares=[json_errors])
    app[MAX_BODY] = max_body
    add_api(app, dsn, api_token)
    return app


def api_listener(api_app: web.Application, host: str, port: int, access_log: Any = None):
    """A cleanup context that serves ``api_app`` on its own address while the routing app runs."""

    async def serve(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(api_app, access_log=access_log)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"{exc.strerror or exc} (API listener {host}:{port})") from None
        yield
        await runner.cleanup()

    return serve


def _pool_context(pool_size: int):
    async def pool(app: web.Application) -> AsyncIterator[None]:
        # min_size=0: nothing connects at startup, so routing starts and
        # serves even while PostgreSQL is down; the API then answers 503.
        app[POOL] = await asyncpg.create_pool(
            app[DSN], init=setup_connection, min_size=0, max_size=pool_size, timeout=5, command_timeout=60
        )
        yield
        await app[POOL].close()

    return pool


@web.middleware
async def api_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.message}
        if exc.errors:
            body["errors"] = exc.errors
        return reply(body, exc.status)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError) as exc:  # fmt: skip
        return unavailable(exc)
    except asyncpg.exceptions.TransactionRollbackError:  # a deadlock or serialization failure
        return error_response(409, "conflicting concurrent change; try again")


async def openapi_description(request: web.Request) -> web.Response:
    from .openapi import description

    return reply(description())


# -- requests -------------------------------------------------------------------


def _spec(request: web.Request) -> Spec:
    return SPECS[request.match_info.route.resource.name.removesuffix("-item")]


def _key(request: web.Request, spec: Spec) -> tuple[str, ...]:
    return tuple(request.match_info[key] for key in spec.keys)


def _where(spec: Spec, key: tuple) -> str:
    return entity_where(spec.name, dict(zip(spec.keys, key)))


def _may_read(spec: Spec, principal: Principal) -> None:
    if not principal.admin and ACCESS[spec.name][0] == "none":
        raise ApiError(403, f"{spec.name}: only the admin token has access")


def _may_write(spec: Spec, principal: Principal) -> None:
    _may_read(spec, principal)
    if not principal.admin and not ACCESS[spec.name][1]:
        raise ApiError(403, f"{spec.name}: a tenant token may read them; changing them takes the admin token")


async def _body(request: web.Request) -> dict[str, Any]:
    if "Content-Type" in request.headers and (
        request.content_type != JSON or (request.charset is not None and request.charset.lower() not in UTF8)
    ):
        raise ApiError(415, f"unsupported Content-Type {request.headers['Content-Type']!r}: send application/json (UTF-8)")
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body exceeds the limit of {request.config_dict[MAX_BODY]} bytes") from None
    try:
        # As c4 check reads a document: a repeated key would silently drop a value.
        body = json.loads(data, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}") from None
    if type(body) is not dict:
        raise ApiError(400, f"the body must be a JSON object, not {type(body).__name__}")
    problem = _bad_body_text(body)
    if problem is not None:
        raise ApiError(400, problem)
    return body


# json.loads takes a lone "\ud800", which no UTF-8 encoder (orjson, asyncpg)
# can write back. (A NUL is the checks' business: 422 naming the field, as c4 check.)
_BAD_BODY_TEXT = re.compile(r"[\ud800-\udfff]")


def _bad_body_text(body: dict[str, Any]) -> str | None:
    """Which member of the body (or member name) holds a lone surrogate, as an error message."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:  # no recursion: the body may be nested as deep as json.loads allows
        where, value = stack.pop()
        if isinstance(value, str):
            found = _BAD_BODY_TEXT.search(value)
            if found:
                return f"body member {where.lstrip('.')} holds U+{ord(found.group()):04X}: lone surrogates are not allowed"
        elif isinstance(value, dict):
            for key, member in value.items():
                found = _BAD_BODY_TEXT.search(key)
                if found:
                    return f"a body member name ({ascii(key)}) holds U+{ord(found.group()):04X}: lone surrogates are not allowed"
                stack.append((f"{where}.{key}", member))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", member) for i, member in enumerate(value))
    return None


# -- reading --------------------------------------------------------------------


def _visible(spec: Spec, principal: Principal, params: list) -> list[str]:
    """SQL conditions limiting ``spec``'s rows to what ``principal`` may read."""
    if principal.admin:
        return []
    scope = ACCESS[spec.name][0]
    if scope == "all":
        return []
    if scope == "none":
        return ["false"]
    params.append(principal.tenant)
    own = f"{spec.tenant_column} = ${len(params)}"
    return [f"({spec.tenant_column} IS NULL OR {own})"] if scope == "own+shared" else [own]


async def _fetch(conn, spec: Spec, principal: Principal, conditions: list[str], params: list,
                 limit: int | None = None, lock: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    conditions = conditions + _visible(spec, principal, params)
    sql = spec.select
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY " + ", ".join(spec.key_columns)
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    if lock:
        sql += f" FOR UPDATE OF {spec.lock}"
    return await _items(conn, spec, await conn.fetch(sql, *params))


def _wide(row) -> dict[str, bool]:
    """allow_wide_sources as the document has it: present only when true."""
    return {"allow_wide_sources": True} if row["allow_wide_sources"] else {}


async def _items(conn, spec: Spec, rows: list) -> list[dict[str, Any]]:
    """Rows in the checked form of the document (as c4 db export prints them)."""
    if spec.name in ("ipbxs", "trunks"):
        column = spec.name[:-1]
        sources: dict[str, list[str]] = {}
        for row in await conn.fetch(
            f"SELECT cidr, {column} AS owner FROM sources WHERE {column} = ANY($1::text[]) ORDER BY {column}, position",
            [row["name"] for row in rows],
        ):
            sources.setdefault(row["owner"], []).append(str(row["cidr"]))
        endpoint = ("normalization", "fr_timer", "fr_inv_timer", "branch_flags")
        if spec.name == "ipbxs":
            return [
                {"name": r["name"], "tenant": r["tenant"], "targets": list(r["targets"]),
                 **{k: r[k] for k in endpoint}, "sources": sources.get(r["name"], []), **_wide(r)}
                for r in rows
            ]  # fmt: skip
        return [
            {"name": r["name"], "carrier": r["carrier"], "target": r["target"], **{k: r[k] for k in endpoint},
             "sources": sources.get(r["name"], []), **_wide(r),
             "auth": {"username": r["auth_username"], "password": r["auth_password"], "realm": r["auth_realm"]}
             if r["auth_username"] is not None else None,
             **{k: r[k] for k in LIMITS if r[k] is not None}}
            for r in rows
        ]  # fmt: skip
    if spec.name == "routes":
        choices: dict[tuple[str, str], list[dict]] = {}
        for row in await conn.fetch(
            "SELECT rt.tenant, rt.prefix, rt.trunk, rt.priority, rt.weight FROM route_trunks rt"
            " JOIN unnest($1::text[], $2::text[]) AS k(tenant, prefix) ON rt.tenant = k.tenant AND rt.prefix = k.prefix"
            " ORDER BY rt.tenant, rt.prefix, rt.position",
            [r["tenant"] for r in rows], [r["prefix"] for r in rows],
        ):
            weight = row["weight"]
            choices.setdefault((row["tenant"], row["prefix"]), []).append(
                {"trunk": row["trunk"], "priority": row["priority"], "weight": int(weight) if weight.is_integer() else weight}
            )
        return [{"tenant": r["tenant"], "prefix": r["prefix"], "trunks": choices.get((r["tenant"], r["prefix"]), [])} for r in rows]
    if spec.name == "tenants":  # a limit not set, or no block, is absent, as in the document
        return [{"name": row["name"], **{k: row[k] for k in LIMITS if row.get(k) is not None}, **tenant_blocks(row)} for row in rows]
    return [dict(row) for row in rows]


async def _fetch_one(conn, spec: Spec, principal: Principal, key: tuple, lock: bool = False) -> dict[str, Any] | None:
    params = list(key)
    conditions = [f"{column} = ${index}" for index, column in enumerate(spec.key_columns, 1)]
    found = await _fetch(conn, spec, principal, conditions, params, lock=lock)
    return found[0] if found else None


def masked(spec: Spec, item: dict[str, Any]) -> dict[str, Any]:
    if spec.name == "trunks" and item.get("auth"):
        return {**item, "auth": {**item["auth"], "password": MASK}}
    return item


def item_url(spec: Spec, item: dict[str, Any]) -> str:
    """The item's path, each key part percent-encoded ('/' included: names may hold one)."""
    return f"{API_PREFIX}/{spec.name}/" + "/".join(quote(item[key], safe="") for key in spec.keys)


def _encode_cursor(spec: Spec, item: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([item[key] for key in spec.keys])).decode().rstrip("=")


def _decode_cursor(spec: Spec, cursor: str) -> list[str]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        key = None
    # orjson refuses lone surrogates; a NUL, which no key holds, PostgreSQL text cannot take.
    if not isinstance(key, list) or len(key) != len(spec.keys) or not all(isinstance(part, str) and "\x00" not in part for part in key):
        raise ApiError(400, "bad cursor: give the 'next' value of the previous page as it is")
    return key


def page_limit(query, parameters: tuple[str, ...]) -> int:
    """A list's ``limit``, once the query is known to hold only ``parameters``."""
    unknown = sorted(set(query) - set(parameters))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(unknown)}: use {', '.join(parameters)}")
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}, got {query.get('limit')!r}")
    return limit


async def list_items(request: web.Request) -> web.Response:
    """One page of a collection, in key order: ``{"items": [...], "next": CURSOR or null}``."""
    spec, principal = _spec(request), request[PRINCIPAL]
    _may_read(spec, principal)
    query = request.query
    limit = page_limit(query, ("limit", "cursor", "tenant"))
    conditions: list[str] = []
    params: list[Any] = []
    if "tenant" in query:
        if spec.tenant_column is None:
            raise ApiError(400, f"{spec.name} have no tenant: no tenant filter")
        params.append(query["tenant"])
        conditions.append(f"{spec.tenant_column} = ${len(params)}")
    if "cursor" in query:
        # Keyset paging: the next page starts after the last key of the
        # previous one, through the key's index; no OFFSET to walk.
        key = _decode_cursor(spec, query["cursor"])
        params.extend(key)
        placeholders = ", ".join(f"${len(params) - len(key) + i}" for i in range(1, len(key) + 1))
        conditions.append(f"({', '.join(spec.key_columns)}) > ({placeholders})")
    async with request.config_dict[POOL].acquire() as conn:
        items = await _fetch(conn, spec, principal, conditions, params, limit=limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return reply({"items": [masked(spec, item) for item in items], "next": _encode_cursor(spec, items[-1]) if more else None})


async def get_item(request: web.Request) -> web.Response:
    spec, principal = _spec(request), request[PRINCIPAL]
    _may_read(spec, principal)
    key = _key(request, spec)
    async with request.config_dict[POOL].acquire() as conn:
        item = await _fetch_one(conn, spec, principal, key)
    if item is None:
        raise ApiError(404, f"{_where(spec, key)}: not found")
    return reply(masked(spec, item))


# -- writing --------------------------------------------------------------------


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else []


async def _refs(conn, item: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """What ``item`` refers to, among what ``principal`` may see: validate_entity's refs."""
    refs: dict[str, Any] = {"tenants": set(), "normalization_profiles": set(), "carriers": {}, "ipbxs": {}, "trunks": {}}
    tenants = _names(item.get("tenant"))
    if tenants:
        if principal.admin:
            refs["tenants"] = {r["name"] for r in await conn.fetch("SELECT name FROM tenants WHERE name = $1", tenants[0])}
        else:
            refs["tenants"] = {principal.tenant} & set(tenants)
    profiles = _names(item.get("normalization"))
    if profiles:
        found = await conn.fetch("SELECT name FROM normalization_profiles WHERE name = $1", profiles[0])
        refs["normalization_profiles"] = {r["name"] for r in found}
    for collection, names in (("carriers", _names(item.get("carrier"))), ("ipbxs", _names(item.get("ipbx")))):
        if names:
            params: list[Any] = [names]
            rows = await _fetch(conn, SPECS[collection], principal, ["x.name = ANY($1::text[])"], params)
            refs[collection] = {row["name"]: row for row in rows}
    entries = item.get("trunks")
    if isinstance(entries, list):
        names = [e if isinstance(e, str) else e.get("trunk") for e in entries if isinstance(e, (str, dict))]
        params = [[name for name in names if isinstance(name, str)]]
        conditions = ["x.name = ANY($1::text[])", *_visible(SPECS["trunks"], principal, params)]
        for row in await conn.fetch(
            "SELECT x.name, x.carrier, c.tenant FROM trunks x JOIN carriers c ON c.name = x.carrier WHERE " + " AND ".join(conditions),
            *params,
        ):
            refs["trunks"][row["name"]] = {"carrier": row["carrier"]}
            refs["carriers"][row["carrier"]] = {"tenant": row["tenant"]}
    return refs


async def _checked(conn, spec: Spec, item: dict[str, Any], principal: Principal,
                   current: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The item checked as ``c4 check`` would, and against the space others hold.

    Returns it in checked form with the warnings an admin gets for an
    overlap across owners (a tenant token gets a 409 instead). ``current``:
    the stored item a PATCH changes; only what the change adds is held
    against a tenant token, so an overlap an admin made on purpose does not
    lock the tenant out of its own item.
    """
    if not principal.admin and spec.tenant_column is not None:
        tenant = item.get("tenant")
        if isinstance(tenant, str) and tenant != principal.tenant:
            raise ApiError(403, f"{entity_where(spec.name, item)}.tenant: a tenant token may only write its own tenant's {spec.name}")
    if not principal.admin and item.get("allow_wide_sources") is True and not (current or {}).get("allow_wide_sources"):
        raise ApiError(403, f"{entity_where(spec.name, item)}.allow_wide_sources: only the admin token may allow wide sources")
    try:
        checked = validate_entity(spec.name, item, await _refs(conn, item, principal))
    except DocumentError as exc:
        raise ApiError(422, "; ".join(exc.errors), exc.errors) from None
    warnings: list[str] = []
    if spec.name in ("ipbxs", "trunks"):
        await _check_sources(conn, spec, checked, principal, current, warnings)
    elif spec.name == "dids" and (current is None or current["tenant"] != checked["tenant"]):
        await _check_did_prefix(conn, checked, principal, warnings)
    return checked, warnings


async def _check_sources(conn, spec: Spec, item: dict[str, Any], principal: Principal,
                         current: dict[str, Any] | None, warnings: list[str]) -> None:  # fmt: skip
    """A source CIDR belongs to one IPBX or trunk, and nests in no other owner's for a tenant token.

    The owner of an IPBX's source is its tenant; of a trunk's, its carrier's
    tenant (NULL: a shared carrier, the platform's). The same CIDR twice is
    refused for everyone, as c4 check refuses it.
    """
    where = entity_where(spec.name, item)
    ipbx, trunk = (item["name"], None) if spec.name == "ipbxs" else (None, item["name"])
    if spec.name == "ipbxs":
        owner = item["tenant"]
    else:
        owner = await conn.fetchval("SELECT tenant FROM carriers WHERE name = $1", item["carrier"])
    rows = await conn.fetch(
        # Other entities' sources, and tenants' address blocks, that hold or lie in one of ours.
        "SELECT n.cidr AS mine, s.cidr AS theirs, COALESCE('ipbxs[' || s.ipbx || ']', 'trunks[' || s.trunk || ']') AS other,"
        " COALESCE(i.tenant, c.tenant) AS owner"
        " FROM unnest($1::text[]::cidr[]) AS n(cidr) JOIN sources s ON s.cidr && n.cidr"
        " LEFT JOIN ipbxs i ON i.name = s.ipbx LEFT JOIN trunks t ON t.name = s.trunk"
        " LEFT JOIN carriers c ON c.name = t.carrier"
        " WHERE s.ipbx IS DISTINCT FROM $2 OR s.trunk IS DISTINCT FROM $3"
        " UNION ALL SELECT n.cidr, b.block, 'tenants[' || t.name || '].address_blocks', t.name"
        " FROM unnest($1::text[]::cidr[]) AS n(cidr) CROSS JOIN tenants t CROSS JOIN unnest(t.address_blocks) AS b(block)"
        " WHERE b.block && n.cidr ORDER BY 1, 2",
        item["sources"], ipbx, trunk,
    )
    added = set(item["sources"]) - set((current or {}).get("sources", []))
    taken, captures = [], []
    for row in rows:
        mine, theirs, other = str(row["mine"]), str(row["theirs"]), row["other"]
        if mine == theirs and not other.startswith("tenants["):
            # A tenant token learns that the network is taken, which it must,
            # but not by whom unless it is one of its own tenant's.
            named = principal.admin or row["owner"] == principal.tenant
            taken.append(f"{where}.sources: {mine} is also a source of {other if named else 'another IPBX or trunk'}")
        elif row["owner"] != owner:
            if principal.admin:
                warnings.append(f"{where}.sources: {mine} overlaps {theirs} of {other} ({owner_name(row['owner'])})")
            elif mine in added:
                captures.append(
                    f"{where}.sources: {mine} overlaps the address space of another tenant or of a carrier;"
                    " ask the platform's admin for the network you need"
                )
    if taken:
        raise ApiError(409, "; ".join(taken), taken)
    if not principal.admin:
        await _confine(conn, where + ".sources", "address_blocks", principal, added,
                       lambda source, block: block.version == source.version and source.subnet_of(block), ipaddress.ip_network)  # fmt: skip
    if captures:
        captures = list(dict.fromkeys(captures))
        raise ApiError(409, "; ".join(captures), captures)


async def _confine(conn, where: str, column: str, principal: Principal, added, inside, parse) -> None:
    """A tenant token's new sources or DID lie inside its tenant's blocks, if the admin assigned any."""
    blocks = await conn.fetchval(f"SELECT {column} FROM tenants WHERE name = $1", principal.tenant)
    if not blocks:
        return
    outside = sorted(value for value in added if not any(inside(parse(value), block) for block in blocks))
    if outside:
        assigned = ", ".join(map(str, blocks))
        raise ApiError(403, f"{where}: {', '.join(outside)} outside the {column.replace('_', ' ')} of tenant {principal.tenant!r} ({assigned})")


async def _check_did_prefix(conn, item: dict[str, Any], principal: Principal, warnings: list[str]) -> None:
    """A DID prefix nests in (or holds) no other tenant's DID or number block, for a tenant token; an admin is warned."""
    prefix, where = item["prefix"], entity_where("dids", item)
    if not principal.admin:
        await _confine(conn, where + ".prefix", "number_blocks", principal, [prefix], lambda p, block: p.startswith(block), str)
    rows = await conn.fetch(
        # The shorter prefixes by key, the longer ones by a range on the key's
        # index (digits sort before letters in every collation), then exactly.
        "SELECT prefix, tenant, 'DID' AS kind FROM dids WHERE tenant <> $2 AND (prefix = ANY($3::text[])"
        " OR (prefix > $1 AND prefix < $1 || 'a' AND starts_with(prefix, $1)))"
        " UNION ALL SELECT b.prefix, t.name, 'number block' FROM tenants t CROSS JOIN unnest(t.number_blocks) AS b(prefix)"
        " WHERE t.name <> $2 AND (starts_with($1, b.prefix) OR starts_with(b.prefix, $1))"
        " ORDER BY 1 LIMIT 10",
        prefix, item["tenant"], [prefix[:length] for length in range(1, len(prefix))],
    )
    if rows and not principal.admin:
        raise ApiError(409, f"{where}.prefix: overlaps the numbers of another tenant; ask the platform's admin for the block you need")
    for row in rows:
        relation = "inside" if prefix.startswith(row["prefix"]) else "holding"
        warnings.append(f"{where}.prefix: {relation} {row['kind']} {row['prefix']} of {owner_name(row['tenant'])}")


async def _write(conn, spec: Spec, item: dict[str, Any], new: bool) -> None:
    name = spec.name
    if name == "tenants":
        row = {"max_channels": None, "number_blocks": [], "address_blocks": [], **item}
        await _upsert(conn, "tenants", "name", row, ("max_channels", "number_blocks", "address_blocks"), new)
    elif name == "normalization_profiles":
        columns = ("country_code", "intl_prefix", "ld_prefix", "always_plus", "to_e164", "from_e164")
        await _upsert(conn, "normalization_profiles", "name", item, columns, new)
    elif name == "carriers":
        await _upsert(conn, "carriers", "name", item, ("tenant",), new)
    elif name in ("ipbxs", "trunks"):
        columns = ("targets", "tenant") if name == "ipbxs" else ("carrier", "target")
        columns += ("normalization", "fr_timer", "fr_inv_timer", "branch_flags", "allow_wide_sources")
        row = {key: item.get(key, False) if key == "allow_wide_sources" else item[key] for key in ("name", *columns)}
        if name == "trunks":
            auth = item["auth"] or {}
            row.update(auth_username=auth.get("username"), auth_password=auth.get("password"), auth_realm=auth.get("realm"))
            columns += ("auth_username", "auth_password", "auth_realm", *LIMITS)
            row.update({key: item.get(key) for key in LIMITS})
        await _upsert(conn, name, "name", row, columns, new)
        owner = name[:-1]
        await conn.execute(f"DELETE FROM sources WHERE {owner} = $1", item["name"])
        await conn.execute(
            f"INSERT INTO sources (cidr, {owner}, position) SELECT s.cidr::cidr, $2, s.n - 1"
            " FROM unnest($1::text[]) WITH ORDINALITY AS s(cidr, n)",
            item["sources"], item["name"],
        )
    elif name == "dids":
        await _upsert(conn, "dids", "prefix", item, ("tenant", "ipbx", "match"), new)
    else:
        key = (item["tenant"], item["prefix"])
        if new:
            await conn.execute("INSERT INTO routes (tenant, prefix) VALUES ($1, $2)", *key)
        else:
            await conn.execute("DELETE FROM route_trunks WHERE tenant = $1 AND prefix = $2", *key)
        await conn.executemany(
            "INSERT INTO route_trunks (tenant, prefix, position, trunk, priority, weight) VALUES ($1, $2, $3, $4, $5, $6)",
            [(*key, position, c["trunk"], c["priority"], float(c["weight"])) for position, c in enumerate(item["trunks"])],
        )


async def _upsert(conn, table: str, key: str, item: dict[str, Any], columns: tuple[str, ...], new: bool) -> None:
    values = [item[key], *(item[column] for column in columns)]
    if new:
        names = ", ".join((key, *columns))
        placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await conn.execute(f"INSERT INTO {table} ({names}) VALUES ({placeholders})", *values)
    else:
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, 2))
        await conn.execute(f"UPDATE {table} SET {assignments} WHERE {key} = $1", *values)


def _database_refusal(exc: asyncpg.PostgresError, spec: Spec, where: str, deleting: bool = False) -> ApiError:
    """What a constraint the checks above could not foresee says, as an API error.

    Never the database's own detail text: it would quote the row.
    """
    table = getattr(exc, "table_name", None)
    constraint = getattr(exc, "constraint_name", None) or ""
    if isinstance(exc, asyncpg.UniqueViolationError):
        if table == "sources":
            return ApiError(409, f"{where}.sources: a source is also a source of another IPBX or trunk")
        return ApiError(409, f"{where}: already exists")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        if deleting or table not in (spec.table, "sources", "route_trunks"):
            user = CHILD_TABLES.get(table, table) or table
            return ApiError(409, f"{where}: in use by {user}; change or delete those first")
        return ApiError(409, f"{where}: refers to something deleted meanwhile; try again")
    if isinstance(exc, asyncpg.CheckViolationError) and constraint == "route_trunk_owner":
        field = OWNER_FIELDS.get(spec.name)
        return ApiError(422, f"{where}.{field}: {exc.args[0] if exc.args else exc}" if field else f"{where}: {exc}")
    # e.g. a NUL character in a regular expression: Python takes it, PostgreSQL text cannot hold it
    return ApiError(422, f"{where}: refused by the database ({type(exc).__name__}{f', {constraint}' if constraint else ''})")


async def create_item(request: web.Request) -> web.Response:
    spec, principal = _spec(request), request[PRINCIPAL]
    _may_write(spec, principal)
    body = await _body(request)
    if not principal.admin and spec.tenant_column is not None:
        body.setdefault("tenant", principal.tenant)  # a tenant token's items are its tenant's
    where = entity_where(spec.name, body)
    auth = body.get("auth")
    if spec.name == "trunks" and isinstance(auth, dict) and auth.get("password") == MASK:
        raise ApiError(422, f"{where}.auth.password: {MASK!r} is how reads mask a password; send the password itself")
    try:
        async with request.config_dict[POOL].acquire() as conn:
            async with conn.transaction():
                checked, warnings = await _checked(conn, spec, body, principal)
                await _write(conn, spec, checked, new=True)
            item = await _fetch_one(conn, spec, Principal(), tuple(checked[key] for key in spec.keys))
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise _database_refusal(exc, spec, where) from None
    _audit(request, entity_where(spec.name, item), warnings)
    return reply(masked(spec, item), 201, headers=_warning_headers(warnings, Location=item_url(spec, item)))


async def patch_item(request: web.Request) -> web.Response:
    """Merge the given fields into the item, check the result, store it."""
    spec, principal = _spec(request), request[PRINCIPAL]
    _may_write(spec, principal)
    key = _key(request, spec)
    where = _where(spec, key)
    body = await _body(request)
    try:
        async with request.config_dict[POOL].acquire() as conn:
            async with conn.transaction():
                current = await _fetch_one(conn, spec, principal, key, lock=True)
                if current is None:
                    raise ApiError(404, f"{where}: not found")
                for field in spec.keys:
                    if field in body and body[field] != current[field]:
                        raise ApiError(422, f"{where}.{field}: cannot change; create a new item and delete this one")
                merged = {**current, **body}
                auth = body.get("auth")
                if spec.name == "trunks" and isinstance(auth, dict) and auth.get("password") == MASK:
                    if not current["auth"]:
                        raise ApiError(422, f"{where}.auth.password: {MASK!r} is how reads mask a password; send the password itself")
                    merged["auth"] = {**auth, "password": current["auth"]["password"]}  # the mask sent back: keep it
                checked, warnings = await _checked(conn, spec, merged, principal, current)
                await _write(conn, spec, checked, new=False)
            item = await _fetch_one(conn, spec, Principal(), key)
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise _database_refusal(exc, spec, where) from None
    _audit(request, where, warnings)
    return reply(masked(spec, item), headers=_warning_headers(warnings))


async def delete_item(request: web.Request) -> web.Response:
    spec, principal = _spec(request), request[PRINCIPAL]
    _may_write(spec, principal)
    key = _key(request, spec)
    where = _where(spec, key)
    params: list[Any] = list(key)
    conditions = [f"{column.removeprefix('x.')} = ${i}" for i, column in enumerate(spec.key_columns, 1)]
    if not principal.admin:  # tenant tokens write only collections with a tenant column of their own
        params.append(principal.tenant)
        conditions.append(f"tenant = ${len(params)}")
    try:
        async with request.config_dict[POOL].acquire() as conn:
            deleted = await conn.fetchval(f"DELETE FROM {spec.table} WHERE {' AND '.join(conditions)} RETURNING true", *params)
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise _database_refusal(exc, spec, where, deleting=True) from None
    if not deleted:
        raise ApiError(404, f"{where}: not found")
    _audit(request, where)
    return web.Response(status=204)

