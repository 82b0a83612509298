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
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental import CHANGES, apply, table_view

from c4http.app import make_app
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.table import compile_table, compile_validated
from c4kemi.db.changes import ChangeFollower
from c4kemi.db.documents import connect, export_document, import_document
from c4kemi.db.source import FeedPublisher, PostgresTableSource, StoreUnavailable, follow_to_file
from c4kemi.sources.feed_reader import FeedTableSource
from c4kemi.sources.feed_writer import LINE, FeedWriter
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


async def execute_fetch(dsn, sql) -> list:
    conn = await connect(dsn)
    try:
        return await conn.fetch(sql)
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
    assert source.counters.reloads == 1
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
    await until(lambda: source.counters.failed_reloads == 1)
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


# -- the change log (migration 0005): c4 db follow --feed fetches only what changed ----------------


class Node:
    """c4 db follow --feed, in process: a ChangeFollower publishing to a feed, and a worker's reader of it."""

    def __init__(self, dsn, feed, **kwargs):
        self.publisher = FeedPublisher(FeedWriter(feed), feed.parent / f"{feed.name}-table.json")
        self.follower = ChangeFollower(dsn, self.publisher.document, self.publisher.changes, **kwargs)
        self.feed = feed
        self.reader = None

    async def start(self):
        await self.follower.load_once()
        self.reader = FeedTableSource(self.feed, check_interval=0)

    def table(self):
        self.reader.refresh()
        return self.reader.current()


async def exported_table(dsn):
    """What a whole export gives: the compiled table, or None when the checker refuses the data."""
    conn = await connect(dsn)
    try:
        doc, _ = await export_document(conn)
    finally:
        await conn.close()
    try:
        return compile_validated(validate_document(doc))
    except DocumentError:
        return None


def differences(before: list, after: list, key) -> tuple[list, list, list]:
    """(keys removed, entities added, entities changed) from one list of entities to the other."""
    old, new = {key(e): e for e in before}, {key(e): e for e in after}
    return ([k for k in old if k not in new], [e for k, e in new.items() if k not in old],
            [e for k, e in new.items() if k in old and e != old[k]])


def did_key(d):
    return d["prefix"]


def route_key(r):
    return r["tenant"], r["prefix"]


def trunk_rows(route) -> list[tuple]:
    return [(route["tenant"], route["prefix"], position, *((c, position, 1.0) if isinstance(c, str) else (c["trunk"], c["priority"], float(c["weight"]))))
            for position, c in enumerate(route["trunks"])]


