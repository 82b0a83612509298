"""The routing service's handlers: the decision over HTTP, and what the service says of itself.

    POST /kamailio/rtjson   routing query in, ``{"rtjson": ...}`` out, the same
                            bytes as ``c4 route`` gives for the same table
                            (RoutingEndpoint.rtjson)
    POST /kamailio/explain  the same query in, why it routes as it does out
                            (a support tool, auth passwords masked; not for Kamailio)
    GET  /health            table version, entity counts, uptime, reloads
    GET  /metrics           Prometheus text format
    GET  /channels          the calls in progress, from Kamailio (c4 serve --kamailio-rpc)
    GET  /trunks/health     trunk health, from Kamailio (c4 serve --kamailio-rpc; docs/health.md)
    GET  /kamailio/health-targets  the targets a node's Kamailio watches, for its
                            c4 health-sync (same access rules as the routing endpoint)

The routing endpoint's replies carry trunk credentials, so it answers only
the addresses of ``routing_from`` (loopback by default; others get a 403)
and, given a routing key (``c4 kamailio`` always gives one), only queries
that carry it in ``X-C4-Routing-Key`` (others get a 401).

Each handler reads what it needs from its application (the keys below, set
by c4http.app.make_app); the routing endpoint, the hot path, is a method
of an object holding its state, so it looks nothing up per request. Bad
input is a 4xx with a JSON body ``{"error": "..."}`` naming the problem,
never a 500. Refusals (403/404 decisions) and bad requests are logged as
one ``key=value`` line each, values escaped (c4http/logfmt.py).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterable
from time import perf_counter
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from c4kemi.call.channels import KamailioRpc, RpcError, live_channels
from c4kemi.call.health import health_report
from c4kemi.core.decision import RequestError, call_json, decide_call, encode
from c4kemi.core.explain import explain as explain_query
from c4kemi.core.explain import masked, render_text
from c4kemi.core.health import base_targets
from c4kemi.sources.table_source import TableSource

from .logfmt import log_event
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .web import JSON, MAX_BODY, UTF8, error_response

__all__ = [
    "CALL_HEADER", "DEFAULT_ROUTING_FROM", "KAMAILIO_RPC", "METRICS", "ROUTING", "ROUTING_KEY_HEADER", "SOURCE",
    "RoutingEndpoint", "channels", "explain", "health", "prometheus", "read_json_body", "source_filter", "trunk_health",
]

log = logging.getLogger("c4.http")

ROUTING_KEY_HEADER = "X-C4-Routing-Key"
CALL_HEADER = "C4-Call"
# Who may ask for routes (and so read trunk credentials): Kamailio, on this host.
DEFAULT_ROUTING_FROM = ("127.0.0.0/8", "::1/128")

# The table source the service routes with (its ``current()`` table).
SOURCE = web.AppKey("source", TableSource)
METRICS = web.AppKey("metrics", Metrics)
# Kamailio's JSON-RPC socket; absent from the app when none was given.
KAMAILIO_RPC = web.AppKey("c4_kamailio_rpc", str)


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


class RoutingEndpoint:
    """POST /kamailio/rtjson for one table source: who may ask, and the decision, counted.

    ``routing_from``: the networks (CIDRs or addresses) whose requests it
    answers; any other source address gets a 403. ``routing_key``: the key
    a query must carry in ``X-C4-Routing-Key`` (else 401). The handler is
    the bound method ``rtjson``; the counters are bound once, here.
    """

    __slots__ = ("allowed_source", "expected_key", "max_body", "current", "count_request", "count_decision", "observe",
                 "bad_counters", "refusal_counter")  # fmt: skip

    def __init__(self, source: TableSource, metrics: Metrics, *, max_body: int, routing_from: Iterable[str], routing_key: str | None) -> None:
        self.allowed_source = source_filter(routing_from)
        self.expected_key = routing_key.encode() if routing_key else None
        self.max_body = max_body
        self.current = source.current
        self.count_request = metrics.requests.inc
        self.count_decision = metrics.decisions.inc
        self.observe = metrics.decision_seconds.observe
        self.bad_counters = metrics.bad_requests
        self.refusal_counter = metrics.refusal

    def bad_request(self, request: web.Request, status: int, reason: str, message: str) -> web.Response:
        self.bad_counters[reason].inc()
        log_event(log, logging.WARNING, "bad_request", status=status, reason=reason, remote=request.remote, error=message)
        return error_response(status, message)

    def refused(self, request: web.Request) -> web.Response | None:
        """403 for a peer outside routing_from, 401 without the routing key; None for the node's own Kamailio."""
        if not self.allowed_source(request.remote):
            return self.bad_request(request, 403, "forbidden_source", f"{request.remote} may not ask for routes (see --routing-from)")
        expected_key = self.expected_key
        if expected_key is not None and not hmac.compare_digest(
            request.headers.get(ROUTING_KEY_HEADER, "").encode("utf-8", "surrogateescape"), expected_key
        ):
            return self.bad_request(request, 401, "bad_routing_key", f"missing or wrong {ROUTING_KEY_HEADER}: only this node's Kamailio may ask for routes")
        return None

    async def rtjson(self, request: web.Request) -> web.Response:
        self.count_request()
        refused = self.refused(request)
        if refused is not None:
            return refused
        query = await read_json_body(request, self.max_body)
        if query.__class__ is BadBody:
            return self.bad_request(request, *query)
        if type(query) is not dict:
            return self.bad_request(request, 400, "not_object", f"request must be a JSON object, not {type(query).__name__}")

        table = self.current()
        start = perf_counter()
        try:
            reply, call = decide_call(table, query)
        except RequestError as exc:
            return self.bad_request(request, 400, "invalid_request", str(exc))
        data = encode(reply)
        self.observe(perf_counter() - start)
        self.count_decision()

        rt = reply["rtjson"]
        if not rt["success"]:
            code = rt["code"]
            self.refusal_counter(code).inc()
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


    async def health_targets(self, request: web.Request) -> web.Response:
        """GET /kamailio/health-targets: what a node's c4 health-sync hands its Kamailio to watch.

        The table's version is the ETag: a node that has it gets a 304.
        """
        refused = self.refused(request)
        if refused is not None:
            return refused
        table = self.current()
        etag = f'"{table.version}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        targets = base_targets(table.base)
        body = {"version": table.version, "targets": [[t.uri, t.line, list(t.users)] for t in targets.values()]}
        return web.Response(body=orjson.dumps(body), content_type=JSON, headers={"ETag": etag})


