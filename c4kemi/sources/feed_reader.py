"""The feed's readers (``FeedTableSource``): every KEMI worker and c4 serve take in what the writer published.

The feed's format and why it exists: c4kemi/sources/feed.py. The writer: c4kemi/sources/feed_writer.py.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..core.table import RoutingTable, apply_changes_steps, compile_did, compile_steps, finish
from ..node.memory import trim_heap
from .feed import CHECK_INTERVAL, POINTER, STORE_STATUS, FeedError, changes_path, snapshot_path
from .files import file_stamp
from .store import PolledSource
from .table_source import ReloadCounters

__all__ = ["FeedTableSource", "call_budget"]

log = logging.getLogger("c4.feed")

# A KEMI worker's share of pending work per call (``call_budget``): its
# step_budget at first, doubled every BUDGET_DOUBLING seconds the work stays
# pending, at most MAX_CALL_BUDGET seconds. A worker that gets few calls
# still finishes (a 5 s compile of 1M DIDs: about 200 calls once capped),
# and no call ever does seconds of work: a 30 s limit used to finish the
# work at once, which for a new 1M snapshot (an import, a trunk change) is
# seconds of compile inside one call, in every worker at about the same
# time. 25 ms: half the 50 ms issue #8 allows setup times to grow by.
BUDGET_DOUBLING = 5.0
MAX_CALL_BUDGET = 0.025


def call_budget(step_budget: float, age: float) -> float:
    """Seconds of pending work one call does, once the work has been pending ``age`` seconds."""
    doublings = min(age / BUDGET_DOUBLING, 32.0) // 1  # 32: past the cap for any budget above 1 ns
    return min(step_budget * 2.0 ** doublings, max(step_budget, MAX_CALL_BUDGET))

class FeedTableSource(PolledSource):
    """A reader of the feed: the table to route with, kept current by applying change sets.

    The same interface as ``FileTableSource``: ``current()`` at most once per
    ``check_interval`` stats two files and takes in what is new; synchronous
    (Kamailio workers have no running threads). With ``step_budget``
    (seconds; KEMI workers) the work is spread over calls: each call does
    at most about that much of it (whole steps of ``c4kemi.core.steps.STEP``
    entities) and routes with the previous table until the new one is
    complete; the share grows with the work's age, capped (``call_budget``),
    so a worker that gets few calls finishes too. Without it (c4 serve, in a
    thread; the main process before the fork) the work is done at once.
    ``clock`` (seconds, monotonic) times the work's age and each call's
    share; a test gives its own.
    """

    def __init__(self, directory: str | Path, check_interval: float = CHECK_INTERVAL, step_budget: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.directory = Path(directory)
        self.path = self.directory  # what the table comes from, for messages
        self.check_interval = check_interval
        self.step_budget = step_budget
        self.clock = clock
        self.counters = ReloadCounters()
        self.generation, self.seq, self._offset = -1, 0, 0
        self._pending: Generator[None, None, tuple] | None = None
        self._pending_since = 0.0
        self._pointer_stamp = file_stamp(self.directory / POINTER)
        # The first load must succeed, and is done at once.
        self._table, self.generation, self.seq, self._offset = finish(self._generation_steps(self._read_pointer()))
        self._next_check = time.monotonic() + check_interval

    def status(self) -> dict[str, Any]:
        """The writer's store status (c4 db follow writes one: PostgreSQL "ok" or "stale"), else a file's."""
        try:
            status = orjson.loads((self.directory / STORE_STATUS).read_bytes())
        except (OSError, ValueError):
            status = None
        return status if isinstance(status, dict) and status.get("state") in ("ok", "stale") else {"kind": "file", "state": "ok"}

    @property
    def pending(self) -> bool:
        """Work under way (a worker spreading a large change over calls)."""
        return self._pending is not None

    def _read_pointer(self) -> int:
        try:
            return int(orjson.loads((self.directory / POINTER).read_bytes())["generation"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FeedError(f"table feed {self.directory}: no generation published ({exc})") from None

    def current(self) -> RoutingTable:
        """The table to route with now (what the feed published since, taken in first)."""
        if self._pending is not None:
            # A KEMI worker does its share of the work in the call. Without step_budget the
            # work is under way in c4 serve's refresh thread: a request must not step it too.
            if self.step_budget is not None:
                self._advance()
            return self._table
        return super().current()

    def refresh(self) -> bool:
        """Take in what the feed published; True if a new table is now in use."""
        if self._pending is not None:  # finish what is under way first
            return self._advance()
        try:
            stamp = file_stamp(self.directory / POINTER)
            if stamp != self._pointer_stamp:
                self._pointer_stamp = stamp
                generation = self._read_pointer()
                if generation != self.generation:
                    return self._start(self._generation_steps(generation))
            if os.stat(changes_path(self.directory, self.generation)).st_size <= self._offset:
                return False
        except (FeedError, OSError, ValueError, KeyError, TypeError) as exc:
            return self._failed(exc)
        return self._start(self._changes_steps())

    def _start(self, steps: Generator[None, None, tuple]) -> bool:
        self._pending, self._pending_since = steps, self.clock()
        # The collector is paused while the change makes its objects (no cycles among them), as
        # load_frozen does for the writer. Measured at 1M DIDs with a 100,000-DID change: full
        # collections scanning them made single calls of 65 to 84 ms in a KEMI worker (8 workers
        # hit them at about the same time) and held c4 serve's GIL as long.
        gc.disable()
        return self._advance()

    def _done(self, table: RoutingTable | None) -> None:
        """The pending work ended (``table``: its result; None: it failed): the collector runs again."""
        self._pending = None
        if table is not None and self.step_budget is not None:
            # A KEMI worker: the new table's objects frozen, later full collections never scan
            # them. Not in c4 serve: freezing would also keep whatever cyclic garbage the event
            # loop has at that moment for good, on every change. And what the change freed given
            # back (about 1 ms), else it stays in the worker for good.
            gc.freeze()
            trim_heap()
        gc.enable()

    def _advance(self) -> bool:
        """One call's share of the pending work; True when it completed and the new table is in use."""
        now = self.clock()
        budget = math.inf if self.step_budget is None else call_budget(self.step_budget, now - self._pending_since)
        deadline = now + budget
        try:
            while True:
                next(self._pending)
                if self.clock() >= deadline:
                    return False
        except StopIteration as done:
            table, self.generation, self.seq, self._offset = done.value
        except Exception as exc:  # whatever broke the change, calls route on with the table we have
            self._done(None)
            return self._failed(exc)
        self._done(table)
        if table is self._table:  # only a torn line so far: nothing new
            return False
        self._table = table
        self.counters.reloaded()
        log.info("routing table feed %s reloaded: version %s (generation %s, change set %s)",
                 self.directory, table.version, self.generation, self.seq)
        return True

    def _failed(self, exc: Exception) -> bool:
        """The call must not fail: keep the table we have, look at the pointer again next time."""
        self.counters.failed()
        self._pointer_stamp = None
        log.error("routing table feed %s: %s; still serving version %s", self.directory, exc,
                  self._table.version)
        return False

    def _generation_steps(self, generation: int) -> Generator[None, None, tuple]:
        """The table of ``generation``: its snapshot compiled (not checked again: the writer did), then its change sets."""
        try:
            snapshot = open(snapshot_path(self.directory, generation), "rb")
        except OSError as exc:
            raise FeedError(f"generation {generation}: {exc.strerror}") from None
        with snapshot:
            header = orjson.loads(snapshot.readline())
            table = yield from compile_steps(header["base"], _entities(snapshot, header["did_lines"]), _entities(snapshot))
        dids, routes, digest, seq, offset = yield from self._read_changes(table, generation, 0, 0)
        table = yield from apply_changes_steps(table, dids, routes, digest, compiled=True)
        return table, generation, seq, offset

    def _changes_steps(self) -> Generator[None, None, tuple]:
        dids, routes, digest, seq, offset = yield from self._read_changes(self._table, self.generation, self.seq, self._offset)
        table = yield from apply_changes_steps(self._table, dids, routes, digest, compiled=True)  # nothing new: the same table
        return table, self.generation, seq, offset

    def _read_changes(self, table: RoutingTable, generation: int, seq: int, offset: int) -> Generator[None, None, tuple]:
        """(DIDs, routes, digest delta, seq, offset): the complete change sets of ``generation`` after
        ``offset``, merged into one (the last one of a key wins; the digest deltas add up, None if a set
        has none), the DIDs compiled for ``table`` (``compile_did``, with its ``did_values``).

        In steps: a line read, parsed and compiled per step (``LINE``
        entities). One line at a time, each compiled before the next is
        read: a KEMI worker's new objects fill the free blocks of the heap
        it shares with its siblings (each one copies a page), and the whole
        set read and parsed at once (100,000 DIDs) copied 75 MiB per worker
        at 1M DIDs; one line's garbage reuses the same blocks for the next.
        """
        path = changes_path(self.directory, generation)
        dids: dict[str, Any] = {}
        routes: dict[tuple[str, str], Any] = {}
        digest: int | None = 0
        if os.stat(path).st_size <= offset:
            return dids, routes, digest, seq, offset
        yield
        taken = position = offset
        set_dids: dict[str, Any] = {}
        set_routes: dict[tuple[str, str], Any] = {}
        ipbxs, interned = table.ipbxs, table.did_values
        with open(path, "rb") as changes:
            changes.seek(offset)
            # A torn last line (a writer that died mid-write) is left unread; so are the lines of an unfinished set.
            while (line := changes.readline()).endswith(b"\n"):
                position += len(line)
                change = orjson.loads(line)
                if change["seq"] != seq + 1:
                    raise FeedError(f"generation {generation}: change set {change['seq']} after {seq}")
                set_dids.update((prefix, None if d is None else compile_did(d, ipbxs, interned))
                                for prefix, d in change["dids"])  # [prefix, DID] pairs
                set_routes.update(((tenant, prefix), r) for tenant, prefix, r in change["routes"])
                more, set_digest = change.get("more"), change.get("digest")
                del change, line  # this line's garbage is free before the next is read
                yield
                if more:
                    continue
                seq, taken = seq + 1, position
                digest = None if digest is None or set_digest is None else digest + set_digest
                if dids or routes:
                    dids.update(set_dids)
                    routes.update(set_routes)
                else:  # the usual case, one set: no copy
                    dids, routes = set_dids, set_routes
                set_dids, set_routes = {}, {}
        return dids, routes, digest, seq, taken


def _entities(snapshot: BinaryIO, lines: int | None = None) -> Iterator[dict[str, Any]]:
    """The entities of the next ``lines`` lines of a snapshot (None: the rest), read a line at a time."""
    count = 0
    while lines is None or count < lines:
        line = snapshot.readline()
        if not line:
            return
        count += 1
        yield from orjson.loads(line)
