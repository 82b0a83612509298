"""A node's life as operators see it (issue 21): helpers that die come back, call records survive
c4 cdr's death, and a node that starts without its database says what it does.

- A helper killed while the node runs is started again (a new pid within seconds), its
  restart counted in the node's status file (``$C4_NODE_STATUS``, helpers.json in
  Kamailio's runtime directory), and the node goes on routing, changes included.
- ``c4 cdr`` killed (after a stop, so that events wait unread in its socket) while calls
  go on at a steady rate: every call has exactly one record. Kamailio keeps what it
  handed over until acknowledged and sends it again to the restarted collector, which
  drops what it already wrote (docs/cdr.md, "What can be lost").
- PostgreSQL unreachable at start: without a table cache the node says it waits and
  listens on nothing; SIGTERM then stops it cleanly. With ``--require-db`` it exits at
  once. With a cache, it routes from it.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from ports import free_udp_port

from .documents import CALLER_NATIONAL, DID_E164, DID_NATIONAL, PBX, TRUNK_A, routing_document, without_probes
from .flood import find_process, group_pids
from .harness import REPO_ROOT, SIPP, BusyPeers, sip_invite, sip_options_ok, udp_port_taken, write_json_atomically

UNREACHABLE_DSN = "postgresql://c4@127.0.0.1:1/c4"  # nothing listens on port 1


def status_file(pid: int) -> Path:
    """The node's status file, as the launcher gives it to a helper (PID): $C4_NODE_STATUS."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"C4_NODE_STATUS=")]
    return Path(value.decode())


def wait_for(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} (after {timeout:.0f} s)\n{log()[-4000:]}"
        time.sleep(0.1)


def node_lines(r) -> str:
    """The launcher's and c4 cdr's own lines of the router's log (Kamailio's may drown them)."""
    return "\n".join(line for line in r.log_text().splitlines() if line.startswith(("c4 kamailio:", "c4 cdr:")))


def pid_of(r, needle: str) -> int | None:
    try:
        return find_process(r.proc.pid, needle)
    except AssertionError:  # none (being started again), or two for an instant
        return None


def busy_call(r, tag: str) -> int | None:
    return sip_invite(r.address, r.port, TRUNK_A, f"sip:{DID_NATIONAL}@{r.target}",
                      f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag={tag}", f"<sip:{DID_NATIONAL}@{r.target}>",
                      call_id=f"{tag}@lifecycle").code


# ---------------------------------------------------------------- supervision


def test_a_killed_helper_comes_back_counted_and_the_node_routes_on(kemi_router):
    """c4 feed and c4 health-sync killed (SIGKILL): each is back with a new pid within seconds, its
    restart is in the status file, and the node routes, a table change included (the new c4 feed
    publishes it). Before: nothing started them again, and changes to the table never arrived."""
    peers = BusyPeers([PBX])
    try:
        document = routing_document(pbx_port=peers.ports[PBX])
        r = kemi_router.start(document)
        assert busy_call(r, "before") == 486
        feed = find_process(r.proc.pid, "c4kemi.cli feed")
        sync = find_process(r.proc.pid, "c4kemi.cli health-sync")
        status = status_file(feed)
        assert status.parent.name.startswith("c4-kamailio-")
        before = orjson.loads(status.read_bytes())
        assert (before["feed"]["restarts"], before["feed"]["pid"]) == (0, feed)
        assert (before["health-sync"]["restarts"], before["health-sync"]["pid"]) == (0, sync)

        os.kill(feed, signal.SIGKILL)
        os.kill(sync, signal.SIGKILL)
        new_feed = wait_for(lambda: (pid := pid_of(r, "c4kemi.cli feed")) not in (None, feed) and pid, 10,
                            "c4 feed is not back", r.log_text)
        new_sync = wait_for(lambda: (pid := pid_of(r, "c4kemi.cli health-sync")) not in (None, sync) and pid, 10,
                            "c4 health-sync is not back", r.log_text)
        after = wait_for(lambda: (s := orjson.loads(status.read_bytes()))["feed"]["pid"] == new_feed
                         and s["health-sync"]["pid"] == new_sync and s, 5, "the status file lags", r.log_text)
        assert (after["feed"]["restarts"], after["feed"]["last_exit"]) == (1, 128 + signal.SIGKILL)
        assert (after["health-sync"]["restarts"], after["health-sync"]["last_exit"]) == (1, 128 + signal.SIGKILL)
        assert after["feed"]["since"] > before["feed"]["since"]
        log = r.log_text()
        assert f"(pid {feed}) was killed by SIGKILL; starting it again in 0.5 s" in log
        assert f"started again (pid {new_feed}), restart 1" in log

        assert sip_options_ok(r.address, r.port) and busy_call(r, "after") == 486
        changed = copy.deepcopy(document)
        changed["dids"] = [did for did in changed["dids"] if not DID_E164.startswith(did["prefix"])]
        assert len(changed["dids"]) < len(document["dids"]), document["dids"]
        r.update_table(changed)  # the restarted c4 feed publishes it: the DID is gone
        wait_for(lambda: busy_call(r, "changed") == 404, 10, "the table change never reached the workers", r.log_text)
    finally:
        peers.close()


