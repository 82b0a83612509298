"""Call-record retention on a real PostgreSQL: c4 db cdr-prune (c4kemi/db/retention.py)."""

from __future__ import annotations

import asyncio
import time

from c4kemi.call.cdr import make_record
from c4kemi.cli import main
from c4kemi.db.cdrs import insert_records
from c4kemi.db.documents import connect

DAY = 86400


def record(i: int, age_days: float) -> dict:
    invite = time.time() - age_days * DAY
    call = {"tenant": "acme", "direction": "outbound", "source": "acme-pbx", "source_kind": "ipbx",
            "calling": "39611110000", "called": "39298765432", "routes": []}  # fmt: skip
    return make_record({"call_id": f"call-{i}", "call": call, "invite": f"{invite:.6f}", "end": f"{invite + 1:.6f}",
                        "code": 404, "reason": "No Route", "by": "router"}, f"{i:032x}")  # fmt: skip


def on_db(dsn: str, work):
    async def run():
        conn = await connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def ages(dsn: str) -> list[int]:
    rows = on_db(dsn, lambda conn: conn.fetch("SELECT extract(epoch FROM now() - invite_at)::bigint / 86400 AS days FROM cdrs ORDER BY 1"))
    return [row["days"] for row in rows]


def test_cdr_prune_deletes_only_records_older_than_n_days_in_batches(pg_dsn, capsys):
    old = [record(i, 91 + i) for i in range(7)]  # 91 to 97 days old
    young = [record(100 + i, days) for i, days in enumerate((0, 1, 30, 89.9))]
    on_db(pg_dsn, lambda conn: insert_records(conn, old + young))

    assert main(["db", "cdr-prune", "--dsn", pg_dsn, "--older-than-days", "90", "--dry-run"]) == 0
    assert "would delete 7 call records" in capsys.readouterr().out
    assert len(ages(pg_dsn)) == 11  # a dry run deletes nothing

    assert main(["db", "cdr-prune", "--dsn", pg_dsn, "--older-than-days", "90", "--batch", "3", "--pause", "0"]) == 0
    out = capsys.readouterr().out
    assert "deleted 7 call records" in out and "(3 batches of at most 3)" in out, out
    assert ages(pg_dsn) == [0, 1, 30, 89]

    assert main(["db", "cdr-prune", "--dsn", pg_dsn, "--older-than-days", "90"]) == 0  # nothing left to do
    assert "deleted 0 call records" in capsys.readouterr().out


def test_cdr_prune_refuses_a_retention_under_a_day(pg_dsn, capsys):
    on_db(pg_dsn, lambda conn: insert_records(conn, [record(1, 0.5)]))
    assert main(["db", "cdr-prune", "--dsn", pg_dsn, "--older-than-days", "0"]) == 2
    assert "--older-than-days" in capsys.readouterr().err
    assert len(ages(pg_dsn)) == 1
