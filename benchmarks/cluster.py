"""Cluster benchmark: two c4 nodes with and without DMQ, what replication costs and how well shared limits hold.

    .venv/bin/python benchmarks/cluster.py [cost] [channels] [cps] [--modes kemi,http] [--repetitions 3]
        [--rate 150] [--duration 15] [--max-channels 20] [--hold 4] [--channels-rate 10] [--ring 0]
        [--max-cps 20] [--cps-rate 25] [--out benchmarks/results/cluster.json] [--key KEY]

Two ``c4 kamailio`` nodes on 127.0.2.1 and 127.0.2.2 (the same SIP port,
one deployment secret, each its own state directory and RPC socket), as in
tests/e2e/test_cluster.py. Each node has its own sipp caller (the bench
IPBX, benchmarks/sip.py's caller scenario) carrying half of the load; one
sipp callee is the trunk both route to. Variants, alternating within each
repetition so the drift of a noisy machine hits both alike: ``single``, the
two nodes independent (no --cluster-node), and ``cluster``, the same nodes
with --cluster-node/--cluster-peer (dialogs and the call-rate htable
replicated over DMQ).

``cost``: full calls (INVITE, 180, 200, ACK, 100 ms, BYE) at --rate calls/s
per node for --duration s, the table of sip.py's ``kemi-limits`` (channel
and call-rate limits too high ever to refuse, so each call joins the
profiles and counts its second). Kamailio CPU seconds of both nodes per
completed call, setup time p50/p99, failed calls.

``channels``: the trunk with --max-channels, calls held --hold s offered at
--channels-rate calls/s per node, more than the trunk may carry; a second
trunk (its own sipp callee) takes the calls skipped for the limit. Each
node's count of the trunk's channels (``dlg.profile_get_size c4_trunk``
over its RPC socket) is sampled every 50 ms, and the trunk's callee logs
each INVITE and BYE, so the channels really open on the trunk are known at
each sample too. --ring MS: the trunk answers MS after its 180.

``cps``: the trunk with --max-cps, short calls at --cps-rate calls/s per
node: the INVITEs the trunk got in each second of the clock.

After every run both nodes must count no call (``leftover`` otherwise).
Results: benchmarks/results/cluster.json. Everything runs on one machine:
compare the variants of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sip  # noqa: E402  (benchmarks/sip.py: the router command, sipp's logs, CPU from /proc)

from c4kemi.call.channels import KamailioRpc, RpcError  # noqa: E402
from c4kemi.node.secret import load_or_create  # noqa: E402

OUT = sip.ROOT / "benchmarks" / "results" / "cluster.json"
NODES = ("127.0.2.1", "127.0.2.2")
OVERFLOW = "127.0.0.3"  # the second trunk's callee; the bench trunk's is sip.CALLEE
TRUNK, OVERFLOW_TRUNK = "bench-trunk", "overflow-trunk"
VARIANTS = ("single", "cluster")
MEASUREMENTS = ("cost", "channels", "cps")
# Like health.py's: a small table (the decision is not measured here), sip.py's memory and workers.
ROUTER_OPTS = argparse.Namespace(memory_manager="tlsf", shm=256, pkg=32, workers=4, dids=1000, routes=100)
ROUTER_ARGS = ("--max-transactions", "10000")
SAMPLE_INTERVAL = 0.05


# ----- the nodes -----

class Node(NamedTuple):
    number: int
    address: str
    process: subprocess.Popen
    rpc: KamailioRpc
    log: Path


def free_port_on_both() -> int:
    """A UDP port free on both node addresses."""
    while True:
        port = sip.free_port(socket.SOCK_DGRAM, NODES[0])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((NODES[1], port))
            return port
        except OSError:
            continue


def node_command(mode: str, number: int, clustered: bool, workdir: Path, port: int, dmq_port: int) -> list[str]:
    """sip.py's c4 kamailio command, on this node's address, with its own state and, clustered, the cluster's options."""
    address, peer = NODES[number - 1], NODES[2 - number]
    args = [*ROUTER_ARGS, "--state-dir", str(workdir / f"state-{number}"), "--node-name", f"node-{number}"]
    if clustered:
        args += ["--cluster-node", str(number), "--cluster-peer", peer, "--cluster-port", str(dmq_port)]
    setup = sip.Setup(mode, mode, args=tuple(args))
    command = sip.router_command(setup, ROUTER_OPTS, workdir, port, 0, workdir / f"rpc-{number}.sock")
    command[command.index(f"udp:{sip.ROUTER}:{port}")] = f"udp:{address}:{port}"
    return command


