"""``c4 kamailio``'s supervision (c4kemi/node/launch_supervision.py) and c4 cdr's side of records that survive it.

Stand-in helpers and a stand-in Kamailio (``sleep``, ``sh``) play what a
real node cannot be made to do on demand: exit now, exit again at once,
never be ready. tests/e2e/test_node_lifecycle.py does the same with the
real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from c4kemi.call import cdr_collector
from c4kemi.call.cdr import event_id, event_seq, id_seq, make_record
from c4kemi.call.cdr_collector import JsonLines, Written, collect, handle
from c4kemi.cli import EXAMPLE_TABLE
from c4kemi.node import launch_supervision as supervision
from c4kemi.node.launch_plan import Helper, LaunchError
from c4kemi.node.launch_supervision import STATUS_ENV, STATUS_FILE, Node, Stopped
from c4kemi.node.launcher import dsn_where


@pytest.fixture
def fast(monkeypatch):
    """Backoff in tens of milliseconds instead of seconds."""
    monkeypatch.setattr(supervision, "RESTART_FIRST", 0.05)
    monkeypatch.setattr(supervision, "RESTART_MAX", 0.2)
    monkeypatch.setattr(supervision, "POLL_INTERVAL", 0.02)


def sleeper(what: str = "sleeper", seconds: int = 60, **kwargs) -> Helper:
    return Helper(["sleep", str(seconds)], what, lambda: True, **kwargs)


def status(tmp_path: Path) -> dict:
    return orjson.loads((tmp_path / STATUS_FILE).read_bytes())


def until(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_helper_has_a_short_name_for_the_log_and_the_status_file():
    c4 = [sys.executable, "-m", "c4kemi.cli"]
    assert Helper([*c4, "db", "follow", "--out", "x"], "c4 db follow (x)", bool).name == "db-follow"
    assert Helper([*c4, "cdr", "--evapi", "127.0.0.1:1"], "c4 cdr", bool).name == "cdr"
    assert Helper([*c4, "health-sync", "--feed", "f"], "c4 health-sync", bool).name == "health-sync"
    assert Helper(["sleep", "1"], "sleeper", bool).name == "sleeper"
    assert Helper(["x"], "x", bool).restart is True  # restarted unless it says otherwise


def test_a_helper_that_exits_is_started_again_with_a_growing_delay_and_counted(tmp_path, fast, capsys):
    node = Node(tmp_path)
    node.start(sleeper())
    first = node.helpers[0].proc
    assert status(tmp_path) == {"sleeper": {"restarts": 0, "pid": first.pid, "since": node.helpers[0].since, "last_exit": None}}
    assert Path(f"/proc/{first.pid}/environ").read_bytes().count(f"{STATUS_ENV}={tmp_path / STATUS_FILE}".encode()) == 1
    try:
        delays = []
        for restart in (1, 2, 3, 4):
            entry = node.helpers[0]
            entry.proc.kill()
            entry.proc.wait()
            node.supervise()  # noticed: down, pid null in the status file
            assert entry.proc is None and status(tmp_path)["sleeper"]["pid"] is None
            delays.append(entry.due - time.monotonic())
            until(lambda entry=entry: node.supervise() or entry.proc is not None)
            assert entry.restarts == restart
        state = status(tmp_path)["sleeper"]
        assert (state["restarts"], state["pid"], state["last_exit"]) == (4, node.helpers[0].proc.pid, 128 + signal.SIGKILL)
        # 0.05, 0.1, 0.2, then the bound (0.2): doubling up to RESTART_MAX
        assert [round(d, 2) for d in delays] == pytest.approx([0.05, 0.1, 0.2, 0.2], abs=0.02)
        err = capsys.readouterr().err
        assert f"sleeper (pid {first.pid}) was killed by SIGKILL; starting it again in 0.05 s" in err
        assert "sleeper started again (pid" in err and "restart 4" in err
    finally:
        node.stop_helpers()


def test_the_delay_is_back_to_the_first_once_a_helper_stayed_up(tmp_path, fast, monkeypatch):
    node = Node(tmp_path)
    node.start(sleeper())
    try:
        entry = node.helpers[0]
        entry.delay = supervision.RESTART_MAX  # after many quick exits
        monkeypatch.setattr(supervision, "STABLE_AFTER", 0.1)
        time.sleep(0.2)
        entry.proc.kill()
        entry.proc.wait()
        node.supervise()
        assert entry.due - time.monotonic() == pytest.approx(0.05, abs=0.02)
    finally:
        node.stop_helpers()


def test_a_helper_whose_policy_says_so_is_not_started_again(tmp_path, fast, capsys):
    node = Node(tmp_path)
    node.start(sleeper(restart=False))
    node.helpers[0].proc.kill()
    node.helpers[0].proc.wait()
    node.supervise()
    time.sleep(0.1)
    node.supervise()
    assert node.helpers[0].proc is None and node.helpers[0].restarts == 0
    assert "not started again (its restart policy)" in capsys.readouterr().err


def test_a_helper_exiting_before_it_is_ready_stops_the_start(tmp_path):
    node = Node(tmp_path)
    with pytest.raises(LaunchError, match=r"quitter exited with code 3 before it was ready; Kamailio not started"):
        node.start(Helper(["sh", "-c", "exit 3"], "quitter", lambda: False))


def test_a_helper_not_ready_within_its_bound_stops_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(supervision, "API_START_TIMEOUT", 0.3)
    node = Node(tmp_path)
    try:
        with pytest.raises(LaunchError, match=r"slowpoke was not ready within 0s"):
            node.start(Helper(["sleep", "60"], "slowpoke", lambda: False, ready_timeout=0.2))
        with pytest.raises(LaunchError, match=r"default was not ready within 0s"):  # API_START_TIMEOUT
            node.start(Helper(["sleep", "60"], "default", lambda: False))
    finally:
        node.stop_helpers()


def test_waiting_without_a_bound_is_said_and_a_signal_stops_it(tmp_path, monkeypatch, capsys):
    """c4 db follow waiting for PostgreSQL: no timeout, a line every WAITING_LOG_INTERVAL, and SIGTERM ends the wait."""
    monkeypatch.setattr(supervision, "WAITING_LOG_INTERVAL", 0.3)
    monkeypatch.setattr(supervision, "API_START_TIMEOUT", 0.1)  # not this helper's bound
    node = Node(tmp_path)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with node:
            timer.start()
            with pytest.raises(Stopped) as stopped:
                node.start(Helper(["sleep", "60"], "follower", lambda: False, ready_timeout=float("inf")),
                           waiting="still waiting for PostgreSQL at db:5432: no table cache yet")
        assert stopped.value.args == (signal.SIGTERM,)
        assert capsys.readouterr().err.count("c4 kamailio: still waiting for PostgreSQL at db:5432: no table cache yet (") >= 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back
    finally:
        timer.cancel()
        node.stop_helpers()


def test_helpers_started_earlier_are_supervised_while_a_later_one_gets_ready(tmp_path, fast):
    node = Node(tmp_path)
    ready_after = time.monotonic() + 0.5
    try:
        node.start(sleeper("first"))
        first = node.helpers[0].proc
        first.kill()
        node.start(Helper(["sleep", "60"], "second", lambda: time.monotonic() > ready_after))
        assert node.helpers[0].restarts == 1 and node.helpers[0].proc.pid != first.pid
    finally:
        node.stop_helpers()


def test_kamailio_exiting_ends_the_run_with_its_status_and_helpers_are_kept_up_meanwhile(tmp_path, fast):
    node = Node(tmp_path)
    node.start(Helper(["sh", "-c", "sleep 0.2; exit 1"], "flaky", lambda: True))
    announced = []
    with node:
        code, reason = node.run(["sh", "-c", "sleep 2.5; exit 3"], dict(os.environ), lambda: True, lambda: announced.append(1))
    node.stop_helpers()
    assert (code, reason) == (3, ": Kamailio exited with code 3")
    assert announced == [1]
    assert status(tmp_path)["flaky"]["restarts"] >= 3
    assert status(tmp_path)["flaky"]["last_exit"] == 1


def test_a_signal_stops_kamailio_and_says_how_it_ended(tmp_path, fast):
    node = Node(tmp_path)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with node:
        timer.start()
        code, reason = node.run(["sleep", "60"], dict(os.environ))
    assert (code, reason) == (0, " (signal SIGTERM), Kamailio exit code -15")


def test_helpers_that_stop_with_the_node_are_not_started_again(tmp_path, fast, capsys):
    """systemd and a terminal signal the whole process group: the helpers exit with Kamailio, and stay down."""
    node = Node(tmp_path)
    node.start(sleeper("helper"))
    helper = node.helpers[0].proc

    def group_signal():
        helper.terminate()
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(0.3, group_signal)
    with node:
        timer.start()
        code, _ = node.run(["sh", "-c", "trap 'sleep 0.5; exit 0' TERM; sleep 60 & wait"], dict(os.environ))
    node.stop_helpers()
    assert code == 0
    said = capsys.readouterr().err
    assert "the node is stopping" in said and "started again" not in said, said
    assert status(tmp_path)["helper"]["restarts"] == 0


def test_the_launcher_says_stopped_and_removes_its_runtime_directory_when_kamailio_exits(tmp_path):
    fake = tmp_path / "kamailio"
    fake.write_text("#!/bin/sh\nsleep 1\nexit 3\n")
    fake.chmod(0o755)
    rundirs = tmp_path / "tmp"
    rundirs.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--kamailio", str(fake), "--table", str(EXAMPLE_TABLE)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TMPDIR": str(rundirs), "C4_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.rstrip().endswith("c4 kamailio: stopped: Kamailio exited with code 3"), result.stderr
    assert "listening on" not in result.stdout  # it never answered: it never routed
    assert list(rundirs.iterdir()) == []


@pytest.mark.parametrize("dsn, where", [
    ("postgresql://c4:secret@db.example:5433/c4", "db.example:5433"),
    ("postgresql://c4:secret@127.0.0.1/c4", "127.0.0.1"),
    ("postgresql:///c4?host=/run/postgresql", "/run/postgresql"),
    ("postgresql:///c4", "the local socket"),
    ("host=db port=5432 user=c4 password=secret", "db:5432"),
    ("postgresql://c4:secret@db1:5432,db2:5433/c4", "db1:5432,db2:5433 (read-write)"),
])
def test_the_database_is_named_by_host_and_port_never_user_or_password(dsn, where):
    assert dsn_where(dsn) == where


# ---------------------------------------------------------------- c4 cdr: an event sent twice is one record

RUN = "0123456789abcdef"
EVENT = {"call_id": "c1@pbx", "invite": "1764178801.1", "end": "1764178802.1", "code": 486, "reason": "Busy Here", "by": "callee"}


def numbered(seq: int, run: str = RUN) -> dict:
    return {"run": run, "seq": seq, **EVENT, "call_id": f"c{seq}@pbx"}


def test_a_numbered_event_has_its_record_id_from_run_and_seq():
    assert event_seq(numbered(5)) == (RUN, 5)
    assert event_id(RUN, 5) == RUN + "0000000000000005" and id_seq(event_id(RUN, 5)) == (RUN, 5)
    for bad in ({"run": "short", "seq": 1}, {"run": RUN, "seq": 0}, {"run": RUN, "seq": True}, {"run": RUN.upper(), "seq": 1}, EVENT):
        assert event_seq(bad) is None
    assert id_seq("f" * 31) is None and id_seq("z" * 32) is None and id_seq(None) is None
    assert make_record(numbered(5), event_id(RUN, 5))["id"] == "0123456789abcdef0000000000000005"


def test_an_event_sent_again_is_dropped_and_a_new_run_starts_over(tmp_path):
    sink = JsonLines(tmp_path / "cdr.jsonl")
    written = Written(sink.last_id())
    assert (written.run, written.seq) == (None, 0)
    assert [handle(orjson.dumps(numbered(n)), sink, written) is not None for n in (1, 2, 3, 2, 3, 4)] == [True] * 3 + [False] * 2 + [True]
    assert written.duplicates == 2
    assert handle(orjson.dumps(numbered(1, "f" * 16)), sink, written) is not None  # Kamailio restarted: its own 1
    ids = [orjson.loads(line)["id"] for line in sink.path.read_bytes().splitlines()]
    assert ids == [event_id(RUN, n) for n in (1, 2, 3, 4)] + [event_id("f" * 16, 1)]
    assert handle(orjson.dumps(EVENT), sink, written) is not None  # no seq (an older config): a random id, kept


def test_a_new_collector_knows_where_the_last_one_stopped_from_the_file(tmp_path):
    path = tmp_path / "cdr.jsonl"
    sink = JsonLines(path)
    for n in (1, 2, 3):
        handle(orjson.dumps(numbered(n)), sink)
    with open(path, "ab") as file:
        file.write(b'{"id": "half a li')  # a line cut short
    again = Written(JsonLines(path).last_id())
    assert (again.run, again.seq) == (RUN, 3)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert JsonLines(tmp_path / "empty.jsonl").last_id() is None
    assert JsonLines(tmp_path / "new.jsonl").last_id() is None


def test_the_collector_acknowledges_seqs_and_drops_what_comes_again(tmp_path, monkeypatch):
    """A stand-in evapi sends events 1..150 and closes; the next connection gets 101..160 again
    (what Kamailio had not seen acknowledged, then new ones): 160 records, each once; "ack SEQ"
    every 100 events and when idle."""
    monkeypatch.setattr(cdr_collector, "ACK_IDLE", 0.1)
    path = tmp_path / "cdr.jsonl"

    def frames(seqs) -> bytes:
        return b"".join(cdr_collector.netstring(orjson.dumps(numbered(n))) for n in seqs)

    async def scenario():
        heard: list[list[bytes]] = []

        async def evapi(reader, writer):
            acks: list[bytes] = []
            heard.append(acks)
            assert await reader.readuntil(b",") == b"8:auth k3y,"
            first = len(heard) == 1
            writer.write(b"2:ok," + frames(range(1, 151) if first else range(101, 161)))
            await writer.drain()
            try:
                while True:
                    acks.append(await asyncio.wait_for(reader.readuntil(b","), 0.5))
            except (TimeoutError, asyncio.IncompleteReadError):
                pass
            writer.close()

        server = await asyncio.start_server(evapi, "127.0.0.1", 0)
        task = asyncio.ensure_future(collect("127.0.0.1", server.sockets[0].getsockname()[1], JsonLines(path), key="k3y"))
        for _ in range(100):
            if len(heard) == 2 and heard[1]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel()
        server.close()
        return heard

    heard = asyncio.run(scenario())
    assert heard[0] == [b"7:ack 100,", b"7:ack 150,"]
    # 101..150 dropped (what it has said at once: Kamailio may not have heard the last ack), 151..160 written
    assert heard[1] == [b"7:ack 150,", b"7:ack 160,"]
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["id"] for r in records] == [event_id(RUN, n) for n in range(1, 161)]


def test_a_kamailio_that_cannot_be_started_is_a_launch_error(tmp_path):
    node = Node(tmp_path)
    with pytest.raises(LaunchError, match=r"cannot start Kamailio \(/nonexistent/kamailio\)"):
        node.run(["/nonexistent/kamailio"], dict(os.environ))
    with pytest.raises(LaunchError, match=r"cannot start ghost: .*; Kamailio not started"):
        node.start(Helper(["/nonexistent/helper"], "ghost", lambda: True))
