"""Fixtures shared by the unit, service and end-to-end tests.

- ``pg_cluster``: one real PostgreSQL server for the whole run (tests/postgres.py).
- ``pg_dsn``: a fresh, migrated database of that server for one test.
- ``pg_empty_dsn``: a fresh database without the schema.
"""

from __future__ import annotations

import asyncio

import pytest

from postgres import Cluster


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_empty_dsn(pg_cluster):
    return pg_cluster.dsn(pg_cluster.create_database())


@pytest.fixture
def pg_dsn(pg_empty_dsn):
    from c4kemi.db.documents import connect
    from c4kemi.db.migrate import migrate

    async def setup():
        conn = await connect(pg_empty_dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(setup())
    return pg_empty_dsn
