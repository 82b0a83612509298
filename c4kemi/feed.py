"""The node's table feed: one process checks a routing document, every reader applies what changed.

Parsing and checking a document costs seconds at a million DIDs. Before the
feed, every process that routes (each KEMI worker, c4 serve) did it on every
change, and routed nothing meanwhile. Now one writer per node does it
(``c4 feed``, started by ``c4 kamailio``): it checks the new document once,
compares it with the previous one by entity key, and publishes what changed.
Readers (``FeedTableSource``) apply a change set with ``apply_changes``:
milliseconds for a few DIDs or routes.

A feed directory (node-local, mode 0700, written by one writer only)::

    current            {"generation": N}, replaced atomically
    snapshot-N.json    the checked document generation N starts from
    changes-N.jsonl    append-only, one change set per line:
                       {"seq": 1, "dids": [[prefix, did or null], ...],
                        "routes": [[tenant, prefix, route or null], ...]}

A change to the small collections (tenants, profiles, IPBXs, carriers,
trunks), or a change set larger than ``max_changes``, starts a new
generation: a new snapshot, which readers compile whole (without checking
it again: the writer did). At most one reader rebuilds at a time (an flock),
so the others keep routing with the table they have meanwhile. A line is
read only once it is complete (a writer that dies mid-line leaves a torn
tail that readers ignore; a restarted writer starts a new generation). The
generation before the current one is kept for readers still switching;
older ones are removed.

Readers trust the feed: it is written by the node's own writer into a
private directory. Every byte from outside (the document) is checked by the
writer before it is published.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .document import DocumentError, load_document
from .files import write_atomically
from .table import BASE_COLLECTIONS, RoutingTable, apply_changes, compile_validated

__all__ = ["FeedError", "FeedTableSource", "FeedWriter", "watch_file"]

log = logging.getLogger("c4.feed")

POINTER = "current"
LOCK = "rebuild.lock"
# Above this many changed DIDs and routes a new snapshot is cheaper for the
# writer to describe than a change set is for every reader to apply.
MAX_CHANGES = 200_000


class FeedError(RuntimeError):
    """The feed cannot be read (no generation published yet, or a file missing)."""


def _snapshot(directory: Path, generation: int) -> Path:
    return directory / f"snapshot-{generation}.json"


def _changes(directory: Path, generation: int) -> Path:
    return directory / f"changes-{generation}.jsonl"


def _did_key(d: Mapping[str, Any]) -> str:
    return d["prefix"]


def _route_key(r: Mapping[str, Any]) -> tuple[str, str]:
    return r["tenant"], r["prefix"]


def _same_route(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    # orjson tells 1 from 1.0 (equal in Python, different weights once read back).
    return a == b and orjson.dumps(a) == orjson.dumps(b)


def _diff(old: Mapping, new: Iterable[Mapping[str, Any]], key: Callable, same: Callable) -> tuple[dict, dict]:
    """(the new entities by key, key -> changed entity or None for removed)."""
    by_key: dict = {}
    changes: dict = {}
    for entity in new:
        k = key(entity)
        by_key[k] = entity
        before = old.get(k)
        if before is None or not same(before, entity):
            changes[k] = entity
    if len(by_key) - sum(1 for k, e in changes.items() if k not in old) != len(old):  # some were removed
        changes.update((k, None) for k in old if k not in by_key)
    return by_key, changes


class FeedWriter:
    """Publishes checked documents to a feed directory, as change sets when it can."""

    def __init__(self, directory: str | Path, max_changes: int = MAX_CHANGES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # the documents hold trunk passwords
        self.max_changes = max_changes
        generations = [int(p.name[9:-5]) for p in self.directory.glob("snapshot-*.json") if p.name[9:-5].isdigit()]
        self.generation = max(generations, default=0)  # the next publish starts a new one
        self.seq = 0
        self._base: dict[str, Any] | None = None
        self._dids: dict[str, Any] = {}
        self._routes: dict[tuple[str, str], Any] = {}
        self._out: int | None = None

    def publish(self, document: Mapping[str, Any]) -> str:
        """Publish a checked document; returns what it took: "snapshot", "changes" or "unchanged"."""
        base = {name: document[name] for name in BASE_COLLECTIONS}
        if self._base is None or base != self._base or orjson.dumps(base) != orjson.dumps(self._base):
            self._write_snapshot(document, base)
            return "snapshot"
        dids, did_changes = _diff(self._dids, document["dids"], _did_key, dict.__eq__)
        routes, route_changes = _diff(self._routes, document["routes"], _route_key, _same_route)
        if not did_changes and not route_changes:
            return "unchanged"
        if len(did_changes) + len(route_changes) > self.max_changes:
            self._write_snapshot(document, base)
            return "snapshot"
        self.seq += 1
        line = orjson.dumps({
            "seq": self.seq,
            "dids": [[prefix, d] for prefix, d in did_changes.items()],
            "routes": [[tenant, prefix, r] for (tenant, prefix), r in route_changes.items()],
        }) + b"\n"
        os.write(self._out, line)  # one write of a whole line, O_APPEND
        self._dids, self._routes = dids, routes
        return "changes"

    def _write_snapshot(self, document: Mapping[str, Any], base: dict[str, Any]) -> None:
        self.generation += 1
        self.seq = 0
        write_atomically(_snapshot(self.directory, self.generation), orjson.dumps(document))
        if self._out is not None:
            os.close(self._out)
        self._out = os.open(_changes(self.directory, self.generation), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        write_atomically(self.directory / POINTER, orjson.dumps({"generation": self.generation}))
        self._base = base
        self._dids = {d["prefix"]: d for d in document["dids"]}
        self._routes = {_route_key(r): r for r in document["routes"]}
        for path in [*self.directory.glob("snapshot-*.json"), *self.directory.glob("changes-*.jsonl")]:
            number = path.name.split("-", 1)[1].split(".", 1)[0]
            if number.isdigit() and int(number) < self.generation - 1:  # readers still switching use the previous one
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._out is not None:
            os.close(self._out)
            self._out = None


class FeedTableSource:
    """A reader of the feed: the table to route with, kept current by applying change sets.

    The same interface as ``FileTableSource``: ``current()`` at most once per
    ``check_interval`` stats two files and applies what is new; synchronous
    (Kamailio workers have no running threads).
    """

    def __init__(self, directory: str | Path, check_interval: float = 1.0) -> None:
        self.directory = Path(directory)
        self.path = self.directory  # what the table comes from, for messages
        self.check_interval = check_interval
        self.loaded_at = time.time()
        self.reloads = 0
        self.failed_reloads = 0
        self._pointer_stamp = self._stat(self.directory / POINTER)
        self._load(self._read_pointer())  # the first load must succeed
        self._next_check = time.monotonic() + check_interval

    @staticmethod
    def _stat(path: Path) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read_pointer(self) -> int:
        try:
            return int(orjson.loads((self.directory / POINTER).read_bytes())["generation"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FeedError(f"table feed {self.directory}: no generation published ({exc})") from None

    def _load(self, generation: int) -> None:
        """Build the table of ``generation``: its snapshot, compiled whole, then its change sets."""
        try:
            document = orjson.loads(_snapshot(self.directory, generation).read_bytes())
        except OSError as exc:
            raise FeedError(f"table feed {self.directory}: generation {generation}: {exc.strerror}") from None
        self._table = compile_validated(document)  # checked by the writer
        self.generation, self.seq, self._offset = generation, 0, 0
        self._follow()

    def current(self) -> RoutingTable:
        """The table to route with now (what the feed published since, applied first)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_interval
            self.refresh()
        return self._table

    def refresh(self) -> bool:
        """Take in what the feed published; True if a new table is now in use."""
        before = self._table
        try:
            stamp = self._stat(self.directory / POINTER)
            if stamp != self._pointer_stamp:
                generation = self._read_pointer()
                if generation != self.generation:
                    if not self._rebuild(generation):
                        return False  # another reader is rebuilding: keep routing, try again next check
                self._pointer_stamp = stamp
            else:
                self._follow()
        except (FeedError, OSError, ValueError) as exc:  # the call must not fail: keep the table we have
            self.failed_reloads += 1
            log.error("routing table feed %s: %s; still serving version %s", self.directory, exc, self._table.version)
            return False
        if self._table is before:
            return False
        self.loaded_at = time.time()
        self.reloads += 1
        log.info("routing table feed %s reloaded: version %s (generation %s, change set %s)",
                 self.directory, self._table.version, self.generation, self.seq)
        return True

    def _rebuild(self, generation: int) -> bool:
        """A new snapshot: compiled by at most one reader of the node at a time (the others keep routing)."""
        with open(self.directory / LOCK, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            log.info("routing table feed %s: compiling generation %s", self.directory, generation)
            self._load(generation)
        return True

    def _follow(self) -> None:
        """Apply the complete change sets appended since the last look, as one change."""
        path = _changes(self.directory, self.generation)
        size = os.stat(path).st_size
        if size <= self._offset:
            return
        with open(path, "rb") as changes:
            changes.seek(self._offset)
            data = changes.read(size - self._offset)
        end = data.rfind(b"\n") + 1  # a torn last line (a writer that died mid-write) is left unread
        if not end:
            return
        dids: dict[str, Any] = {}
        routes: dict[tuple[str, str], Any] = {}
        seq = self.seq
        for line in data[:end].splitlines():
            change = orjson.loads(line)
            if change["seq"] != seq + 1:
                raise FeedError(f"generation {self.generation}: change set {change['seq']} after {seq}")
            seq += 1
            dids.update((prefix, d) for prefix, d in change["dids"])
            routes.update(((tenant, prefix), r) for tenant, prefix, r in change["routes"])
        self._table = apply_changes(self._table, dids, routes)
        self.seq, self._offset = seq, self._offset + end


def watch_file(table: Path, feed: Path, interval: float = 0.2) -> int:
    """``c4 feed``: publish TABLE to FEED, then every change of it, until stopped.

    The first document must be good (exit 1 with its errors); after that a
    refused document is logged and the feed keeps the last good one.
    """
    writer = FeedWriter(feed)

    def stamp() -> tuple | None:
        return FeedTableSource._stat(table)

    seen = stamp()
    try:
        writer.publish(load_document(table))
    except DocumentError as exc:
        for error in exc.errors:
            log.error("%s: %s", table, error)
        log.error("%s: refused, %d error(s); nothing published", table, len(exc.errors))
        return 1
    log.info("routing table %s published to %s (generation %s)", table, feed, writer.generation)
    while True:
        time.sleep(interval)
        now = stamp()
        if now is None or now == seen:
            continue
        seen = now  # a bad document is refused once, not at every look
        started = time.monotonic()
        try:
            taken = writer.publish(load_document(table))
        except DocumentError as exc:
            log.error("routing table %s refused, the feed keeps the last good one: %s", table, exc)
            continue
        log.info("routing table %s: %s published (generation %s, change set %s) in %.0f ms",
                 table, taken, writer.generation, writer.seq, (time.monotonic() - started) * 1000)
