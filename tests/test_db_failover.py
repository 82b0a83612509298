"""Several PostgreSQL servers in one DSN, and a failover from a primary to its promoted replica.

DSN handling first (c4kemi/db/dsn.py: the libpq forms, the read-write
default, hosts tried in turn each with its own timeout), against real
servers; then the failover under load (tests/failover.py): the API's
writes resume once the replica is promoted, the follower takes a change
made after it from the change log (no whole document), and nothing
acknowledged before it is lost.
"""

from __future__ import annotations

import socket
import time

import pytest
from failover import Followed, Pair, failover

from c4kemi.db.changes import ChangeFollower
from c4kemi.db.documents import connect
from c4kemi.db.dsn import NoPrimaryFound, describe, normalize, parse
from postgres import multi_dsn


def test_the_uri_with_several_hosts_and_ports_asks_for_read_write():
    found = parse("postgresql://c4:pw@10.0.0.1:5432,10.0.0.2:5433/c4")
    assert found.hosts == [("10.0.0.1", 5432), ("10.0.0.2", 5433)]
    assert found.attrs == "read-write" and found.uri.endswith("/c4?target_session_attrs=read-write")


def test_the_sockets_form_with_host_and_port_lists():
    found = parse("postgresql://postgres@/c4?host=/run/a,/run/b&port=5432,5433")
    assert found.hosts == [("/run/a", 5432), ("/run/b", 5433)] and found.attrs == "read-write"
    assert parse("postgresql://postgres@/c4?host=/run/a,/run/b&port=5432").hosts == [("/run/a", 5432), ("/run/b", 5432)]


def test_a_target_session_attrs_given_is_kept_and_one_host_is_left_alone():
    assert parse("postgresql://h1,h2/c4?target_session_attrs=any").attrs == "any"
    assert parse("postgresql://h1,h2/c4?target_session_attrs=prefer-standby").attrs == "prefer-standby"
    one = "postgresql://c4:pw@127.0.0.1/c4?sslmode=disable"
    assert normalize(one) == one and parse(one).attrs is None


def test_the_keyword_value_form_becomes_a_uri():
    found = parse("host=10.0.0.1,10.0.0.2 port=5432 dbname=c4 user=c4 password='it\\'s a \\\\ pw' connect_timeout=3")
    assert found.hosts == [("10.0.0.1", 5432), ("10.0.0.2", 5432)]
    assert found.timeout == 3.0 and found.attrs == "read-write"
    assert "password=it%27s%20a%20%5C%20pw" in found.uri  # quoted value, backslash escapes (libpq's rules)
    assert "connect_timeout" not in found.uri  # libpq's, not a server setting (asyncpg would send it to the server)
    assert parse("host=::1 dbname=c4").uri == "postgresql://?host=[::1]&dbname=c4"


def test_describe_names_the_servers_without_the_password():
    assert describe("postgresql://c4:secret@10.0.0.1:5432,10.0.0.2:5433/c4") == "10.0.0.1:5432,10.0.0.2:5433 (read-write)"
    assert "secret" not in describe("host=a,b password=secret")


@pytest.mark.parametrize("dsn, message", [
    ("host=a,b port=1,2,3 dbname=c4", "3 ports"),
    ("mysql://h/c4", "not a PostgreSQL DSN"),
    ("host='a dbname=c4", "unterminated"),
    ("postgresql://h/c4?connect_timeout=soon", "connect_timeout"),
])
def test_a_dsn_c4_cannot_read_is_said(dsn, message):
    with pytest.raises(ValueError, match=message):
        parse(dsn)


def test_a_dsn_c4_cannot_read_is_not_echoed():
    """The error says where, not what: the rest of the text may be a password."""
    with pytest.raises(ValueError, match="unreadable at character") as refused:
        parse("host=a password=s3cr3t-passw0rd-here ? more")
    assert "s3cr3t" not in str(refused.value) and "more" not in str(refused.value)


@pytest.fixture
def pair():
    pair = Pair()
    yield pair
    pair.destroy()


async def server_is_primary(dsn: str) -> bool:
    conn = await connect(dsn, timeout=5)
    try:
        return not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()


