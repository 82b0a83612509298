"""Trunk health (kamailio/kamailio-health.cfg): what probing costs, and what it saves in an outage.

    .venv/bin/python benchmarks/health.py [probing|outage] [--modes kemi,http] [--repeat N] [--duration S] [--rate R]

``probing``: 1,000 trunks, each its own target (a port of one responder
process answering OPTIONS with 200), calls at --rate (1,000/s) from the
bench IPBX (sipp) through the router to the bench trunk (sipp). Variants,
interleaved per repetition and mode: ``off`` (every trunk ``{"probe_interval":
0}``) and ``on`` (defaults: OPTIONS every 10 s).
After a warm-up in which every target gets its first probe, --duration s
idle, then --duration s under calls: CPU seconds per second of Kamailio (and
of its probe timer process), c4 serve and the helpers; the OPTIONS answered.

``outage``: the route tries trunk A (a UDP port that counts INVITEs and never
answers; fr_timer 2,000 ms), then the bench trunk. ``before``: A with
``{"probe_interval": 0, "down_after": 0}``; ``after``: the defaults. --duration
s (30) at --rate (500/s), A silent from the start: post-dial delay (INVITE to
the 200; the callee sends 180 and 200 together), the INVITEs A got. With
--fillers N, N trunks more in the table (never called, never probed).

Results: benchmarks/results/health.json, one key per measurement. sipp runs
on the same machine: compare the variants of one run, not runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sip  # noqa: E402  (benchmarks/sip.py: the router command, the sipp caller and callee, their logs)

from c4kemi.call.channels import KamailioRpc, RpcError  # noqa: E402
from c4kemi.call.health import health_report  # noqa: E402
from c4kemi.core.health import base_targets  # noqa: E402

OUT = sip.ROOT / "benchmarks" / "results" / "health.json"
RESPONDER, SILENT = "127.0.1.1", "127.0.1.2"  # the probed trunks' address; trunk A's
TRUNKS = 1000
PROBE_INTERVAL = 10  # c4kemi/core/health.py's default
VARIANTS = {"off": {"probe_interval": 0}, "on": None}  # a trunk's health object (None: defaults)
OUTAGE = {"before": {"probe_interval": 0, "down_after": 0}, "after": None}  # trunk A's
FR_TIMER_A = 2000
# Like sip.py's defaults; admission control high enough never to refuse here.
ROUTER_OPTS = argparse.Namespace(memory_manager="tlsf", shm=512, pkg=32, workers=4, dids=1000, routes=100)
ROUTER_ARGS = ("--max-transactions", "10000")


# ----- the peers -----

class Responder:
    """One process answering OPTIONS with 200 on COUNT UDP ports of ADDRESS; OPTIONS counted per port."""

    def __init__(self, address: str, count: int) -> None:
        self.sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
        for sock in self.sockets:
            sock.bind((address, 0))
        self.ports = [s.getsockname()[1] for s in self.sockets]
        context = multiprocessing.get_context("fork")
        self.answered = context.Array("L", count, lock=False)  # written by the child only
        self.process = context.Process(target=self.serve, daemon=True)
        self.process.start()
        for sock in self.sockets:
            sock.close()

    def serve(self) -> None:
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        while True:
            for key, _ in selector.select():
                try:
                    request, peer = key.fileobj.recvfrom(65535)
                except BlockingIOError:
                    continue
                if request.startswith(b"OPTIONS "):
                    key.fileobj.sendto(ok_reply(request), peer)
                    self.answered[key.data] += 1

    def counts(self) -> list[int]:
        return list(self.answered)

    def close(self) -> None:
        self.process.kill()
        self.process.join()


COPIED = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}


def ok_reply(request: bytes) -> bytes:
    """200 OK to a request: its Via, From, To (with a tag), Call-ID and CSeq lines."""
    lines = [b"SIP/2.0 200 OK"]
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in COPIED:
            if name in (b"to", b"t") and b";tag=" not in line:
                line += b";tag=c4-responder"
            lines.append(line)
    return b"\r\n".join([*lines, b"Content-Length: 0", b"", b""])


class SilentTrunk:
    """A UDP port that never answers; a thread counts the INVITEs it gets (packets, and distinct Call-IDs)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.invites, self.options, self.call_ids = 0, 0, set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.count, daemon=True)
        self.thread.start()

    def count(self) -> None:
        while not self.stopped.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            if packet.startswith(b"INVITE "):
                self.invites += 1
                for line in packet.split(b"\r\n"):
                    if line[:8].lower() == b"call-id:" or line[:2].lower() == b"i:":
                        self.call_ids.add(line.split(b":", 1)[1].strip())
            elif packet.startswith(b"OPTIONS "):
                self.options += 1

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