@contextmanager
def running_nodes(mode: str, clustered: bool, document: dict, workdir: Path):
    """Both nodes on DOCUMENT, answering RPC and, clustered, each seeing the other; stopped on exit."""
    port, dmq_port = free_port_on_both(), free_port_on_both()
    commands = [node_command(mode, n, clustered, workdir, port, dmq_port) for n in (1, 2)]
    (workdir / "table.json").write_bytes(orjson.dumps(document))  # router_command wrote sip.py's table: ours instead
    load_or_create(workdir / "secret")  # one secret for both, before either starts
    nodes = []
    try:
        for number, command in enumerate(commands, 1):
            log = workdir / f"node-{number}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True, cwd=sip.ROOT)
            nodes.append(Node(number, NODES[number - 1], process, KamailioRpc(str(workdir / f"rpc-{number}.sock"), 2.0), log))
        for node in nodes:
            wait_ready(node, clustered)
        yield nodes, port
    finally:
        for node in nodes:
            sip.stop(node.process)


def wait_ready(node: Node, clustered: bool, timeout: float = sip.START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and node.process.poll() is None:
        try:
            if not clustered and node.rpc.call("core.uptime"):
                return
            if clustered and sum(n.get("status") == "active" for n in node.rpc.call("dmq.list_nodes")) == 2:
                return
        except RpcError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"node {node.number} not ready (exit code {node.process.poll()}): {node.log.read_text()[-3000:]}")


def node_cpu(nodes: list[Node]) -> dict[str, float]:
    """utime + stime (s) of both nodes' process groups: Kamailio, c4 serve, the helpers (cluster-watch ...)."""
    cpu = {"kamailio": 0.0, "serve": 0.0, "helpers": 0.0}
    for node in nodes:
        for _, comm, cmdline, seconds in sip.group_processes(node.process.pid):
            cpu["kamailio" if comm == "kamailio" else "serve" if b"serve" in cmdline else "helpers"] += seconds
    return cpu


def sip_messages(nodes: list[Node]) -> dict[str, int]:
    """Both nodes' core counters of SIP messages received (KDMQ, the cluster's bus, is SIP too)."""
    total = {"rcv_requests": 0, "rcv_replies": 0}
    for node in nodes:
        for line in node.rpc.call("stats.get_statistics", "core:"):
            name, _, value = str(line).partition(" = ")
            if name.removeprefix("core:") in total:
                total[name.removeprefix("core:")] += int(value)
    return total


def profile_size(rpc: KamailioRpc, profile: str, value: str | None = None) -> int:
    result = rpc.call("dlg.profile_get_size", profile, *([value] if value else []))
    return int(result.get("count", 0)) if isinstance(result, dict) else int(result or 0)


def leftover(nodes: list[Node], timeout: float = 10.0) -> dict:
    """Each node's calls once both count none, or after TIMEOUT; the seconds that took."""
    started = time.monotonic()
    while True:
        counts = {f"node-{n.number}": profile_size(n.rpc, "c4_tenant") for n in nodes}
        if not any(counts.values()):
            return {"calls": counts, "seconds_to_zero": round(time.monotonic() - started, 2)}
        if time.monotonic() - started > timeout:
            return {"calls": counts, "seconds_to_zero": None, "dialogs": {f"node-{n.number}": left_dialogs(n.rpc) for n in nodes}}
        time.sleep(0.1)


