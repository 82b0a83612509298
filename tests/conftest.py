"""Fixtures shared by the unit, service and end-to-end tests.

- ``pg_cluster``: one real PostgreSQL server for the whole run (tests/postgres.py).
- ``pg_dsn``: a fresh, migrated database of that server for one test.
- ``pg_empty_dsn``: a fresh database without the schema.
- ``ksr``, ``kemi``, ``handler``: the KEMI handler (c4kemi/call/kemi.py) against a
  fake ``KSR`` (tests/fake_ksr.py), its workers loading ``table_document``
  (override that fixture in a test module for another table).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys

import pytest

from fake_ksr import FakeKSR
from postgres import Cluster
from tables import BASE_DOCUMENT


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


@pytest.fixture
def ksr(monkeypatch):
    fake = FakeKSR()
    monkeypatch.setitem(sys.modules, "KSR", fake)
    return fake


@pytest.fixture
def table_document() -> dict:
    """The routing document the handler's workers load (a test module may override it)."""
    return BASE_DOCUMENT


@pytest.fixture
def kemi(ksr, monkeypatch, tmp_path, table_document):
    table = tmp_path / "table.json"
    table.write_text(json.dumps(table_document))
    monkeypatch.setenv("C4_TABLE", str(table))
    monkeypatch.delenv("C4_RTJSON_DUMP", raising=False)
    monkeypatch.delenv("C4_FEED", raising=False)
    module = importlib.import_module("c4kemi.call.kemi")
    monkeypatch.setattr(module, "KSR", ksr)
    return module


@pytest.fixture
def handler(kemi):
    """The object app_python3 gets from mod_init(): the ksr_* routes."""
    return kemi.mod_init()
