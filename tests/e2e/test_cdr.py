"""Call records through a real router, in both modes (docs/cdr.md).

One router per test, one trunk (a sipp at its own loopback address) per
kind of ending, so that every kind of call is placed against one table:
answered, failed over, busy, no answer, cancelled, refused (403, 404, 503).
Both modes must give the same records: the expected records below are the
same for both, so a difference between the modes fails one of them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from datetime import datetime

import orjson
import pytest

from .documents import (
    CALLER_E164,
    CALLER_NATIONAL,
    DID_E164,
    DID_NATIONAL,
    NO_DID_NATIONAL,
    OUT_CALLED_E164,
    PBX,
    STRANGER,
    TRUNK_A,
    TRUNK_B,
    routing_document,
)
from .harness import BusyPeers, UdpPeers, sip_invite, sip_options_ok

GLOBEX_PBX = "127.0.0.12"  # an IPBX of a tenant with max_channels 0: every call 503
# trunk name -> (address, called number routed to it, the scenario its sipp plays)
TRUNKS = {
    "t-answer": "127.0.0.21",
    "t-fail": "127.0.0.22",
    "t-answer-2": "127.0.0.23",
    "t-busy": "127.0.0.24",
    "t-silent-1": "127.0.0.25",
    "t-silent-2": "127.0.0.26",
}
ROUTES = {  # called number (E.164, as the IPBX dials it) -> trunks in order
    "3910000001": ["t-answer"],
    "3910000002": ["t-fail", "t-answer-2"],
    "3910000003": ["t-busy"],
    "3910000004": ["t-silent-1", "t-silent-2"],
}


def cdr_document(ports: dict[str, int], pbx_port: int) -> dict:
    document = routing_document(pbx_port=pbx_port)
    document["tenants"].append({"name": "globex", "max_channels": 0})
    document["ipbxs"].append({"name": "globex-pbx", "tenant": "globex", "targets": [f"sip:{GLOBEX_PBX}:9"], "sources": [GLOBEX_PBX]})
    for name, address in TRUNKS.items():
        document["trunks"].append({
            "name": name, "carrier": "carrier-b", "target": f"sip:{address}:{ports.get(name, 9)}", "sources": [address],
            "normalization": "it", "fr_timer": 1000, "fr_inv_timer": 10000,
        })
    document["routes"] += [{"tenant": "acme", "prefix": prefix, "trunks": trunks} for prefix, trunks in ROUTES.items()]
    document["routes"].append({"tenant": "globex", "prefix": "", "trunks": ["carrier-a-1"]})
    return document


def wait_connected(r, timeout: float = 10.0) -> None:
    """c4 cdr is connected to evapi: records of the calls placed from now on are not lost."""
    deadline = time.monotonic() + timeout
    while "c4 cdr: connected" not in r.log_text():
        assert time.monotonic() < deadline, f"c4 cdr never connected:\n{r.log_text()[-3000:]}"
        time.sleep(0.05)


def read_records(path, count: int, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [orjson.loads(line) for line in lines]
        time.sleep(0.1)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def outbound(called: str, attempts: list, code: int, reason: str, ended_by: str) -> dict:
    return {
        "tenant": "acme", "direction": "outbound", "source": "acme-pbx", "source_kind": "ipbx",
        "calling": CALLER_E164, "called": called, "attempts": attempts,
        "answered_by": attempts[-1]["destination"] if code == 200 else None,
        "code": code, "reason": reason, "ended_by": ended_by,
    }  # fmt: skip


def tried(name: str, port: int, code: int) -> dict:
    return {"destination": name, "kind": "trunk", "uri": f"sip:{TRUNKS[name]}:{port}", "code": code}


VARIABLE = ("id", "call_id", "invite_at", "answer_at", "end_at", "duration_ms", "node")


def test_a_record_for_every_kind_of_call(router, sipp, tmp_path):
    uas = {
        "t-answer": sipp.uas("uas_answer.xml", TRUNKS["t-answer"]),
        "t-fail": sipp.uas("uas_reject.xml", TRUNKS["t-fail"], code=503, reason="Service Unavailable"),
        "t-answer-2": sipp.uas("uas_answer.xml", TRUNKS["t-answer-2"]),
        "t-busy": sipp.uas("uas_reject.xml", TRUNKS["t-busy"], code=486, reason="Busy Here"),
        "t-silent-1": sipp.uas("uas_silent.xml", TRUNKS["t-silent-1"], silence=4000),
        "t-silent-2": sipp.uas("uas_silent.xml", TRUNKS["t-silent-2"], silence=4000),
    }
    pbx = sipp.uas("uas_ring_cancel.xml", PBX)
    ports = {name: s.port for name, s in uas.items()}
    path = tmp_path / "cdr.jsonl"
    # --cdr-unknown-sources: the 403 of an unknown source has a record too (off by default)
    r = router.start(cdr_document(ports, pbx.port), extra_args=["--cdr-file", str(path), "--cdr-unknown-sources"])
    wait_connected(r)

    answered = sipp.uac("uac_call.xml", r.target, PBX, called="3910000001", caller=CALLER_E164)
    failed_over = sipp.uac("uac_call.xml", r.target, PBX, called="3910000002", caller=CALLER_E164)
    busy = sipp.uac("uac_final.xml", r.target, PBX, called="3910000003", caller=CALLER_E164, code=486)
    no_answer = sipp.uac("uac_final.xml", r.target, PBX, called="3910000004", caller=CALLER_E164, code=408)
    cancelled = sipp.uac("uac_cancel.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)
    for caller in (answered, failed_over, busy, no_answer, cancelled):
        assert caller.proc.returncode == 0, sipp.describe_all()
    refusals = [
        sip_invite(r.address, r.port, STRANGER, f"sip:{DID_NATIONAL}@{r.target}",
                   f"<sip:{CALLER_NATIONAL}@{STRANGER}>;tag=s", f"<sip:{DID_NATIONAL}@{r.target}>").code,
        sip_invite(r.address, r.port, TRUNK_A, f"sip:{NO_DID_NATIONAL}@{r.target}",
                   f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag=n", f"<sip:{NO_DID_NATIONAL}@{r.target}>").code,
        sip_invite(r.address, r.port, GLOBEX_PBX, f"sip:3910000001@{r.target}",
                   f"<sip:{CALLER_E164}@{GLOBEX_PBX}>;tag=g", f"<sip:3910000001@{r.target}>").code,
    ]
    assert refusals == [403, 404, 503]

    records = read_records(path, 8)
    assert len(records) == 8, records
    # Each names the node that routed the call: by default, the host's name.
    assert {record["node"] for record in records} == {socket.gethostname().split(".")[0]}
    by_called = {(rec["called"], rec["code"]): rec for rec in records}
    expected = [
        outbound("3910000001", [tried("t-answer", ports["t-answer"], 200)], 200, "OK", "caller"),
        outbound("3910000002", [tried("t-fail", ports["t-fail"], 503), tried("t-answer-2", ports["t-answer-2"], 200)],
                 200, "OK", "caller"),
        outbound("3910000003", [tried("t-busy", ports["t-busy"], 486)], 486, "Busy Here", "callee"),
        outbound("3910000004", [tried("t-silent-1", ports["t-silent-1"], 408), tried("t-silent-2", ports["t-silent-2"], 408)],
                 408, "Request Timeout", "timeout"),
        {"tenant": "acme", "direction": "inbound", "source": "carrier-a-1", "source_kind": "trunk",
         "calling": CALLER_E164, "called": DID_E164,
         "attempts": [{"destination": "acme-pbx", "kind": "ipbx", "uri": f"sip:{PBX}:{pbx.port}", "code": 487}],
         "answered_by": None, "code": 487, "reason": "Request Terminated", "ended_by": "caller"},
        {"tenant": None, "direction": None, "source": None, "source_kind": None, "calling": None, "called": None,
         "attempts": [], "answered_by": None, "code": 403, "reason": "Forbidden", "ended_by": "router"},
        {"tenant": None, "direction": "inbound", "source": "carrier-a-1", "source_kind": "trunk",  # a shared carrier
         "calling": CALLER_E164, "called": "39799999999",
         "attempts": [], "answered_by": None, "code": 404, "reason": "No Route", "ended_by": "router"},
        {"tenant": "globex", "direction": "outbound", "source": "globex-pbx", "source_kind": "ipbx",
         "calling": CALLER_E164, "called": "3910000001",
         "attempts": [], "answered_by": None, "code": 503, "reason": "Tenant Channel Limit", "ended_by": "router"},
    ]  # fmt: skip
    for want in expected:
        got = by_called.get((want["called"], want["code"]))
        assert got is not None, (want, records)
        assert {k: v for k, v in got.items() if k not in VARIABLE} == want
        assert len(got["id"]) == 32 and got["call_id"]
        invite, end = parse_time(got["invite_at"]), parse_time(got["end_at"])
        assert invite <= end
        if want["code"] == 200:  # answered, then held 200 ms by the caller before its BYE
            answer = parse_time(got["answer_at"])
            assert invite <= answer <= end
            assert got["duration_ms"] == round((end - answer).total_seconds() * 1000) and got["duration_ms"] >= 150
        else:
            assert got["answer_at"] is None and got["duration_ms"] == 0
    assert by_called[("3910000001", 200)]["call_id"] in answered.message_log.read_text()


def test_records_are_off_without_a_sink(router, tmp_path):
    peers = BusyPeers([PBX])
    try:
        rpc = tmp_path / "rpc.sock"
        r = router.start(routing_document(pbx_port=peers.ports[PBX]), extra_args=["--rpc-socket", str(rpc)])
        final = sip_invite(r.address, r.port, TRUNK_A, f"sip:{DID_NATIONAL}@{r.target}",
                           f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag=o", f"<sip:{DID_NATIONAL}@{r.target}>")
        assert final.code == 486
        assert "evapi" not in r.log_text() and "c4 cdr" not in r.log_text()
        assert stranger_call(r) == 403
        assert kamailio_stat(rpc, "c4_refused_unknown_source") == 1  # counted, records or not
    finally:
        peers.close()


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def busy_pbx():
    peers = BusyPeers([PBX])  # every INVITE 486: a call and its record in a fraction of a second
    yield peers
    peers.close()


def busy_call(r, tag: str) -> int:
    return sip_invite(r.address, r.port, TRUNK_A, f"sip:{DID_NATIONAL}@{r.target}",
                      f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag={tag}", f"<sip:{DID_NATIONAL}@{r.target}>",
                      call_id=f"{tag}@cdr-test").code


def stranger_call(r, tag: str = "stranger") -> int:
    """An INVITE from an address in no trunk or IPBX: the decision refuses it 403."""
    return sip_invite(r.address, r.port, STRANGER, f"sip:{DID_NATIONAL}@{r.target}",
                      f"<sip:{CALLER_NATIONAL}@{STRANGER}>;tag={tag}", f"<sip:{DID_NATIONAL}@{r.target}>").code


def kamailio_stat(rpc_socket, name: str) -> int:
    """A Kamailio statistic (kamailio-base.cfg) over its JSON-RPC socket: ["script:NAME = N"]."""
    from c4kemi.call.channels import KamailioRpc

    (line,) = KamailioRpc(str(rpc_socket)).call("stats.get_statistics", name)
    return int(line.rpartition("=")[2])


def stored_call_ids(pg_cluster, database: str) -> list[str]:
    text = pg_cluster.psql("SELECT call_id FROM cdrs ORDER BY invite_at", database)
    return text.split("\n") if text else []


def wait_stored(pg_cluster, database: str, count: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = stored_call_ids(pg_cluster, database)
        if len(ids) >= count or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def test_records_survive_postgresql_stopped_during_calls(router, busy_pbx, pg_cluster, pg_dsn, tmp_path):
    database = pg_dsn.split("/")[3].split("?")[0]
    spool = tmp_path / "spool.jsonl"
    r = router.start(routing_document(pbx_port=busy_pbx.ports[PBX]), extra_args=["--cdr-db", "--cdr-spool", str(spool)],
                     env={"C4_DSN": pg_dsn})
    wait_connected(r)

    assert busy_call(r, "before") == 486
    assert wait_stored(pg_cluster, database, 1) == ["before@cdr-test"]
    pg_cluster.stop()
    try:
        assert [busy_call(r, f"during-{i}") for i in range(3)] == [486] * 3  # calls go on, records wait
        deadline = time.monotonic() + 10
        while len(spool.read_bytes().splitlines()) < 3:
            assert time.monotonic() < deadline, "the records of the calls made while PostgreSQL was down are not in the spool"
            time.sleep(0.1)
    finally:
        pg_cluster.start()
    assert busy_call(r, "after") == 486

    ids = wait_stored(pg_cluster, database, 5)
    assert sorted(ids) == sorted(["before@cdr-test", "during-0@cdr-test", "during-1@cdr-test", "during-2@cdr-test",
                                  "after@cdr-test"])
    assert pg_cluster.psql("SELECT count(DISTINCT id) FROM cdrs", database) == "5"  # each once
    row = pg_cluster.psql("SELECT tenant, direction, source, called, code, reason, ended_by, attempts->0->>'destination' "
                          "FROM cdrs WHERE call_id = 'during-1@cdr-test'", database)
    assert row == f"acme|inbound|carrier-a-1|{DID_E164}|486|Busy Here|callee|acme-pbx"
    deadline = time.monotonic() + 10
    while spool.stat().st_size:  # everything shipped: the spool is emptied
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_the_record_says_the_callee_hung_up(router, sipp, tmp_path):
    pbx = sipp.uas("uas_answer_hang_up.xml", PBX, hold_ms=300)
    path = tmp_path / "cdr.jsonl"
    r = router.start(routing_document(pbx_port=pbx.port), extra_args=["--cdr-file", str(path)])
    wait_connected(r)

    caller = sipp.uac("uac_call_callee_hangs_up.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)

    assert caller.proc.returncode == 0 and pbx.wait(10) == 0, sipp.describe_all()
    (record,) = read_records(path, 1)
    assert (record["code"], record["answered_by"], record["ended_by"]) == (200, "acme-pbx", "callee")
    assert record["duration_ms"] >= 250


def test_http_mode_records_a_call_refused_because_the_api_is_down(http_router, tmp_path):
    path = tmp_path / "cdr.jsonl"
    r = http_router.start(routing_document(), api=None, extra_args=["--cdr-file", str(path)])
    wait_connected(r)

    assert busy_call(r, "api-down") == 503

    (record,) = read_records(path, 1)
    assert (record["call_id"], record["tenant"], record["attempts"]) == ("api-down@cdr-test", None, [])
    assert (record["code"], record["reason"], record["ended_by"]) == (503, "Service Unavailable", "router")


def test_http_mode_records_a_call_whose_call_id_is_not_utf8(http_router, tmp_path):
    """HTTP mode writes a record in one jansson_xencode, which fails as a whole on a
    value that is not UTF-8: the record is then built member by member
    (route[CDR_EMIT_BY_MEMBER]) and still goes out, without that value."""
    peers = UdpPeers([TRUNK_A, TRUNK_B, PBX])  # trunk A answers 486 Busy Here
    try:
        path = tmp_path / "cdr.jsonl"
        r = http_router.start(routing_document(pbx_port=peers.ports[PBX], trunk_a_port=peers.ports[TRUNK_A],
                                               trunk_b_port=peers.ports[TRUNK_B]), extra_args=["--cdr-file", str(path)])
        wait_connected(r)
        call_id = b"zo\xe9-" + uuid.uuid4().hex.encode() + b"@raw"  # ISO-8859-1, as an old PBX sends it
        final = sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}",
                           f"<sip:{CALLER_E164}@{PBX}>;tag=l1", f"<sip:{OUT_CALLED_E164}@c4.test>", call_id=call_id)
        assert final.code == 486, final

        (record,) = read_records(path, 1)
        assert (record["call_id"], record["tenant"], record["source"], record["code"], record["reason"], record["ended_by"]) == (
            "", "acme", "acme-pbx", 486, "Busy Here", "callee")
    finally:
        peers.close()


# ---------------------------------------------------------------- who gets the records


def evapi_port(r) -> int:
    match = re.search(r"c4 cdr on evapi 127\.0\.0\.1:(\d+) is up", r.log_text())
    assert match, r.log_text()[-3000:]
    return int(match.group(1))


def cdr_key() -> str:
    """The key c4 kamailio derived for c4 cdr (the test run's deployment secret, conftest.py)."""
    from c4kemi.node.secret import CDR_KEY_ENV, default_path, kamailio_env, load_or_create

    return kamailio_env(load_or_create(default_path()))[CDR_KEY_ENV]


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def received(sock: socket.socket, wait: float = 0.0) -> bytes:
    """What SOCK has received so far (after WAIT seconds), b'' if nothing; None when the peer closed it."""
    time.sleep(wait)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return data
        if not chunk:
            return data or None
        data += chunk


def test_only_the_collector_that_authenticates_gets_records(router, busy_pbx, tmp_path):
    """evapi's port is open to every local process: a client that does not authenticate gets
    nothing (before: every event, so the call records of every tenant), nor does one with a
    wrong key, whatever it sends next; a client that takes the slot and socket of one that left
    starts with no right to records either."""
    path = tmp_path / "cdr.jsonl"
    r = router.start(routing_document(pbx_port=busy_pbx.ports[PBX]), extra_args=["--cdr-file", str(path)])
    wait_connected(r)
    port = evapi_port(r)
    key = cdr_key().encode()
    silent = socket.create_connection(("127.0.0.1", port))
    wrong = socket.create_connection(("127.0.0.1", port))
    clients = [silent, wrong]
    try:
        wrong.sendall(netstring(b"auth " + b"0" * 64))
        assert received(wrong, 0.3) == b""
        wrong.sendall(netstring(b"auth " + key))  # one try per connection: ignored
        # A collector comes and goes: whoever gets its slot next must authenticate too.
        gone = socket.create_connection(("127.0.0.1", port))
        gone.sendall(netstring(b"auth " + key))
        assert received(gone, 0.3) == netstring(b"ok")
        gone.close()
        time.sleep(0.2)
        heir = socket.create_connection(("127.0.0.1", port))
        right = socket.create_connection(("127.0.0.1", port))
        clients += [heir, right]
        right.sendall(netstring(b"auth " + key))
        assert received(right, 0.3) == netstring(b"ok")

        assert busy_call(r, "only-the-collector") == 486
        (record,) = read_records(path, 1)
        assert record["call_id"] == "only-the-collector@cdr-test"
        assert b"only-the-collector@cdr-test" in received(right, 0.2)
        for name, client in (("silent", silent), ("wrong key", wrong), ("heir", heir)):
            assert received(client) == b"", f"a client that did not authenticate ({name}) got bytes"
        assert "did not authenticate: it gets no call records" in r.log_text()
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------- strangers, a stopped collector, big values


def test_refusals_of_unknown_sources_are_counted_not_recorded(router, busy_pbx, tmp_path):
    """By default a 403 for a source in no trunk or IPBX leaves no record (before: 30,000 INVITEs from
    strangers wrote 11 MB of them); the refusals are counted in Kamailio's c4_refused_unknown_source."""
    from .flood import flood_invites

    path, rpc = tmp_path / "cdr.jsonl", tmp_path / "rpc.sock"
    r = router.start(routing_document(pbx_port=busy_pbx.ports[PBX]), extra_args=["--cdr-file", str(path), "--rpc-socket", str(rpc)])
    wait_connected(r)

    flood = flood_invites(r.address, r.port, STRANGER, 500, 500)
    assert flood.codes == {403: 500}
    assert busy_call(r, "known-source") == 486

    time.sleep(1.0)  # what the flood would have written has had time to arrive
    assert [record["call_id"] for record in read_records(path, 2, timeout=0)] == ["known-source@cdr-test"]
    assert kamailio_stat(rpc, "c4_refused_unknown_source") == 500
    assert kamailio_stat(rpc, "c4_cdr_dropped") == 0


def test_a_stopped_collector_costs_records_never_calls(router, busy_pbx, tmp_path):
    """c4 cdr stopped (SIGSTOP) while calls go on: calls are answered at once; past what evapi holds
    (C4_CDR_WINDOW, 1000 events) and the queue (C4_CDR_QUEUE, 2000) records are dropped, counted and
    logged; once it runs again records flow, and every event is either written or counted as dropped.
    Before: evapi's dispatcher blocked writing to it, then every SIP worker handing evapi an event."""
    from .flood import find_process, flood_invites

    path, rpc = tmp_path / "cdr.jsonl", tmp_path / "rpc.sock"
    r = router.start(routing_document(pbx_port=busy_pbx.ports[PBX]), shm=256,
                     extra_args=["--cdr-file", str(path), "--cdr-unknown-sources", "--rpc-socket", str(rpc)])
    wait_connected(r)
    assert busy_call(r, "before") == 486
    assert len(read_records(path, 1)) == 1

    collector = find_process(r.proc.pid, "c4kemi.cli cdr")
    os.kill(collector, signal.SIGSTOP)
    try:
        # Refusals of an unknown source (their records on), each a call event: as many as it took
        # before to fill what lies between the workers and the stopped collector.
        flood = flood_invites(r.address, r.port, STRANGER, 30_000, 2_500)
        events = sum(flood.codes.values())
        started = time.monotonic()
        assert sip_options_ok(r.address, r.port, timeout=1.0)
        assert busy_call(r, "while-stopped") == 486
        assert time.monotonic() - started < 2.0, "calls waited on the stopped collector"
        dropped = kamailio_stat(rpc, "c4_cdr_dropped")
        print(f"{r.mode}: {flood.sent} INVITEs in {flood.elapsed:.1f}s ({flood.rate:.0f}/s), finals {dict(flood.codes)}; "
              f"{dropped} records dropped while c4 cdr was stopped")
        assert dropped >= events + 1 - 3000 - 100, dropped  # the window, the queue, a few racing workers
        assert "c4: call record dropped" in r.log_text()
    finally:
        os.kill(collector, signal.SIGCONT)

    # Every event is written or was counted as dropped: before, the flood, while-stopped.
    expected = 1 + events + 1 - dropped
    assert len(read_records(path, expected, timeout=30)) == expected
    assert busy_call(r, "after") == 486  # and records flow again
    time.sleep(0.5)
    records = read_records(path, expected + 1, timeout=5)
    assert len(records) == expected + 1 and records[-1]["call_id"] == "after@cdr-test"
    assert kamailio_stat(rpc, "c4_cdr_dropped") == dropped


def test_a_huge_call_id_makes_a_bounded_record(router, busy_pbx, tmp_path):
    """A 50 KB Call-ID (before: a 50 KB record from a stranger's INVITE) is cut to 256 characters
    where the event is made, for a refused call as for a routed one."""
    path = tmp_path / "cdr.jsonl"
    r = router.start(routing_document(pbx_port=busy_pbx.ports[PBX]), extra_args=["--cdr-file", str(path), "--cdr-unknown-sources"])
    wait_connected(r)
    call_ids = {source: f"huge-{source}-" + "x" * 50_000 + "@cdr-test" for source in (STRANGER, TRUNK_A)}
    finals = [sip_invite(r.address, r.port, source, f"sip:{DID_NATIONAL}@{r.target}", f"<sip:{CALLER_NATIONAL}@{source}>;tag=h",
                         f"<sip:{DID_NATIONAL}@{r.target}>", call_id=call_id).code for source, call_id in call_ids.items()]
    assert finals == [403, 486]
    records = read_records(path, 2)
    assert sorted(record["call_id"] for record in records) == sorted(call_id[:256] for call_id in call_ids.values())
    assert sorted((record["code"], record["tenant"]) for record in records) == [(403, None), (486, "acme")]
    assert len(path.read_bytes()) < 3000
    # Nor does the log prefix (1 KiB) choke on it: two ERROR lines beside every line logged for such a call.
    assert "buffer:1024" not in r.log_text(), [line[:300] for line in r.log_text().splitlines() if "buffer:1024" in line]


def test_an_event_past_its_bound_is_dropped_and_counted(router, busy_pbx, tmp_path):
    """C4_CDR_MAX_EVENT (8000 bytes; 100 here, through a wrapper): a bigger event is dropped, counted, logged."""
    from c4kemi.node.launch_plan import kamailio_binary

    kamailio = tmp_path / "kamailio-small-events"
    kamailio.write_text(f'#!/bin/sh\nexec {kamailio_binary(None)} "$@" -A C4_CDR_MAX_EVENT=100\n')
    kamailio.chmod(0o755)
    path, rpc = tmp_path / "cdr.jsonl", tmp_path / "rpc.sock"
    r = router.start(routing_document(pbx_port=busy_pbx.ports[PBX]),
                     extra_args=["--cdr-file", str(path), "--rpc-socket", str(rpc), "--kamailio", str(kamailio)])
    wait_connected(r)
    assert busy_call(r, "too-big") == 486
    deadline = time.monotonic() + 5
    while kamailio_stat(rpc, "c4_cdr_dropped") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "more than 100; 1 dropped so far" in r.log_text()
    assert read_records(path, 1, timeout=0.5) == []