# ----- routing tables: sip.py's bench table, cut down -----

def base_table(callee_port: int) -> dict:
    """bench_table with only the bench IPBX and no DIDs; the bench IPBX and trunk never probed (sipp answers no OPTIONS)."""
    document = sip.bench_table(callee_port, False, ROUTER_OPTS.dids, ROUTER_OPTS.routes)
    document["ipbxs"] = [i for i in document["ipbxs"] if i["name"] == "bench-pbx"]
    document["dids"] = []
    document["ipbxs"][0]["health"] = {"probe_interval": 0}
    document["trunks"][-1]["health"] = {"probe_interval": 0}  # bench-trunk
    return document


def probing_table(callee_port: int, ports: list[int], health: dict | None) -> dict:
    """generate.py's 1,000 trunks, each to a port of the responder, with HEALTH."""
    document = base_table(callee_port)
    for trunk, port in zip(document["trunks"][:TRUNKS], ports, strict=True):
        trunk["target"] = f"sip:{RESPONDER}:{port}"
        if health is not None:
            trunk["health"] = health
    return document


def outage_table(callee_port: int, silent_port: int, health_a: dict | None, fillers: int) -> dict:
    """Trunk A (silent) then the bench trunk, for the bench route; FILLERS trunks more, never called nor probed."""
    document = base_table(callee_port)
    trunk_a = {"name": "trunk-a", "carrier": "carrier-t000", "target": f"sip:{SILENT}:{silent_port}",
               "sources": [f"{SILENT}/32"], "normalization": "it", "fr_timer": FR_TIMER_A}
    if health_a is not None:
        trunk_a["health"] = health_a
    document["trunks"] = [trunk_a, document["trunks"][-1]] + [
        {"name": f"filler-{k}", "carrier": "carrier-t000", "target": f"sip:127.0.1.3:{20000 + k}",
         "sources": [f"127.2.{k // 250}.{k % 250 + 1}/32"], "health": {"probe_interval": 0}} for k in range(fillers)]
    document["routes"] = [{"tenant": "t000", "prefix": sip.BENCH_ROUTE, "trunks": ["trunk-a", "bench-trunk"]}]
    return document


# ----- the router -----

class Router(NamedTuple):
    process: subprocess.Popen
    port: int
    rpc: KamailioRpc
    log: Path
    timer_pid: int | None  # the rtimer process running route[HEALTH_PROBE]


@contextmanager
def running_router(mode: str, document: dict, workdir: Path):
    """c4 kamailio (sip.py's command) on DOCUMENT, up and holding its health targets."""
    port, rpc_path, log_path = sip.free_port(socket.SOCK_DGRAM, sip.ROUTER), workdir / "rpc.sock", workdir / "router.log"
    command = sip.router_command(sip.Setup(mode, mode, args=ROUTER_ARGS), ROUTER_OPTS, workdir, port, 0, rpc_path)
    (workdir / "table.json").write_bytes(orjson.dumps(document))  # router_command wrote sip.py's table: ours instead
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=sip.ROOT)
    try:
        sip.wait_options(port, process)
        rpc = KamailioRpc(str(rpc_path), timeout=2.0)
        deadline = time.monotonic() + 60
        while not rpc.call("pv.shvGet", "c4_probe_epoch")["value"]:  # c4 health-sync has not handed the targets over yet
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"no health targets in Kamailio after 60 s; {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        timers = [p["PID"] for p in rpc.call("core.psx") if "c4health" in p["DSC"]]
        yield Router(process, port, rpc, log_path, timers[0] if timers else None)
    finally:
        sip.stop(process)


