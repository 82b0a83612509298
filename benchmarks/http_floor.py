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

Measured as benchmarks/http_reference.py measures (server pinned to one
core, wrk to the other, same queries), it tells how much of each service's
CPU per request is the stack and how much is the handler: the difference
between c4 serve and FastAPI that is left once both handlers are the same.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from generate import make_document  # noqa: E402
from http_api import free_port, launch  # noqa: E402
from http_reference import RTJSON_PATH, run_wrk, wrk_command  # noqa: E402
from scale import make_requests  # noqa: E402

from c4kemi.decision import call_json, decide_call, encode  # noqa: E402
from c4kemi.table import compile_table  # noqa: E402

KINDS = ("aiohttp", "fastapi", "protocol")


def sample_reply() -> tuple[bytes, str]:
    """A real outbound reply and its C4-Call header, from a small generated table."""
    document = make_document(1000, 100)
    table = compile_table(document)
    for query in make_requests(document, 50, random.Random(1)):
        reply, call = decide_call(table, query)
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


def serve_protocol(port: int, body: bytes, call: str) -> None:
    import httptools
    import uvloop

    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nC4-Call: " + call.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip

    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self):
            self.transport.write(response)

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
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds per measured point")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--client-cpu", default="0")
    args = parser.parse_args(argv)
    if args.serve:
        body, call = sample_reply()
        {"aiohttp": serve_aiohttp, "fastapi": serve_fastapi, "protocol": serve_protocol}[args.serve](args.port, body, call)
        return 0

    with tempfile.TemporaryDirectory(prefix="c4-http-floor-") as tmp:
        queries = Path(tmp) / "queries.jsonl"
        document = make_document(1000, 100)
        queries.write_bytes(b"\n".join(orjson.dumps(q) for q in make_requests(document, 1000, random.Random(11))) + b"\n")
        ports = {kind: free_port() for kind in KINDS}
        processes = {}
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        try:
            for kind in KINDS:
                command = ["taskset", "-c", args.server_cpu, sys.executable, __file__, "--serve", kind, "--port", str(ports[kind])]
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

    print("| stack, constant reply | connections | requests/s | p50 (ms) | p99 (ms) | server CPU/request (µs) |\n|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        median = {key: statistics.median(r[key] for r in runs[kind]) for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")}
        print(
            f"| {kind} | {args.connections} | {median['requests_per_s']:,.0f} | {median['p50_ms']:.3f} | {median['p99_ms']:.3f} "
            f"| {median['server_cpu_us_per_request']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
