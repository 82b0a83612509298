"""GET /api/v1/cdrs: the call records in PostgreSQL (written by ``c4 cdr --db``; docs/cdr.md).

Query: ``tenant``, ``since`` and ``until`` (ISO 8601 with a time zone, on the
INVITE time: since <= t < until), ``number`` (a calling or called number,
E.164, a leading ``+`` allowed), ``limit`` (1 to 1000, default 100) and
``cursor`` (the previous page's ``next``). Pages are in INVITE-time order,
keyset on (invite_at, id) like every other list of the API. A tenant token
sees its own tenant's records only; another tenant's do not exist for it.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from c4kemi.db.cdrs import select_records

from .auth import PRINCIPAL
from .web import POOL, ApiError, page_limit, reply

__all__ = ["list_cdrs"]

PARAMETERS = ("tenant", "since", "until", "number", "limit", "cursor")
MAX_NUMBER = 64


def _utc(text: Any) -> datetime | None:
    """An ISO 8601 time with a time zone, in UTC; None if ``text`` is not one.

    In UTC here, not in the database driver: 0001-01-01T00:00:00+14:00 is a
    valid time whose UTC one is before year 1, which Python cannot hold.
    """
    if isinstance(text, str) and "\x00" in text:
        return None  # CPython's fromisoformat reads up to a NUL and takes what is before
    try:
        value = datetime.fromisoformat(text)
        return value.astimezone(UTC) if value.tzinfo is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _time(query, name: str) -> datetime | None:
    if name not in query:
        return None
    value = _utc(query[name])
    if value is None:
        raise ApiError(400, f"{name} must be an ISO 8601 time with a time zone, from year 1 to 9999 in UTC, "
                            f"e.g. 2026-11-26T17:00:00Z, got {query[name]!r}")  # fmt: skip
    return value


def _encode_cursor(record: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([record["invite_at"], record["id"]])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, record_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = _utc(at)
        record_id = uuid.UUID(hex=record_id).hex if isinstance(record_id, str) else None  # UUID(hex=) takes only a str
    except (ValueError, TypeError, binascii.Error):
        at = record_id = None
    if at is None or record_id is None:
        raise ApiError(400, "bad cursor: give the 'next' value of the previous page as it is")
    return at, record_id


async def list_cdrs(request: web.Request) -> web.Response:
    """One page of call records: ``{"items": [...], "next": CURSOR or null}``."""
    principal, query = request[PRINCIPAL], request.query
    limit = page_limit(query, PARAMETERS)
    since, until = _time(query, "since"), _time(query, "until")
    number = query.get("number")
    if number is not None:
        number = number.removeprefix("+")
        if not 0 < len(number) <= MAX_NUMBER:
            raise ApiError(400, f"number must be 1 to {MAX_NUMBER} characters")
    after = _decode_cursor(query["cursor"]) if "cursor" in query else None
    tenant: Any = query.get("tenant")
    if not principal.admin:
        if tenant is not None and tenant != principal.tenant:
            return reply({"items": [], "next": None})  # another tenant's records do not exist for this token
        tenant = principal.tenant
    async with request.config_dict[POOL].acquire() as conn:
        records = await select_records(conn, tenant=tenant, since=since, until=until, number=number, after=after,
                                       limit=limit + 1)  # fmt: skip
    more = len(records) > limit
    records = records[:limit]
    return reply({"items": records, "next": _encode_cursor(records[-1]) if more else None})