def node_cpu(router: Router) -> dict[str, float]:
    """utime + stime (s) of the router's process group: Kamailio (all; the probe timer), c4 serve, the helpers."""
    cpu = {"kamailio": 0.0, "probe_timer": 0.0, "serve": 0.0, "helpers": 0.0}
    for pid, comm, cmdline, seconds in sip.group_processes(router.process.pid):
        cpu["kamailio" if comm == "kamailio" else "serve" if b"serve" in cmdline else "helpers"] += seconds
        if pid == router.timer_pid:
            cpu["probe_timer"] += seconds
    return cpu


# ----- probing -----

def probing_point(mode: str, variant: str, repetition: int, responder: Responder, opts: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="c4-health-") as tmp:
        workdir = Path(tmp)
        callee_port = sip.free_port(socket.SOCK_DGRAM, sip.CALLEE)
        document = probing_table(callee_port, responder.ports, VARIANTS[variant])
        with running_router(mode, document, workdir) as router:
            time.sleep(PROBE_INTERVAL + 2)  # warm-up: every target's first probe is due within one interval

            def window(seconds: float) -> dict:
                """CPU per second over SECONDS; OPTIONS answered in all, and in the busiest second."""
                cpu, answered, started = node_cpu(router), responder.counts(), time.monotonic()
                per_second = [sum(answered)]
                while time.monotonic() < started + seconds:
                    time.sleep(min(1.0, started + seconds - time.monotonic()))
                    per_second.append(sum(responder.counts()))
                cpu_after, answered_after, wall = node_cpu(router), responder.counts(), time.monotonic() - started
                probed = [b - a for a, b in zip(answered, answered_after)]
                return {**{f"{k}_cpu_per_s": (cpu_after[k] - cpu[k]) / wall for k in cpu},
                        "node_cpu_per_s": sum(cpu_after[k] - cpu[k] for k in ("kamailio", "serve", "helpers")) / wall,
                        "options_per_s": sum(probed) / wall, "targets_probed": sum(1 for n in probed if n),
                        "options_busiest_second": max(b - a for a, b in zip(per_second, per_second[1:]))}

            idle = window(opts.duration)
            callee = sip.start_callee(workdir, callee_port)
            try:
                calls = round(opts.rate * (opts.duration + 4))
                caller = sip.start_caller(workdir, router.port, opts.rate, calls, limit=opts.rate * 10, timeout_s=int(opts.duration) + 40)
                time.sleep(2)
                loaded = window(opts.duration)
                hung = not sip.finished(caller, opts.duration + 60)
            finally:
                sip.stop(callee)
            try:
                report = health_report(router.rpc, base_targets(document), detail=False)
                health = {"targets": len(report), "down": sum(e["state"] == "down" for e in report)}
            except RpcError as exc:
                health = {"error": str(exc)[:90]}
            runaway, crashed = router.log.read_bytes().count(b"runaway while"), router.process.poll() is not None
        stats, log = sip.read_stat(workdir), sip.read_log(workdir)
    return {"mode": mode, "variant": variant, "repetition": repetition, "idle": idle, "loaded": loaded,
            "attempted": stats.get("TotalCallCreated", 0), "failed": stats.get("FailedCall(C)", 0), "refused": log.refused,
            "sipp_hung": hung, "setup_p50_ms": sip.percentile(log.setup_ms, 0.5),
            "setup_p99_ms": sip.percentile(log.setup_ms, 0.99), "runaway_while_errors": runaway,
            "health_report": health, "router_exited": crashed}


# Summarised per mode and variant: medians over repetitions; *_minus_off: the median of each
# repetition's difference to its off point (run a minute before or after it).
MEDIANS = [("loaded", k) for k in ("kamailio_cpu_per_s", "probe_timer_cpu_per_s", "serve_cpu_per_s", "helpers_cpu_per_s",
                                   "node_cpu_per_s", "options_per_s", "options_busiest_second", "targets_probed")]
MEDIANS += [("idle", "kamailio_cpu_per_s"), ("idle", "node_cpu_per_s"), ("idle", "options_per_s")]
DIFFERENCES = [("loaded", "kamailio_cpu_per_s"), ("loaded", "node_cpu_per_s"), ("idle", "kamailio_cpu_per_s"), ("idle", "node_cpu_per_s")]