def left_dialogs(rpc: KamailioRpc, most: int = 5) -> list[dict]:
    """What Kamailio knows of the dialogs it still holds (dlg.list), at most MOST of them."""
    try:
        return (rpc.call("dlg.list") or [])[:most]
    except RpcError as exc:
        return [{"error": str(exc)[:200]}]


def crashed(nodes: list[Node]) -> bool:
    return any(n.process.poll() is not None or sip.CRASH_LOG.search(n.log.read_bytes()) for n in nodes)


# ----- the tables -----

def cost_table(callee_port: int) -> dict:
    return sip.without_health(sip.bench_table(callee_port, True, ROUTER_OPTS.dids, ROUTER_OPTS.routes))


def limits_table(callee_port: int, overflow_port: int, limits: dict) -> dict:
    """The bench trunk with LIMITS, then a second trunk (no limit) for the calls it skips."""
    document = sip.bench_table(callee_port, False, ROUTER_OPTS.dids, ROUTER_OPTS.routes)
    document["trunks"][-1].update(limits)
    document["trunks"].append({"name": OVERFLOW_TRUNK, "carrier": "carrier-t000", "target": f"sip:{OVERFLOW}:{overflow_port}",
                               "sources": [f"{OVERFLOW}/32"], "normalization": "it"})
    for route in document["routes"]:
        if (route["tenant"], route["prefix"]) == ("t000", sip.BENCH_ROUTE):
            route["trunks"] = [TRUNK, OVERFLOW_TRUNK]
    return sip.without_health(document)


# ----- sipp -----

def start_sipp(workdir: Path, args: list) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["sipp", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=workdir)


def derived(source: Path, target: Path, changes: list[tuple[str, str]]) -> Path:
    """SOURCE with each (old, new) replaced once, written to TARGET."""
    text = source.read_text()
    for old, new in changes:
        if old not in text:
            raise RuntimeError(f"{source}: no {old!r} to change")
        text = text.replace(old, new, 1)
    target.write_text(text)
    return target


