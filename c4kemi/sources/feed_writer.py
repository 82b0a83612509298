"""The feed's writer (``c4 feed``, and ``c4 db follow`` through ``FeedWriter``): check once, publish what changed.

The feed's format and why it exists: c4kemi/sources/feed.py. The readers: c4kemi/sources/feed_reader.py.
"""

from __future__ import annotations

import gc
import logging
import operator
import os
import time
from collections.abc import Callable, Mapping
from itertools import compress, count
from operator import ne
from pathlib import Path
from typing import Any

import orjson

from ..core.document import COLLECTIONS, DocumentError, load_raw, validate_document, validate_entity
from ..core.table import BASE_COLLECTIONS, DIGEST_MASK, did_digest, route_digest
from .feed import POINTER, FeedError, changes_path, snapshot_path
from .files import append_whole, file_stamp, write_atomically

__all__ = ["LINE", "MAX_CHANGES", "PUBLISH_RETRY", "FeedWriter", "load_frozen", "watch_file"]

log = logging.getLogger("c4.feed")

# Entities per line of a snapshot or of a change set: a reader parses one line a step, as many as a step
# compiles (c4kemi.core.steps.STEP). What a line's parse makes is garbage once it is compiled; in a KEMI worker it
# lands on pages shared with the other workers (each one copied) or on new ones that stay with the
# worker: at 10,000 a line, a 100,000-DID change set left 63 MiB private in each worker at 1M DIDs.
LINE = 1_000# Above this many changed DIDs and routes a new snapshot is cheaper for the
# writer to describe than a change set is for every reader to apply.
MAX_CHANGES = 200_000# Seconds between c4 feed's attempts to publish while the disk refuses the feed's writes (a full disk).
PUBLISH_RETRY = 1.0


def _did_key(d: Mapping[str, Any]) -> str:
    return d["prefix"]


def _route_key(r: Mapping[str, Any]) -> tuple[str, str]:
    return r["tenant"], r["prefix"]


def _same(a: Any, b: Any) -> bool:
    # orjson tells 1 from 1.0 and True (equal in Python, not to the checks or once read back).
    return a == b and orjson.dumps(a) == orjson.dumps(b)


def _differing_span(old: list, new: list, strict: bool) -> tuple[int, int]:
    """(a, b): ``old`` and ``new`` are equal but for old[a:len(old) - b] and new[a:len(new) - b].

    An edit of the file changes a few entities and leaves the others where
    they were: the common head and tail are found by comparing entities in
    place, in C (``map``), without hashing keys or serializing anything.
    ``==`` tells 1 from 1.0 or True only inside strings; ``strict`` (routes,
    whose weights and priorities are numbers) then compares the head and
    tail once more as orjson writes them, and on a difference gives the
    whole list (the key-by-key comparison then tells exactly).
    """
    size = min(len(old), len(new))
    a = next(compress(count(), map(ne, old, new)), size)
    b = 0 if a == size else min(next(compress(count(), map(ne, reversed(old), reversed(new))), size), size - a)
    if strict and (orjson.dumps(old[:a]) != orjson.dumps(new[:a])
                   or orjson.dumps(old[len(old) - b:]) != orjson.dumps(new[len(new) - b:])):
        return 0, 0
    return a, b


def _diff(old: Mapping, old_list: list, new: list, key: Callable, strict: bool) -> dict:
    """key -> changed entity, or None for removed; raises ValueError on a duplicate key.

    Only the span where the lists differ (``_differing_span``) is compared
    by key: the entities around it are the old ones, whose keys were unique.
    """
    a, b = _differing_span(old_list, new, strict)
    before = {key(e): e for e in old_list[a:len(old_list) - b]}
    after: dict = {}
    for entity in new[a:len(new) - b]:
        k = key(entity)
        if k in after or (k in old and k not in before):  # twice in the span, or also in the unchanged head or tail
            raise ValueError(f"duplicate key {k!r}")
        after[k] = entity
    same = _same if strict else operator.eq
    changes = {k: e for k, e in after.items() if k not in before or not same(before[k], e)}
    changes.update((k, None) for k in before if k not in after)
    return changes


def _unchanged(before: Any, after: Any, same: Callable) -> bool:
    return before is None if after is None else before is not None and same(before, after)


def _apply(known: dict, changes: Mapping) -> None:
    """Changed entities into ``known``, by key (None: removed)."""
    for key, entity in changes.items():
        if entity is None:
            known.pop(key, None)
        else:
            known[key] = entity


