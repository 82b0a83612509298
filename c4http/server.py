"""``c4 serve``: run the c4http application on a routing table file."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from aiohttp import web

from c4kemi.document import DocumentError
from c4kemi.store import FileTableSource

from .app import make_app
from .logfmt import logfmt

__all__ = ["run_server"]

log = logging.getLogger("c4.http")

REFRESH_INTERVAL = 1.0  # seconds between checks of the table file


def run_server(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 1 if it cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        # Only the app's refresh task reloads (check_interval=inf keeps the
        # stat off the request path), once a second, with or without traffic.
        source = FileTableSource(args.table, check_interval=math.inf)
    except DocumentError as exc:
        print(f"c4 serve: refusing to start: {exc}", file=sys.stderr)
        return 1
    table = source.current()
    app = make_app(source, max_body=args.max_body, refresh_interval=REFRESH_INTERVAL)
    access_log = logging.getLogger("aiohttp.access") if args.access_log else None
    log.info(logfmt(event="starting", table=str(args.table), version=table.version, host=args.host, port=args.port))
    try:
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            access_log=access_log,
            print=lambda message: log.info(logfmt(event="listening", detail=message.splitlines()[0].strip("= "))),
            handle_signals=True,  # SIGINT and SIGTERM: stop accepting, finish, run cleanups
        )
    except OSError as exc:
        print(f"c4 serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info(logfmt(event="stopped"))
    return 0
