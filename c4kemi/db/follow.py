"""Following the routing data in PostgreSQL: LISTEN/NOTIFY, a version check, reconnects.

``Follower`` keeps one connection, listens on ``c4_routing`` and, when the
routing version moves (a notification, or the periodic check that covers a
notification lost with a connection), exports the document and hands it to
``on_document``. When PostgreSQL goes away it says so once, keeps the last
document (routing goes on with it), retries with a capped backoff, and says
so once again when it is back. Two users:

- ``c4 serve --dsn`` compiles each document into its routing table
  (``PostgresTableSource``);
- ``c4 db follow`` without ``--feed`` writes it, atomically, to a file.

``c4 db follow --feed`` (started by ``c4 kamailio --dsn``) follows the
change log instead of whole documents: ``ChangeFollower`` in changes.py,
which overrides ``_check`` and ``_load``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from ..sources.files import write_atomically
from .documents import connect, export_document, routing_version

__all__ = ["CHANNEL", "UNAVAILABLE", "Follower", "document_bytes", "write_atomically"]

log = logging.getLogger("c4.db")

CHANNEL = "c4_routing"
# What "PostgreSQL cannot be reached" looks like from asyncpg.
UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Follower:
    """Hands every new routing document to ``on_document``, for as long as it runs."""

    def __init__(
        self,
        dsn: str,
        on_document: Callable[[dict[str, Any], int], Awaitable[None]],
        check_interval: float = 5.0,
        retry_max: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.on_document = on_document
        self.check_interval = check_interval
        self.retry_max = retry_max
        self.version: int | None = None  # routing version of the last document handed over
        self.stale_since: float | None = None  # wall clock time PostgreSQL was lost, None when connected
        self.connections = 0  # connections opened by run(): 1, plus one per reconnect (a restart, a failover)
        self._changed = asyncio.Event()

    async def load_once(self, timeout: float = 10.0) -> None:
        """One export, for a start that must know whether PostgreSQL answers."""
        conn = await connect(self.dsn, timeout=timeout)
        try:
            await self._load(conn)
        finally:
            await conn.close()

    async def run(self) -> None:
        """Follow until cancelled."""
        delay = 0.2
        while True:
            try:
                conn = await connect(self.dsn, timeout=10)
            except Exception as exc:
                self.lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = 0.2
            self.connections += 1
            try:
                await self._follow(conn)
            except Exception as exc:  # a cut connection surfaces as many exception types; all mean: reconnect
                self.lost(exc)
            finally:
                try:
                    conn.terminate()
                except Exception:  # already broken
                    pass

    async def _follow(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(CHANNEL, lambda *_: self._changed.set())
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        if self.stale_since is not None:
            log.warning("PostgreSQL is back after %.0f s; following routing changes again", time.time() - self.stale_since)
            self.stale_since = None
        self._changed.set()  # anything missed while away
        while not lost.is_set():
            changed = asyncio.ensure_future(self._changed.wait())
            gone = asyncio.ensure_future(lost.wait())
            await asyncio.wait({changed, gone}, timeout=self.check_interval, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            gone.cancel()
            if lost.is_set():
                raise ConnectionError("connection to PostgreSQL lost")
            self._changed.clear()
            await self._check(conn)

    async def _check(self, conn: asyncpg.Connection) -> None:
        """Woken (or the periodic check): take in what changed since the last look."""
        if await routing_version(conn) != self.version:
            await self._load(conn)

    async def _load(self, conn: asyncpg.Connection) -> None:
        document, version = await export_document(conn)
        if version != self.version:
            try:
                await self.on_document(document, version)
            except Exception:  # the receiver's bug must not stop the following
                log.exception("routing version %s could not be taken in", version)
            self.version = version  # refused or not, taken in once: the next change is retried

    def status(self) -> dict[str, Any]:
        """The store's state as /health reports it: "stale" while PostgreSQL is away."""
        stale = self.stale_since
        return {
            "kind": "postgresql",
            "routing_version": self.version,
            "state": "stale" if stale is not None else "ok",
            "stale_since": datetime.fromtimestamp(stale, UTC).isoformat() if stale is not None else None,
        }

    def lost(self, exc: BaseException) -> None:
        if self.stale_since is None:  # said once per outage, not once per retry
            self.stale_since = time.time()
            log.error("PostgreSQL unavailable (%s: %s); routing goes on with routing version %s until it is back",
                      type(exc).__name__, exc, self.version)


def document_bytes(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)
