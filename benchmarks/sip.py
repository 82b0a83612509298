"""SIP benchmark: capacity ladder and overload runs of c4 against a plain relay.

    .venv/bin/python benchmarks/sip.py [--full] [--setups static,kemi,http] [--rates 500,1000,2000]
        [--repetitions 2] [--duration 10] [--overload 1.5,2] [--overload-duration 10]
        [--memory-manager tlsf] [--out benchmarks/results/sip.json] [--before TREE]

Setups (``SETUPS``): ``static`` is benchmarks/kamailio-static.cfg, a native
Kamailio config that record-routes and relays to the callee with no
decision: the upper bound. ``native`` is benchmarks/kamailio-native.cfg,
the same routing done with Kamailio's own modules (permissions, dialplan,
htable, drouting, uac, dialog) on the same table, converted by
benchmarks/native_table.py: what c4 is an alternative to. ``kemi`` and
``http`` run ``c4 kamailio`` in each mode (HTTP mode with its ``c4
serve``); ``kemi-limits`` and
``http-limits`` use the same table with channel and call-rate limits set
too high to refuse, so their cost shows. Every setup gets the same
workers, shared and private memory and memory manager. The table comes
from benchmarks/generate.py (100k DIDs, 1k routes) plus a bench IPBX (the
sipp caller) and a bench trunk (the sipp callee) routed for the called
number.

Ladder: for each offered rate, for each repetition, each setup in turn (so
drift of a noisy machine hits all alike), one point: a fresh router, a sipp
callee, a sipp caller placing rate x duration full calls (INVITE, 180, 200,
ACK, BYE through the router). A setup leaves the ladder after two
consecutive unclean rates (benchmarks/points.py says what clean is).
Overload: each setup at 1.5x and 2x its highest clean rate.

Per point: calls attempted, completed, failed and refused with 503, sipp's
retransmissions, setup time (INVITE sent to 200 received) p50/p99, CPU
per attempted call of Kamailio and of c4 serve (/proc), peak shared memory
(Kamailio's ``core.shmmem`` max_used, read over its JSON-RPC socket during
the run) and whether Kamailio crashed (exited, or a child killed by a
signal in its log). Results go to a JSON file that benchmarks/report.py
turns into benchmarks/README.md. Everything, sipp included, runs on this
one machine: compare setups measured in one run, not across runs.

Before and after a change: ``--before TREE``, TREE another checkout of
this repository (``git worktree add /tmp/c4-before OLD`` and a ``build``
link to this checkout's, for HTTP mode's http_async_client). Each kemi
or http setup then also runs from TREE, as ``SETUP@before``, right after
SETUP at each rate and repetition: the same ``-m c4kemi.cli kamailio``
command with TREE as working directory, so TREE's c4kemi and kamailio/
configs run (each point checks its Kamailio's config path, and in KEMI
mode its PYTHONPATH, and records the config). The results name both
trees' commits.

The earlier KEMI-vs-HTTP comparison is ``--setups kemi,http --rates 300
--repetitions 3 --overload ""``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import orjson

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from generate import make_document  # noqa: E402
from native_table import write_tables  # noqa: E402
from points import highest_clean_rate, ladder_done, rows  # noqa: E402

from c4kemi.call.channels import KamailioRpc, RpcError  # noqa: E402
from c4kemi.node.launch_plan import Launch, build_command, kamailio_binary, quoted  # noqa: E402

SCENARIO = BENCH / "scenarios" / "uac_bench.xml"
CALLEE_SCENARIO = ROOT / "tests" / "e2e" / "scenarios" / "uas_answer.xml"
STATIC_CONFIG = BENCH / "kamailio-static.cfg"
NATIVE_CONFIG = BENCH / "kamailio-native.cfg"
DEFAULT_OUT = BENCH / "results" / "sip.json"
CALLER, CALLEE, ROUTER = "127.0.0.10", "127.0.0.2", "127.0.0.1"
CALLED = "0612345678"  # the bench IPBX's "it" profile makes it 39612345678
BENCH_ROUTE = "39612"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Kamailio's main process logs a child that died of a signal; a core dump is named too.
CRASH_LOG = re.compile(rb"exited by a signal|core dumped|SIGSEGV|SIGABRT")
START_TIMEOUT = 90.0  # seconds for a router to answer OPTIONS (table compile included)


@dataclass(frozen=True)
class Setup:
    """One way of running the router. Add a line to SETUPS for a new one.

    ``args``: extra ``c4 kamailio`` arguments; ``{workdir}`` is replaced by
    the point's directory (e.g. ``("--cdr-file", "{workdir}/cdr.jsonl")``).
    ``tree``: another checkout whose c4 runs this setup (``--before``).
    """

    name: str
    mode: str  # "static", "native", "kemi" or "http"
    limits: bool = False  # the table with max_channels / max_cps set (never refusing)
    args: tuple[str, ...] = ()
    tree: Path | None = None


SETUPS = {s.name: s for s in (
    Setup("static", "static"),
    Setup("native", "native"),
    Setup("kemi", "kemi"),
    Setup("http", "http"),
    Setup("kemi-limits", "kemi", limits=True),
    Setup("http-limits", "http", limits=True),
    Setup("kemi-cdr", "kemi", args=("--cdr-file", "{workdir}/cdr.jsonl")),
    Setup("http-cdr", "http", args=("--cdr-file", "{workdir}/cdr.jsonl")),
)}
BEFORE = "@before"  # name suffix of a setup run from --before's tree
C4_MODES = ("kemi", "http")  # the setups --before runs twice: c4 kamailio's
SHORT = {"setups": "static,kemi,http", "rates": "500,1000,2000", "repetitions": 2, "duration": 10, "overload_duration": 10}
FULL = {"setups": ",".join(SETUPS), "rates": ",".join(str(r) for r in range(250, 4001, 250)), "repetitions": 2,
        "duration": 15, "overload_duration": 20}


def bench_table(callee_port: int, limits: bool, dids: int, routes: int) -> dict:
    """generate.py's table plus the bench IPBX (caller) and trunk (callee) of tenant t000."""
    document = make_document(dids, routes)
    document["ipbxs"].append({"name": "bench-pbx", "tenant": "t000", "targets": [f"sip:{CALLER}:5999"],
                              "sources": [CALLER], "normalization": "it"})
    document["trunks"].append({"name": "bench-trunk", "carrier": "carrier-t000", "target": f"sip:{CALLEE}:{callee_port}",
                               "sources": [f"{CALLEE}/32"], "normalization": "it"})
    document["routes"] = [r for r in document["routes"] if (r["tenant"], r["prefix"]) != ("t000", BENCH_ROUTE)]
    document["routes"].append({"tenant": "t000", "prefix": BENCH_ROUTE, "trunks": ["bench-trunk"]})
    if limits:  # high enough never to refuse: the cost of counting, not of refusing
        document["tenants"][0]["max_channels"] = 1_000_000
        document["trunks"][-1].update(max_channels=1_000_000, max_cps=100_000)
    return document