def _applied(known: Mapping, changes: Mapping) -> dict:
    """A copy of ``known`` with the changes applied."""
    result = dict(known)
    _apply(result, changes)
    return result


def _base_bytes(raw: Mapping[str, Any]) -> bytes | None:
    """The small collections as written, to tell whether they changed (None: cannot tell)."""
    try:
        return orjson.dumps([raw.get(name, []) for name in BASE_COLLECTIONS])
    except TypeError:  # what orjson cannot write (a huge int): the whole document gets checked
        return None

class FeedWriter:
    """Checks documents and publishes them to a feed directory, as change sets when it can.

    It keeps the last published document as written (DIDs and routes by
    key). When a new one differs only in DIDs and routes, only the entities
    that differ are checked (``validate_entity``, against the collections
    of the last checked document: unchanged, so everything else in the
    document is as good as it was); anything else is a whole-document check
    and a new snapshot. Either way what is refused is what
    ``validate_document`` refuses (tests/test_incremental.py).

    A publish whose write fails (OSError: a full disk) leaves the files,
    the generation, the sequence and the documents as they were; the same
    publish, once the disk takes it, goes through (tests/test_disk_full.py).
    """

    def __init__(self, directory: str | Path, max_changes: int = MAX_CHANGES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # the documents hold trunk passwords
        self.max_changes = max_changes
        generations = [int(p.name[9:-5]) for p in self.directory.glob("snapshot-*.json") if p.name[9:-5].isdigit()]
        self.generation = max(generations, default=0)  # the next publish starts a new one
        self.seq = 0
        self._base: bytes | None = None  # the small collections as written
        self._base_doc: dict[str, Any] = {}  # ... as values
        self._refs: dict[str, Any] = {}  # ... as checked, what DIDs and routes may refer to
        self._dids: dict[str, Any] = {}  # DIDs as written, by prefix
        self._routes: dict[tuple[str, str], Any] = {}  # routes as written, by (tenant, prefix)
        self._lists: tuple[list, list] | None = None  # the last document's DIDs and routes, in its order
        self._out: int | None = None
        self.failed_writes = 0  # publishes the disk refused (each one left the feed as it was)
        self._cut = False  # a set of several lines was refused: the next publish is a new generation

    def publish(self, raw: Any, source: str | None = None) -> str:
        """Check a parsed document and publish it: "snapshot", "changes" or "unchanged".

        Raises DocumentError (nothing published) when the document is
        refused, OSError (nothing published, counted) when the disk refuses
        the write.
        """
        found = None if self._cut else self._entity_changes(raw)
        if found is None or len(found[2]) + len(found[3]) > self.max_changes:
            self._write_snapshot(raw, validate_document(raw, source))
            return "snapshot"
        dids, routes, did_changes, route_changes = found
        if did_changes or route_changes:
            self._append(did_changes, route_changes, source)
            self._take(did_changes, route_changes)
        self._lists = dids, routes  # what the next document is compared with, in place
        return "changes" if did_changes or route_changes else "unchanged"

    def publish_changes(self, dids: Mapping[str, Any], routes: Mapping[tuple[str, str], Any], source: str | None = None) -> str:
        """Publish DIDs and routes known to have changed (None: removed), by key: "changes" or "unchanged".

        For a writer told what changed (c4 db follow reads PostgreSQL's
        change log) instead of a whole document: the same check of each
        changed entity as ``publish``, so what it refuses is what the
        whole-document check of the resulting document refuses. Raises
        DocumentError (nothing published) when refused, OSError when the
        disk refuses the write; after a set of several lines was refused,
        the resulting document is published whole: "snapshot".
        """
        if self._base is None:
            raise FeedError("publish_changes before a first document")
        did_changes = {k: d for k, d in dids.items() if not _unchanged(self._dids.get(k), d, operator.eq)}
        route_changes = {k: r for k, r in routes.items() if not _unchanged(self._routes.get(k), r, _same)}
        if not did_changes and not route_changes:
            return "unchanged"
        if self._cut:  # the document they make, published whole
            dids, routes = _applied(self._dids, did_changes), _applied(self._routes, route_changes)
            return self.publish({**self._base_doc, "dids": list(dids.values()), "routes": list(routes.values())}, source)
        self._append(did_changes, route_changes, source)
        self._take(did_changes, route_changes)
        self._lists = None  # the next whole document is compared with what the dicts now hold
        return "changes"

    def _take(self, did_changes: Mapping, route_changes: Mapping) -> None:
        """Make what was published the DIDs and routes the next change is compared with."""
        _apply(self._dids, did_changes)
        _apply(self._routes, route_changes)

    def document(self) -> dict[str, Any]:
        """The last published document, as written (the node's copy of the table)."""
        return {**self._base_doc, "dids": list(self._dids.values()), "routes": list(self._routes.values())}

    def _append(self, did_changes: Mapping, route_changes: Mapping, source: str | None) -> None:
        """Check the changed entities and append them as one change set (DocumentError: nothing appended)."""
        errors: list[str] = []
        checked_dids = self._checked("dids", did_changes, errors)
        checked_routes = self._checked("routes", route_changes, errors)
        if errors:
            raise DocumentError(errors, source)
        seq = self.seq + 1
        dids = [[prefix, d] for prefix, d in checked_dids.items()]
        routes = [[tenant, prefix, r] for (tenant, prefix), r in checked_routes.items()]
        # Lines of at most LINE entities (a reader parses one per step); "more": the set goes on on the next line.
        parts = [(dids[i:i + LINE], []) for i in range(0, len(dids), LINE)]
        parts += [([], routes[i:i + LINE]) for i in range(0, len(routes), LINE)]
        last = {"digest": self._digest_delta(checked_dids, checked_routes)}
        lines = [orjson.dumps({"seq": seq, "dids": d, "routes": r, **({"more": True} if n < len(parts) else last)})
                 for n, (d, r) in enumerate(parts, 1)]
        try:
            append_whole(self._out, b"\n".join(lines) + b"\n")  # one write, O_APPEND; refused: cut off again
        except OSError as exc:
            self.failed_writes += 1
            # A reader may be in the middle of the refused set, its first lines read (a worker spreads a set
            # over calls): another set at the same place could follow them. A new generation instead.
            self._cut = len(lines) > 1
            raise OSError(exc.errno, f"{changes_path(self.directory, self.generation)}: {exc.strerror or exc}; nothing published") from exc
        self.seq = seq

    def _digest_delta(self, checked_dids: Mapping, checked_routes: Mapping) -> int:
        """What the checked changes add to the table's entity digest (modulo 2**64), against what was published."""
        delta = 0
        for prefix, d in checked_dids.items():
            old = self._dids.get(prefix)  # as written; a DID's fields are strings, as checked
            delta += (did_digest(d) if d is not None else 0) - (did_digest(old) if old is not None else 0)
        for key, r in checked_routes.items():
            old = self._routes.get(key)  # as written (trunks may be names): checked again, against the same collections
            old_checked = validate_entity("routes", old, self._refs) if old is not None else None
            delta += (route_digest(r) if r is not None else 0) - (route_digest(old_checked) if old_checked is not None else 0)
        return delta & DIGEST_MASK

    def _entity_changes(self, raw: Any) -> tuple[list, list, dict, dict] | None:
        """(DIDs and routes as written, what changed of each by key), or None when the whole document must be checked."""
        if self._base is None or not isinstance(raw, dict) or not raw.keys() <= set(COLLECTIONS):
            return None
        dids, routes = raw.get("dids", []), raw.get("routes", [])
        if not isinstance(dids, list) or not isinstance(routes, list) or _base_bytes(raw) != self._base:
            return None
        old_dids, old_routes = self._lists or (list(self._dids.values()), list(self._routes.values()))
        try:
            # A DID's fields are strings: == is exact (a valid old one never equals a wrong type); routes hold numbers.
            did_changes = _diff(self._dids, old_dids, dids, _did_key, strict=False)
            route_changes = _diff(self._routes, old_routes, routes, _route_key, strict=True)
        except (TypeError, KeyError, ValueError):  # not an object, no key, an unhashable or duplicate key: the full check names it
            return None
        return dids, routes, did_changes, route_changes

    def _checked(self, collection: str, changes: Mapping, errors: list[str]) -> dict:
        out = {}
        for key, entity in changes.items():
            try:
                out[key] = None if entity is None else validate_entity(collection, entity, self._refs)
            except DocumentError as exc:
                errors.extend(exc.errors)
        return out

    def _write_snapshot(self, raw: Mapping[str, Any], document: Mapping[str, Any]) -> None:
        generation = self.generation + 1
        base = {name: document[name] for name in BASE_COLLECTIONS}
        dids, routes = document["dids"], document["routes"]
        did_lines = [orjson.dumps(dids[i:i + LINE]) for i in range(0, len(dids), LINE)]
        route_lines = [orjson.dumps(routes[i:i + LINE]) for i in range(0, len(routes), LINE)]
        header = orjson.dumps({"base": base, "did_lines": len(did_lines)})
        self._write_generation(generation, b"\n".join([header, *did_lines, *route_lines]) + b"\n")
        self.generation, self.seq, self._cut = generation, 0, False
        self._base = _base_bytes(raw)
        self._base_doc = {name: raw.get(name, []) for name in BASE_COLLECTIONS}
        self._refs = {
            "tenants": [t["name"] for t in base["tenants"]],
            "normalization_profiles": [p["name"] for p in base["normalization_profiles"]],
            **{name: {e["name"]: e for e in base[name]} for name in ("carriers", "ipbxs", "trunks")},
        }
        self._dids = {d["prefix"]: d for d in raw.get("dids", [])}  # the document was good: every key is there
        self._routes = {_route_key(r): r for r in raw.get("routes", [])}
        self._lists = raw.get("dids", []), raw.get("routes", [])
        for path in [*self.directory.glob("snapshot-*.json"), *self.directory.glob("changes-*.jsonl")]:
            number = path.name.split("-", 1)[1].split(".", 1)[0]
            if number.isdigit() and int(number) < self.generation - 1:  # readers still switching use the previous one
                path.unlink(missing_ok=True)

    def _write_generation(self, generation: int, snapshot: bytes) -> None:
        """Write the snapshot, an empty changes file, then the pointer: readers switch only to a whole generation.

        Refused (OSError), none of it is left: the pointer names the generation it named, whose changes file stays open.
        """
        out = None
        try:
            write_atomically(snapshot_path(self.directory, generation), snapshot)
            out = os.open(changes_path(self.directory, generation), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            write_atomically(self.directory / POINTER, orjson.dumps({"generation": generation}))
        except OSError as exc:
            self.failed_writes += 1
            if out is not None:
                os.close(out)
            snapshot_path(self.directory, generation).unlink(missing_ok=True)
            changes_path(self.directory, generation).unlink(missing_ok=True)
            raise OSError(exc.errno, f"{self.directory}: generation {generation}: {exc.strerror or exc}; nothing published") from exc
        if self._out is not None:
            os.close(self._out)
        self._out = out

    def close(self) -> None:
        if self._out is not None:
            os.close(self._out)
            self._out = None


def watch_file(table: Path, feed: Path, interval: float = 0.2) -> int:
    """``c4 feed``: publish TABLE to FEED, then every change of it, until stopped.

    The first document must be good (exit 1 with its errors); after that a
    refused document is logged and the feed keeps the last good one. A
    publish the disk refuses (full) is tried again every PUBLISH_RETRY
    seconds, with the file as it is then, until the disk takes it.
    """
    writer = FeedWriter(feed)

    seen = file_stamp(table)
    try:
        writer.publish(load_frozen(table), str(table))
    except DocumentError as exc:
        for error in exc.errors:
            log.error("%s: %s", table, error)
        log.error("%s: refused, %d error(s); nothing published", table, len(exc.errors))
        return 1
    log.info("routing table %s published to %s (generation %s)", table, feed, writer.generation)
    failing = False  # the disk refused the last attempt
    while True:
        time.sleep(interval)
        now = file_stamp(table)
        if now is None or now == seen:
            continue
        started = time.monotonic()
        try:
            taken = writer.publish(load_frozen(table), str(table))
        except DocumentError as exc:
            seen = now  # a bad document is refused once, not at every look
            log.error("routing table %s refused, the feed keeps the last good one: %s", table, exc)
            continue
        except OSError as exc:  # nothing published (a full disk, say): the next look tries again
            if not failing:  # said once per outage, not once per attempt
                log.error("routing table %s not published: %s; trying again every %.0f s", table, exc, PUBLISH_RETRY)
            failing = True
            time.sleep(PUBLISH_RETRY)
            continue
        seen = now
        if failing:
            log.warning("the feed %s takes writes again (%d refused so far)", feed, writer.failed_writes)
            failing = False
        log.info("routing table %s: %s published (generation %s, change set %s) in %.0f ms",
                 table, taken, writer.generation, writer.seq, (time.monotonic() - started) * 1000)


def load_frozen(table: Path) -> Any:
    """``load_raw`` for the writer, which keeps a million entities at 1M DIDs.

    A parsed document holds no reference cycles, so the garbage collector
    has nothing to find in it: it is paused while the parser makes those
    objects (at 1M DIDs, half the parse's time went to collections
    scanning them), and they are frozen afterwards so later collections
    never scan them either. Freed by their reference counts all the same
    when the next document replaces them.
    """
    gc.disable()
    try:
        raw = load_raw(table)
    finally:
        gc.enable()
    gc.freeze()
    return raw
