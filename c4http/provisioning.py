"""The provisioning API's handlers: the routing document's entities over HTTP, in PostgreSQL.

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
as ``***``. Every write is checked by ``c4kemi.core.document.validate_entity``,
the checks of ``c4 check``, against the names the caller may see; what
only the database can tell (a duplicate key, a source CIDR another entity
has, something still in use) is a 409. Docs: docs/api.md.

Who may do what is c4http.access; what a write may hold of the space
others hold, c4http.space; the SQL, c4http.queries; the URL table,
c4http.routes; the API application, c4http.app.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from aiohttp import web

from c4kemi.core.document import _refuse_duplicate_keys
from c4kemi.core.entity_checks import entity_where

from .access import may_read, may_write
from .auth import PRINCIPAL, Principal
from .logfmt import log_event
from .queries import SPECS, Spec, database_refusal, delete, fetch_one, fetch_page, write
from .space import check
from .web import API_PREFIX, JSON, MAX_BODY, POOL, UTF8, ApiError, page_limit, reply

__all__ = ["MASK", "create_item", "delete_item", "get_item", "list_items", "patch_item"]

log = logging.getLogger("c4.api")

MASK = "***"  # what reads show for a trunk's auth.password


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


# -- requests -------------------------------------------------------------------


def _spec(request: web.Request) -> Spec:
    return SPECS[request.match_info.route.resource.name.removesuffix("-item")]


def _key(request: web.Request, spec: Spec) -> tuple[str, ...]:
    return tuple(request.match_info[key] for key in spec.keys)


def _where(spec: Spec, key: tuple) -> str:
    return entity_where(spec.name, dict(zip(spec.keys, key)))


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


# -- replies --------------------------------------------------------------------


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


# -- handlers -------------------------------------------------------------------


async def list_items(request: web.Request) -> web.Response:
    """One page of a collection, in key order: ``{"items": [...], "next": CURSOR or null}``."""
    spec, principal = _spec(request), request[PRINCIPAL]
    may_read(spec.name, principal)
    query = request.query
    limit = page_limit(query, ("limit", "cursor", "tenant"))
    tenant = query.get("tenant")
    if tenant is not None and spec.tenant_column is None:
        raise ApiError(400, f"{spec.name} have no tenant: no tenant filter")
    after = _decode_cursor(spec, query["cursor"]) if "cursor" in query else None
    async with request.config_dict[POOL].acquire() as conn:
        items = await fetch_page(conn, spec, principal, tenant=tenant, after=after, limit=limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return reply({"items": [masked(spec, item) for item in items], "next": _encode_cursor(spec, items[-1]) if more else None})


async def get_item(request: web.Request) -> web.Response:
    spec, principal = _spec(request), request[PRINCIPAL]
    may_read(spec.name, principal)
    key = _key(request, spec)
    async with request.config_dict[POOL].acquire() as conn:
        item = await fetch_one(conn, spec, principal, key)
    if item is None:
        raise ApiError(404, f"{_where(spec, key)}: not found")
    return reply(masked(spec, item))


async def create_item(request: web.Request) -> web.Response:
    spec, principal = _spec(request), request[PRINCIPAL]
    may_write(spec.name, principal)
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
                checked, warnings = await check(conn, spec, body, principal)
                await write(conn, spec, checked, new=True)
            item = await fetch_one(conn, spec, Principal(), tuple(checked[key] for key in spec.keys))
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise database_refusal(exc, spec, where) from None
    _audit(request, entity_where(spec.name, item), warnings)
    return reply(masked(spec, item), 201, headers=_warning_headers(warnings, Location=item_url(spec, item)))


async def patch_item(request: web.Request) -> web.Response:
    """Merge the given fields into the item, check the result, store it."""
    spec, principal = _spec(request), request[PRINCIPAL]
    may_write(spec.name, principal)
    key = _key(request, spec)
    where = _where(spec, key)
    body = await _body(request)
    try:
        async with request.config_dict[POOL].acquire() as conn:
            async with conn.transaction():
                current = await fetch_one(conn, spec, principal, key, lock=True)
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
                checked, warnings = await check(conn, spec, merged, principal, current)
                await write(conn, spec, checked, new=False)
            item = await fetch_one(conn, spec, Principal(), key)
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise database_refusal(exc, spec, where) from None
    _audit(request, where, warnings)
    return reply(masked(spec, item), headers=_warning_headers(warnings))


async def delete_item(request: web.Request) -> web.Response:
    spec, principal = _spec(request), request[PRINCIPAL]
    may_write(spec.name, principal)
    key = _key(request, spec)
    where = _where(spec, key)
    try:
        async with request.config_dict[POOL].acquire() as conn:
            deleted = await delete(conn, spec, key, principal)
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise database_refusal(exc, spec, where, deleting=True) from None
    if not deleted:
        raise ApiError(404, f"{where}: not found")
    _audit(request, where)
    return web.Response(status=204)
