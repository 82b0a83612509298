"""The ``cdrs`` table: storing call records (c4 cdr --db) and reading them (GET /api/v1/cdrs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

__all__ = ["COLUMNS", "insert_records", "select_records"]

# The record's members (c4kemi/call/cdr.py), in the table's column order.
COLUMNS = (
    "id", "call_id", "tenant", "direction", "source", "source_kind", "calling", "called", "attempts",
    "answered_by", "invite_at", "answer_at", "end_at", "duration_ms", "code", "reason", "ended_by", "node",
)
TIMES = ("invite_at", "answer_at", "end_at")

_INSERT = (
    f"INSERT INTO cdrs ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM jsonb_populate_recordset(NULL::cdrs, $1::jsonb) "
    "ON CONFLICT (id) DO NOTHING"
)


async def insert_records(conn: asyncpg.Connection, records: list[dict]) -> None:
    """Store records (one statement); an id already stored is skipped, so shipping twice stores once.

    The connection has c4's jsonb codec (c4kemi.db.documents.setup_connection).
    """
    if records:
        await conn.execute(_INSERT, records)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(row: asyncpg.Record) -> dict[str, Any]:
    record = dict(row)
    record["id"] = row["id"].hex
    for name in TIMES:
        record[name] = _iso(row[name])
    return record


async def select_records(
    conn: asyncpg.Connection, *, tenant: str | None, since: datetime | None, until: datetime | None,
    number: str | None, after: tuple[datetime, str] | None, limit: int,
) -> list[dict[str, Any]]:
    """Records by INVITE time (then id), oldest first: a keyset page after ``after``."""
    where, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if tenant is not None:
        where.append(f"tenant = {arg(tenant)}")
    if since is not None:
        where.append(f"invite_at >= {arg(since)}")
    if until is not None:
        where.append(f"invite_at < {arg(until)}")
    if number is not None:
        value = arg(number)
        where.append(f"(calling = {value} OR called = {value})")
    if after is not None:
        where.append(f"(invite_at, id) > ({arg(after[0])}, {arg(after[1])}::uuid)")
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM cdrs"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY invite_at, id LIMIT {arg(limit)}"
    )
    return [_record(row) for row in await conn.fetch(sql, *args)]