async def test_the_primary_is_found_whichever_host_comes_first(pair):
    for order in ((pair.primary, pair.replica), (pair.replica, pair.primary)):
        assert await server_is_primary(multi_dsn(pair.database, *order))
        assert await server_is_primary(multi_dsn(pair.database, *order, attrs="primary"))
    assert not await server_is_primary(multi_dsn(pair.database, pair.primary, pair.replica, attrs="standby"))
    assert not await server_is_primary(multi_dsn(pair.database, pair.primary, pair.replica, attrs="prefer-standby"))
    keywords = (f"host={pair.replica.dir},{pair.primary.dir} port={pair.replica.port},{pair.primary.port}"
                f" dbname={pair.database} user=postgres")
    assert await server_is_primary(keywords)


async def test_with_only_a_standby_up_no_primary_is_an_unavailable_database(pair):
    pair.primary.stop()
    with pytest.raises(NoPrimaryFound, match="no server of the DSN is read-write") as refused:
        await connect(pair.dsn, timeout=5)
    assert isinstance(refused.value, OSError)  # what the follower, c4 cdr and the API take for "PostgreSQL unavailable"
    assert "not read-write" in str(refused.value) and str(pair.replica.port) in str(refused.value)


async def test_a_host_that_never_answers_costs_its_own_timeout_not_the_whole_connect(pair):
    """A dead machine drops packets: asyncpg alone would spend the whole timeout on it and never try the next host."""
    with socket.socket() as silent:  # accepts TCP (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        dsn = (f"host=127.0.0.1,{pair.primary.dir} port={port},{pair.primary.port} dbname={pair.database}"
               " user=postgres connect_timeout=1")
        started = time.monotonic()
        assert await server_is_primary(dsn)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3.0, elapsed


async def test_a_standby_refuses_listen_so_the_follower_takes_the_primary(pair):
    """Why c4 asks for read-write by default, the follower too: LISTEN (the NOTIFY it waits on) fails on a standby."""
    conn = await connect(pair.replica.dsn(pair.database))
    try:
        with pytest.raises(Exception, match="LISTEN"):
            await conn.execute("LISTEN c4_routing")
    finally:
        await conn.close()


async def test_failover_api_writes_resume_and_the_follower_resumes_from_the_change_log(pair):
    outcome = await failover(pair)
    stopped, resumed = outcome.writes_stopped
    print(f"\nfailover: promoted {outcome.promoted_at * 1000:.0f} ms after the stop began; API writes stopped for "
          f"{stopped * 1000:.0f} ms ({len(outcome.refused)} refused), resumed at {resumed * 1000:.0f} ms; the follower "
          f"reconnected at {outcome.follower_resumed_at * 1000:.0f} ms and had a post-promotion write at "
          f"{outcome.follower_has_it_at * 1000:.0f} ms")
    # Refused, while refused, as the API says any database that does not answer: a 503 JSON error naming it.
    for refused in outcome.refused:
        assert refused.status == 503 and refused.body["error"].startswith("database unavailable"), (refused, outcome.errors)
    assert not outcome.errors
    # Every write started after the promotion succeeded: no stale pooled connection to the old primary answered it.
    assert all(w.status == 201 for w in outcome.writes if w.started > outcome.promoted_at), outcome.refused
    # Nothing acknowledged is lost: in the new primary, and in the follower.
    assert set(outcome.acknowledged) <= outcome.stored
    assert set(outcome.acknowledged) <= set(outcome.followed)
    # The follower reconnected once, and took everything since from the change log: no whole document read.
    assert outcome.connections == 2
    assert outcome.documents == (1, 1)
    assert outcome.change_sets[1] > outcome.change_sets[0]
    assert stopped < 10 and outcome.follower_has_it_at < 10


async def test_a_follower_ahead_of_the_new_primary_reads_the_whole_document(pair, caplog):
    """A change the replica never got (asynchronous replication, then the primary lost): the log ends before what was read."""
    followed = Followed()
    follower = ChangeFollower(pair.dsn, followed.document, followed.changes)
    await follower.load_once()
    pair.replica.stop()  # it will not see what comes next
    conn = await connect(pair.dsn)
    try:
        await conn.execute("INSERT INTO dids (tenant, prefix, ipbx) VALUES ('acme', '3988', 'acme-pbx')")
        await follower._check(conn)
    finally:
        await conn.close()
    assert "3988" in followed.dids and (follower.documents, follower.change_sets) == (1, 1)
    pair.primary.stop("immediate")  # lost with it
    pair.replica.start()
    pair.replica.promote()
    conn = await connect(pair.dsn)
    try:
        await follower._check(conn)
    finally:
        await conn.close()
    assert "ends before row" in caplog.text
    assert "3988" not in followed.dids and follower.documents == 2  # the new primary's data, whole