async def write_through_sql(conn, before, after, bulk=False) -> int:
    """The difference between two documents, written as a provisioning tool would: plain SQL, one transaction.

    One statement per entity, or (``bulk``) one statement per table and kind
    of change, as a bulk edit by hand would. Returns the most rows one
    statement wrote.
    """
    dids_gone, dids_new, dids_changed = differences(before["dids"], after["dids"], did_key)
    routes_gone, routes_new, routes_changed = differences(before["routes"], after["routes"], route_key)
    did_columns = lambda ds: ([d["tenant"] for d in ds], [d["prefix"] for d in ds], [d["ipbx"] for d in ds],  # noqa: E731
                              [d.get("match") for d in ds])
    trunks = [row for r in routes_new + routes_changed for row in trunk_rows(r)]
    statements = [
        ("DELETE FROM dids WHERE prefix = ANY($1::text[])", [dids_gone]),
        ("INSERT INTO dids (tenant, prefix, ipbx, match) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
         did_columns(dids_new)),
        ("UPDATE dids SET tenant = n.tenant, ipbx = n.ipbx, match = n.match"
         " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS n(tenant, prefix, ipbx, match) WHERE dids.prefix = n.prefix",
         did_columns(dids_changed)),
        # A route's trunks first, so that no statement deletes rows by cascade (each statement's count is its own).
        ("DELETE FROM route_trunks WHERE (tenant, prefix) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
         [[k[0] for k in routes_gone] + [r["tenant"] for r in routes_changed],
          [k[1] for k in routes_gone] + [r["prefix"] for r in routes_changed]]),
        ("DELETE FROM routes WHERE (tenant, prefix) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
         [[k[0] for k in routes_gone], [k[1] for k in routes_gone]]),
        ("INSERT INTO routes (tenant, prefix, when_all_down) SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
         [[r["tenant"] for r in routes_new], [r["prefix"] for r in routes_new], [r.get("when_all_down") for r in routes_new]]),
        ("UPDATE routes SET when_all_down = n.when_all_down FROM unnest($1::text[], $2::text[], $3::text[]) AS n(tenant, prefix, when_all_down)"
         " WHERE routes.tenant = n.tenant AND routes.prefix = n.prefix",
         [[r["tenant"] for r in routes_changed], [r["prefix"] for r in routes_changed], [r.get("when_all_down") for r in routes_changed]]),
        ("INSERT INTO route_trunks SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[], $6::float8[])",
         [list(column) for column in zip(*trunks, strict=True)] or [[]] * 6),
    ]
    largest = 0
    async with conn.transaction():
        for sql, columns in statements:
            if not columns[0]:
                continue
            for args in [columns] if bulk else ([[value] for value in row] for row in zip(*columns, strict=True)):
                status = await conn.execute(sql, *args)  # "UPDATE 5", "INSERT 0 5": the rows it wrote
                largest = max(largest, int(status.split()[-1]))
        if after["trunks"][0]["fr_timer"] != before["trunks"][0]["fr_timer"]:
            await conn.execute("UPDATE trunks SET fr_timer = $1 WHERE name = $2", after["trunks"][0]["fr_timer"],
                               after["trunks"][0]["name"])
        if after["ipbxs"][0]["targets"] != before["ipbxs"][0]["targets"]:
            await conn.execute("UPDATE ipbxs SET targets = $1 WHERE name = $2", after["ipbxs"][0]["targets"],
                               after["ipbxs"][0]["name"])
    return largest


# A DID whose match PostgreSQL stores but the checker refuses, then the same DID made good again.
BAD_THEN_GOOD = st.sampled_from([
    ("raw-did", {"tenant": "acme", "prefix": "3955", "ipbx": "acme-pbx", "match": "("}),
    ("raw-did", {"tenant": "acme", "prefix": "3955", "ipbx": "acme-pbx", "match": "39[0-9]*"}),
])


# Several DID and route changes written as bulk statements (one per table and kind of change).
BULK = st.tuples(st.just("bulk"), st.lists(CHANGES.filter(lambda c: c[0].startswith(("did", "route"))), min_size=2, max_size=8))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.booleans().flatmap(lambda bulk: BULK if bulk else st.one_of(CHANGES, BAD_THEN_GOOD)), min_size=1, max_size=8),
       st.integers(1, 6))
def test_changes_made_through_sql_and_followed_through_the_log_give_the_export_table(pg_dsn, tmp_path_factory, changes, bulk_rows):
    async def run() -> None:
        doc = document()
        # c4_bulk_rows() lowered for this database (200,000 in production), so that a bulk statement of a
        # few rows is logged by key or, past the bound, as 'all', as one of 200,000 or more would be.
        await execute(pg_dsn, f"CREATE OR REPLACE FUNCTION c4_bulk_rows() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT {bulk_rows}'")
        await imported(pg_dsn, doc)
        node = Node(pg_dsn, tmp_path_factory.mktemp("feed") / "feed")
        await node.start()
        good = await exported_table(pg_dsn)
        conn = await connect(pg_dsn)
        try:
            for change in changes:
                after = json.loads(json.dumps(doc))
                if change[0] == "raw-did":
                    after["dids"] = [d for d in after["dids"] if d["prefix"] != change[1]["prefix"]] + [change[1]]
                else:
                    for one in change[1] if change[0] == "bulk" else [change]:
                        apply(after, one)
                try:
                    largest = await write_through_sql(conn, doc, after, bulk=change[0] == "bulk")
                except asyncpg.PostgresError:  # what the schema itself refuses (another tenant's IPBX, ...)
                    continue
                changed, doc = after != doc, after
                documents, change_sets, refused = node.follower.documents, node.follower.change_sets, node.follower.refused
                await node.follower._check(conn)  # what a NOTIFY or the periodic check runs
                expected = await exported_table(pg_dsn)
                if expected is None:  # refused: the feed keeps the last good table
                    assert node.table().version == good.version
                    continue
                good = expected
                assert table_view(node.table()) == table_view(expected)
                if change[0] in ("trunk", "ipbx") and changed:  # the small collections: a whole export
                    assert node.follower.documents == documents + 1
                elif change[0] == "bulk" and largest > bulk_rows:  # past the bound: 'all', a whole export
                    assert node.follower.documents == documents + 1
                elif change[0] == "bulk" and largest and not refused:  # bulk statements by key: a change set
                    assert (node.follower.documents, node.follower.change_sets) == (documents, change_sets + 1)
                elif not node.follower.refused and node.follower.change_sets > change_sets:
                    assert node.follower.documents == documents  # a change set, not a whole export
        finally:
            await conn.close()
            node.publisher.writer.close()

    asyncio.run(run())


