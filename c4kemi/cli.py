"""The ``c4`` command line.

    c4 check FILE                          validate a routing document
    c4 route --table FILE [REQUEST_JSON]   dry-run decisions (stdin: one per line)
    c4 kamailio --mode kemi|http ...       run Kamailio with the router
    c4 serve --table FILE | --feed DIR | --dsn DSN ...  run the c4http service
    c4 feed --table FILE --out DIR         publish a document's changes to a table feed
    c4 health-sync --feed DIR|--api URL --kamailio-rpc SOCK   hand the table's trunk targets to Kamailio's health probes
    c4 cluster-watch --kamailio-rpc SOCK [--grace S]   end the calls of a lost cluster node
    c4 db migrate|import|export|token|follow   the PostgreSQL store
    c4 cdr --evapi HOST:PORT --file FILE | --db   collect the call records (c4 kamailio starts it)

Subcommands that need heavy imports (aiohttp) import them when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from .core.compiler import compile_validated
from .core.decision import RequestError, decide, encode
from .core.document import COLLECTIONS, DocumentError, load_document
from .core.overlaps import overlap_warnings
from .core.table import load_table
from .core.targets import target_warnings

EXAMPLE_TABLE = Path(__file__).parent / "examples" / "example.json"
# c4 serve's listen backlog. aiohttp's default, 128, overflowed when Kamailio's
# http_async_client opened hundreds of connections in a burst: the kernel
# dropped the SYNs, and a dropped SYN is retried after 1 s, the whole
# default --api-timeout (README, "Capacity and overload").
SERVE_BACKLOG = 4096


def cmd_check(args: argparse.Namespace) -> int:
    try:
        document = load_document(args.file)
        table = compile_validated(document)
    except DocumentError as exc:
        for error in exc.errors:
            print(f"{args.file}: {error}", file=sys.stderr)
        print(f"{args.file}: refused, {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for warning in target_warnings(document) + overlap_warnings(document):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    counts = ", ".join(f"{len(document[name])} {name}" for name in COLLECTIONS)
    print(f"{args.file}: ok, version {table.version}: {counts}")
    return 0


def answer_line(line: bytes | str, answer: Callable[[dict], bytes]) -> tuple[bytes, bool]:
    """One request line through ANSWER, and whether it failed.

    A malformed request gives one ``{"error": ...}`` line; so does a bug,
    and a batch goes on with the next line. Never a traceback.
    """
    try:
        query = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return orjson.dumps({"error": f"malformed JSON: {exc}"}) + b"\n", True
    try:
        return answer(query), False
    except RequestError as exc:
        return orjson.dumps({"error": str(exc)}) + b"\n", True
    except Exception as exc:  # a bug, not the request's fault: report it, go on with the next line
        return orjson.dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}) + b"\n", True


def route_line(table, line: bytes | str) -> bytes:
    """One reply line (without its newline) for one request line."""
    return answer_line(line, lambda query: encode(decide(table, query)))[0].rstrip(b"\n")


def cmd_route(args: argparse.Namespace) -> int:
    """``c4 route``: the reply Kamailio gets, or with ``--explain`` why (c4kemi.core.explain)."""
    try:
        table = load_table(args.table)
    except DocumentError as exc:
        print(exc, file=sys.stderr)
        return 1
    separator = b""
    if args.explain:
        from .core.explain import explain, render_text

        if args.json:
            def answer(query):
                return orjson.dumps(explain(table, query)) + b"\n"
        else:
            separator = b"\n"  # a blank line between explanations

            def answer(query):
                return render_text(explain(table, query)).encode()
    else:
        def answer(query):
            return encode(decide(table, query)) + b"\n"
    out = sys.stdout.buffer
    if args.request is not None:
        text, failed = answer_line(args.request, answer)
        out.write(text)
        return 1 if failed else 0
    first = True
    for line in sys.stdin.buffer:
        if line.strip():
            text, _ = answer_line(line, answer)
            out.write(text if first else separator + text)
            out.flush()
            first = False
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    import logging

    from .sources.feed_writer import watch_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    return watch_file(Path(args.table).resolve(), Path(args.out), args.interval)


def cmd_health_sync(args: argparse.Namespace) -> int:
    import logging

    from .node.health_sync import api_targets, feed_targets, run
    from .node.secret import ROUTING_ENV

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    source = feed_targets(Path(args.feed)) if args.feed else api_targets(args.api, os.environ.get(ROUTING_ENV))
    return run(source, args.kamailio_rpc, args.interval)


def cmd_cluster_watch(args: argparse.Namespace) -> int:
    import logging

    from .node.cluster_watch import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    return run(args.kamailio_rpc, args.grace, args.interval)


def cmd_kamailio(args: argparse.Namespace) -> int:
    from .node.launcher import run_kamailio

    return run_kamailio(args)


def cmd_db(args: argparse.Namespace) -> int:
    from .db.cli import run

    return run(args)


def cmd_cdr(args: argparse.Namespace) -> int:
    from .call.cdr_collector import run

    return run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from c4http.server import run_server

    return run_server(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="c4", description="c4 class-4 SIP router for Kamailio")
    parser.add_argument("--version", action="version", version=f"c4 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a routing document (.json or .toml)")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)

    route = sub.add_parser("route", help="print the routing reply for requests (dry run)")
    route.add_argument("--table", required=True, help="routing document (.json or .toml)")
    route.add_argument("request", nargs="?", help="one JSON request; without it, one request per line on stdin")
    route.add_argument("--explain", action="store_true",
                       help="explain each decision step by step instead (for support; never what Kamailio gets)")
    route.add_argument("--json", action="store_true", help="with --explain: the explanation as one JSON line per request")
    route.set_defaults(func=cmd_route)

    feed = sub.add_parser("feed", help="check a routing document once per change and publish what changed to a table feed")
    feed.add_argument("--table", required=True, help="routing document (.json or .toml) to watch")
    feed.add_argument("--out", required=True, help="the feed directory (node-local; made private) that Kamailio workers and c4 serve read")
    feed.add_argument("--interval", type=float, default=0.2, help="seconds between looks at the document (default 0.2)")
    feed.set_defaults(func=cmd_feed)

    sync = sub.add_parser("health-sync", help="keep Kamailio's trunk health targets equal to the table feed's (c4 kamailio runs it)")
    where = sync.add_mutually_exclusive_group(required=True)
    where.add_argument("--feed", help="the node's table feed directory")
    where.add_argument("--api", help="or the routing API's base URL (GET /kamailio/health-targets, with $C4_ROUTING_KEY)")
    sync.add_argument("--kamailio-rpc", required=True, help="Kamailio's JSON-RPC datagram socket")
    sync.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the feed and at Kamailio (default 1)")
    sync.set_defaults(func=cmd_health_sync)

    watch = sub.add_parser("cluster-watch", help="end the calls of a cluster node that is gone, so its channels come back "
                                                 "(c4 kamailio --cluster-node runs it)")
    watch.add_argument("--kamailio-rpc", required=True, help="Kamailio's JSON-RPC datagram socket")
    watch.add_argument("--grace", type=float, default=30.0,
                       help="seconds a node may stay out of DMQ (a restart) before its calls are ended (default 30)")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the cluster (default 1)")
    watch.set_defaults(func=cmd_cluster_watch)

    from .node.launch_options import add_arguments as add_kamailio_arguments

    kamailio = sub.add_parser("kamailio", help="run Kamailio with the router in the foreground")
    add_kamailio_arguments(kamailio)
    kamailio.set_defaults(func=cmd_kamailio)

    from .db.cli import add_arguments as add_db_arguments

    db = sub.add_parser("db", help="the PostgreSQL store: migrate, import, export, API tokens")
    add_db_arguments(db)
    db.set_defaults(func=cmd_db)

    from .call.cdr_collector import add_arguments as add_cdr_arguments

    cdr = sub.add_parser("cdr", help="collect Kamailio's call events into records (a file, or PostgreSQL)")
    add_cdr_arguments(cdr)
    cdr.set_defaults(func=cmd_cdr)

    serve = sub.add_parser("serve", help="run the c4http routing service")
    serve.add_argument("--table", help="routing document (.json or .toml), checked on each change by a c4 feed the service "
                       "starts, which publishes what changed; or --feed, or --dsn")
    serve.add_argument("--feed", help="the node's table feed written by `c4 feed` (what c4 kamailio --serve-api gives it)")
    serve.add_argument("--dsn", default=os.environ.get("C4_DSN"), help="PostgreSQL DSN: the table from the database (default: $C4_DSN)")
    serve.add_argument(
        "--table-cache", default=os.path.join(os.environ.get("C4_STATE_DIR", "/var/lib/c4"), "serve-table.json"),
        help="with --dsn: where the last good table is saved, and read when PostgreSQL is down at start "
             "(default: $C4_STATE_DIR/serve-table.json, else /var/lib/c4/serve-table.json)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address of the routing endpoint, /health and /metrics (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="its port (default 8080)")
    serve.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    serve.add_argument(
        "--backlog", type=int, default=SERVE_BACKLOG,
        help=f"listen backlog: connections the kernel queues before c4 serve accepts them (default {SERVE_BACKLOG}; "
             "capped by net.core.somaxconn)",
    )
    serve.add_argument("--max-body", type=int, default=64 * 1024, help="largest accepted request body in bytes (default 65536)")
    serve.add_argument(
        "--kamailio-rpc", metavar="SOCKET", default=None,
        help="Kamailio's JSON-RPC socket (c4 kamailio --rpc-socket): live calls per tenant and trunk "
             "in /metrics and GET /channels",
    )
    from c4http.options import add_api_arguments

    add_api_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, not a traceback; C4_DEBUG=1 shows it
        if os.environ.get("C4_DEBUG"):
            raise
        print(f"c4 {args.command}: internal error: {type(exc).__name__}: {exc} (C4_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70  # EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
