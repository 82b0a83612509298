"""What the HTTP stacks cost without any routing: the floor under c4 serve and FastAPI.

    .venv/bin/python benchmarks/http_floor.py [-d 5] [--repeat 3] [-c 16]

Three servers answer ``POST /kamailio/rtjson`` with one constant reply (a
real routing reply and C4-Call header, so the bytes on the wire are those
of the real services) after reading the body, and decide nothing:

- ``aiohttp``: an aiohttp application with uvloop, as c4 serve runs it;
- ``fastapi``: FastAPI under uvicorn with uvloop and httptools, as
  benchmarks/fastapi_ref.py runs it;
- ``protocol``: a bare asyncio protocol on uvloop with httptools' parser,
  about the least a Python HTTP/1.1 server can do per request.

And a fourth that does decide: ``protocol-decide``, the bare protocol
running the decision core on the table for each query (no checks beyond
a 400 for a bad body, no metrics: a measure, not a server to deploy).

Measured as benchmarks/http_reference.py measures (server pinned to one
core, wrk to the other, the same table and queries), it tells how much of
each service's CPU per request is the stack and how much is the handler,
and what the decision costs over the lightest stack.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from http_api import free_port, launch  # noqa: E402
from http_reference import RTJSON_PATH, run_wrk, write_inputs, wrk_command  # noqa: E402

from c4kemi.core.decision import RequestError, call_json, decide_call, encode  # noqa: E402
from c4kemi.sources.store import FileTableSource  # noqa: E402

KINDS = ("aiohttp", "fastapi", "protocol", "protocol-decide")


def sample_reply(table, queries: Path) -> tuple[bytes, str]:
    """A real outbound reply (several routes) and its C4-Call header."""
    for line in queries.read_bytes().splitlines():
        reply, call = decide_call(table, orjson.loads(line))
        if call is not None and len(call["routes"]) > 1:
            return encode(reply), call_json(call)
    raise SystemExit("no routed query in the sample")


def serve_aiohttp(port: int, body: bytes, call: str) -> None:
    import uvloop
    from aiohttp import web

    headers = {"Content-Type": "application/json", "C4-Call": call}

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_post(RTJSON_PATH, handler)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None)


def serve_fastapi(port: int, body: bytes, call: str) -> None:
    import uvicorn
    from fastapi import FastAPI, Request, Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(RTJSON_PATH)
    async def handler(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json", headers={"C4-Call": call})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning")


def http_response(body: bytes, call: str | None, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
    if call is not None:
        head += b"C4-Call: " + call.encode() + b"\r\n"
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def serve_protocol(port: int, body: bytes, call: str, table=None) -> None:
    """The bare protocol: the constant reply, or with ``table`` the decision's."""
    import httptools
    import uvloop

    constant = http_response(body, call)

    def decide(request_body: bytes) -> bytes:
        try:
            reply, call = decide_call(table, orjson.loads(request_body))
        except (orjson.JSONDecodeError, RequestError, AttributeError) as exc:
            return http_response(orjson.dumps({"error": str(exc)}), None, b"400 Bad Request")
        return http_response(encode(reply), call_json(call) if call else None)

    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.body = []

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_body(self, data):
            self.body.append(data)

        def on_message_complete(self):
            request_body = b"".join(self.body)
            self.body.clear()
            self.transport.write(constant if table is None else decide(request_body))

    async def main():
        server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)  # the server side, run pinned by the driver
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--table-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dids", type=int, default=100_000)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds per measured point")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--client-cpu", default="0")
    args = parser.parse_args(argv)
    if args.serve:
        table = FileTableSource(args.table_file, check_interval=math.inf).current()
        body, call = sample_reply(table, args.queries_file)
        if args.serve == "protocol-decide":
            serve_protocol(args.port, body, call, table)
        else:
            {"aiohttp": serve_aiohttp, "fastapi": serve_fastapi, "protocol": serve_protocol}[args.serve](args.port, body, call)
        return 0

    with tempfile.TemporaryDirectory(prefix="c4-http-floor-") as tmp:
        table, queries, _ = write_inputs(Path(tmp), args.dids, args.routes, 1000)  # as http_reference.py's
        ports = {kind: free_port() for kind in KINDS}
        processes = {}
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        try:
            for kind in KINDS:
                command = [
                    "taskset", "-c", args.server_cpu, sys.executable, __file__, "--serve", kind, "--port", str(ports[kind]),
                    "--table-file", str(table), "--queries-file", str(queries),
                ]  # fmt: skip
                processes[kind] = launch(command, ports[kind], kind, stderr=None)
            urls = {kind: f"http://127.0.0.1:{port}{RTJSON_PATH}" for kind, port in ports.items()}
            for kind in KINDS:  # warm-up
                run_wrk(wrk_command(urls[kind], args.connections, 1, queries, args.client_cpu), processes[kind].pid)
            for rep in range(args.repeat):
                for kind in KINDS[rep % len(KINDS) :] + KINDS[: rep % len(KINDS)]:  # who goes first rotates
                    runs[kind].append(run_wrk(wrk_command(urls[kind], args.connections, args.duration, queries, args.client_cpu), processes[kind].pid))
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(timeout=30)

    print("| stack (constant reply, or protocol-decide) | connections | requests/s | p50 (ms) | p99 (ms) | server CPU/request (µs) |\n|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        median = {key: statistics.median(r[key] for r in runs[kind]) for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")}
        print(
            f"| {kind} | {args.connections} | {median['requests_per_s']:,.0f} | {median['p50_ms']:.3f} | {median['p99_ms']:.3f} "
            f"| {median['server_cpu_us_per_request']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