def probing_summary(points: list[dict], modes: list[str]) -> list[dict]:
    rows = []
    for mode in modes:
        by = {v: [p for p in points if p["mode"] == mode and p["variant"] == v] for v in VARIANTS}
        for variant, runs in by.items():
            if not runs or not by["off"]:
                continue
            row = {"mode": mode, "variant": variant, "repetitions": len(runs)}
            for phase, key in MEDIANS:
                row[f"{phase}_{key}"] = statistics.median(r[phase][key] for r in runs)
            for phase, key in DIFFERENCES:
                row[f"{phase}_{key}_minus_off"] = statistics.median(r[phase][key] - o[phase][key] for r, o in zip(runs, by["off"]))
            off_node = statistics.median(o["loaded"]["node_cpu_per_s"] for o in by["off"])
            row["loaded_node_minus_off_share"] = row["loaded_node_cpu_per_s_minus_off"] / off_node
            for key in ("setup_p50_ms", "setup_p99_ms", "runaway_while_errors"):
                row[key] = statistics.median(r[key] or 0 for r in runs)
            row |= {"failed_calls": sum(r["failed"] for r in runs), "refused_calls": sum(r["refused"] for r in runs)}
            rows.append(row)
    return rows


def measure_probing(opts: argparse.Namespace, record) -> None:
    responder = Responder(RESPONDER, TRUNKS)
    try:
        for repetition in range(1, opts.repeat + 1):
            for mode in opts.modes:
                for variant in VARIANTS:
                    point = probing_point(mode, variant, repetition, responder, opts)
                    record(point)
                    idle, loaded = point["idle"], point["loaded"]
                    print(f"{mode} {variant:8} #{repetition}: Kamailio {idle['kamailio_cpu_per_s']:.3f} CPU-s/s idle, "
                          f"{loaded['kamailio_cpu_per_s']:.3f} loaded; OPTIONS {loaded['options_per_s']:.1f}/s to "
                          f"{loaded['targets_probed']} targets; {point['failed']} failed calls", flush=True)
    finally:
        responder.close()


# ----- outage -----

def outage_point(mode: str, variant: str, repetition: int, opts: argparse.Namespace) -> dict:
    silent = SilentTrunk(SILENT)
    with tempfile.TemporaryDirectory(prefix="c4-health-") as tmp:
        workdir = Path(tmp)
        callee_port = sip.free_port(socket.SOCK_DGRAM, sip.CALLEE)
        with running_router(mode, outage_table(callee_port, silent.port, OUTAGE[variant], opts.fillers), workdir) as router:
            callee = sip.start_callee(workdir, callee_port)
            try:
                caller = sip.start_caller(workdir, router.port, opts.rate, round(opts.rate * opts.duration),
                                      limit=opts.rate * 10, timeout_s=int(opts.duration) + 40)
                hung = not sip.finished(caller, opts.duration + 60)
            finally:
                sip.stop(callee)
            a_down = htable_value(router.rpc, "c4down", f"sip:{SILENT}:{silent.port}")
            targets_down = router.rpc.call("pv.shvGet", "c4_down")["value"]  # what the call path looks at
        stats, log = sip.read_stat(workdir), sip.read_log(workdir)
    silent.close()
    first = min((sent for sent, _ in log.answered), default=0.0)
    slow = [sent - first for sent, ms in log.answered if ms > FR_TIMER_A / 2]  # calls that waited for trunk A
    return {"mode": mode, "variant": variant, "repetition": repetition, "fillers": opts.fillers, "answered": len(log.answered),
            "pdd_p50_ms": sip.percentile(log.setup_ms, 0.5), "pdd_p99_ms": sip.percentile(log.setup_ms, 0.99),
            "pdd_max_ms": max(log.setup_ms, default=None), "slow_calls": len(slow), "last_slow_call_s": max(slow, default=None),
            "invites_to_a": silent.invites, "calls_to_a": len(silent.call_ids), "options_to_a": silent.options,
            "attempted": stats.get("TotalCallCreated", 0), "failed": stats.get("FailedCall(C)", 0), "refused": log.refused,
            "sipp_hung": hung, "a_state": "down" if a_down == 1 else "up", "c4_down_at_end": targets_down}


