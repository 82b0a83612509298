"""Call-record retention: delete the ``cdrs`` rows older than N days, in batches.

``c4 db cdr-prune --older-than-days N`` (daily from a systemd timer,
deploy/systemd/c4-cdr-prune@.timer). Why batches, not one ``DELETE``:

- each batch is its own short transaction: ``c4 cdr --db`` keeps inserting
  and ``GET /api/v1/cdrs`` keeps reading meanwhile (a ``DELETE`` locks only
  the rows it deletes), and a failure loses only the batch under way;
- no transaction stays open for the whole prune, so vacuum can clean the
  dead rows of the batches already done, everywhere in the database, and
  the WAL (and a replica's lag) grows batch by batch, not all at once;
- a pause between batches leaves the disk to the calls.

The cutoff is fixed once, from the database's clock, before the first
batch: rows that age past it while the prune runs wait for the next run.
For volumes where even batched deletes cost too much, partitioning the
table by month and dropping whole partitions is the alternative
(docs/operations.md, "Call-record retention").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["PruneResult", "prune_cdrs"]

# Each batch: the oldest rows first, through the cdrs_time (invite_at, id) index.
_DELETE = (
    "DELETE FROM cdrs WHERE id IN "
    "(SELECT id FROM cdrs WHERE invite_at < $1 ORDER BY invite_at, id LIMIT $2)"
)


@dataclass
class PruneResult:
    cutoff: datetime  # records whose INVITE came before this were deleted
    deleted: int
    batches: int


async def cutoff_for(conn: asyncpg.Connection, days: int) -> datetime:
    """now() - DAYS, by the database's clock (the one invite_at was compared with)."""
    return await conn.fetchval("SELECT now() - make_interval(days => $1)", days)


async def count_older(conn: asyncpg.Connection, cutoff: datetime) -> int:
    return await conn.fetchval("SELECT count(*) FROM cdrs WHERE invite_at < $1", cutoff)


async def prune_cdrs(conn: asyncpg.Connection, days: int, batch: int = 5000, pause: float = 0.1) -> PruneResult:
    """Delete the records whose INVITE is older than DAYS days, BATCH rows per transaction, PAUSE s apart."""
    if days < 1 or batch < 1 or pause < 0:
        raise ValueError("days and batch must be >= 1, pause >= 0")
    cutoff = await cutoff_for(conn, days)
    deleted = batches = 0
    while True:
        status = await conn.execute(_DELETE, cutoff, batch)  # autocommit: one transaction per batch
        count = int(status.rpartition(" ")[2])
        if count == 0:
            break
        deleted += count
        batches += 1
        if count < batch:
            break
        if pause:
            await asyncio.sleep(pause)
    return PruneResult(cutoff, deleted, batches)
