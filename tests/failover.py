"""A PostgreSQL failover under load, for tests/test_db_failover.py and benchmarks/pg_failover.py.

A primary and its streaming replica (tests/postgres.py), one DSN naming
both. On it: the provisioning API (c4http, a real aiohttp server) taking a
DID write every ``WRITE_EVERY`` seconds, and a ``ChangeFollower`` (what
``c4 db follow`` runs). Then the primary is stopped (``pg_ctl stop -m
fast``) and the replica promoted, as an operator or a failover manager
would. ``failover`` returns what happened: every write's outcome, when API
writes resumed, when the follower had a DID written after the promotion,
and how it got it (change set or whole document).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from c4http.app import make_api_app
from c4kemi.core.document import validate_document
from c4kemi.db.changes import ChangeFollower
from c4kemi.db.documents import connect, import_document
from c4kemi.db.migrate import migrate
from postgres import Cluster, Replica, multi_dsn
from tables import document

TOKEN = "failover-admin-token"
WRITE_EVERY = 0.02  # seconds between API writes, each a new DID


@dataclass
class Write:
    prefix: str
    started: float  # seconds since the primary was told to stop (negative: before)
    ended: float
    status: int
    body: Any


@dataclass
class Outcome:
    writes: list[Write] = field(default_factory=list)
    promoted_at: float = 0.0  # seconds after the stop began, when pg_ctl promote returned
    follower_resumed_at: float | None = None  # the follower connected again (to the new primary)
    after_promotion: Write | None = None  # the first write started after the promotion that succeeded
    follower_has_it_at: float | None = None  # the follower held that write's DID
    errors: list[str] = field(default_factory=list)  # what the API logged as errors meanwhile
    documents: tuple[int, int] = (0, 0)  # whole documents the follower read: (before the stop, at the end)
    change_sets: tuple[int, int] = (0, 0)
    connections: int = 0  # the follower's connections (1 + reconnects)
    followed: dict[str, Any] = field(default_factory=dict)  # prefix -> DID, as the follower holds them
    stored: set[str] = field(default_factory=set)  # the DIDs in the new primary

    @property
    def acknowledged(self) -> list[str]:
        return [w.prefix for w in self.writes if w.status == 201]

    @property
    def refused(self) -> list[Write]:
        return [w for w in self.writes if w.status != 201]

    @property
    def writes_stopped(self) -> tuple[float, float]:
        """The longest time between two acknowledged writes from the last one before the stop: (its length, its end).

        Writes on connections the old primary still serves succeed for a
        moment after the stop began; what follows is refused until the
        replica takes writes.
        """
        ended = sorted(w.ended for w in self.writes if w.status == 201)
        before = [t for t in ended if t < 0]
        times = ([before[-1]] if before else []) + [t for t in ended if t >= 0]
        gap, end = max((b - a, b) for a, b in zip(times, times[1:], strict=False))
        return gap, end


class Pair:
    """A primary, its replica and a migrated database with the test routing document, replayed on the replica."""

    def __init__(self) -> None:
        self.primary = Cluster()
        self.primary.start()
        self.replica: Replica | None = None
        try:
            self.database = self.primary.create_database()
            asyncio.run(_prepare(self.primary.dsn(self.database)))
            self.replica = Replica(self.primary)
            self.replica.wait_replayed(self.primary)
        except BaseException:
            self.destroy()
            raise

    @property
    def dsn(self) -> str:
        return multi_dsn(self.database, self.primary, self.replica)

    def destroy(self) -> None:
        for server in (self.primary, self.replica):
            if server is not None:
                server.destroy()


async def _prepare(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        await import_document(conn, validate_document(document()))
    finally:
        await conn.close()


class Followed:
    """What the follower hands over, kept as a DID map (the real receiver publishes to the feed; same calls)."""

    def __init__(self) -> None:
        self.dids: dict[str, Any] = {}

    async def document(self, doc: dict, version: int) -> bool:
        self.dids = {did["prefix"]: did for did in doc["dids"]}
        return True

    async def changes(self, dids: dict, routes: dict, version: int) -> bool:
        for prefix, did in dids.items():
            if did is None:
                self.dids.pop(prefix, None)
            else:
                self.dids[prefix] = did
        return True


async def failover(pair: Pair, timeout: float = 20.0) -> Outcome:
    """Writes before, during and after the failover; returns once the follower has a post-promotion write."""
    outcome = Outcome()
    errors = _Errors(outcome.errors)
    logging.getLogger("c4.http").addHandler(errors)
    followed = Followed()
    follower = ChangeFollower(pair.dsn, followed.document, followed.changes)  # the 5 s check of production
    await follower.load_once()
    following = asyncio.create_task(follower.run())
    server = TestServer(make_api_app(pair.dsn, TOKEN))
    await server.start_server()
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    stop_began = None
    clock = time.monotonic

    def since() -> float:
        return clock() - stop_began if stop_began is not None else -1.0

    async def write(prefix: str) -> Write:  # times on the monotonic clock here, since the stop began at the end
        started = clock()
        try:
            async with session.post(server.make_url("/api/v1/dids"),
                                    json={"tenant": "acme", "prefix": prefix, "ipbx": "acme-pbx"}) as response:
                body = await response.json(content_type=None)
                status = response.status
        except aiohttp.ClientError as exc:  # the API itself never goes away here: counted as a failure if it did
            status, body = 0, repr(exc)
        done = Write(prefix, started, clock(), status, body)
        outcome.writes.append(done)
        return done

    try:
        for n in range(5):  # acknowledged before the failover: must be in the new primary
            assert (await write(f"5000{n}")).status == 201
        await until(lambda: all(f"5000{n}" in followed.dids for n in range(5)), timeout)
        outcome.documents = (follower.documents, 0)
        outcome.change_sets = (follower.change_sets, 0)
        stop_began = clock()

        async def switch() -> None:
            await asyncio.to_thread(pair.primary.stop, "fast")
            await asyncio.to_thread(pair.replica.promote)
            outcome.promoted_at = since()

        async def watch_follower() -> None:
            while follower.connections < 2:
                await asyncio.sleep(0.002)
            outcome.follower_resumed_at = since()

        switching = asyncio.create_task(switch())
        watching = asyncio.create_task(watch_follower())
        n = 0
        after: Write | None = None
        while after is None:
            assert since() < timeout, f"API writes did not resume in {timeout} s: {outcome.writes[-3:]}"
            done = await write(f"6{n:05d}")
            n += 1
            if done.status == 201 and switching.done() and done.started - stop_began > outcome.promoted_at:
                after = done
            await asyncio.sleep(WRITE_EVERY)
        await switching
        outcome.after_promotion = after
        await until(lambda: after.prefix in followed.dids, timeout)
        outcome.follower_has_it_at = since()
        await asyncio.wait_for(watching, timeout)
        for extra in range(3):  # and it goes on: a few more after the promotion
            assert (await write(f"7000{extra}")).status == 201
        await until(lambda: all(f"7000{extra}" in followed.dids for extra in range(3)), timeout)
    finally:
        logging.getLogger("c4.http").removeHandler(errors)
        await session.close()
        await server.close()
        following.cancel()
        try:
            await following
        except asyncio.CancelledError:
            pass
    for done in outcome.writes:
        done.started -= stop_began
        done.ended -= stop_began
    outcome.documents = (outcome.documents[0], follower.documents)
    outcome.change_sets = (outcome.change_sets[0], follower.change_sets)
    outcome.connections = follower.connections
    outcome.followed = followed.dids
    conn = await connect(pair.replica.dsn(pair.database))
    try:
        outcome.stored = {row["prefix"] for row in await conn.fetch("SELECT prefix FROM dids")}
    finally:
        await conn.close()
    return outcome


class _Errors(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage()[:2000])


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
