"""The routing table from PostgreSQL, for ``c4 serve --dsn`` and ``c4 db follow``.

``PostgresTableSource`` is what ``c4 serve`` routes with: ``current()`` is
the compiled table, swapped when the ``Follower`` brings a new document
(checked in a worker thread, off the event loop; what changed is applied to
the current table, ``update_table``). Each good document is also saved to
``cache_file``, the node's last good table: if PostgreSQL is down when the
service starts, it routes with that file and catches up when the database
is back.

``follow_to_file`` is ``c4 db follow``: each checked document written
atomically to a file (the node's copy); with a feed directory it follows
the change log (``ChangeFollower``) and publishes change sets to the
node's table feed (c4kemi/sources/feed.py), which KEMI workers and the launcher's
c4 serve read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson

from ..core.document import DocumentError, load_raw, validate_document
from ..core.table import RoutingTable, compile_validated, load_table, update_table
from ..sources.feed import STORE_STATUS
from ..sources.feed_writer import FeedWriter
from ..sources.table_source import ReloadCounters
from .changes import ChangeFollower
from .follow import UNAVAILABLE, Follower, document_bytes, write_atomically

__all__ = ["PostgresTableSource", "StoreUnavailable", "follow_to_file"]

log = logging.getLogger("c4.db")

SAVE_INTERVAL = 2.0  # seconds between rewrites of c4 db follow's copy of the table
REPORT_INTERVAL = 0.5  # seconds between looks at the follower's state, for the feed's store status
PUBLISH_RETRY = 1.0  # seconds between attempts to publish while the disk refuses the feed's writes (full)


class StoreUnavailable(RuntimeError):
    """Neither PostgreSQL nor a saved table could give a first routing table."""


def _checked_table(document: dict[str, Any], current: RoutingTable | None = None) -> RoutingTable:
    """The table of a document: from ``current``, only what changed is compiled (update_table)."""
    checked = validate_document(document)
    return update_table(current, checked) if current is not None else compile_validated(checked)


class PostgresTableSource:
    def __init__(self, dsn: str, cache_file: Path | None = None, check_interval: float = 5.0) -> None:
        self.follower = Follower(dsn, self._take, check_interval=check_interval)
        self.cache_file = cache_file
        self._table: RoutingTable | None = None
        self.counters = ReloadCounters(loaded_at=None)

    def current(self) -> RoutingTable:
        if self._table is None:
            raise StoreUnavailable("no routing table loaded yet")
        return self._table

    def refresh(self) -> bool:
        """Nothing to poll: the follower swaps tables as changes arrive."""
        return False

    def status(self) -> dict[str, Any]:
        return self.follower.status()

    async def start(self) -> None:
        """The first table: from PostgreSQL, else from the saved file."""
        try:
            await self.follower.load_once()
        except UNAVAILABLE as exc:
            if self.cache_file is None or not self.cache_file.is_file():
                raise StoreUnavailable(f"PostgreSQL unavailable ({exc}) and no saved table to start from") from None
            self._table = await asyncio.to_thread(load_table, self.cache_file)
            self.counters.loaded()
            self.follower.lost(exc)
            log.warning("starting with the last table saved in %s (version %s)", self.cache_file, self._table.version)
        if self._table is None:
            raise StoreUnavailable("the routing data in PostgreSQL is refused (see the errors above) and no saved table")

    async def lifecycle(self, app: Any) -> AsyncIterator[None]:
        """An aiohttp cleanup_ctx: the first table before serving, then follow until shutdown."""
        await self.start()
        task = asyncio.create_task(self.follower.run(), name="c4-postgres-follower")
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _take(self, document: dict[str, Any], version: int) -> None:
        try:
            table = await asyncio.to_thread(_checked_table, document, self._table)
        except DocumentError as exc:
            self.counters.failed()
            log.error("routing version %s in PostgreSQL refused, still serving %s: %s", version,
                      self._table.version if self._table else "nothing", exc)
            return
        first = self._table is None
        self._table = table
        if first:
            self.counters.loaded()
        else:
            self.counters.reloaded()
        log.info("routing version %s loaded from PostgreSQL: table %s", version, table.version)
        if self.cache_file is not None:
            try:
                await asyncio.to_thread(write_atomically, self.cache_file, document_bytes(document))
            except OSError as exc:
                log.error("cannot save the routing table to %s: %s", self.cache_file, exc)


async def follow_to_file(dsn: str, out: Path, check_interval: float = 5.0, feed: Path | None = None) -> None:
    """``c4 db follow``: keep OUT equal to the checked routing document, until cancelled.

    With ``feed`` it is the node's feed writer: change sets from the change
    log (``ChangeFollower``) are checked and published as they come, whole
    documents when it must; OUT, the node's copy, is rewritten at most every
    ``SAVE_INTERVAL`` seconds after that (writing a million DIDs is no
    per-change cost). Without, each whole document is checked and written.
    """
    if feed is None:
        async def write(document: dict[str, Any], version: int) -> None:
            try:
                good = await asyncio.to_thread(validate_document, document)
            except DocumentError as exc:
                log.error("routing version %s in PostgreSQL refused, %s left as it is: %s", version, out, exc)
                return
            await asyncio.to_thread(write_atomically, out, document_bytes(good))
            log.info("routing version %s written to %s", version, out)

        follower = Follower(dsn, write, check_interval=check_interval)
        await _start(follower, out, None)
        await follower.run()
        return
    publisher = FeedPublisher(FeedWriter(feed), out)
    follower = ChangeFollower(dsn, publisher.document, publisher.changes, check_interval=check_interval)
    saving = asyncio.create_task(publisher.save_when_changed(), name="c4-save-table")
    reporting = asyncio.create_task(publisher.report(follower), name="c4-report-state")
    try:
        await _start(follower, out, publisher)
        await follower.run()
    finally:
        saving.cancel()
        reporting.cancel()


async def _start(follower: Follower, out: Path, publisher: FeedPublisher | None) -> None:
    """The first table: from PostgreSQL, else (down) the node's saved copy until it is back."""
    try:
        await follower.load_once()
    except UNAVAILABLE as exc:
        follower.lost(exc)
        if out.is_file():
            log.warning("routing with the last table saved in %s until PostgreSQL is back", out)
            if publisher is not None:
                try:
                    await publisher.run(publisher.writer.publish, load_raw(out), str(out))
                except DocumentError as exc:
                    log.error("the saved table %s is refused: %s", out, exc)


