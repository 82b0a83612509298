"""``c4 kamailio``: how it reports the way Kamailio ended.

A stand-in Kamailio (a shell script given with ``--kamailio``) plays the
one thing a real one cannot be made to do on demand: die of another signal
while being stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from c4kemi.cli import EXAMPLE_TABLE
from c4kemi.node.launch_supervision import exit_status


@pytest.mark.parametrize("returncode, status", [(0, 0), (1, 1), (-signal.SIGKILL, 137), (-signal.SIGSEGV, 139)])
def test_exit_status_is_128_plus_the_signal(returncode, status):
    assert exit_status(returncode) == status


def start_launcher(tmp_path, script: str) -> subprocess.Popen:
    fake = tmp_path / "kamailio"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--kamailio", str(fake), "--table", str(EXAMPLE_TABLE)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={"READY": str(ready), "PATH": "/usr/bin:/bin"},
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    return proc


def test_kamailio_killed_by_another_signal_while_stopping_gives_128_plus_n(tmp_path):
    # On SIGTERM this "Kamailio" dies of SIGKILL instead of exiting.
    proc = start_launcher(tmp_path, 'trap "kill -KILL $$" TERM\ntouch "$READY"\nwhile :; do sleep 0.1; done\n')
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGKILL


def test_kamailio_stopping_cleanly_on_sigterm_gives_0(tmp_path):
    proc = start_launcher(tmp_path, 'trap "exit 0" TERM\ntouch "$READY"\nwhile :; do sleep 0.1; done\n')
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_kamailio_crashing_on_its_own_gives_128_plus_n(tmp_path):
    proc = start_launcher(tmp_path, 'touch "$READY"\nkill -SEGV $$\n')
    assert proc.wait(timeout=20) == 128 + signal.SIGSEGV


def test_a_bad_table_stops_the_launch_with_every_error(tmp_path):
    # The launcher does not check the table itself (start time): c4 feed does, once, and names every error.
    table = tmp_path / "table.json"
    document = json.loads(EXAMPLE_TABLE.read_text())
    document["dids"][0]["ipbx"] = "no-such-pbx"
    document["routes"][0]["trunks"] = ["no-such-trunk"]
    table.write_text(json.dumps(document))
    started = tmp_path / "started"
    fake = tmp_path / "kamailio"
    fake.write_text(f'#!/bin/sh\ntouch "{started}"\n')
    fake.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--kamailio", str(fake), "--table", str(table)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "C4_STATE_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "no-such-pbx" in result.stderr and "no-such-trunk" in result.stderr
    assert "refused, 2 error(s)" in result.stderr and "Kamailio not started" in result.stderr
    assert not started.exists()


def dry_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c4kemi.cli", "kamailio", "--dry-run", "--table", str(EXAMPLE_TABLE), *args],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_call_records_are_off_unless_asked_for(tmp_path):
    off = dry_run()
    assert off.returncode == 0 and "C4_CDR" not in off.stdout and "c4kemi.cli cdr" not in off.stdout
    on = dry_run("--cdr-file", str(tmp_path / "cdr.jsonl"))
    assert on.returncode == 0, on.stderr
    assert "-A C4_CDR_EVAPI=\"127.0.0.1:" in on.stdout
    assert "c4kemi.cli cdr --evapi 127.0.0.1:" in on.stdout and f"--file {tmp_path / 'cdr.jsonl'}" in on.stdout
    assert "C4_CDR_KEY=*** " in on.stdout  # c4 cdr's key: in its environment, never on its command line
    assert "C4_CDR_UNKNOWN_SOURCES" not in on.stdout
    unknown = dry_run("--cdr-file", str(tmp_path / "cdr.jsonl"), "--cdr-unknown-sources")
    assert unknown.returncode == 0 and "-A C4_CDR_UNKNOWN_SOURCES=1" in unknown.stdout
    alone = dry_run("--cdr-unknown-sources")
    assert alone.returncode == 2 and "--cdr-unknown-sources needs --cdr-file or --cdr-db" in alone.stderr


def test_records_to_postgresql_take_the_dsn_from_the_environment_never_the_command_line(tmp_path):
    dsn = "postgresql://c4:pw-7f3a@db/c4"
    missing = dry_run("--cdr-db")
    assert missing.returncode == 2 and "--cdr-db needs --dsn or $C4_DSN" in missing.stderr
    on = dry_run("--cdr-db", "--cdr-spool", str(tmp_path / "spool.jsonl"), env={"C4_DSN": dsn})
    assert on.returncode == 0, on.stderr
    assert "C4_DSN=*** " in on.stdout and "--db --spool" in on.stdout and "pw-7f3a" not in on.stdout
    both = dry_run("--cdr-db", "--cdr-file", "x", env={"C4_DSN": dsn})
    assert both.returncode == 2 and "not both" in both.stderr


def argv_dry_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``c4 kamailio --dry-run``: the Kamailio command it would run, on stdout."""
    return subprocess.run(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--dry-run", "--kamailio", "/bin/true",
         "--secret-file", str(tmp_path / "secret"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def kamailio_argv(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1].split()


def test_memory_manager_is_tlsf_by_default_for_shared_and_private_memory(tmp_path):
    argv = kamailio_argv(argv_dry_run(tmp_path, "--table", str(EXAMPLE_TABLE)))
    assert argv[argv.index("-x") + 1] == "tlsf" and argv[argv.index("-X") + 1] == "tlsf"


def test_memory_manager_option_is_passed_to_kamailio(tmp_path):
    argv = kamailio_argv(argv_dry_run(tmp_path, "--table", str(EXAMPLE_TABLE), "--memory-manager", "qm"))
    assert argv[argv.index("-x") + 1] == "qm" and argv[argv.index("-X") + 1] == "qm"
    assert argv_dry_run(tmp_path, "--table", str(EXAMPLE_TABLE), "--memory-manager", "tcmalloc").returncode == 2


@pytest.mark.parametrize("mode", ["kemi", "http"])
def test_admission_bound_and_retry_after_reach_the_config_in_both_modes(tmp_path, mode):
    argv = kamailio_argv(argv_dry_run(tmp_path, "--mode", mode, "--table", str(EXAMPLE_TABLE), *(["--serve-api"] if mode == "http" else []),
                                 "--max-transactions", "321", "--retry-after", "9", "--admit-interval", "0",
                                 "--http-async-client", "/bin/true"))
    assert "C4_MAX_TRANSACTIONS=321" in argv and "C4_RETRY_AFTER=9" in argv and "C4_ADMIT_INTERVAL=0" in argv


def test_admission_defaults(tmp_path):
    argv = kamailio_argv(argv_dry_run(tmp_path, "--table", str(EXAMPLE_TABLE)))
    assert "C4_MAX_TRANSACTIONS=1000" in argv and "C4_RETRY_AFTER=2" in argv and "C4_ADMIT_INTERVAL=10" in argv
    assert "C4_SHM_RESERVE=64" in argv  # an eighth of the default 512 MiB


def test_shared_memory_reserve_follows_shm_unless_given(tmp_path):
    argv = kamailio_argv(argv_dry_run(tmp_path, "--table", str(EXAMPLE_TABLE), "--shm", "128"))
    assert "C4_SHM_RESERVE=16" in argv
    argv = kamailio_argv(argv_dry_run(tmp_path, "--table", str(EXAMPLE_TABLE), "--shm", "128", "--shm-reserve", "40"))
    assert "C4_SHM_RESERVE=40" in argv


@pytest.mark.parametrize("args", [["--max-transactions", "0"], ["--retry-after", "-1"], ["--shm-reserve", "513"],
                                  ["--mode", "http", "--max-inflight", "300", "--max-transactions", "200"]])
def test_bad_admission_bounds_are_refused(tmp_path, args):
    result = argv_dry_run(tmp_path, *(["--table", str(EXAMPLE_TABLE)] if "http" not in args else ["--http-async-client", "/bin/true"]), *args)
    assert result.returncode == 2 and any(name in result.stderr for name in ("--max-", "--retry-after", "--shm-reserve")), result.stderr


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is PID, with their command lines."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                out[int(entry)] = open(f"/proc/{entry}/cmdline").read().replace("\0", " ")
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.parametrize("store", ["file", "pg"])
def test_the_table_writer_runs_at_the_lowest_cpu_priority_and_kamailio_does_not(tmp_path, request, store):
    """c4 feed / c4 db follow must never take CPU from the SIP workers: SCHED_IDLE, as the kernel reports it."""
    fake = tmp_path / "kamailio"
    fake.write_text('#!/bin/sh\ntouch "$READY"\nwhile :; do sleep 0.1; done\n')
    fake.chmod(0o755)
    ready = tmp_path / "ready"
    env = {"READY": str(ready), "PATH": "/usr/bin:/bin", "C4_STATE_DIR": str(tmp_path)}
    if store == "file":
        args, writer = ["--table", str(EXAMPLE_TABLE)], "c4kemi.cli feed"
    else:
        env["C4_DSN"] = request.getfixturevalue("pg_dsn")
        args, writer = ["--dsn", env["C4_DSN"], "--table-cache", str(tmp_path / "cache.json")], "c4kemi.cli db follow"
    proc = subprocess.Popen([sys.executable, "-m", "c4kemi.cli", "kamailio", "--kamailio", str(fake), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        started = children(proc.pid)
        writers = [pid for pid, cmdline in started.items() if writer in cmdline]
        kamailio = [pid for pid, cmdline in started.items() if str(fake) in cmdline]
        assert len(writers) == 1 and len(kamailio) == 1, started
        assert os.sched_getscheduler(writers[0]) == os.SCHED_IDLE
        assert os.sched_getscheduler(kamailio[0]) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, kamailio[0]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
