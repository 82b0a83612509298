"""The PostgreSQL store on a real server: migrations, constraints, import/export, tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import asyncpg
import orjson
import pytest

from c4kemi.core.document import validate_document
from c4kemi.core.table import compile_validated
from c4kemi.db.documents import connect, export_document, import_document, routing_version
from c4kemi.db.migrate import migrate, migrations
from c4kemi.db.tokens import create_token, revoke_token, token_tenant
from tables import BASE_DOCUMENT, document


def run(coro):
    return asyncio.run(coro)


async def with_conn(dsn, action):
    conn = await connect(dsn)
    try:
        return await action(conn)
    finally:
        await conn.close()


def c4(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "c4kemi.cli", *args], input=stdin, capture_output=True, timeout=60)


def test_migrate_is_idempotent(pg_empty_dsn):
    first = run(with_conn(pg_empty_dsn, migrate))
    assert first == [f"{v:04d}_{name}" for v, name, _ in migrations()]
    assert run(with_conn(pg_empty_dsn, migrate)) == []
    result = c4("db", "migrate", "--dsn", pg_empty_dsn)
    assert result.returncode == 0 and result.stdout.decode().strip() == "schema up to date"


def canonical(item) -> str:
    return json.dumps(item, sort_keys=True)


def test_import_then_export_gives_the_checked_document(pg_dsn):
    checked = validate_document(document())
    version = run(with_conn(pg_dsn, lambda c: import_document(c, checked)))
    exported, exported_version = run(with_conn(pg_dsn, export_document))
    assert exported_version == version
    for name, items in checked.items():
        assert sorted(map(canonical, exported[name])) == sorted(map(canonical, items)), name
    # The same table, compiled from either store.
    assert compile_validated(validate_document(exported)).counts == compile_validated(checked).counts


def test_db_import_export_commands_round_trip(pg_dsn, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(BASE_DOCUMENT))
    result = c4("db", "import", str(path), "--dsn", pg_dsn)
    assert result.returncode == 0, result.stderr
    assert "imported, routing version" in result.stdout.decode()
    exported = c4("db", "export", "--dsn", pg_dsn)
    assert exported.returncode == 0
    doc = orjson.loads(exported.stdout)
    assert doc["trunks"][0]["auth"]["password"] == "p"  # export carries secrets; the API never shows them
    assert validate_document(doc) == doc  # already in checked form


def test_a_refused_document_changes_nothing(pg_dsn, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE_DOCUMENT))
    assert c4("db", "import", str(good), "--dsn", pg_dsn).returncode == 0
    before = c4("db", "export", "--dsn", pg_dsn).stdout
    bad_doc = document()
    bad_doc["routes"][0]["trunks"] = ["ghost"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_doc))
    result = c4("db", "import", str(bad), "--dsn", pg_dsn)
    assert result.returncode == 1
    assert f"{bad}: routes[0].trunks[0]: unknown trunk 'ghost'" in result.stderr.decode()
    assert c4("db", "export", "--dsn", pg_dsn).stdout == before


def test_every_change_bumps_the_version_and_notifies(pg_dsn):
    async def scenario(conn):
        await import_document(conn, validate_document(document()))
        listener = await connect(pg_dsn)
        heard = asyncio.Queue()
        await listener.add_listener("c4_routing", lambda *args: heard.put_nowait(args[3]))
        before = await routing_version(conn)
        async with conn.transaction():
            await conn.execute("INSERT INTO tenants VALUES ('initech')")
            assert heard.empty()  # nothing before commit
        payload = await asyncio.wait_for(heard.get(), 5)
        after = await routing_version(conn)
        await listener.close()
        return before, int(payload), after

    before, payload, after = run(with_conn(pg_dsn, scenario))
    assert after > before and payload == after


CONSTRAINTS = [
    ("DELETE FROM trunks WHERE name = 'carrier-a-1'", asyncpg.ForeignKeyViolationError),  # a route uses it
    ("DELETE FROM tenants WHERE name = 'acme'", asyncpg.ForeignKeyViolationError),  # it owns things
    ("DELETE FROM ipbxs WHERE name = 'acme-pbx'", asyncpg.ForeignKeyViolationError),  # a DID points at it
    ("INSERT INTO tenants VALUES ('acme')", asyncpg.UniqueViolationError),
    ("INSERT INTO dids VALUES ('39612345', 'acme', 'acme-pbx')", asyncpg.UniqueViolationError),
    ("INSERT INTO routes VALUES ('acme', '39')", asyncpg.UniqueViolationError),
    ("INSERT INTO sources VALUES ('10.0.0.10/32', NULL, 'carrier-b-2', 0)", asyncpg.UniqueViolationError),
    ("INSERT INTO sources VALUES ('10.0.0.1/24', NULL, 'carrier-b-2', 0)", asyncpg.InvalidTextRepresentationError),
    ("INSERT INTO sources VALUES ('10.9.0.0/24', 'acme-pbx', 'carrier-b-2', 0)", asyncpg.CheckViolationError),
    ("UPDATE trunks SET fr_timer = 0 WHERE name = 'carrier-a-1'", asyncpg.CheckViolationError),
    ("UPDATE trunks SET branch_flags = 4294967296 WHERE name = 'carrier-a-1'", asyncpg.CheckViolationError),
    ("UPDATE route_trunks SET weight = -1", asyncpg.CheckViolationError),
    ("UPDATE trunks SET auth_password = NULL WHERE name = 'carrier-a-1'", asyncpg.CheckViolationError),
    ("INSERT INTO dids VALUES ('+39', 'acme', 'acme-pbx')", asyncpg.CheckViolationError),
    ("INSERT INTO tenants VALUES (E'evil\\nname')", asyncpg.CheckViolationError),
    ("UPDATE ipbxs SET targets = '{}' WHERE name = 'acme-pbx'", asyncpg.CheckViolationError),
    # cross-entity rules of the document checker
    ("INSERT INTO dids VALUES ('4421', 'globex', 'acme-pbx')", asyncpg.ForeignKeyViolationError),
    ("INSERT INTO route_trunks VALUES ('globex', '', 7, 'carrier-b-1', 0, 1)", asyncpg.CheckViolationError),
    ("UPDATE carriers SET tenant = 'globex' WHERE name = 'carrier-b'", asyncpg.CheckViolationError),
]


@pytest.mark.parametrize("sql, error", CONSTRAINTS, ids=[sql for sql, _ in CONSTRAINTS])
def test_constraints_refuse_what_the_checker_refuses(pg_dsn, sql, error):
    async def scenario(conn):
        await import_document(conn, validate_document(document()))
        with pytest.raises(error):
            async with conn.transaction():
                await conn.execute(sql)

    run(with_conn(pg_dsn, scenario))


def test_tokens_are_stored_hashed_and_revocable(pg_dsn):
    async def scenario(conn):
        await import_document(conn, validate_document(document()))
        token_id, token = await create_token(conn, "acme")
        stored = await conn.fetchval("SELECT sha256 FROM api_tokens WHERE id = $1", token_id)
        assert token.encode() not in stored and len(stored) == 32
        assert await token_tenant(conn, token) == "acme"
        assert await token_tenant(conn, token + "x") is None
        assert await revoke_token(conn, token_id)
        assert await token_tenant(conn, token) is None
        assert not await revoke_token(conn, token_id)
        with pytest.raises(LookupError):
            await create_token(conn, "nobody")

    run(with_conn(pg_dsn, scenario))


def test_token_commands(pg_dsn, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(BASE_DOCUMENT))
    assert c4("db", "import", str(path), "--dsn", pg_dsn).returncode == 0
    created = c4("db", "token", "create", "--tenant", "acme", "--dsn", pg_dsn)
    assert created.returncode == 0
    token = created.stdout.decode().strip()
    assert token.startswith("c4t_") and len(token) > 40
    listed = c4("db", "token", "list", "--dsn", pg_dsn).stdout.decode()
    assert "\tacme\t" in listed and token not in listed
    assert c4("db", "token", "revoke", "1", "--dsn", pg_dsn).returncode == 0
    assert "revoked" in c4("db", "token", "list", "--dsn", pg_dsn).stdout.decode()
    assert c4("db", "token", "create", "--tenant", "nobody", "--dsn", pg_dsn).returncode == 1


def test_no_database_is_a_clear_error(tmp_path):
    result = c4("db", "export", "--dsn", f"postgresql://postgres@/nope?host={tmp_path}&port=1")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("c4 db: cannot connect to PostgreSQL")
    assert b"Traceback" not in result.stderr