def start_caller(workdir: Path, node: str, port: int, rate: float, calls: int, hold_ms: int) -> subprocess.Popen:
    """sip.start_caller towards NODE, calls held HOLD_MS (sip.py's scenario holds 100 ms); logs in WORKDIR as sip.read_log reads them."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = derived(sip.SCENARIO, workdir / "uac_bench.xml",
                       [('<pause milliseconds="100"/>', f'<pause milliseconds="{hold_ms}"/>')])
    limit = max(50, round(rate * (hold_ms / 1000 + 10)))
    return start_sipp(workdir, ["-sf", scenario, "-i", sip.CALLER, "-p", 0, "-s", sip.CALLED, "-r", f"{rate:g}", "-m", calls,
                                "-l", limit, "-nostdin", "-default_behaviors", "all,-abortunexp", "-trace_logs",
                                "-trace_stat", "-fd", 1, "-timeout", round(calls / rate + hold_ms / 1000 + 40), f"{node}:{port}"])


STAMP = '<nop><action><gettimeofday assign_to="t_s,t_us"/><log message="{} [$t_s] [$t_us] [call_number]"/></action></nop>'


def start_trunk(workdir: Path, address: str, port: int, ring_ms: int) -> subprocess.Popen:
    """The sip.py callee on ADDRESS:PORT, logging each INVITE's and BYE's arrival (Unix time); the 200 RING_MS after the 180."""
    workdir.mkdir(parents=True, exist_ok=True)
    invite, bye = '<recv request="INVITE" rrs="true"/>', '<recv request="BYE" timeout="10000"/>'
    changes = [(invite, invite + STAMP.format("invite")), (bye, bye + STAMP.format("bye"))]
    if ring_ms:
        changes.append(('<send retrans="500">', f'<pause milliseconds="{ring_ms}"/>\n  <send retrans="500">'))
    scenario = derived(sip.CALLEE_SCENARIO, workdir / "trunk.xml", changes)
    return start_sipp(workdir, ["-sf", scenario, "-i", address, "-p", port, "-nostdin", "-max_socket", 4096, "-trace_logs"])


def trunk_calls(workdir: Path) -> list[tuple[float, float | None]]:
    """(INVITE arrival, BYE arrival or None) of each call the trunk's callee got."""
    calls: dict[str, list] = {}
    for path in workdir.glob("trunk_*_logs.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] in ("invite", "bye"):
                at = float(parts[1]) + float(parts[2]) / 1e6
                calls.setdefault(parts[3], [None, None])[parts[0] == "bye"] = at
    return [(invite, bye) for invite, bye in calls.values() if invite is not None]


def caller_results(workdirs: list[Path]) -> dict:
    """Both callers' calls: attempted, completed, failed, refused (503); setup times; when INVITEs were sent."""
    stats = [sip.read_stat(w) for w in workdirs]
    logs = [sip.read_log(w) for w in workdirs]
    refused = sum(log.refused for log in logs)
    setup_ms = [ms for log in logs for ms in log.setup_ms]
    return {"attempted": sum(s.get("TotalCallCreated", 0) for s in stats),
            "completed": sum(s.get("SuccessfulCall(C)", 0) for s in stats) - refused,
            "failed": sum(s.get("FailedCall(C)", 0) for s in stats), "refused": refused,
            "retransmissions": sum(s.get("Retransmissions(C)", 0) for s in stats),
            "setup_p50_ms": sip.percentile(setup_ms, 0.5), "setup_p99_ms": sip.percentile(setup_ms, 0.99),
            "sending_s": max(log.sending_s for log in logs)}


def wait_callers(callers: list[subprocess.Popen], timeout: float) -> bool:
    """True if every caller ended by itself (sip.finished stops one that did not)."""
    deadline = time.monotonic() + timeout
    return all([sip.finished(c, max(1.0, deadline - time.monotonic())) for c in callers])


# ----- cost -----

def cost_point(mode: str, variant: str, repetition: int, opts: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="c4cl-") as tmp:
        workdir = Path(tmp)
        callee_port = sip.free_port(socket.SOCK_DGRAM, sip.CALLEE)
        with running_nodes(mode, variant == "cluster", cost_table(callee_port), workdir) as (nodes, port), ExitStack() as peers:
            callee = sip.start_callee(workdir, callee_port)
            peers.callback(sip.stop, callee)
            time.sleep(0.5)
            calls = round(opts.rate * opts.duration)
            cpu_before, messages_before, started = node_cpu(nodes), sip_messages(nodes), time.monotonic()
            callers = [start_caller(workdir / f"caller-{n.number}", n.address, port, opts.rate, calls, 100) for n in nodes]
            clean_exit = wait_callers(callers, opts.duration + 60)
            cpu_after, wall = node_cpu(nodes), time.monotonic() - started
            messages = {k: v - messages_before[k] for k, v in sip_messages(nodes).items()}
            left, broke = leftover(nodes), crashed(nodes)
        result = caller_results([workdir / f"caller-{n}" for n in (1, 2)])
    cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
    per_call = 1000 / max(1, result["completed"])
    return {"measurement": "cost", "mode": mode, "variant": variant, "repetition": repetition, "rate_per_node": opts.rate,
            "duration_s": opts.duration, **result, "sipp_hung": not clean_exit, "wall_s": round(wall, 2),
            "cpu_kamailio_s": cpu["kamailio"], "cpu_serve_s": cpu["serve"], "cpu_helpers_s": cpu["helpers"],
            "kamailio_ms_per_call": cpu["kamailio"] * per_call,
            "node_ms_per_call": sum(cpu.values()) * per_call,
            "messages_received_per_call": {k: v / max(1, result["completed"]) for k, v in messages.items()}, "leftover": left, "crashed": broke}


def cost_summary(points: list[dict], modes: list[str]) -> list[dict]:
    """Per mode and variant: medians over repetitions; cluster/single of each repetition's pair, then its median."""
    rows = []
    for mode in modes:
        by = {v: [p for p in points if p["measurement"] == "cost" and p["mode"] == mode and p["variant"] == v] for v in VARIANTS}
        for variant, runs in by.items():
            if not runs:
                continue
            row = {"mode": mode, "variant": variant, "repetitions": len(runs)}
            for key in ("kamailio_ms_per_call", "node_ms_per_call", "setup_p50_ms", "setup_p99_ms"):
                row[key] = statistics.median(r[key] or 0 for r in runs)
            row |= {"completed": sum(r["completed"] for r in runs), "failed": sum(r["failed"] for r in runs),
                    "refused": sum(r["refused"] for r in runs), "leftover_runs": sum(any(r["leftover"]["calls"].values()) for r in runs),
                    "crashed_runs": sum(r["crashed"] for r in runs)}
            pairs = list(zip(runs, by["single"]))
            if variant == "cluster" and pairs:
                row["kamailio_ratio_to_single"] = statistics.median(c["kamailio_ms_per_call"] / s["kamailio_ms_per_call"] for c, s in pairs)
                row["node_ratio_to_single"] = statistics.median(c["node_ms_per_call"] / s["node_ms_per_call"] for c, s in pairs)
            rows.append(row)
    return rows


# ----- limits -----

class Sampler(threading.Thread):
    """Every SAMPLE_INTERVAL: (Unix time, each node's count of the trunk's channels)."""

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__(daemon=True)
        self.rpcs = [KamailioRpc(n.rpc.path, 1.0) for n in nodes]  # its own clients: no lock shared with the main thread
        self.samples: list[tuple[float, ...]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            at = time.time()
            try:
                self.samples.append((at, *(profile_size(rpc, "c4_trunk", TRUNK) for rpc in self.rpcs)))
            except RpcError:
                pass
            self.stopped.wait(max(0.0, at + SAMPLE_INTERVAL - time.time()))

    def stop(self) -> list[tuple[float, ...]]:
        self.stopped.set()
        self.join()
        return self.samples


def open_at(calls: list[tuple[float, float | None]], at: float) -> int:
    """Calls open on the trunk at AT: INVITE arrived, no BYE yet."""
    return sum(1 for invite, bye in calls if invite <= at and (bye is None or bye > at))


def limits_point(kind: str, mode: str, variant: str, repetition: int, opts: argparse.Namespace) -> dict:
    """One channels or cps run: both nodes, both callers, the limited trunk and the overflow trunk."""
    if kind == "channels":
        limits, rate, hold_ms, ring_ms = {"max_channels": opts.max_channels}, opts.channels_rate, round(opts.hold * 1000), opts.ring
    else:
        limits, rate, hold_ms, ring_ms = {"max_cps": opts.max_cps}, opts.cps_rate, 100, 0
    calls = round(rate * opts.limits_duration)
    with tempfile.TemporaryDirectory(prefix="c4cl-") as tmp:
        workdir = Path(tmp)
        trunk_port, overflow_port = sip.free_port(socket.SOCK_DGRAM, sip.CALLEE), sip.free_port(socket.SOCK_DGRAM, OVERFLOW)
        document = limits_table(trunk_port, overflow_port, limits)
        with running_nodes(mode, variant == "cluster", document, workdir) as (nodes, port), ExitStack() as peers:
            for address, peer_port, name in ((sip.CALLEE, trunk_port, "trunk"), (OVERFLOW, overflow_port, "overflow")):
                peers.callback(sip.stop, start_trunk(workdir / name, address, peer_port, ring_ms))
            time.sleep(0.5)
            sampler = Sampler(nodes)
            sampler.start()
            callers = [start_caller(workdir / f"caller-{n.number}", n.address, port, rate, calls, hold_ms) for n in nodes]
            clean_exit = wait_callers(callers, opts.limits_duration + hold_ms / 1000 + 60)
            samples = sampler.stop()
            left, broke = leftover(nodes), crashed(nodes)
        result = caller_results([workdir / f"caller-{n}" for n in (1, 2)])
        trunk, overflow = trunk_calls(workdir / "trunk"), trunk_calls(workdir / "overflow")
    point = {"measurement": kind, "mode": mode, "variant": variant, "repetition": repetition, "limits": limits,
             "rate_per_node": rate, "hold_ms": hold_ms, "ring_ms": ring_ms, "duration_s": opts.limits_duration,
             **result, "sipp_hung": not clean_exit, "to_trunk": len(trunk), "to_overflow": len(overflow),
             "leftover": left, "crashed": broke}
    if kind == "channels":
        return point | channel_accuracy(samples, trunk, opts.max_channels, hold_ms + ring_ms)
    return point | rate_accuracy(trunk, opts.max_cps)


def channel_accuracy(samples: list[tuple[float, ...]], trunk: list, limit: int, held_ms: int) -> dict:
    """Peaks and shares of samples above LIMIT: each node's count, their sum, the calls open on the trunk.

    The shares are over the saturated window: from one call's length after
    the first INVITE reached the trunk to the last INVITE (the offered load
    is at its full height there, the trunk should be at its limit)."""
    first, last = min(i for i, _ in trunk), max(i for i, _ in trunk)
    window = [s for s in samples if first + held_ms / 1000 <= s[0] <= last]
    series = {"node-1": [s[1] for s in samples], "node-2": [s[2] for s in samples], "sum": [s[1] + s[2] for s in samples],
              "trunk": [open_at(trunk, s[0]) for s in samples]}
    in_window = {"node-1": [s[1] for s in window], "node-2": [s[2] for s in window], "sum": [s[1] + s[2] for s in window],
                 "trunk": [open_at(trunk, s[0]) for s in window]}
    return {"samples": len(samples), "window_samples": len(window),
            "peak": {k: max(v, default=None) for k, v in series.items()},
            "median_in_window": {k: statistics.median(v) if v else None for k, v in in_window.items()},
            "share_above_limit": {k: sum(x > limit for x in v) / len(v) if v else None for k, v in in_window.items()},
            "nodes_disagree_share": sum(s[1] != s[2] for s in window) / len(window) if window else None,
            "nodes_max_difference": max((abs(s[1] - s[2]) for s in samples), default=None)}


def rate_accuracy(trunk: list, limit: int) -> dict:
    """INVITEs the trunk got per second of the clock, whole seconds only (not the first and last)."""
    seconds = [int(invite) for invite, _ in trunk]
    if not seconds:
        return {"per_second": []}
    per_second = [seconds.count(s) for s in range(min(seconds) + 1, max(seconds))]
    return {"per_second": per_second, "max_per_second": max(per_second, default=None),
            "median_per_second": statistics.median(per_second) if per_second else None,
            "seconds_above_limit": sum(n > limit for n in per_second)}


def show(point: dict) -> None:
    head = f"{point['measurement']:8} {point['mode']} {point['variant']:7} #{point['repetition']}: "
    calls = (f"{point['completed']}/{point['attempted']} completed, {point['failed']} failed, {point['refused']} refused, "
             f"setup p50 {point['setup_p50_ms'] or 0:.1f} p99 {point['setup_p99_ms'] or 0:.1f} ms")
    tail = f"; leftover {point['leftover']['calls']}" + (", CRASHED" if point["crashed"] else "")
    if point["measurement"] == "cost":
        body = (f"{calls}; Kamailio {point['kamailio_ms_per_call']:.3f} ms CPU/call (node {point['node_ms_per_call']:.3f}); "
                f"received per call {', '.join(f'{k} {v:.2f}' for k, v in point['messages_received_per_call'].items())}")
    elif point["measurement"] == "channels":
        body = (f"{calls}; trunk {point['to_trunk']}, overflow {point['to_overflow']}; peak {point['peak']}, "
                f"above limit {point['share_above_limit']}")
    else:
        body = (f"{calls}; trunk {point['to_trunk']}, overflow {point['to_overflow']}; per second max "
                f"{point['max_per_second']} median {point['median_per_second']} {point['per_second']}")
    print(head + body + tail, flush=True)


# ----- main -----

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurements", nargs="*", help=f"of {', '.join(MEASUREMENTS)} (default: all three)")
    parser.add_argument("--modes", default="kemi", help="comma-separated: kemi, http")
    parser.add_argument("--repetitions", type=int, default=3, help="of each variant, alternating (default 3)")
    parser.add_argument("--rate", type=float, default=150, help="cost: calls/s per node")
    parser.add_argument("--duration", type=float, default=15, help="cost: seconds of calls")
    parser.add_argument("--max-channels", type=int, default=20)
    parser.add_argument("--hold", type=float, default=4, help="channels: seconds a call is held")
    parser.add_argument("--channels-rate", type=float, default=10, help="channels: calls/s per node")
    parser.add_argument("--ring", type=int, default=0, help="channels: ms from the trunk's 180 to its 200")
    parser.add_argument("--max-cps", type=int, default=20)
    parser.add_argument("--cps-rate", type=float, default=25, help="cps: calls/s per node")
    parser.add_argument("--limits-duration", type=float, default=15, help="channels and cps: seconds of calls")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--key", help="the run's key in --out (default: the measurements, e.g. channels+cps); a key there is replaced")
    opts = parser.parse_args(argv)
    opts.measurements = opts.measurements or list(MEASUREMENTS)
    if any(m not in MEASUREMENTS for m in opts.measurements):
        parser.error(f"measurements: {', '.join(MEASUREMENTS)}")
    opts.modes = [m for m in opts.modes.split(",") if m]
    if any(m not in ("kemi", "http") for m in opts.modes):
        parser.error("--modes: kemi, http")
    return opts


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = json.loads(opts.out.read_text()) if opts.out.exists() else {}
    run = results[opts.key or "+".join(opts.measurements)] = {
        "date": started, "command": shlex.join([sip.python_name(), "benchmarks/cluster.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": sip.machine(), "tree": sip.tree_state(sip.ROOT), "load_average_start": os.getloadavg(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}, "points": []}
    print(f"# {started}: {', '.join(opts.measurements)}; modes {','.join(opts.modes)}; {opts.repetitions} repetition(s)", flush=True)

    def record(point: dict) -> None:
        run["points"].append(point)
        run["load_average_end"] = os.getloadavg()
        run["cost_summary"] = cost_summary(run["points"], opts.modes)
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(results, indent=1) + "\n")
        show(point)

    for repetition in range(1, opts.repetitions + 1):
        for measurement in opts.measurements:
            for mode in opts.modes:
                for variant in VARIANTS if repetition % 2 else VARIANTS[::-1]:
                    if measurement == "cost":
                        record(cost_point(mode, variant, repetition, opts))
                    else:
                        record(limits_point(measurement, mode, variant, repetition, opts))
    for row in run["cost_summary"]:
        ratio = f", x{row['kamailio_ratio_to_single']:.3f} of single" if "kamailio_ratio_to_single" in row else ""
        print(f"cost {row['mode']} {row['variant']:7}: Kamailio {row['kamailio_ms_per_call']:.3f} ms CPU/call{ratio}; "
              f"setup p50 {row['setup_p50_ms']:.2f} p99 {row['setup_p99_ms']:.2f} ms; {row['failed']} failed")
    print(f"{opts.out}: {len(run['points'])} points")


if __name__ == "__main__":
    main()