# ---------------------------------------------------------------- call records while c4 cdr dies

CALLS = 500
RATE = 50  # calls a second: ten seconds of traffic


def test_every_call_has_one_record_when_c4_cdr_is_killed_mid_traffic(router, sipp, processes, tmp_path):
    """Calls at a steady rate; c4 cdr stopped (events pile up unread in its socket), then killed:
    the launcher starts it again, Kamailio sends what it had not acknowledged again, and the
    new c4 cdr drops what the old one wrote. Every call placed has exactly one record.
    Before: the events in the dead collector's socket were lost, and with nobody restarting
    c4 cdr every later record too."""
    from .test_cdr import read_records, wait_connected

    pbx = sipp.uas("uas_answer.xml", PBX, calls=CALLS, timeout=120)
    path = tmp_path / "cdr.jsonl"
    r = router.start(routing_document(pbx_port=pbx.port), extra_args=["--cdr-file", str(path)])
    wait_connected(r)
    collector = find_process(r.proc.pid, "c4kemi.cli cdr")
    status = status_file(collector)

    port = free_udp_port(TRUNK_A)
    argv = [SIPP, "-sf", str(REPO_ROOT / "tests/e2e/scenarios/uac_call.xml"), "-i", TRUNK_A, "-p", str(port),
            "-m", str(CALLS), "-r", str(RATE), "-l", str(RATE * 2), "-nostdin", "-timeout", "120s", "-timeout_error",
            "-max_retrans", "5", "-s", DID_NATIONAL, "-key", "caller", CALLER_NATIONAL, "-key", "caller_name", "Alice",
            "-default_behaviors", "all,-abortunexp", "-trace_err", "-error_file", str(tmp_path / "uac-errors.log"),
            r.target]
    uac = processes.start(argv, tmp_path / "uac.log", cwd=tmp_path)
    time.sleep(3)
    assert pid_of(r, "c4kemi.cli cdr") == collector, node_lines(r)
    os.kill(collector, signal.SIGSTOP)  # events go on being handed over, unread
    time.sleep(1)
    os.kill(collector, signal.SIGKILL)
    back = wait_for(lambda: (pid := pid_of(r, "c4kemi.cli cdr")) not in (None, collector) and pid, 10,
                    "c4 cdr is not back", lambda: node_lines(r))
    try:
        code = uac.wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, (f"sipp: {code}\n" + (tmp_path / "uac.log").read_text(errors="replace")[-3000:]
                       + (tmp_path / "uac-errors.log").read_text(errors="replace")[-2000:] + "\n" + node_lines(r))

    expected = {f"{n}-{uac.pid}@{TRUNK_A}" for n in range(1, CALLS + 1)}  # sipp's Call-IDs: [call_id] is N-PID@IP
    records = read_records(path, CALLS, timeout=30)
    time.sleep(1)  # a duplicate would come now
    records = read_records(path, CALLS + 1, timeout=0)
    call_ids = [record["call_id"] for record in records]
    print(f"{r.mode}: {len(records)} records for {CALLS} calls; c4 cdr {collector} killed, back as {back}")
    assert len(call_ids) == len(set(call_ids)), f"{len(call_ids) - len(set(call_ids))} duplicate records\n{node_lines(r)}"
    assert set(call_ids) == expected, \
        f"missing {len(expected - set(call_ids))}, unexpected {sorted(set(call_ids) - expected)[:5]}\n{node_lines(r)}"
    assert len({record["id"] for record in records}) == CALLS
    assert {record["code"] for record in records} == {200}
    state = orjson.loads(status.read_bytes())["cdr"]
    assert (state["restarts"], state["pid"], state["last_exit"]) == (1, back, 128 + signal.SIGKILL)