@pytest.fixture
async def node(pg_dsn, tmp_path):
    """A running c4 db follow --feed (in process), checking every 0.3 s besides NOTIFY."""
    await imported(pg_dsn)
    node = Node(pg_dsn, tmp_path / "feed", check_interval=0.3)
    await node.start()
    task = asyncio.create_task(node.follower.run())
    yield node
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    node.publisher.writer.close()


async def test_a_lost_notify_is_caught_by_the_periodic_check(node, pg_dsn):
    # Without the 0001 trigger no NOTIFY is sent (and the version does not move): only the log says it changed.
    await execute(pg_dsn, "ALTER TABLE dids DISABLE TRIGGER dids_changed;"
                          " INSERT INTO dids (tenant, prefix, ipbx) VALUES ('acme', '3988', 'acme-pbx')")
    await until(lambda: node.table().counts["dids"] == 5)
    assert (node.follower.documents, node.follower.change_sets) == (1, 1)
    assert table_view(node.table()) == table_view(await exported_table(pg_dsn))


async def test_a_cut_connection_is_reopened_and_what_changed_meanwhile_arrives(node, pg_dsn):
    terminated = 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()'
    await execute(pg_dsn, f"{terminated}; DELETE FROM dids WHERE prefix = '4420'")
    await until(lambda: node.table().counts["dids"] == 3)
    await execute(pg_dsn, f"{terminated}; DELETE FROM routes WHERE tenant = 'globex'")
    await until(lambda: node.table().counts["routes"] == 3)
    assert node.follower.documents == 1  # caught up through the log, not a whole export
    assert table_view(node.table()) == table_view(await exported_table(pg_dsn))


async def test_a_follower_restarted_after_changes_catches_up(pg_dsn, tmp_path):
    await imported(pg_dsn)
    first = Node(pg_dsn, tmp_path / "feed")
    await first.start()
    assert first.table().counts["dids"] == 4
    first.publisher.writer.close()  # stopped
    await execute(pg_dsn, "DELETE FROM dids WHERE prefix = '4420'; INSERT INTO tenants VALUES ('initech')")
    again = Node(pg_dsn, tmp_path / "feed")  # the same feed directory: a new generation
    await again.start()
    assert first.table().counts["dids"] == 3
    assert table_view(first.table()) == table_view(await exported_table(pg_dsn))  # an old reader switches too
    again.publisher.writer.close()


