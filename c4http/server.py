"""``c4 serve``: run the c4http application on a routing table file, a table feed, or PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from pathlib import Path

from aiohttp import web

from c4kemi.core.document import DocumentError
from c4kemi.db.source import StoreUnavailable
from c4kemi.node.secret import ROUTING_ENV
from c4kemi.node.state import SecretFileError, read_secret_file
from c4kemi.sources import open_source
from c4kemi.sources.feed import CHECK_INTERVAL as FEED_CHECK_INTERVAL
from c4kemi.sources.feed import FeedError

from .app import api_listener, make_api_app, make_app
from .logfmt import logfmt
from .table_feed import FeedWriterProcess, WriterFailed
from .views import DEFAULT_ROUTING_FROM

__all__ = ["run_server"]

log = logging.getLogger("c4.http")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed: about a fifth less CPU per request here."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_server(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 1 if it cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    feed = getattr(args, "feed", None)
    try:
        if getattr(args, "dsn_file", None):
            args.dsn = read_secret_file(args.dsn_file, "--dsn-file")
        if getattr(args, "api_token_file", None):
            args.api_token = read_secret_file(args.api_token_file, "--api-token-file")
    except SecretFileError as exc:
        print(f"c4 serve: {exc}", file=sys.stderr)
        return 2
    # With --feed, --dsn (or $C4_DSN) is only the provisioning API's database: c4 db follow writes the feed.
    if sum(map(bool, (args.table, feed, args.dsn and not feed))) != 1:
        print("c4 serve: give --table FILE, --feed DIR or --dsn DSN (or $C4_DSN), one of them", file=sys.stderr)
        return 2
    api_token, api_listen = getattr(args, "api_token", None), getattr(args, "api_listen", None)
    if api_listen and not args.dsn:
        print("c4 serve: --api-listen needs a database: give --dsn or set C4_DSN", file=sys.stderr)
        return 2
    writer = None
    contexts = []
    try:
        if args.dsn and not feed:
            # The table arrives when the app starts (its lifecycle), then follows NOTIFY.
            source = open_source(dsn=args.dsn, cache_file=Path(args.table_cache).resolve())
            contexts.append(source.lifecycle)
            refresh, where, version = None, "postgresql", None
        else:
            if not feed:
                # A document: through a feed of its own, as in a node (c4http/table_feed.py).
                writer = FeedWriterProcess(args.table)
                writer.start()
                contexts.append(writer.supervise)
            # Only the app's refresh task takes changes in (check_interval=inf keeps the
            # stat off the request path), twice a second, with or without traffic, in a
            # thread: a new feed snapshot compiles off the event loop.
            source = open_source(feed=feed or writer.directory, check_interval=math.inf)
            refresh = FEED_CHECK_INTERVAL
            where, version = str(feed or args.table), source.current().version
    except (DocumentError, FeedError, WriterFailed) as exc:
        if writer is not None:
            writer.stop()
        print(f"c4 serve: refusing to start: {exc}", file=sys.stderr)
        return 1
    if args.dsn and not api_token:
        log.warning(logfmt(event="no_admin_token", detail="the provisioning API runs without an admin token ($C4_API_TOKEN or "
                           "--api-token-file): every admin call gets 401; tenant tokens still work"))
    access_log = logging.getLogger("aiohttp.access") if args.access_log else None
    routing_key = os.environ.get(ROUTING_ENV) or None  # the environment only: argv shows in ps
    if routing_key is None:
        log.warning(logfmt(event="no_routing_key", detail=f"{ROUTING_ENV} is not set: any local process in --routing-from"
                           " can ask for routes and read trunk passwords; c4 kamailio sets it"))
    app = make_app(
        source, source_contexts=contexts, max_body=args.max_body, refresh_interval=refresh,
        dsn=None if api_listen else args.dsn, api_token=api_token,
        routing_from=getattr(args, "routing_from", None) or DEFAULT_ROUTING_FROM,
        routing_key=routing_key,
        kamailio_rpc=getattr(args, "kamailio_rpc", None),
    )  # fmt: skip
    if api_listen:
        api_app = make_api_app(args.dsn, api_token, max_body=args.max_body)
        app.cleanup_ctx.append(api_listener(api_app, *api_listen, access_log=access_log))
    loop = new_event_loop()
    log.info(
        logfmt(
            event="starting", table=where, version=version,
            host=args.host, port=args.port, loop=type(loop).__module__.split(".")[0],
            api="off" if not args.dsn else f"{api_listen[0]}:{api_listen[1]}" if api_listen else "/api/v1",
        )
    )  # fmt: skip
    try:
        web.run_app(
            app,
            loop=loop,
            host=args.host,
            port=args.port,
            access_log=access_log,
            backlog=args.backlog,
            print=lambda message: log.info(logfmt(event="listening", detail=message.splitlines()[0].strip("= "))),
            handle_signals=True,  # SIGINT and SIGTERM: stop accepting, finish, run cleanups
        )
    except OSError as exc:
        print(f"c4 serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"c4 serve: refusing to start: {exc}", file=sys.stderr)
        return 1
    finally:
        if writer is not None:  # stopped by its cleanup context, unless the app never started
            writer.stop()
    log.info(logfmt(event="stopped"))
    return 0