def htable_value(rpc: KamailioRpc, table: str, key: str) -> object:
    try:
        return rpc.call("htable.get", table, key)["item"]["value"]
    except RpcError:  # no such key
        return None


def measure_outage(opts: argparse.Namespace, record) -> None:
    for repetition, mode, variant in itertools.product(range(1, opts.repeat + 1), opts.modes, OUTAGE):
        point = outage_point(mode, variant, repetition, opts)
        record(point)
        print(f"{mode} {variant:6} #{repetition}: PDD p50 {point['pdd_p50_ms'] or 0:.1f} ms, p99 {point['pdd_p99_ms'] or 0:.1f} ms; "
              f"{point['slow_calls']} calls waited for A (the last {point['last_slow_call_s'] or 0:.1f} s in); "
              f"A got {point['invites_to_a']} INVITEs ({point['calls_to_a']} calls), {point['options_to_a']} OPTIONS, state "
              f"{point['a_state']} (c4_down {point['c4_down_at_end']}); {point['failed']} failed, {point['refused']} refused "
              f"of {point['attempted']}", flush=True)


# ----- main -----

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurement", choices=("probing", "outage"))
    parser.add_argument("--modes", default="kemi,http", help="comma-separated: kemi, http")
    parser.add_argument("--repeat", type=int, help="repetitions of the variants per mode (probing: 3; outage: 1)")
    parser.add_argument("--fillers", type=int, default=0, help="outage: this many trunks more in the table, never called")
    parser.add_argument("--duration", type=float, help="seconds of calls per point (probing: 20, also idle; outage: 30)")
    parser.add_argument("--rate", type=int, help="calls/s (probing: 1000; outage: 500)")
    parser.add_argument("--out", type=Path, default=OUT)
    opts = parser.parse_args(argv)
    opts.modes = [m for m in opts.modes.split(",") if m]
    if any(m not in ("kemi", "http") for m in opts.modes):
        parser.error("--modes: kemi, http")
    probing = opts.measurement == "probing"
    opts.duration = opts.duration or (20.0 if probing else 30.0)
    opts.rate = opts.rate or (1000 if probing else 500)
    opts.repeat = opts.repeat or (3 if probing else 1)
    return opts


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = json.loads(opts.out.read_text()) if opts.out.exists() else {}
    key = opts.measurement + (f"+{opts.fillers}-fillers" if opts.fillers else "")
    run = results[key] = {
        "date": started, "command": shlex.join([sip.python_name(), "benchmarks/health.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": sip.machine(), "tree": sip.tree_state(sip.ROOT), "load_average_start": os.getloadavg(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}, "points": []}
    print(f"# {started}: {opts.measurement}, modes {','.join(opts.modes)}, {opts.rate} calls/s, {opts.duration:g} s", flush=True)

    def record(point: dict) -> None:
        run["points"].append(point)
        run["load_average_end"] = os.getloadavg()
        if opts.measurement == "probing":
            run["summary"] = probing_summary(run["points"], opts.modes)
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(results, indent=1) + "\n")

    if opts.measurement == "probing":
        measure_probing(opts, record)
        for r in run["summary"]:
            print(f"{r['mode']} {r['variant']:8}: Kamailio {r['loaded_kamailio_cpu_per_s']:.3f} CPU-s/s (timer "
                  f"{r['loaded_probe_timer_cpu_per_s']:.4f}), node {r['loaded_node_cpu_per_s']:.3f}, minus off "
                  f"{r['loaded_node_cpu_per_s_minus_off']:+.4f} ({r['loaded_node_minus_off_share']:+.1%} of the node); idle "
                  f"Kamailio {r['idle_kamailio_cpu_per_s']:.4f} ({r['idle_kamailio_cpu_per_s_minus_off']:+.4f}); OPTIONS "
                  f"{r['loaded_options_per_s']:.1f}/s to {r['loaded_targets_probed']:g} targets, busiest second "
                  f"{r['loaded_options_busiest_second']:g}; setup p99 {r['setup_p99_ms']:.1f} ms; {r['failed_calls']} failed calls")
    else:
        measure_outage(opts, record)
    print(f"{opts.out}: {len(run['points'])} points")


if __name__ == "__main__":
    main()
