"""SIP benchmark: KEMI mode vs HTTP mode on real SIP traffic, side by side.

    .venv/bin/python benchmarks/sip.py [--rate 300] [--calls 3000] [--rounds 3] [--modes kemi,http]
    .venv/bin/python benchmarks/sip.py --modes kemi,kemi+cdr,http,http+cdr    # the cost of call records

For each round and each mode (alternating, so drift of this noisy machine
hits both alike) it starts the router with ``c4 kamailio`` (HTTP mode also
runs ``c4 serve``) on loopback, a sipp callee as the carrier, and a sipp
caller placing ``--calls`` full calls (INVITE, 200, ACK, BYE through the
router) at ``--rate`` calls/s from the IPBX's address. It records:

- calls completed and failed (sipp's own counters),
- call setup time, INVITE sent to 200 received, per call (the scenario
  logs gettimeofday at both ends): median and p99,
- CPU time per call of the router's processes (Kamailio, plus c4 serve in
  HTTP mode), from /proc, so the two modes' costs compare directly.

A mode with ``+cdr`` runs with call records on (``--cdr-file``, docs/cdr.md);
the CPU counted then includes ``c4 cdr``, and the row says how many records
were written. It prints one row per round and mode, then the medians over
rounds and the HTTP/KEMI ratios. Everything runs on this one machine (sipp included), so
only the ratios measured in one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CALLEE_SCENARIO = ROOT / "tests" / "e2e" / "scenarios" / "uas_answer.xml"
CALLER, CALLEE, ROUTER = "127.0.0.10", "127.0.0.2", "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def table(callee_port: int) -> dict:
    return {
        "tenants": [{"name": "bench"}],
        "ipbxs": [{"name": "bench-pbx", "tenant": "bench", "targets": [f"sip:{CALLER}:5999"], "sources": [CALLER]}],
        "carriers": [{"name": "bench-carrier"}],
        "trunks": [{"name": "bench-trunk", "carrier": "bench-carrier", "target": f"sip:{CALLEE}:{callee_port}"}],
        "routes": [{"tenant": "bench", "prefix": "", "trunks": ["bench-trunk"]}],
    }


def free_port(kind: int, address: str) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def wait_options(port: int, timeout: float = 20.0) -> None:
    """Wait until the router answers an OPTIONS with 200."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CALLER, 0))
        sock.settimeout(0.5)
        local = sock.getsockname()[1]
        while time.monotonic() < deadline:
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
        raise RuntimeError(f"router on port {port} did not answer OPTIONS")


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5: pgrp
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / CLOCK_TICKS


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_round(mode: str, args: argparse.Namespace, workdir: Path) -> dict:
    base, _, records = mode.partition("+")
    callee_port = free_port(socket.SOCK_DGRAM, CALLEE)
    router_port = free_port(socket.SOCK_DGRAM, ROUTER)
    table_path = workdir / "table.json"
    table_path.write_text(json.dumps(table(callee_port)))
    cdr_path = workdir / f"cdr-{base}.jsonl"
    cdr_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "c4kemi.cli", "kamailio", "--mode", base, "--table", str(table_path),
               "--listen", f"udp:{ROUTER}:{router_port}", "--workers", str(args.workers), "--log-level", "1"]
    if records == "cdr":
        command += ["--cdr-file", str(cdr_path)]
    if base == "http":
        api_port = free_port(socket.SOCK_STREAM, ROUTER)
        command += ["--serve-api", "--api", f"http://{ROUTER}:{api_port}"]
    log = open(workdir / f"router-{mode}.log", "ab")
    router = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, cwd=ROOT)
    callee = caller = None
    try:
        wait_options(router_port)
        if records == "cdr":
            wait_log(workdir / f"router-{mode}.log", "c4 cdr: connected")
        callee = subprocess.Popen(
            ["sipp", "-sf", str(CALLEE_SCENARIO), "-i", CALLEE, "-p", str(callee_port), "-nostdin",
             "-max_socket", "4096"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=workdir)
        time.sleep(0.5)
        cpu_before = group_cpu_seconds(router.pid)
        started = time.monotonic()
        caller = subprocess.run(
            ["sipp", "-sf", str(SCENARIOS / "uac_bench.xml"), "-i", CALLER, "-p", "0", "-s", "0612345678",
             "-r", str(args.rate), "-m", str(args.calls), "-l", str(args.rate * 5), "-nostdin",
             "-default_behaviors", "all,-abortunexp", "-trace_logs",
             "-trace_stat", "-fd", "3600", "-timeout", str(args.calls // args.rate + 30),
             f"{ROUTER}:{router_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, timeout=args.calls / args.rate + 60)
        elapsed = time.monotonic() - started
        cpu = group_cpu_seconds(router.pid) - cpu_before
    finally:
        if callee is not None:
            stop(callee)
        stop(router)
        log.close()
    stats = read_stat(workdir)
    setup_times = read_setup_times(workdir)
    return {
        "mode": mode,
        "exit": caller.returncode,
        "ok": stats["SuccessfulCall(C)"],
        "failed": stats["FailedCall(C)"],
        "elapsed_s": elapsed,
        "setup_median_ms": statistics.median(setup_times) if setup_times else float("nan"),
        "setup_p99_ms": sorted(setup_times)[int(len(setup_times) * 0.99)] if setup_times else float("nan"),
        "cpu_ms_per_call": cpu * 1000 / max(1, stats["SuccessfulCall(C)"] + stats["FailedCall(C)"]),
        "records": len(cdr_path.read_bytes().splitlines()) if cdr_path.exists() else None,
    }


def wait_log(path: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} never appeared in {path}")
        time.sleep(0.05)


def read_stat(workdir: Path) -> dict:
    """The last line of sipp's -trace_stat CSV, as {column: int} for counters."""
    files = sorted(workdir.glob("uac_bench_*_.csv"))
    lines = files[-1].read_text().splitlines()
    header, last = lines[0].split(";"), lines[-1].split(";")
    for path in files:
        path.unlink()
    return {key: int(value) for key, value in zip(header, last) if value.isdigit()}


def read_setup_times(workdir: Path) -> list[float]:
    """Per-call setup times (ms): the scenario logs gettimeofday before the
    INVITE and at the 200 ("setup SENT_S SENT_US OK_S OK_US")."""
    values = []
    for path in workdir.glob("uac_bench_*_logs.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "setup":
                sent_s, sent_us, ok_s, ok_us = map(float, parts[1:])
                values.append((ok_s - sent_s) * 1000 + (ok_us - sent_us) / 1000)
        path.unlink()
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=300, help="calls per second")
    parser.add_argument("--calls", type=int, default=3000, help="calls per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="Kamailio SIP workers")
    parser.add_argument("--modes", default="kemi,http")
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {args.rate} calls/s, {args.calls} calls "
          f"per round, {args.workers} workers, sipp on the same machine")
    print("| round | mode | ok | failed | setup median (ms) | setup p99 (ms) | router CPU per call (ms) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="c4-bench-sip-") as tmp:
        for number in range(1, args.rounds + 1):
            for mode in modes:
                r = run_round(mode, args, Path(tmp))
                results[mode].append(r)
                records = "" if r["records"] is None else f" ({r['records']} records)"
                print(f"| {number} | {mode}{records} | {r['ok']} | {r['failed']} | {r['setup_median_ms']:.2f} | "
                      f"{r['setup_p99_ms']:.2f} | {r['cpu_ms_per_call']:.3f} |", flush=True)
    print()
    print("| mode | failed (total) | setup median, median of rounds (ms) | CPU per call, median (ms) |")
    print("|---|---:|---:|---:|")
    summary = {}
    for mode, rows in results.items():
        summary[mode] = (statistics.median(r["setup_median_ms"] for r in rows),
                         statistics.median(r["cpu_ms_per_call"] for r in rows))
        print(f"| {mode} | {sum(r['failed'] for r in rows)} | {summary[mode][0]:.2f} | {summary[mode][1]:.3f} |")
    if "kemi" in summary and "http" in summary:
        print(f"\nHTTP/KEMI ratio: setup time {summary['http'][0] / summary['kemi'][0]:.2f}x, "
              f"router CPU per call {summary['http'][1] / summary['kemi'][1]:.2f}x")


if __name__ == "__main__":
    main()
