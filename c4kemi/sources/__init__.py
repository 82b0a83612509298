"""Table sources: where the table a router decides with comes from, behind one interface.

Three kinds, one ``TableSource`` protocol:

- ``FileTableSource`` (c4kemi/sources/store.py): a .json/.toml routing document,
  looked at once per ``check_interval``; only for a worker that runs alone
  (a test, a KEMI worker without a node feed);
- ``FeedTableSource`` (c4kemi/sources/feed_reader.py): the node's table feed, the change
  sets ``c4 feed`` or ``c4 db follow`` publish: what every KEMI worker and
  ``c4 serve`` read in a node;
- ``PostgresTableSource`` (c4kemi/db/source.py): PostgreSQL itself, for a
  ``c4 serve --dsn`` with no feed.

``open_source`` is the one place that chooses among them. Every source
keeps its ``ReloadCounters`` (health, metrics) the same way
(c4kemi/sources/table_source.py). Kept free of asyncpg and aiohttp: the KEMI
workers import this.

The modules:

- table_source.py: the ``TableSource`` protocol and ``ReloadCounters``;
- store.py: the file source (``FileTableSource``);
- feed.py: the table feed's format; feed_writer.py: its writer (``FeedWriter``, ``c4 feed``); feed_reader.py: its reader (``FeedTableSource``);
- files.py: atomic file helpers (replace whole, append whole);
- this package's ``__init__``: ``open_source``, the factory.
"""

from __future__ import annotations

from pathlib import Path

from .table_source import TableSource

__all__ = ["open_source"]


def open_source(
    *,
    table: str | Path | None = None,
    feed: str | Path | None = None,
    dsn: str | None = None,
    cache_file: Path | None = None,
    check_interval: float | None = None,
    step_budget: float | None = None,
) -> TableSource:
    """The source for what the caller names: a table feed, PostgreSQL or a document file, exactly one of them.

    A node's readers name its feed; ``c4 serve --dsn`` without a feed names
    PostgreSQL; a KEMI worker outside ``c4 kamailio`` names the file. ``check_interval``
    (seconds between looks at the file or feed, by default the source's
    own; ``math.inf``: only an explicit ``refresh()``, c4 serve's refresh
    task) and ``step_budget``
    (a KEMI worker spreads a large change over its calls) apply to the file
    and the feed; PostgreSQL pushes its changes (``lifecycle``, an aiohttp
    cleanup context) and keeps its last good table in ``cache_file``.
    Raises DocumentError (file), FeedError (feed) when there is no first table.
    """
    if sum(map(bool, (table, feed, dsn))) != 1:
        raise ValueError("give one of table, feed, dsn")
    if feed:
        from .feed import CHECK_INTERVAL
        from .feed_reader import FeedTableSource

        return FeedTableSource(feed, check_interval=CHECK_INTERVAL if check_interval is None else check_interval,
                               step_budget=step_budget)
    if dsn:
        from ..db.source import PostgresTableSource  # asyncpg: never in a KEMI worker, which has no dsn

        return PostgresTableSource(dsn, cache_file=cache_file)
    from .store import CHECK_INTERVAL as FILE_CHECK_INTERVAL
    from .store import FileTableSource

    return FileTableSource(table, check_interval=FILE_CHECK_INTERVAL if check_interval is None else check_interval)
