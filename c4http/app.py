"""The c4http aiohttp applications: the routing decision over HTTP, and the provisioning API.

    POST /kamailio/rtjson   routing query in, ``{"rtjson": ...}`` out, the same
                            bytes as ``c4 route`` gives for the same table
    POST /kamailio/explain  the same query in, why it routes as it does out
                            (a support tool, auth passwords masked; not for Kamailio)
    GET  /health            table version, entity counts, uptime, reloads
    GET  /metrics           Prometheus text format
    GET  /channels          the calls in progress, from Kamailio
    /api/v1/...             the provisioning API, when given a database
                            (c4http/provisioning.py, docs/api.md)

The application factories: each sets the application's keys, middlewares
and cleanup contexts, then its routes (c4http.routes). The handlers are in
c4http.views (the routing service), c4http.provisioning, c4http.cdrs and
c4http.openapi (the API); errors become JSON in c4http.middlewares.

The routing endpoint's replies carry trunk credentials, so it answers only
the addresses of ``routing_from`` (loopback by default; others get a 403)
and, given a routing key (``c4 kamailio`` always gives one), only queries
that carry it in ``X-C4-Routing-Key`` (others get a 401).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import asyncpg
from aiohttp import web

from c4kemi.db.documents import setup_connection
from c4kemi.db.dsn import connect_raw
from c4kemi.sources.table_source import TableSource

from .auth import ADMIN_TOKEN, PUBLIC_PATHS, authenticate
from .metrics import Metrics
from .middlewares import api_errors, json_errors
from .routes import setup_api_routes, setup_routes
from .views import DEFAULT_ROUTING_FROM, KAMAILIO_RPC, METRICS, ROUTING, SOURCE, RoutingEndpoint
from .web import API_PREFIX, DEFAULT_MAX_BODY, MAX_BODY, OPENAPI_PATH, POOL, background

__all__ = ["add_api", "api_listener", "make_api_app", "make_app"]

log = logging.getLogger("c4.http")

# The provisioning API's database and the most connections to it, on its application.
DSN = web.AppKey("c4_api_dsn", str)
POOL_SIZE = web.AppKey("c4_api_pool_size", int)
# How often the routing application's source is refreshed, when it has a refresh task.
REFRESH_INTERVAL = web.AppKey("c4_refresh_interval", float)
# An aiohttp cleanup context: set up until its yield, torn down after.
CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def make_app(
    source: TableSource,
    *,
    source_contexts: Sequence[CleanupContext] = (),
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

    ``source_contexts``: cleanup contexts the source needs while the app
    runs (started first, in order): PostgreSQL's follower, which gives the
    first table; c4 serve's feed writer.

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
    metrics = Metrics(source, kamailio_rpc)
    app = web.Application(client_max_size=max_body, middlewares=[json_errors])
    app[SOURCE] = source
    app[METRICS] = metrics
    app[MAX_BODY] = max_body
    app[ROUTING] = RoutingEndpoint(source, metrics, max_body=max_body, routing_from=routing_from, routing_key=routing_key)
    if kamailio_rpc:
        app[KAMAILIO_RPC] = kamailio_rpc
    # What the source needs running while the app serves (PostgreSQL's follower, the feed's writer).
    app.cleanup_ctx.extend(source_contexts)
    if refresh_interval is not None:
        app[REFRESH_INTERVAL] = refresh_interval
        app.cleanup_ctx.append(refresh_task)
    setup_routes(app)
    if dsn is not None:
        add_api(app, dsn, api_token)
    return app


def add_api(app: web.Application, dsn: str, api_token: str | None = None, *, pool_size: int = 10) -> None:
    """Serve the provisioning API of the database ``dsn`` under /api/v1 of ``app``."""
    api = web.Application(middlewares=[api_errors, authenticate])
    api[DSN] = dsn
    api[POOL_SIZE] = pool_size
    if api_token:
        api[ADMIN_TOKEN] = api_token
    api[PUBLIC_PATHS] = frozenset({API_PREFIX + OPENAPI_PATH})
    api.cleanup_ctx.append(pool_context)
    setup_api_routes(api)
    app.add_subapp(API_PREFIX, api)


def make_api_app(dsn: str, api_token: str | None = None, *, max_body: int = DEFAULT_MAX_BODY) -> web.Application:
    """An application serving only the API (``c4 serve --api-listen``)."""
    app = web.Application(client_max_size=max_body, middlewares=[json_errors])
    app[MAX_BODY] = max_body
    add_api(app, dsn, api_token)
    return app


def api_listener(api_app: web.Application, host: str, port: int, access_log: Any = None):
    """A cleanup context that serves ``api_app`` on its own address while the routing app runs."""

    async def serve(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(api_app, access_log=access_log)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"{exc.strerror or exc} (API listener {host}:{port})") from None
        yield
        await runner.cleanup()

    return serve


async def pool_context(app: web.Application) -> AsyncIterator[None]:
    """The API application's cleanup context: its connection pool."""
    # min_size=0: nothing connects at startup, so routing starts and
    # serves even while PostgreSQL is down; the API then answers 503.
    # connect_raw: any DSN form c4 takes; with several hosts, the read-write one,
    # each host tried in turn (a failover: the new primary; none yet: a 503).
    # A connection the old primary closed is replaced at its next acquire.
    app[POOL] = await asyncpg.create_pool(
        app[DSN], connect=connect_raw, init=setup_connection, reset=_reset_or_drop, min_size=0, max_size=app[POOL_SIZE],
        timeout=5, command_timeout=60,
    )
    yield
    await app[POOL].close()


async def _reset_or_drop(conn: asyncpg.Connection) -> None:
    """A connection back in the pool is reset; one the server cut mid-statement (a failover) cannot be: it is dropped.

    asyncpg's own reset raises then (InternalClientError, "another operation
    is in progress"), and that, not the request's own error (a 503
    "database unavailable"), reached the client as a 500.
    """
    try:
        await conn.reset()
    except Exception:  # noqa: BLE001 -- any failure: the connection is not reused; the next acquire connects anew
        conn.terminate()


async def refresh_task(app: web.Application) -> AsyncIterator[None]:
    """The routing application's cleanup context when it refreshes its source: the task that does."""
    async with background(_refresh_loop(app[SOURCE], app[REFRESH_INTERVAL]), "c4-table-refresh"):
        yield


async def _refresh_loop(source: TableSource, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(source.refresh)
        except Exception:  # the source logs refused documents itself; this is anything else
            log.exception("routing table refresh failed; still serving the previous table")
