"""A real HTTP server standing in front of (or in place of) c4http, for e2e tests.

    python api_stub.py --port P [--upstream URL] [--delay SECONDS] [--record FILE]

POST /kamailio/rtjson waits ``delay`` seconds, then forwards the body to
``--upstream`` (the real c4 serve's routing URL) and returns its answer
unchanged; every exchange is appended to ``--record`` as a JSON line
``{"request": ..., "status": ..., "response": ...}`` (bodies as UTF-8
text, byte for byte). Without an upstream it answers nothing useful:
use it with a delay longer than Kamailio's API timeout.

Control (for the test, not Kamailio): ``GET /_stats`` gives the requests
seen, those in flight now and the peak in flight; ``POST /_delay`` with
``{"delay": S}`` changes the delay; ``GET /health`` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import orjson
from aiohttp import web


def make_app(upstream: str | None, delay: float, record: str | None) -> web.Application:
    state = {"delay": delay, "requests": 0, "inflight": 0, "peak": 0, "answered": 0}
    session: dict[str, aiohttp.ClientSession] = {}

    async def rtjson(request: web.Request) -> web.Response:
        state["requests"] += 1
        state["inflight"] += 1
        state["peak"] = max(state["peak"], state["inflight"])
        try:
            body = await request.read()
            await asyncio.sleep(state["delay"])
            if not upstream:
                return web.Response(status=503, text="no upstream")
            async with session["client"].post(
                upstream, data=body, headers={"Content-Type": request.headers.get("Content-Type", "")}
            ) as answer:
                status, data = answer.status, await answer.read()
            if record:
                line = {"request": body.decode(), "status": status, "response": data.decode()}
                with open(record, "ab") as out:
                    out.write(orjson.dumps(line) + b"\n")
            state["answered"] += 1
            return web.Response(status=status, body=data, content_type="application/json")
        finally:
            state["inflight"] -= 1

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state)

    async def set_delay(request: web.Request) -> web.Response:
        state["delay"] = float((await request.json())["delay"])
        return web.json_response(state)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def client_session(app: web.Application):
        session["client"] = aiohttp.ClientSession()
        yield
        await session["client"].close()

    app = web.Application()
    app.router.add_post("/kamailio/rtjson", rtjson)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_delay", set_delay)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(client_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--record")
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream, args.delay, args.record),
        host="127.0.0.1", port=args.port, print=None, access_log=None,
        shutdown_timeout=0.5,  # do not wait for the held (slow) queries on SIGTERM
    )  # fmt: skip


if __name__ == "__main__":
    main()
