"""The c4http aiohttp application: the routing decision over HTTP.

    POST /kamailio/rtjson   routing query in, ``{"rtjson": ...}`` out, the same
                            bytes as ``c4 route`` gives for the same table
    POST /kamailio/explain  the same query in, why it routes as it does out
                            (a support tool, auth passwords masked; not for Kamailio)
    GET  /health            table version, entity counts, uptime, reloads
    GET  /metrics           Prometheus text format
    /api/v1/...             the provisioning API, when given a database
                            (c4http/provisioning.py, docs/api.md)

The routing endpoint's replies carry trunk credentials, so it answers only
the addresses of ``routing_from`` (loopback by default; others get a 403)
and, given a routing key (``c4 kamailio`` always gives one), only queries
that carry it in ``X-C4-Routing-Key`` (others get a 401).

Bad input is a 4xx with a JSON body ``{"error": "..."}`` naming the problem,
never a 500, and the service keeps serving. A control character or a lone
surrogate in the decoded path, a query parameter or a header is a 400 before
any handler sees it. Refusals (403/404 decisions) and bad requests are logged
as one ``key=value`` line each, values escaped (c4http/logfmt.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import re
import time
import traceback
from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from c4kemi.decision import RequestError, call_json, decide_call, encode
from c4kemi.explain import explain as explain_query
from c4kemi.explain import masked, render_text

from .logfmt import log_event
from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["make_app", "SOURCE", "METRICS", "DEFAULT_MAX_BODY", "DEFAULT_ROUTING_FROM", "RTJSON_PATH", "EXPLAIN_PATH",
           "ROUTING_KEY_HEADER"]

log = logging.getLogger("c4.http")

RTJSON_PATH = "/kamailio/rtjson"
ROUTING_KEY_HEADER = "X-C4-Routing-Key"
CALL_HEADER = "C4-Call"
EXPLAIN_PATH = "/kamailio/explain"
DEFAULT_MAX_BODY = 64 * 1024
# Who may ask for routes (and so read trunk credentials): Kamailio, on this host.
DEFAULT_ROUTING_FROM = ("127.0.0.0/8", "::1/128")
JSON = "application/json"
UTF8 = ("utf-8", "utf8")

SOURCE = web.AppKey("source", object)
METRICS = web.AppKey("metrics", Metrics)
MAX_BODY = web.AppKey("max_body", int)

# Control characters (C0, DEL, C1) and lone surrogates: no name, number or
# parameter of this service holds one, PostgreSQL text cannot hold a NUL,
# orjson cannot encode a surrogate, and in a log line a new line forges the next.
BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Header values may hold tabs (RFC 9110); aiohttp's parser already refuses the
# other C0 characters there, but bytes that are not UTF-8 arrive as surrogates.
BAD_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def error_response(status: int, message: str, headers: Any = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type=JSON, headers=headers)


def make_app(
    source: Any,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    refresh_interval: float | None = None,
    dsn: str | None = None,
    api_token: str | None = None,
    routing_from: Iterable[str] = DEFAULT_ROUTING_FROM,
    routing_key: str | None = None,
    kamailio_rpc: str | None = None,
) -> web.Application:
    """The application serving decisions from ``source.current()``.

    ``routing_from``: the networks (CIDRs or addresses) whose requests the
    routing endpoint answers; any other source address gets a 403.
    ``routing_key``: the key a query must carry in ``X-C4-Routing-Key``
    (else 401): the reply holds trunk passwords, and an address filter
    cannot tell this node's Kamailio from any other local process.

    With ``dsn``, the provisioning API of that PostgreSQL database is served
    under /api/v1 (admin token ``api_token``, tenant tokens from the
    database); without it, /api/v1 does not exist (404).

    With ``refresh_interval``, a background task calls ``source.refresh()``
    that often (in a worker thread, so compiling a large table does not stall
    the event loop), and reloads happen whether or not traffic comes in.
    Give such a source an infinite ``check_interval`` so only that task
    reloads.

    With ``kamailio_rpc`` (Kamailio's JSON-RPC datagram socket), /metrics
    also has the calls in progress per tenant and trunk, read from Kamailio
    at scrape time, and GET /channels gives them as JSON with the limits.
    """
    if max_body < 1:
        raise ValueError("max_body must be positive")
    allowed_source = source_filter(routing_from)
    expected_key = routing_key.encode() if routing_key else None
    metrics = Metrics(source, kamailio_rpc)
    app = web.Application(client_max_size=max_body, middlewares=[json_errors])
    app[SOURCE] = source
    app[METRICS] = metrics
    app[MAX_BODY] = max_body

    count_request = metrics.requests.inc
    count_decision = metrics.decisions.inc
    observe = metrics.decision_seconds.observe
    bad_counters = metrics.bad_requests
    refusal_counter = metrics.refusal
    current = source.current
    clock = time.perf_counter

    def bad_request(request: web.Request, status: int, reason: str, message: str) -> web.Response:
        bad_counters[reason].inc()
        log_event(log, logging.WARNING, "bad_request", status=status, reason=reason, remote=request.remote, error=message)
        return error_response(status, message)

    async def rtjson(request: web.Request) -> web.Response:
        count_request()
        if not allowed_source(request.remote):
            return bad_request(request, 403, "forbidden_source", f"{request.remote} may not ask for routes (see --routing-from)")
        if expected_key is not None and not hmac.compare_digest(
            request.headers.get(ROUTING_KEY_HEADER, "").encode("utf-8", "surrogateescape"), expected_key
        ):
            return bad_request(request, 401, "bad_routing_key", f"missing or wrong {ROUTING_KEY_HEADER}: only this node's Kamailio may ask for routes")
        query = await read_json_body(request, max_body)
        if query.__class__ is BadBody:
            return bad_request(request, *query)
        if type(query) is not dict:
            return bad_request(request, 400, "not_object", f"request must be a JSON object, not {type(query).__name__}")

        table = current()
        start = clock()
        try:
            reply, call = decide_call(table, query)
        except RequestError as exc:
            return bad_request(request, 400, "invalid_request", str(exc))
        data = encode(reply)
        observe(clock() - start)
        count_decision()

        rt = reply["rtjson"]
        if not rt["success"]:
            code = rt["code"]
            refusal_counter(code).inc()
            log_event(
                log,
                logging.INFO,
                "refusal",
                code=code,
                reason=rt["reason"],
                source_ip=query.get("source_ip"),
                call_id=query.get("call_id"),
                ruri=query.get("ruri"),
                from_uri=query.get("from_uri"),
                table=table.version,
            )
            # A 404 still names its sender and numbers, for the call record (docs/cdr.md).
            headers = {CALL_HEADER: call_json(call)} if call else None
            return web.Response(body=data, content_type=JSON, headers=headers)
        # What Kamailio counts and limits the call by, beside the rtjson (which
        # stays the same bytes): docs/routing.md, "Channel limits".
        return web.Response(body=data, content_type=JSON, headers={CALL_HEADER: call_json(call)})

    async def health(request: web.Request) -> web.Response:
        table = current()
        store = source.status() if hasattr(source, "status") else {"kind": "file", "state": "ok"}
        body = {
            # Still routing with the last good table when the store is stale: 200 either way.
            "status": "ok" if store["state"] == "ok" else "degraded",
            "store": store,
            "table": {"version": table.version, "counts": dict(table.counts), "loaded_at": getattr(source, "loaded_at", None)},
            "uptime_seconds": round(time.monotonic() - metrics.started, 3),
            "reloads": getattr(source, "reloads", 0),
            "failed_reloads": getattr(source, "failed_reloads", 0),
        }
        return web.Response(body=orjson.dumps(body), content_type=JSON)

    async def prometheus(request: web.Request) -> web.Response:
        # Asking Kamailio for the live counts is blocking I/O: not on the loop.
        body = await asyncio.to_thread(metrics.exposition) if kamailio_rpc else metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_post(RTJSON_PATH, rtjson)
    app.router.add_post(EXPLAIN_PATH, explain)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/channels", functools.partial(channels, source, kamailio_rpc))
    lifecycle = getattr(source, "lifecycle", None)  # a source that follows a database
    if lifecycle is not None:
        app.cleanup_ctx.append(lifecycle)
    if refresh_interval is not None:
        app.cleanup_ctx.append(_refresher(source, refresh_interval))
    if dsn is not None:
        from .provisioning import add_api

        add_api(app, dsn, api_token)
    return app


def source_filter(networks: Iterable[str]):
    """A cached test: may this peer address (``request.remote``) ask for routes?"""
    allowed = tuple(ipaddress.ip_network(network, strict=True) for network in networks)

    @functools.lru_cache(maxsize=4096)
    def allowed_source(remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address((remote or "").partition("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in allowed)

    return allowed_source


class BadBody(NamedTuple):
    """Why a request body cannot be read as JSON."""

    status: int  # 415, 413 or 400
    reason: str  # the bad_requests metrics label
    message: str


async def read_json_body(request: web.Request, max_body: int) -> Any:
    """The request's body parsed as JSON, or a BadBody.

    A body without Content-Type is read as JSON; one that says it is
    something else (a form, text, another charset) is refused.
    """
    if "Content-Type" in request.headers and (
        request.content_type != JSON or (request.charset is not None and request.charset.lower() not in UTF8)
    ):
        message = f"unsupported Content-Type {request.headers['Content-Type']!r}: send application/json (UTF-8)"
        return BadBody(415, "unsupported_media_type", message)
    length = request.content_length
    if length is not None and length > max_body:
        return BadBody(413, "body_too_large", f"request body of {length} bytes exceeds the limit of {max_body} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return BadBody(413, "body_too_large", f"request body exceeds the limit of {max_body} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BadBody(400, "malformed_json", f"malformed JSON: {exc}")


async def explain(request: web.Request) -> web.Response:
    """POST /kamailio/explain: why a query routes as it does, for support.

    Apart from the routing endpoint on purpose: it neither slows nor counts
    in the routing metrics. The same checks on the body as routing (415, 413,
    400 with {"error": ...}). JSON by default, whose ``reply`` is decide's
    with trunk auth passwords masked; ``?format=text`` gives the text of
    ``c4 route --explain``.
    """
    max_body = request.app[MAX_BODY]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "text"):
        return error_response(400, f"unknown format {fmt!r}: use json or text")
    query = await read_json_body(request, max_body)
    if query.__class__ is BadBody:
        return error_response(query.status, query.message)
    try:
        explanation = masked(explain_query(request.app[SOURCE].current(), query))
    except RequestError as exc:
        return error_response(400, str(exc))
    if fmt == "text":
        return web.Response(text=render_text(explanation), content_type="text/plain", charset="utf-8")
    return web.Response(body=orjson.dumps(explanation), content_type=JSON)


def bad_text(request: web.Request) -> str | None:
    """Which part of the request holds a control character or a lone surrogate, as an error message."""
    for part, pattern, text in _request_texts(request):
        found = pattern.search(text)
        if found is not None:
            return f"{part} holds U+{ord(found.group()):04X}: control characters and lone surrogates are not allowed"
    return None


def _request_texts(request: web.Request):
    yield "the path", BAD_TEXT, request.path
    for name, value in request.query.items():
        # ascii(): the name itself may be what is bad.
        yield f"query parameter name {ascii(name)}", BAD_TEXT, name
        yield f"query parameter {ascii(name)}", BAD_TEXT, value
    for name, value in request.headers.items():
        yield f"header {ascii(name)}", BAD_HEADER, value


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Text no handler should see as a 400; unknown paths, wrong methods and anything unforeseen as JSON errors."""
    problem = bad_text(request)
    if problem is not None:
        log_event(log, logging.WARNING, "bad_request", status=400, reason="bad_text", remote=request.remote,
                  path=request.path, error=problem)  # fmt: skip
        return error_response(400, problem)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such resource: {request.path}"
        elif exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            message = f"method {request.method} not allowed on {request.path}" + (f"; use {allowed}" if allowed else "")
        else:
            message = exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, headers)
    except Exception as exc:
        # One escaped line, the traceback a value of it: an exception's message may quote the request.
        log_event(log, logging.ERROR, "internal_error", method=request.method, path=request.path,
                  error=f"{type(exc).__name__}: {exc}", traceback="".join(traceback.format_exception(exc)))  # fmt: skip
        return error_response(500, "internal error")


async def channels(source: Any, kamailio_rpc: str | None, request: web.Request) -> web.Response:
    """GET /channels: the calls in progress per tenant and per trunk, with their limits (c4kemi.channels)."""
    from c4kemi.channels import KamailioRpc, RpcError, live_channels

    if not kamailio_rpc:
        return error_response(503, "live channel counts need c4 serve --kamailio-rpc SOCKET (c4 kamailio --rpc-socket)")
    try:
        body = await asyncio.to_thread(live_channels, KamailioRpc(kamailio_rpc), source.current())
    except RpcError as exc:
        return error_response(503, f"Kamailio did not give the counts: {exc}")
    return web.Response(body=orjson.dumps(body), content_type=JSON)


def _refresher(source: Any, interval: float):
    async def refresh_task(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_refresh_loop(source, interval), name="c4-table-refresh")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return refresh_task


async def _refresh_loop(source: Any, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(source.refresh)
        except Exception:  # the source logs refused documents itself; this is anything else
            log.exception("routing table refresh failed; still serving the previous table")