async def test_a_bulk_statement_arrives_as_a_change_set_over_several_lines(pg_dsn, tmp_path):
    """Above 0005's old bound of 10,000 rows, a statement's keys are logged (0007): a change set, not a reload."""
    await imported(pg_dsn)
    node = Node(pg_dsn, tmp_path / "feed")
    await node.start()
    conn = await connect(pg_dsn)
    try:
        await conn.execute("INSERT INTO dids (tenant, prefix, ipbx) SELECT 'acme', '5' || n, 'acme-pbx' FROM generate_series(1, 10001) n")
        logged = await conn.fetch("SELECT collection, count(*) FROM routing_changes WHERE seq > $1 GROUP BY 1", node.follower.seq)
        assert [tuple(row) for row in logged] == [("dids", 10001)]
        await node.follower._check(conn)
        assert (node.follower.documents, node.follower.change_sets) == (1, 1)
        lines = [json.loads(line) for line in (node.feed / "changes-1.jsonl").read_bytes().splitlines()]
        assert [(line["seq"], len(line["dids"]), line.get("more")) for line in lines] == [(1, LINE, True)] * 10 + [(1, 1, None)]
        assert node.table().counts["dids"] == 10005 and node.reader.seq == 1
        assert table_view(node.table()) == table_view(await exported_table(pg_dsn))
        await conn.execute("UPDATE dids SET ipbx = 'acme-branch' WHERE prefix LIKE '5%'")
        await conn.execute("DELETE FROM dids WHERE prefix LIKE '51%'")
        await node.follower._check(conn)
        assert (node.follower.documents, node.follower.change_sets) == (1, 2)
        assert table_view(node.table()) == table_view(await exported_table(pg_dsn))
        assert node.reader.seq == 2 and node.table().find_did("52", None).ipbx.name == "acme-branch"
    finally:
        await conn.close()
        node.publisher.writer.close()


async def test_an_import_logs_one_all_row_and_a_rolled_back_savepoint_none(pg_dsn):
    await imported(pg_dsn)  # TRUNCATE, then COPY of every table: 'all' already says everything
    assert [tuple(row) for row in await execute_fetch(pg_dsn, "SELECT collection, count(*) FROM routing_changes GROUP BY 1")] == [("all", 1)]
    conn = await connect(pg_dsn)
    try:
        async with conn.transaction():
            try:
                async with conn.transaction():  # a savepoint: its 'all' goes with it, and so does "all was logged"
                    await conn.execute("UPDATE trunks SET fr_timer = 3000")
                    raise RuntimeError("rolled back")
            except RuntimeError:
                pass
            await conn.execute("INSERT INTO dids (tenant, prefix, ipbx) VALUES ('acme', '3988', 'acme-pbx')")
        logged = await conn.fetch("SELECT collection, prefix FROM routing_changes ORDER BY seq")
    finally:
        await conn.close()
    assert [tuple(row) for row in logged] == [("all", None), ("dids", "3988")]


async def test_a_statement_past_c4_bulk_rows_or_pruned_rows_read_the_whole_document(pg_dsn, tmp_path):
    await imported(pg_dsn)
    node = Node(pg_dsn, tmp_path / "feed", retention=0)
    await node.start()
    conn = await connect(pg_dsn)
    try:
        # The bound is 200,000 rows (0007); a function, so that a test can lower it for its database.
        assert await conn.fetchval("SELECT c4_bulk_rows()") == 200_000
        await conn.execute("CREATE OR REPLACE FUNCTION c4_bulk_rows() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 100'")
        await conn.execute("INSERT INTO dids (tenant, prefix, ipbx) SELECT 'acme', '5' || n, 'acme-pbx' FROM generate_series(1, 101) n")
        assert await conn.fetchval("SELECT count(*) FROM routing_changes WHERE collection = 'dids' AND prefix LIKE '5%'") == 0
        await node.follower._check(conn)
        assert node.follower.documents == 2 and node.table().counts["dids"] == 105  # one whole export
        await conn.execute("DELETE FROM dids WHERE prefix = '51'")
        await node.follower._check(conn)
        assert node.follower.documents == 2 and node.table().counts["dids"] == 104  # one change set
        # Rows this follower has not read are pruned (by another node): it cannot bridge the gap.
        await conn.execute("DELETE FROM dids WHERE prefix = '52'")
        await ChangeFollower(pg_dsn, None, None, retention=0).prune(conn)
        await conn.execute("DELETE FROM dids WHERE prefix = '53'")
        await node.follower._check(conn)
        assert node.follower.documents == 3 and node.table().counts["dids"] == 102
        assert table_view(node.table()) == table_view(await exported_table(pg_dsn))
        assert await conn.fetchval("SELECT count(*) FROM routing_changes WHERE seq <= $1", node.follower.seq) <= 1
    finally:
        await conn.close()
        node.publisher.writer.close()