# ---------------------------------------------------------------- starting without the database


def launch(tmp_path: Path, *args: str, listen_port: int | None = None) -> tuple[subprocess.Popen, Path, Path]:
    """c4 kamailio in its own session, with a private TMPDIR (where its runtime directory goes) and state dir."""
    rundirs = tmp_path / "tmp"
    rundirs.mkdir(exist_ok=True)
    log = tmp_path / "node.log"
    port = listen_port or free_udp_port("127.0.0.1")
    argv = [sys.executable, "-m", "c4kemi.cli", "kamailio", "--mode", "kemi", "--listen", f"udp:127.0.0.1:{port}",
            "--workers", "1", "--shm", "64", "--pkg", "16", *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                start_new_session=True,
                                env={**os.environ, "TMPDIR": str(rundirs), "C4_STATE_DIR": str(tmp_path / "state")})
    return proc, log, rundirs


def test_without_the_database_nor_a_cache_the_node_waits_listens_on_nothing_and_stops_cleanly(tmp_path):
    """Before: "listening on udp:..." while nothing listened, then after 20 s the start gave up;
    SIGTERM meanwhile exited 143 without its "stopped" line and left /tmp/c4-kamailio-* behind."""
    port = free_udp_port("127.0.0.1")
    cache = tmp_path / "cache.json"
    proc, log, rundirs = launch(tmp_path, "--dsn", UNREACHABLE_DSN, "--table-cache", str(cache), listen_port=port)
    try:
        wait_for(lambda: "c4 db follow" in log.read_text() and "PostgreSQL unavailable" in log.read_text(), 20,
                 "c4 db follow never tried", log.read_text)
        time.sleep(1)
        text = log.read_text()
        assert f"waiting for PostgreSQL at 127.0.0.1:1: no table cache yet ({cache})" in text, text
        assert "listening on" not in text, text
        assert proc.poll() is None
        assert not udp_port_taken("127.0.0.1", port) and not sip_options_ok("127.0.0.1", port)
        assert [p.name for p in rundirs.iterdir() if p.name.startswith("c4-kamailio-")], "no runtime directory while it runs"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        text = log.read_text()
        assert "c4 kamailio: stopped (signal SIGTERM) before Kamailio started" in text, text
        assert not [p.name for p in rundirs.iterdir() if p.name.startswith("c4-kamailio-")]
        assert not group_pids(proc.pid), "a helper outlived the node"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_require_db_exits_at_once_with_a_clear_error(tmp_path):
    started = time.monotonic()
    proc, log, rundirs = launch(tmp_path, "--dsn", UNREACHABLE_DSN, "--table-cache", str(tmp_path / "cache.json"), "--require-db")
    assert proc.wait(timeout=30) == 2
    assert time.monotonic() - started < 15
    text = log.read_text()
    assert "PostgreSQL at 127.0.0.1:1 cannot be reached" in text and "--require-db" in text, text
    assert "c4 kamailio: stopped: Kamailio not started" in text and "listening on" not in text
    assert not [p.name for p in rundirs.iterdir() if p.name.startswith("c4-kamailio-")]


def test_without_the_database_the_node_routes_from_its_table_cache(kemi_router, tmp_path):
    peers = BusyPeers([PBX])
    try:
        document = without_probes(routing_document(pbx_port=peers.ports[PBX]))
        write_json_atomically(tmp_path / "kemi-cache.json", document)  # the harness's --table-cache
        r = kemi_router.start(document, dsn=UNREACHABLE_DSN)
        text = r.log_text()
        assert "PostgreSQL at 127.0.0.1:1 cannot be reached" in text and f"routing from the table cache {tmp_path / 'kemi-cache.json'}" in text
        assert busy_call(r, "from-the-cache") == 486
        # The launcher says so once it sees Kamailio answer (it looks every POLL_INTERVAL): maybe after our call.
        deadline = time.monotonic() + 10
        while "listening on" not in r.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "listening on" in r.log_text()
    finally:
        peers.close()