# The routing endpoint of the application.
ROUTING = web.AppKey("c4_routing", RoutingEndpoint)


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


async def health(request: web.Request) -> web.Response:
    """GET /health: the table in use, the store's state, uptime and reloads."""
    source = request.app[SOURCE]
    table = source.current()
    store = source.status()
    counters = source.counters
    body = {
        # Still routing with the last good table when the store is stale: 200 either way.
        "status": "ok" if store["state"] == "ok" else "degraded",
        "store": store,
        "table": {"version": table.version, "counts": dict(table.counts), "loaded_at": counters.loaded_at},
        "uptime_seconds": round(time.monotonic() - request.app[METRICS].started, 3),
        "reloads": counters.reloads,
        "failed_reloads": counters.failed_reloads,
    }
    return web.Response(body=orjson.dumps(body), content_type=JSON)


async def prometheus(request: web.Request) -> web.Response:
    """GET /metrics, in Prometheus text format."""
    metrics = request.app[METRICS]
    # Asking Kamailio for the live counts is blocking I/O: not on the loop.
    body = await asyncio.to_thread(metrics.exposition) if request.app.get(KAMAILIO_RPC) else metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def trunk_health(request: web.Request) -> web.Response:
    """GET /trunks/health: each watched target, who uses it, up or down since when, the last probe and failure (c4kemi.call.health)."""
    kamailio_rpc = request.app.get(KAMAILIO_RPC)
    if not kamailio_rpc:
        return error_response(503, "trunk health is read from Kamailio: run c4 serve --kamailio-rpc SOCKET (c4 kamailio --rpc-socket)")
    try:
        table = request.app[SOURCE].current()
        watched = base_targets(table.base)
        targets = await asyncio.to_thread(health_report, KamailioRpc(kamailio_rpc), watched)
    except RpcError as exc:
        return error_response(503, f"Kamailio did not give the trunk health: {exc}")
    body = {"down": sum(t["state"] == "down" for t in targets), "targets": targets}
    return web.Response(body=orjson.dumps(body), content_type=JSON)


async def channels(request: web.Request) -> web.Response:
    """GET /channels: the calls in progress per tenant and per trunk, with their limits (c4kemi.call.channels)."""
    kamailio_rpc = request.app.get(KAMAILIO_RPC)
    if not kamailio_rpc:
        return error_response(503, "live channel counts need c4 serve --kamailio-rpc SOCKET (c4 kamailio --rpc-socket)")
    try:
        body = await asyncio.to_thread(live_channels, KamailioRpc(kamailio_rpc), request.app[SOURCE].current())
    except RpcError as exc:
        return error_response(503, f"Kamailio did not give the counts: {exc}")
    return web.Response(body=orjson.dumps(body), content_type=JSON)