async def test_a_follower_that_may_not_prune_goes_on_following(pg_dsn, tmp_path, caplog):
    role = f"reader_{uuid.uuid4().hex[:8]}"  # roles are the server's, not the database's: a name of its own
    await execute(pg_dsn, f"CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    await imported(pg_dsn)
    node = Node(pg_dsn.replace("postgres@", f"{role}@"), tmp_path / "feed", retention=0)
    await node.start()
    await execute(pg_dsn, "DELETE FROM dids WHERE prefix = '4420'")
    conn = await connect(node.follower.dsn)
    try:
        await node.follower._check(conn)  # takes the change set in, then fails to prune
        assert "cannot prune the routing change log" in caplog.text
        await execute(pg_dsn, "DELETE FROM dids WHERE prefix = '3970'")
        await node.follower._check(conn)
    finally:
        await conn.close()
        node.publisher.writer.close()
    assert node.table().counts["dids"] == 2 and node.follower.documents == 1


async def test_provisioning_api_writes_arrive_as_change_sets(aiohttp_client, pg_dsn, tmp_path):
    """The HTTP-mode node: the API writes PostgreSQL, the follower publishes change sets, c4 serve's reader routes with them."""
    await imported(pg_dsn)
    node = Node(pg_dsn, tmp_path / "feed")
    await node.start()
    client = await aiohttp_client(make_app(node.reader, dsn=pg_dsn, api_token="admin-token"))
    writes = [
        ("POST", "/api/v1/dids", {"tenant": "acme", "prefix": "3988", "ipbx": "acme-branch", "match": "3988[0-9]+"}),
        ("PATCH", "/api/v1/dids/39612345", {"ipbx": "acme-branch"}),
        ("PATCH", "/api/v1/routes/acme/39", {"trunks": [{"trunk": "carrier-b-2", "priority": 0, "weight": 2.5}]}),
        ("POST", "/api/v1/routes", {"tenant": "globex", "prefix": "49", "trunks": ["carrier-a-1"]}),
        ("DELETE", "/api/v1/dids/4420", None),
        ("DELETE", "/api/v1/routes/acme/44", None),
    ]
    conn = await connect(pg_dsn)
    try:
        for method, path, body in writes:
            async with client.request(method, path, json=body, headers={"Authorization": "Bearer admin-token"}) as response:
                assert response.status in (200, 201, 204), await response.text()
            await node.follower._check(conn)
            assert table_view(node.table()) == table_view(await exported_table(pg_dsn)), (method, path)
    finally:
        await conn.close()
        node.publisher.writer.close()
    assert (node.follower.documents, node.follower.change_sets, node.reader.seq) == (1, len(writes), len(writes))


async def test_the_feed_says_when_postgresql_is_away(pg_dsn, pg_cluster, tmp_path):
    """c4 serve --feed's /health shows the store's state: c4 db follow writes it into the feed."""
    await imported(pg_dsn)
    feed = tmp_path / "feed"
    following = asyncio.create_task(follow_to_file(pg_dsn, tmp_path / "table.json", 0.3, feed))
    try:
        await until(lambda: (feed / "current").is_file())
        reader = FeedTableSource(feed, check_interval=0)
        await until(lambda: reader.status()["state"] == "ok")
        assert reader.status()["kind"] == "postgresql"
        pg_cluster.stop()
        try:
            await until(lambda: reader.status()["state"] == "stale")
            assert reader.status()["stale_since"] is not None
        finally:
            pg_cluster.start()
        await until(lambda: reader.status()["state"] == "ok", timeout=15)
    finally:
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following
