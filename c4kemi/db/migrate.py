"""Schema migrations: the SQL files in ``migrations/``, applied in order.

Each file is applied once, in its own transaction, and recorded in
``c4_migrations``; an advisory lock keeps two migrating processes from
racing. Running ``c4 db migrate`` again applies nothing new.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

__all__ = ["MIGRATIONS_DIR", "migrate", "migrations"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x6334_6D69_6772  # "c4migr": any constant shared by c4 processes


def migrations() -> list[tuple[int, str, Path]]:
    """(version, name, path) of every migration file, in order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version, _, name = path.stem.partition("_")
        found.append((int(version), name, path))
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied; return the names applied."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS c4_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM c4_migrations")}
        for version, name, path in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO c4_migrations (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(f"{version:04d}_{name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