def without_health(document: dict) -> dict:
    """Trunk health off for every target: the bench table's 1,400 trunk and IPBX targets are made-up
    addresses (they would all be probed, then marked down), and sipp's callee takes an OPTIONS for a
    failed call. benchmarks/health.py measures health itself."""
    for collection in ("trunks", "ipbxs"):
        for entity in document[collection]:
            entity["health"] = {"probe_interval": 0, "down_after": 0}
    return document


def free_port(kind: int, address: str) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def wait_options(port: int, router: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    """Wait until the router answers an OPTIONS with 200."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CALLER, 0))
        sock.settimeout(0.5)
        local = sock.getsockname()[1]
        while time.monotonic() < deadline and router.poll() is None:
            branch = f"z9hG4bK{time.monotonic_ns()}"
            sock.sendto((
                f"OPTIONS sip:{ROUTER}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER}:{local};branch={branch}\r\n"
                f"From: <sip:probe@{CALLER}>;tag=1\r\nTo: <sip:{ROUTER}>\r\nCall-ID: {branch}\r\n"
                f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), (ROUTER, port))
            try:
                if sock.recv(4096).startswith(b"SIP/2.0 200"):
                    return
            except TimeoutError:
                pass
    raise RuntimeError(f"router on port {port} did not answer OPTIONS (exit code {router.poll()})")


def group_processes(pgid: int):
    """(pid, comm, cmdline parts, utime + stime in s) of each live process of a process group."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) != pgid:  # field 5: pgrp
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        yield int(entry), comm, cmdline, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14, 15: utime, stime


def cpu_seconds(pgid: int) -> dict[str, float]:
    """utime + stime of the live processes of a process group: Kamailio's, and c4 serve's."""
    total = {"kamailio": 0.0, "serve": 0.0}
    for _, comm, cmdline, seconds in group_processes(pgid):
        who = "kamailio" if comm == "kamailio" else "serve" if b"serve" in cmdline else None
        if who:
            total[who] += seconds
    return total


class ShmPoller(threading.Thread):
    """Polls Kamailio's core.shmmem; keeps the largest max_used seen (bytes)."""

    def __init__(self, rpc_path: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.rpc = KamailioRpc(str(rpc_path), timeout=1.0)
        self.interval = interval
        self.peak = None
        self.total = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.poll()
            self.stopped.wait(self.interval)

    def poll(self) -> None:
        try:
            result = self.rpc.call("core.shmmem")
        except RpcError:
            return
        self.peak = max(self.peak or 0, int(result["max_used"]))
        self.total = int(result["total"])

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.poll()  # the last word, after the calls ended


def router_command(setup: Setup, opts: argparse.Namespace, workdir: Path, port: int, callee_port: int, rpc: Path) -> list[str]:
    manager = opts.memory_manager or "qm"  # empty: Debian's Kamailio default
    if setup.mode in ("static", "native"):
        args = argparse.Namespace(kamailio=None, shm=opts.shm, pkg=opts.pkg, workers=opts.workers, log_level=1,
                                  listen=[f"udp:{ROUTER}:{port}"], rpc_socket=str(rpc), memory_manager=manager,
                                  max_transactions=1000, shm_reserve=None, retry_after=0, admit_interval=0)  # defines these configs ignore
        if setup.mode == "static":
            launch = Launch(config=STATIC_CONFIG, defines={"C4_BENCH_CALLEE": f'"sip:{CALLEE}:{callee_port}"'})
        else:
            launch = native_launch(bench_table(callee_port, setup.limits, opts.dids, opts.routes), workdir)
        return build_command(args, launch, workdir)
    table = workdir / "table.json"
    document = bench_table(callee_port, setup.limits, opts.dids, opts.routes)
    if not setup.name.endswith(BEFORE):  # a tree from before trunk health would refuse the field
        without_health(document)
    table.write_bytes(orjson.dumps(document))
    command = [sys.executable, "-m", "c4kemi.cli", "kamailio", "--mode", setup.mode, "--table", str(table),
               "--listen", f"udp:{ROUTER}:{port}", "--workers", str(opts.workers), "--shm", str(opts.shm),
               "--pkg", str(opts.pkg), "--log-level", "1", "--rpc-socket", str(rpc),
               "--secret-file", str(workdir / "secret"), "--memory-manager", manager]
    if setup.mode == "http":
        command += ["--serve-api", "--api", f"http://{ROUTER}:{free_port(socket.SOCK_STREAM, ROUTER)}"]
    return command + [arg.replace("{workdir}", str(workdir)) for arg in setup.args]


def native_launch(document: dict, workdir: Path) -> Launch:
    """kamailio-native.cfg on DOCUMENT: its db_text tables in WORKDIR/db, the keys c4 kamailio would take from its secret."""
    tables = write_tables(document, workdir / "db")
    return Launch(config=NATIVE_CONFIG, defines={
        "C4_NATIVE_DB": quoted(tables.db_url), "C4_NATIVE_MAX_ROWS": tables.max_rows,
        "C4_NATIVE_SUBNETS": max(1, tables.subnets),
        "C4_NATIVE_DID_MIN": tables.did_lengths[0], "C4_NATIVE_DID_MAX": tables.did_lengths[1],
        # Random per point, as c4 kamailio's deployment secret: the bench's calls never outlive it.
        "C4_DIALOG_KEY": quoted(secrets.token_hex(16)), "C4_UAC_PASSWD": quoted(secrets.token_hex(16))})


def start_callee(workdir: Path, port: int) -> subprocess.Popen:
    """The sipp callee (the bench trunk): answers every call, takes ACK and BYE."""
    return subprocess.Popen(
        ["sipp", "-sf", str(CALLEE_SCENARIO), "-i", CALLEE, "-p", str(port), "-nostdin", "-max_socket", "4096"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=workdir)


def start_caller(workdir: Path, port: int, rate: int, calls: int, limit: int, timeout_s: int) -> subprocess.Popen:
    """The sipp caller (the bench IPBX): CALLS calls at RATE to the router on PORT, at most LIMIT at once.

    Statistics are dumped every second (-fd 1), so they survive a caller
    that has to be stopped (see finished)."""
    return subprocess.Popen(
        ["sipp", "-sf", str(SCENARIO), "-i", CALLER, "-p", "0", "-s", CALLED,
         "-r", str(rate), "-m", str(calls), "-l", str(limit), "-nostdin",
         "-default_behaviors", "all,-abortunexp", "-trace_logs", "-trace_stat", "-fd", "1",
         "-timeout", str(timeout_s), f"{ROUTER}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=workdir)


def finished(caller: subprocess.Popen, timeout: float) -> bool:
    """Wait for the caller; False if it outlived TIMEOUT (sipp stuck past its own -timeout: seen at
    overload) and had to be stopped. Its unfinished calls then count as failed, not the whole run."""
    try:
        caller.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        stop(caller)
        return False


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_point(setup: Setup, kind: str, rate: int, duration: float, repetition: int, opts: argparse.Namespace) -> dict:
    calls = max(1, round(rate * duration))
    with tempfile.TemporaryDirectory(prefix=f"c4-bench-{setup.name}-") as tmp:
        workdir = Path(tmp)
        callee_port = free_port(socket.SOCK_DGRAM, CALLEE)
        port = free_port(socket.SOCK_DGRAM, ROUTER)
        rpc = workdir / "rpc.sock"
        log_path = workdir / "router.log"
        with open(log_path, "wb") as log:
            # python -m c4kemi.cli puts its working directory first on sys.path: a --before
            # setup runs its tree's c4kemi, which starts its tree's kamailio/ configs.
            router = subprocess.Popen(router_command(setup, opts, workdir, port, callee_port, rpc), stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=setup.tree or ROOT)
        callee = poller = None
        try:
            try:
                wait_options(port, router)
            except RuntimeError:
                sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
                raise
            code = router_code(router.pid, setup.tree or ROOT)
            callee = start_callee(workdir, callee_port)
            poller = ShmPoller(rpc)
            poller.start()
            time.sleep(0.5)
            cpu_before = cpu_seconds(router.pid)
            caller = start_caller(workdir, port, rate, calls, limit=rate * 10, timeout_s=int(duration) + 40)
            hung = not finished(caller, duration + 60)
            cpu_after = cpu_seconds(router.pid)
            poller.stop()
            exit_code = router.poll()
            log_text = log_path.read_bytes()
        finally:
            if poller is not None and poller.is_alive():
                poller.stop()
            if callee is not None:
                stop(callee)
            stop(router)
        stats = read_stat(workdir)
        calls_log = read_log(workdir)
    attempted, refused = stats.get("TotalCallCreated", 0), calls_log.refused
    completed = stats.get("SuccessfulCall(C)", 0) - refused
    # sipp's statistics are dumped every second (-fd 1); calls it never finished count as failed.
    failed = max(stats.get("FailedCall(C)", 0), attempted - completed - refused) if hung else stats.get("FailedCall(C)", 0)
    per_call = 1000 / max(1, attempted)
    cpu = {who: (cpu_after[who] - cpu_before[who]) * per_call for who in cpu_before}
    return {
        "setup": setup.name, "kind": kind, "rate": rate, "repetition": repetition, "duration_s": duration,
        "sipp_exit": caller.returncode, "sipp_hung": hung,
        "attempted": attempted, "completed": completed, "failed": failed, "refused": refused,
        "retransmissions": stats.get("Retransmissions(C)", 0),
        # Over the time the calls were really offered, should sipp have fallen behind the rate.
        "completed_cps": completed / max(duration, calls_log.sending_s), "sending_s": calls_log.sending_s,
        "setup_p50_ms": percentile(calls_log.setup_ms, 0.50), "setup_p99_ms": percentile(calls_log.setup_ms, 0.99),
        "cpu_kamailio_ms": cpu["kamailio"], "cpu_serve_ms": cpu["serve"] if setup.mode == "http" else None,
        "cpu_total_ms": cpu["kamailio"] + cpu["serve"],
        "shm_peak_mib": poller.peak / 2**20 if poller.peak else None,
        "shm_total_mib": poller.total / 2**20 if poller.total else None,
        "crashed": exit_code is not None or bool(CRASH_LOG.search(log_text)),
        "router_exit": exit_code,
        "config": code["config"], "python": code.get("python"),
    }


def router_code(pgid: int, tree: Path) -> dict:
    """The code a point's process group runs; RuntimeError unless it is TREE's.

    ``config``: the -f of Kamailio's command line; in KEMI mode ``python``:
    the first PYTHONPATH entry, where its embedded interpreter imports
    c4kemi. The processes started with ``-m c4kemi.cli`` (c4 kamailio, c4
    serve) import from their working directory, which must be TREE too.
    """
    tree, code, checked = tree.resolve(), {}, []
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit():
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            argv = [a.decode() for a in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")]
            if "c4kemi.cli" in argv:
                checked.append(os.readlink(f"/proc/{entry}/cwd"))
            if "config" in code or stat[stat.index("(") + 1:stat.rindex(")")] != "kamailio" or "-f" not in argv:
                continue
            env = dict(line.decode().partition("=")[::2] for line in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") if line)
        except (OSError, ValueError, IndexError):
            continue
        code["config"] = argv[argv.index("-f") + 1]
        if "PYTHONPATH" in env:
            code["python"] = env["PYTHONPATH"].split(os.pathsep)[0]
    if "config" not in code:
        raise RuntimeError(f"no Kamailio in process group {pgid}")
    for path in [*code.values(), *checked]:
        if not Path(path).resolve().is_relative_to(tree):
            raise RuntimeError(f"the router of process group {pgid} runs {path}, not code from {tree}")
    return code


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def read_stat(workdir: Path) -> dict:
    """The last line of sipp's -trace_stat CSV, as {column: int} for counters."""
    files = sorted(workdir.glob("uac_bench_*_.csv"))
    if not files:
        return {}
    lines = files[-1].read_text().splitlines()
    header, last = lines[0].split(";"), lines[-1].split(";")
    return {key: int(value) for key, value in zip(header, last) if value.isdigit()}


class CallLog(NamedTuple):
    answered: list[tuple[float, float]]  # per answered call: (INVITE sent, Unix time; setup time, ms)
    refused: int  # calls answered 503
    sending_s: float  # first to last INVITE sent: longer than asked when sipp fell behind

    @property
    def setup_ms(self) -> list[float]:
        return [ms for _, ms in self.answered]


def read_log(workdir: Path) -> CallLog:
    """What the caller scenario logged: "setup SENT_S SENT_US OK_S OK_US"
    (gettimeofday before the INVITE and at the 200), "refused SENT_S SENT_US" after a 503.
    """
    answered, refused, sent = [], 0, []
    for path in workdir.glob("uac_bench_*_logs.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "setup":
                sent_s, sent_us, ok_s, ok_us = map(float, parts[1:])
                answered.append((sent_s + sent_us / 1e6, (ok_s - sent_s) * 1000 + (ok_us - sent_us) / 1000))
            elif len(parts) == 3 and parts[0] == "refused":
                refused += 1
                sent_s, sent_us = map(float, parts[1:])
            else:
                continue
            sent.append(sent_s + sent_us / 1e6)
    return CallLog(answered, refused, max(sent) - min(sent) if sent else 0.0)


def show(point: dict) -> None:
    cpu = f"{point['cpu_total_ms']:.3f}" + (f" (serve {point['cpu_serve_ms']:.3f})" if point["cpu_serve_ms"] is not None else "")
    p50, p99, shm = point["setup_p50_ms"], point["setup_p99_ms"], point["shm_peak_mib"]
    print(f"{point['kind']:8} {point['setup']:12} {point['rate']:6}/s #{point['repetition']}: "
          f"{point['completed']}/{point['attempted']} completed, {point['failed']} failed, {point['refused']} refused, "
          f"{point['retransmissions']} retrans, setup p50 {p50 or 0:.2f} p99 {p99 or 0:.2f} ms, CPU/call {cpu} ms, "
          f"shm peak {shm or 0:.1f} MiB{', CRASHED' if point['crashed'] else ''}", flush=True)


def selected(opts: argparse.Namespace) -> list[Setup]:
    """The setups to run, in order; with --before, each c4 setup followed by the same setup from that tree."""
    setups = []
    for name in opts.setups:
        setups.append(SETUPS[name])
        if opts.before is not None and SETUPS[name].mode in C4_MODES:
            setups.append(replace(SETUPS[name], name=name + BEFORE, tree=opts.before))
    return setups


def run(opts: argparse.Namespace, points: list[dict], record) -> None:
    """The ladder, then the overload runs; RECORD(point) keeps each point as it is measured."""
    setups = selected(opts)
    climbing = {s.name: [] for s in setups}  # clean verdict per rate, for the stop rule
    for rate in opts.rates:
        active = [s for s in setups if not ladder_done(climbing[s.name])]
        if not active:
            break
        for repetition in range(1, opts.repetitions + 1):
            for setup in active:
                record(run_point(setup, "ladder", rate, opts.duration, repetition, opts))
        for row in rows(points, "ladder"):
            if row["rate"] == rate and row["setup"] in climbing:
                climbing[row["setup"]].append(row["clean"])
    ladder = rows(points, "ladder")
    for setup in setups:
        best = highest_clean_rate(ladder, setup.name)
        if best is None and opts.overload:
            print(f"overload  {setup.name}: no clean rate on the ladder, skipped", flush=True)
            continue
        for factor in opts.overload:
            record(run_point(setup, "overload", round(best * factor), opts.overload_duration, 1, opts) | {"factor": factor})


def python_name() -> str:
    """This interpreter as a command run from the checkout: .venv/bin/python, not an absolute path."""
    path = Path(sys.executable)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    kamailio = subprocess.run([kamailio_binary(None), "-v"], capture_output=True, text=True).stdout.splitlines()
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "kamailio": kamailio[0].removeprefix("version:").strip() if kamailio else "?",
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def tree_state(tree: Path) -> dict:
    """A checkout's path, commit and whether it has uncommitted changes to tracked files."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()

    return {"path": str(tree), "commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help=f"the whole ladder: {FULL}")
    parser.add_argument("--setups", help=f"comma-separated, of {', '.join(SETUPS)} (default {SHORT['setups']})")
    parser.add_argument("--rates", help=f"offered calls/s, rising (default {SHORT['rates']})")
    parser.add_argument("--repetitions", type=int, help=f"per rate and setup (default {SHORT['repetitions']})")
    parser.add_argument("--duration", type=float, help=f"seconds of calls per ladder point (default {SHORT['duration']})")
    parser.add_argument("--overload", default="1.5,2", help="factors of each setup's highest clean rate; empty: none")
    parser.add_argument("--overload-duration", type=float, help=f"seconds per overload point (default {SHORT['overload_duration']})")
    parser.add_argument("--memory-manager", default="tlsf", help="Kamailio memory manager for every setup (qm, fm, tlsf; empty: qm, the default of Debian's Kamailio)")
    parser.add_argument("--workers", type=int, default=4, help="Kamailio SIP workers")
    parser.add_argument("--shm", type=int, default=512, help="Kamailio shared memory, MiB")
    parser.add_argument("--pkg", type=int, default=32, help="Kamailio private memory per process, MiB")
    parser.add_argument("--dids", type=int, default=100_000)
    parser.add_argument("--routes", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help=f"another checkout of c4 (a git worktree of an older commit, with its own build link): each "
                             f"{' and '.join(C4_MODES)} setup also runs from it, as SETUP{BEFORE}, right after SETUP")
    opts = parser.parse_args(argv)
    defaults = FULL if opts.full else SHORT
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.setups = [name for name in str(opts.setups).split(",") if name]
    unknown = [name for name in opts.setups if name not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    if opts.before is not None:
        opts.before = opts.before.resolve()
        if not (opts.before / "c4kemi" / "cli.py").is_file() or not (opts.before / "kamailio").is_dir():
            parser.error(f"--before {opts.before}: not a c4 checkout (no c4kemi/cli.py or kamailio/)")
        if any(SETUPS[name].mode == "http" for name in opts.setups) and not (opts.before / "build" / "modules").is_dir():
            parser.error(f"--before {opts.before}: no build/modules for HTTP mode's http_async_client "
                         f"(link this checkout's: ln -s {ROOT / 'build'} {opts.before / 'build'})")
    opts.rates = [int(r) for r in str(opts.rates).split(",") if r]
    opts.overload = [float(f) for f in opts.overload.split(",") if f]
    return opts


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {started}: setups {','.join(s.name for s in selected(opts))}, rates {opts.rates}, {opts.repetitions} repetition(s) of "
          f"{opts.duration:g} s, overload {opts.overload} x {opts.overload_duration:g} s, memory manager "
          f"{opts.memory_manager or 'default'}, {opts.workers} workers, {opts.shm} MiB shm"
          + (f"; {BEFORE}: {opts.before}" if opts.before else ""), flush=True)
    results = {
        "date": started, "command": shlex.join([python_name(), "benchmarks/sip.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "options": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(opts).items()},
        # The code measured: this checkout, and --before's tree (SETUP@before).
        "trees": {"after": tree_state(ROOT), **({"before": tree_state(opts.before)} if opts.before else {})},
        "points": [],
    }
    points = results["points"]
    opts.out.parent.mkdir(parents=True, exist_ok=True)

    def record(point: dict) -> None:
        """Keep the point, and the file up to date: an interrupted run keeps what it measured."""
        points.append(point)
        show(point)
        opts.out.write_text(json.dumps(results, indent=1) + "\n")

    run(opts, points, record)
    print(f"{opts.out}: {len(points)} points; render with benchmarks/report.py", flush=True)
    ladder = rows(points, "ladder")
    for setup in (s.name for s in selected(opts)):
        print(f"{setup}: " + ", ".join(f"{r['rate']}/s {'clean' if r['clean'] else 'unclean'}" for r in ladder if r["setup"] == setup))


if __name__ == "__main__":
    main()
