"""HTTP benchmark of the c4http routing endpoint (not a test).

Drives POST /kamailio/rtjson of a running ``c4 serve`` on loopback with N
concurrent keep-alive connections for a bounded time, the way Kamailio's
http_async_client workers do (one query in flight per connection, no
pipelining), and prints requests/s and latency percentiles.

    c4 serve --table c4kemi/examples/example.json --port 8080 &
    python benchmarks/http_api.py --url http://127.0.0.1:8080 -c 16 -d 10

    # or let the script start and stop the server itself:
    python benchmarks/http_api.py --serve c4kemi/examples/example.json -d 10

The Python client costs about as much CPU per request as the server; on a
small machine use ``--processes`` so the client is not the bottleneck (and
keep in mind both share the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

RTJSON_PATH = "/kamailio/rtjson"

# Queries for c4kemi/examples/example.json: inbound from a carrier to a DID,
# outbound from an IPBX through weighted trunks, and a 403 from a stranger.
DEFAULT_QUERIES = [
    {
        "event": "sip-routing", "source_ip": "127.0.0.2", "source_port": 5060, "auth": 0,
        "call_id": "bench-in@host", "ruri": "sip:0612345678@c4.example.com",
        "from_name": "Alice", "from_uri": "sip:0611111111@carrier.example.com", "from_tag": "t1",
        "to_name": "", "to_uri": "sip:0612345678@c4.example.com", "to_tag": "",
    },
    {
        "event": "sip-routing", "source_ip": "127.0.0.10", "source_port": 5060, "auth": 0,
        "call_id": "bench-out@host", "ruri": "sip:0287654321@c4.example.com",
        "from_name": "Bob", "from_uri": "sip:0612345000@acme.example.com", "from_tag": "t2",
        "to_name": "", "to_uri": "sip:0287654321@c4.example.com", "to_tag": "",
    },
    {
        "event": "sip-routing", "source_ip": "203.0.113.9", "source_port": 5060, "auth": 0,
        "call_id": "bench-403@host", "ruri": "sip:0612345678@c4.example.com",
        "from_name": "", "from_uri": "sip:spam@203.0.113.9", "from_tag": "t3",
        "to_name": "", "to_uri": "sip:0612345678@c4.example.com", "to_tag": "",
    },
]  # fmt: skip


async def connection(session, url, bodies, deadline, latencies, errors):
    headers = {"Content-Type": "application/json"}
    clock = time.perf_counter
    i = 0
    while clock() < deadline:
        body = bodies[i % len(bodies)]
        i += 1
        start = clock()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok:
            latencies.append(clock() - start)
        else:
            errors.append(1)


async def drive(url: str, connections: int, duration: float, warmup: float, bodies: list[bytes]):
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if warmup > 0:
            sink: list = []
            end = time.perf_counter() + warmup
            await asyncio.gather(*(connection(session, url, bodies, end, sink, sink) for _ in range(connections)))
        latencies: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(*(connection(session, url, bodies, deadline, latencies, errors) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return latencies, len(errors), elapsed


def worker(job):
    url, connections, duration, warmup, bodies = job
    return asyncio.run(drive(url, connections, duration, warmup, bodies))


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def c4_command() -> list[str]:
    """This venv's ``c4``."""
    script = Path(sys.executable).parent / "c4"
    return [str(script)] if script.exists() else [sys.executable, "-m", "c4kemi.cli"]


def launch(command: list[str], port: int, name: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Start a server listening on loopback ``port`` and wait until it accepts connections."""
    process = subprocess.Popen(command, stderr=stderr)
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    raise SystemExit(f"{name} did not come up")


def start_server(table: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = launch([*c4_command(), "serve", "--table", table, "--port", str(port)], port, "c4 serve")
    return process, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of a running c4 serve")
    parser.add_argument("--serve", metavar="TABLE", help="start c4 serve on this table (free loopback port) and stop it after")
    parser.add_argument("-c", "--connections", type=int, default=16, help="concurrent connections in total")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds to measure")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    parser.add_argument("-p", "--processes", type=int, default=1, help="client processes sharing the connections")
    parser.add_argument("--request", action="append", help="a JSON query to send (repeatable); default: a built-in mix")
    args = parser.parse_args(argv)

    if args.connections < args.processes:
        parser.error("need at least one connection per process")
    bodies = [r.encode() for r in args.request] if args.request else [orjson.dumps(q) for q in DEFAULT_QUERIES]
    server = None
    url = args.url
    if args.serve:
        server, url = start_server(args.serve)
    try:
        shares = [args.connections // args.processes + (i < args.connections % args.processes) for i in range(args.processes)]
        jobs = [(url.rstrip("/") + RTJSON_PATH, share, args.duration, args.warmup, bodies) for share in shares]
        if args.processes == 1:
            results = [worker(jobs[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
                results = pool.map(worker, jobs)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    latencies = sorted(x for lat, _, _ in results for x in lat)
    errors = sum(e for _, e, _ in results)
    elapsed = max(el for _, _, el in results)
    rate = len(latencies) / elapsed
    rows = [
        ("connections", f"{args.connections} ({args.processes} client process{'es' if args.processes > 1 else ''})"),
        ("duration", f"{elapsed:.1f} s"),
        ("requests", f"{len(latencies)} ok, {errors} errors"),
        ("throughput", f"{rate:,.0f} req/s"),
        ("latency median", f"{statistics.median(latencies) * 1e3:.3f} ms" if latencies else "-"),
        ("latency p90", f"{percentile(latencies, 0.90) * 1e3:.3f} ms"),
        ("latency p99", f"{percentile(latencies, 0.99) * 1e3:.3f} ms"),
        ("latency max", f"{latencies[-1] * 1e3:.3f} ms" if latencies else "-"),
        ("cpus", str(os.cpu_count())),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"POST {url.rstrip('/')}{RTJSON_PATH}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
