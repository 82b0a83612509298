"""Following PostgreSQL through its routing change log: fetch what changed, not the whole table.

Migration 0005 has triggers log the key of every DID and route a
committed change touches (``routing_changes``, numbered by ``seq`` in
commit order), or ``all`` for anything else: the small collections, a
TRUNCATE (``c4 db import``), a statement of more than 200,000 rows
(migration 0007; a 100,000-DID UPDATE is a change set).
``ChangeFollower`` keeps the last ``seq`` it took in. Woken by the NOTIFY
(or the periodic check, which catches a notification lost while the
connection was down), it reads the rows after that ``seq`` and the
current rows of just those keys, in one snapshot, and hands them over as
a change set (absent = removed): milliseconds at any table size. It reads
the whole document instead when the log says ``all``, when more than
``max_keys`` keys changed, when rows it has not seen were pruned, and after
a change set was refused (until a whole document is taken again: so what
is refused is exactly what a whole-document check refuses).

Pruning: each follower deletes rows older than ``retention`` (one hour)
now and then, and records the highest ``seq`` deleted; a follower whose
last ``seq`` is below it missed rows and reads everything. Age rather than
"what every follower has seen", so the database needs no registry of
followers, and a follower gone longer than that simply starts over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from ..sources.feed_writer import MAX_CHANGES
from .documents import did_entity, read_document, read_routes, routing_version
from .follow import Follower

__all__ = ["ChangeFollower", "log_end", "read_changes"]

log = logging.getLogger("c4.db")

# More changed keys than this: a whole document, as the feed's writer makes a
# new snapshot of a larger change set (migration 0007 logs 'all' past it too).
MAX_KEYS = MAX_CHANGES
RETENTION = 3600.0  # seconds change rows are kept

Changes = tuple[dict[str, Any], dict[tuple[str, str], Any]]


async def read_changes(conn: asyncpg.Connection, after: int, max_keys: int = MAX_KEYS) -> tuple[int, Changes | None]:
    """(last seq, {prefix: DID or None}, {(tenant, prefix): route or None}) after ``after``; None: read everything.

    Call it inside a repeatable-read transaction: the log and the rows are then one snapshot.
    """
    if await conn.fetchval("SELECT up_to FROM routing_changes_pruned") > after:
        return after, None
    rows = await conn.fetch(
        "SELECT seq, collection, tenant, prefix FROM routing_changes WHERE seq > $1 ORDER BY seq LIMIT $2", after, max_keys + 1,
    )
    if not rows:
        return after, ({}, {})
    if len(rows) > max_keys or any(row["collection"] == "all" for row in rows):
        return rows[-1]["seq"], None
    did_keys = {row["prefix"] for row in rows if row["collection"] == "dids"}
    route_keys = {(row["tenant"], row["prefix"]) for row in rows if row["collection"] == "routes"}
    dids: dict[str, Any] = dict.fromkeys(did_keys)
    for row in await conn.fetch("SELECT tenant, prefix, ipbx, match FROM dids WHERE prefix = ANY($1::text[])", list(did_keys)):
        dids[row["prefix"]] = did_entity(row)
    routes: dict[tuple[str, str], Any] = dict.fromkeys(route_keys)
    if route_keys:
        tenants, prefixes = zip(*route_keys, strict=True)
        for route in await read_routes(conn, "WHERE (tenant, prefix) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                                       list(tenants), list(prefixes)):
            routes[route["tenant"], route["prefix"]] = route
    return rows[-1]["seq"], (dids, routes)


async def log_end(conn: asyncpg.Connection) -> int:
    """The last row the change log has had: its highest seq, or the highest pruned if it was emptied."""
    return await conn.fetchval(
        "SELECT greatest((SELECT coalesce(max(seq), 0) FROM routing_changes), (SELECT up_to FROM routing_changes_pruned))")


class ChangeFollower(Follower):
    """A ``Follower`` that hands over change sets from the change log, and whole documents only when it must.

    ``on_document(document, version)`` and ``on_changes(dids, routes, version)``
    return whether they took it in (False: refused).
    """

    def __init__(
        self,
        dsn: str,
        on_document: Callable[[dict[str, Any], int], Awaitable[bool]],
        on_changes: Callable[[dict, dict, int], Awaitable[bool]],
        check_interval: float = 5.0,
        max_keys: int = MAX_KEYS,
        retention: float = RETENTION,
    ) -> None:
        super().__init__(dsn, on_document, check_interval=check_interval)
        self.on_changes = on_changes
        self.max_keys = max_keys
        self.retention = retention
        self.seq: int | None = None  # the last change log row read; None: nothing read yet
        self.refused = False  # the last document or change set was refused: whole documents until one is taken
        self.documents = 0  # whole documents read (for tests and logs)
        self.change_sets = 0
        self._next_prune = 0.0

    async def _load(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM routing_changes")
            version = await routing_version(conn)
            document = await read_document(conn)
        self.documents += 1
        # Said, as it costs seconds at a million DIDs (the export here, and PostgreSQL's CPU) where a change set costs ms.
        log.info("routing version %s: whole document read (%d DIDs, %d routes)", version, len(document["dids"]),
                 len(document["routes"]))
        self.refused = not await self._hand(self.on_document(document, version), version)
        self.seq, self.version = seq, version

    async def _check(self, conn: asyncpg.Connection) -> None:
        if self.seq is None:
            await self._load(conn)
            return
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            seq, changes = await read_changes(conn, self.seq, self.max_keys)
            version = await routing_version(conn)
            if changes == ({}, {}) and await log_end(conn) < self.seq:
                # The log ends before the row last read: another server than the one read (a failover
                # that lost what was not replicated yet, a restore). What it holds is read whole.
                log.warning("the routing change log ends before row %s, the last one read (a failover or a restore):"
                            " reading the whole document", self.seq)
                changes = None
        if changes == ({}, {}):
            pass
        elif changes is None or self.refused:
            await self._load(conn)
        else:
            self.change_sets += 1
            self.refused = not await self._hand(self.on_changes(*changes, version), version)
            self.seq, self.version = seq, version
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.retention / 10
            await self.prune(conn)

    async def _hand(self, taking: Awaitable[bool], version: int) -> bool:
        try:
            return await taking
        except Exception:  # the receiver's bug must not stop the following
            log.exception("routing version %s could not be taken in", version)
            return False

    async def prune(self, conn: asyncpg.Connection) -> None:
        """Delete change rows older than the retention; record the highest seq deleted."""
        try:
            await conn.execute(
                "WITH gone AS (DELETE FROM routing_changes WHERE changed_at < now() - make_interval(secs => $1) RETURNING seq)"
                " UPDATE routing_changes_pruned SET up_to = greatest(up_to, (SELECT max(seq) FROM gone))",
                self.retention,
            )
        except asyncpg.PostgresError as exc:  # a read-only role or replica: following goes on, another node prunes
            log.warning("cannot prune the routing change log: %s: %s", type(exc).__name__, exc)
