"""A PostgreSQL failover under calls, through a real Kamailio node, in both modes.

The node's DSN names a primary and its streaming replica (tests/postgres.py,
tests/failover.py's ``Pair``); its call records go to the database
(``--cdr-db``). Calls go on while the primary is stopped and the replica
promoted: every call is routed and answered (486 from the busy IPBX), and
every call's record is in the new primary's ``cdrs``, exactly once (what
``c4 cdr`` could not ship meanwhile waited in its spool).

KEMI mode: ``c4 kamailio --dsn`` (its ``c4 db follow`` and ``c4 cdr`` on the
DSN). HTTP mode: the harness's ``c4 serve --dsn`` routes, ``c4 cdr`` ships.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from failover import Pair

from c4kemi.core.document import validate_document
from c4kemi.db.documents import connect, import_document

from .documents import CALLER_NATIONAL, DID_NATIONAL, PBX, TRUNK_A, routing_document
from .harness import BusyPeers, sip_invite

CALL_EVERY = 0.05  # seconds between calls, before, during and after the failover


@pytest.fixture
def pair():
    pair = Pair()
    yield pair
    pair.destroy()


@pytest.fixture
def peers():
    busy = BusyPeers([PBX])
    yield busy
    busy.close()


def call(r, call_id: str) -> int | None:
    return sip_invite(r.address, r.port, TRUNK_A, f"sip:{DID_NATIONAL}@{r.target}",
                      f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag={call_id[:8]}", f"<sip:{DID_NATIONAL}@{r.target}>",
                      call_id=call_id, timeout=5).code


async def _import(dsn: str, document: dict) -> None:
    conn = await connect(dsn)
    try:
        await import_document(conn, validate_document(document))
    finally:
        await conn.close()


async def _records(dsn: str) -> list[tuple[str, str]]:
    conn = await connect(dsn, timeout=5)
    try:
        return [(row["call_id"], str(row["id"])) for row in await conn.fetch("SELECT call_id, id FROM cdrs")]
    finally:
        await conn.close()


def test_calls_go_on_and_every_record_lands_once_in_the_new_primary(router, pair, peers, tmp_path):
    asyncio.run(_import(pair.dsn, routing_document(pbx_port=peers.ports[PBX])))
    pair.replica.wait_replayed(pair.primary)
    spool = tmp_path / "spool.jsonl"
    r = router.start(routing_document(pbx_port=peers.ports[PBX]), dsn=pair.dsn,
                     extra_args=["--cdr-db", "--cdr-spool", str(spool)], env={"C4_DSN": pair.dsn})
    deadline = time.monotonic() + 10
    while "c4 cdr: connected" not in r.log_text():  # records of the calls from now on are not lost
        assert time.monotonic() < deadline, f"c4 cdr never connected:\n{r.log_text()[-3000:]}"
        time.sleep(0.05)

    placed: dict[str, int | None] = {}
    stop = threading.Event()

    def calling() -> None:
        while not stop.is_set():
            call_id = f"{uuid.uuid4().hex}@failover"
            placed[call_id] = call(r, call_id)
            time.sleep(CALL_EVERY)

    caller = threading.Thread(target=calling, name="calls")
    caller.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        pair.primary.stop("fast")
        pair.replica.promote()
        switched = time.monotonic() - started
        time.sleep(1.5)
    finally:
        stop.set()
        caller.join(timeout=15)
    print(f"\n{router.mode} mode: {len(placed)} calls, primary stopped and replica promoted in {switched * 1000:.0f} ms")

    assert len(placed) > 20
    assert set(placed.values()) == {486}, {cid: code for cid, code in placed.items() if code != 486}  # routed, answered
    assert len(peers.invites) == len(placed)  # each reached the IPBX once

    deadline = time.monotonic() + 20
    while True:
        stored = asyncio.run(_records(pair.dsn))
        if len(stored) >= len(placed) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(call_id for call_id, _ in stored) == sorted(placed), r.log_text()[-3000:]  # each once, none missing
    assert len({record_id for _, record_id in stored}) == len(stored)
    for line in r.log_text().splitlines():  # what the node said of the failover (printed with -s)
        if "PostgreSQL" in line:
            print(line[-200:])