class FeedPublisher:
    """``c4 db follow --feed``'s receiver: checks and publishes to the feed, keeps the node's copy."""

    def __init__(self, writer: FeedWriter, out: Path) -> None:
        self.writer = writer
        self.out = out
        self._lock = asyncio.Lock()  # one thread at a time uses the writer
        self._changed = asyncio.Event()

    async def run(self, method: Callable[..., str], *args: Any) -> str:
        async with self._lock:
            return await asyncio.to_thread(method, *args)

    async def document(self, document: dict[str, Any], version: int) -> bool:
        return await self._publish(version, self.writer.publish, document, f"routing version {version}")

    async def changes(self, dids: dict, routes: dict, version: int) -> bool:
        return await self._publish(version, self.writer.publish_changes, dids, routes, f"routing version {version}")

    async def _publish(self, version: int, method: Callable[..., str], *args: Any) -> bool:
        """Publish, trying again while the disk refuses the write: the follower moves on only once it is published."""
        started = time.monotonic()
        failing = False
        while True:
            try:
                taken = await self.run(method, *args)
                break
            except DocumentError as exc:
                log.error("routing version %s in PostgreSQL refused, the feed keeps the last good table: %s", version, exc)
                return False
            except OSError as exc:  # nothing published (the writer is as it was): the same again
                if not failing:  # said once per outage, not once per attempt
                    log.error("routing version %s not published to the feed: %s; trying again every %.0f s", version, exc, PUBLISH_RETRY)
                failing = True
                await asyncio.sleep(PUBLISH_RETRY)
        if failing:
            log.warning("the feed %s takes writes again (%d refused so far)", self.writer.directory, self.writer.failed_writes)
        log.info("routing version %s: %s published (generation %s, change set %s) in %.0f ms", version, taken,
                 self.writer.generation, self.writer.seq, (time.monotonic() - started) * 1000)
        if taken != "unchanged":
            self._changed.set()
        return True

    async def report(self, follower: Follower) -> None:
        """Keep the feed's store status (what the feed's c4 serve shows in /health) equal to the follower's."""
        written = None
        while True:
            status = follower.status()
            if status != written:
                try:
                    await asyncio.to_thread(write_atomically, self.writer.directory / STORE_STATUS, orjson.dumps(status))
                    written = status
                except OSError as exc:
                    log.error("cannot write the store status to %s: %s", self.writer.directory, exc)
            await asyncio.sleep(REPORT_INTERVAL)

    async def save_when_changed(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            # The lists are taken under the lock (the entities themselves are replaced, never changed);
            # writing them (about a second at 1M DIDs) does not hold up the next change.
            document = await self.run(self.writer.document)
            try:
                await asyncio.to_thread(write_atomically, self.out, document_bytes(document))
            except OSError as exc:
                log.error("cannot save the routing table to %s: %s", self.out, exc)
            await asyncio.sleep(SAVE_INTERVAL)
