"""Following PostgreSQL: changes arrive within a second, outages are ridden out.

Real server (tests/postgres.py); the adversity tests stop and start it while
the code under test runs, as asyncpg's own tests cut connections.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from c4kemi.db.documents import connect, import_document
from c4kemi.db.source import PostgresTableSource, StoreUnavailable
from c4kemi.document import validate_document
from c4kemi.feed import FeedTableSource
from c4kemi.table import compile_table
from tables import document


async def imported(dsn, doc=None) -> None:
    conn = await connect(dsn)
    try:
        await import_document(conn, validate_document(doc or document()))
    finally:
        await conn.close()


async def execute(dsn, sql) -> None:
    conn = await connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def until(predicate, timeout=10.0) -> float:
    """Seconds until predicate() is true (fails after timeout)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def source(pg_dsn, tmp_path):
    await imported(pg_dsn)
    # A periodic check too slow to matter: what arrives comes by NOTIFY, and
    # a lost connection is noticed by asyncpg's termination callback.
    source = PostgresTableSource(pg_dsn, cache_file=tmp_path / "table.json", check_interval=60)
    lifecycle = source.lifecycle(None)
    await lifecycle.__anext__()
    yield source
    with pytest.raises(StopAsyncIteration):
        await lifecycle.__anext__()


async def test_a_change_arrives_by_notify(source, pg_dsn):
    before = source.current()
    assert before.counts["tenants"] == 2 and source.status()["state"] == "ok"
    await execute(pg_dsn, "INSERT INTO tenants VALUES ('initech')")
    elapsed = await until(lambda: source.current().counts["tenants"] == 3)  # the periodic check is 60 s away
    print(f"database change to compiled table in {elapsed * 1000:.0f} ms")
    assert source.reloads == 1
    # The cache file is written (in a thread) after the table is swapped in.
    await until(lambda: {"name": "initech"} in json.loads(source.cache_file.read_text())["tenants"], timeout=5.0)


async def test_postgres_down_keeps_routing_then_recovers(source, pg_dsn, pg_cluster):
    table = source.current()
    pg_cluster.stop()
    try:
        await until(lambda: source.status()["state"] == "stale")
        assert source.status()["stale_since"] is not None
        assert source.current() is table  # routing goes on with the last table
    finally:
        pg_cluster.start()
    await until(lambda: source.status()["state"] == "ok", timeout=15)
    await execute(pg_dsn, "INSERT INTO tenants VALUES ('after-outage')")
    await until(lambda: source.current().counts["tenants"] == 3)


async def test_a_restart_while_postgres_is_down_starts_from_the_saved_table(source, pg_dsn, pg_cluster, tmp_path):
    version = source.current().version
    pg_cluster.stop()
    try:
        again = PostgresTableSource(pg_dsn, cache_file=source.cache_file, check_interval=0.5)
        await again.start()
        assert again.current().version == version
        assert again.status()["state"] == "stale"
        with pytest.raises(StoreUnavailable):
            await PostgresTableSource(pg_dsn, cache_file=tmp_path / "missing.json").start()
    finally:
        pg_cluster.start()


async def test_data_the_checker_refuses_is_not_taken(source, pg_dsn):
    table = source.current()
    # Plain SQL can hold what the checker refuses (a regex the schema cannot judge).
    await execute(pg_dsn, "UPDATE dids SET match = '^(3+)+4$' WHERE prefix = '39612345'")
    await until(lambda: source.failed_reloads == 1)
    assert source.current() is table


def test_db_follow_keeps_the_file_equal_to_the_database(pg_dsn, tmp_path):
    asyncio.run(imported(pg_dsn))
    out = tmp_path / "routing.json"
    proc = subprocess.Popen([sys.executable, "-m", "c4kemi.cli", "db", "follow", "--dsn", pg_dsn, "--out", str(out),
                             "--check-interval", "60"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        assert compile_table(json.loads(out.read_text())).counts["dids"] == 4
        asyncio.run(execute(pg_dsn, "DELETE FROM dids WHERE prefix = '4420'"))
        started = time.monotonic()
        while len(json.loads(out.read_text())["dids"]) != 3:  # by NOTIFY: the periodic check is 60 s away
            assert time.monotonic() - started < 10, "the file did not follow"
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_db_follow_publishes_changes_to_the_feed_as_change_sets(pg_dsn, tmp_path):
    asyncio.run(imported(pg_dsn))
    out, feed = tmp_path / "routing.json", tmp_path / "feed"
    proc = subprocess.Popen([sys.executable, "-m", "c4kemi.cli", "db", "follow", "--dsn", pg_dsn, "--out", str(out),
                             "--feed", str(feed), "--check-interval", "60"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (feed / "current").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        reader = FeedTableSource(feed, check_interval=0)
        assert reader.current().counts["dids"] == 4
        asyncio.run(execute(pg_dsn, "DELETE FROM dids WHERE prefix = '4420'"))
        started = time.monotonic()
        while reader.current().counts["dids"] != 3:  # by NOTIFY: the periodic check is 60 s away
            assert time.monotonic() - started < 10, "the feed did not follow"
            time.sleep(0.02)
        assert (reader.generation, reader.seq) == (1, 1)  # one change set, no new snapshot
        while len(json.loads(out.read_text())["dids"]) != 3:  # the node's copy is written just after
            assert time.monotonic() - started < 10, "the file did not follow"
            time.sleep(0.02)
        assert reader.current().version == compile_table(json.loads(out.read_text())).version
    finally:
        proc.terminate()
        proc.wait(timeout=10)
