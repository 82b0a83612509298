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
    snapshot-N.json    the checked document generation N starts from, as
                       lines: {"base": {tenants, ..., trunks}, "did_lines": K},
                       then K lines of DIDs and the routes' lines, each
                       line a JSON array of at most LINE entities
    changes-N.jsonl    append-only, one change set per line:
                       {"seq": 1, "dids": [[prefix, did or null], ...],
                        "routes": [[tenant, prefix, route or null], ...],
                        "digest": D}
                       (a set of more than LINE entities goes on over
                       lines of the same seq, all but its last marked
                       "more": true; readers take only whole sets; D,
                       on a set's last line, is what the set adds to the
                       table's entity digest, modulo 2**64: the writer
                       computes it once, so that no reader looks up and
                       digests every old and new entity for the version)
    store.json         c4 db follow only: its PostgreSQL state for /health
                       ({"state": "ok" or "stale", "stale_since", ...})

A change to the small collections (tenants, profiles, IPBXs, carriers,
trunks), or a change set larger than ``max_changes``, starts a new
generation: a new snapshot, which readers compile whole (without checking
it again: the writer did). A KEMI worker spreads a large change or a new
snapshot over calls (a few ms of it per call, ``step_budget``) and routes
with the table it has until the new one is complete: a bulk import does
not stop routing. A line is read only once it is complete (a writer that
dies mid-line leaves a torn tail that readers ignore; a restarted writer
starts a new generation). The generation before the current one is kept
for readers still switching; older ones are removed.

A write the disk refuses (full: ENOSPC, or a write cut short) publishes
nothing: the writer cuts what it appended off again (or removes the new
snapshot before the pointer names it), keeps its state as it was, counts
it and raises OSError; its callers publish again until the disk takes it.
A refused set of more than one line is published again as a new
generation: a reader may have read its first lines already.

Readers trust the feed: it is written by the node's own writer into a
private directory. Every byte from outside (the document) is checked by the
writer before it is published.
"""


from __future__ import annotations

from pathlib import Path

__all__ = ["CHECK_INTERVAL", "POINTER", "STORE_STATUS", "FeedError", "changes_path", "snapshot_path"]

POINTER = "current"
# The state of the store behind the writer (c4 db follow: PostgreSQL reachable or not), for /health.
STORE_STATUS = "store.json"# Seconds between a reader's looks at the feed (two stats): with c4 feed's
# 0.2 s, a small change routes within a second of the file's rename.
CHECK_INTERVAL = 0.5


class FeedError(RuntimeError):
    """The feed cannot be read (no generation published yet, or a file missing)."""

def snapshot_path(directory: Path, generation: int) -> Path:
    return directory / f"snapshot-{generation}.json"


def changes_path(directory: Path, generation: int) -> Path:
    return directory / f"changes-{generation}.jsonl"
