"""``c4 db``: the PostgreSQL store from the command line.

    c4 db migrate                     create or update the schema (idempotent)
    c4 db import FILE                 replace all routing data with a document
    c4 db export                      print the routing document as JSON
    c4 db token create --tenant NAME  print a new tenant API token (shown once)
    c4 db token revoke ID             revoke a token
    c4 db token list                  list tokens (never the tokens themselves)
    c4 db follow --out FILE [--feed DIR]   keep FILE equal to the routing data; publish its changes to DIR (c4 kamailio --dsn runs it)
    c4 db cdr-prune --older-than-days N    delete call records older than N days, in batches (retention.py)

Every command takes ``--dsn`` (default: ``$C4_DSN``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import orjson

__all__ = ["add_arguments", "run"]

DSN_ENV = "C4_DSN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dsn = argparse.ArgumentParser(add_help=False)
    dsn.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"PostgreSQL DSN (default: ${DSN_ENV})")
    sub = parser.add_subparsers(dest="db_command", required=True)
    sub.add_parser("migrate", parents=[dsn], help="create or update the schema (idempotent)")
    load = sub.add_parser("import", parents=[dsn], help="replace all routing data with a document (one transaction)")
    load.add_argument("file")
    sub.add_parser("export", parents=[dsn], help="print the routing document as JSON")
    token = sub.add_parser("token", help="tenant tokens for the provisioning API")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", parents=[dsn], help="print a new token for a tenant (shown only once)")
    create.add_argument("--tenant", required=True)
    revoke = token_sub.add_parser("revoke", parents=[dsn], help="revoke a token by id")
    revoke.add_argument("id", type=int)
    token_sub.add_parser("list", parents=[dsn], help="list tokens: id, tenant, created, revoked")
    prune = sub.add_parser("cdr-prune", parents=[dsn], help="delete the call records (cdrs table) older than N days, in batches")
    prune.add_argument("--older-than-days", type=int, required=True, metavar="N",
                       help="delete records whose INVITE came more than N days ago (N >= 1)")
    prune.add_argument("--batch", type=int, default=5000, help="rows deleted per transaction (default 5000)")
    prune.add_argument("--pause", type=float, default=0.1, help="seconds between batches (default 0.1)")
    prune.add_argument("--dry-run", action="store_true", help="count the records it would delete, delete nothing")
    follow = sub.add_parser("follow", parents=[dsn], help="keep a routing document file equal to the database (LISTEN/NOTIFY)")
    follow.add_argument("--out", required=True, help="the file to write, atomically (the KEMI workers' table)")
    follow.add_argument("--check-interval", type=float, default=5.0, help="seconds between version checks besides NOTIFY (default 5)")
    follow.add_argument("--feed", help="publish to this table feed directory what the change log says changed (what c4 kamailio --dsn reads)")


def run(args: argparse.Namespace) -> int:
    if not args.dsn:
        print(f"c4 db: no database: give --dsn or set {DSN_ENV}", file=sys.stderr)
        return 2
    if args.db_command == "follow":
        import logging
        from pathlib import Path

        from .source import follow_to_file

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
        try:
            asyncio.run(follow_to_file(args.dsn, Path(args.out), args.check_interval, Path(args.feed) if args.feed else None))
        except KeyboardInterrupt:
            pass
        return 0
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from .documents import connect

    if args.db_command == "import":
        # Checked before connecting: a refused document changes nothing.
        from ..core.document import DocumentError, load_document

        try:
            args.document = load_document(args.file)
        except DocumentError as exc:
            for error in exc.errors:
                print(f"{args.file}: {error}", file=sys.stderr)
            print(f"{args.file}: refused, {len(exc.errors)} error(s); nothing changed", file=sys.stderr)
            return 1
    try:
        conn = await connect(args.dsn, timeout=10)
    except (TimeoutError, OSError) as exc:
        print(f"c4 db: cannot connect to PostgreSQL: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # asyncpg's own errors: bad password, no such database, ...
        print(f"c4 db: cannot connect to PostgreSQL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        return await COMMANDS[args.db_command](conn, args)
    finally:
        await conn.close()


async def _migrate(conn, args) -> int:
    from .migrate import migrate

    applied = await migrate(conn)
    print("applied: " + ", ".join(applied) if applied else "schema up to date")
    return 0


async def _import(conn, args) -> int:
    from ..core.overlaps import overlap_warnings
    from .documents import import_document

    document = args.document  # checked before connecting
    for warning in overlap_warnings(document):  # as c4 check says them: the admin may mean them
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    version = await import_document(conn, document)
    counts = ", ".join(f"{len(items)} {name}" for name, items in document.items())
    print(f"{args.file}: imported, routing version {version}: {counts}")
    return 0


async def _export(conn, args) -> int:
    from .documents import export_document

    document, _version = await export_document(conn)
    sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


async def _token(conn, args) -> int:
    from .tokens import create_token, list_tokens, revoke_token

    if args.token_command == "create":
        try:
            token_id, token = await create_token(conn, args.tenant)
        except LookupError as exc:
            print(f"c4 db token create: {exc.args[0]}", file=sys.stderr)
            return 1
        print(f"token {token_id} for tenant {args.tenant} (shown only now, keep it safe):", file=sys.stderr)
        print(token)
        return 0
    if args.token_command == "revoke":
        if await revoke_token(conn, args.id):
            print(f"token {args.id} revoked")
            return 0
        print(f"c4 db token revoke: no live token {args.id}", file=sys.stderr)
        return 1
    for row in await list_tokens(conn):
        revoked = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M:%S}" if row["revoked_at"] else "live"
        print(f"{row['id']}\t{row['tenant']}\tcreated {row['created_at']:%Y-%m-%d %H:%M:%S}\t{revoked}")
    return 0


async def _cdr_prune(conn, args) -> int:
    from .retention import count_older, cutoff_for, prune_cdrs

    if args.older_than_days < 1 or args.batch < 1 or args.pause < 0:
        print("c4 db cdr-prune: --older-than-days and --batch must be >= 1, --pause >= 0", file=sys.stderr)
        return 2
    if args.dry_run:
        cutoff = await cutoff_for(conn, args.older_than_days)
        count = await count_older(conn, cutoff)
        print(f"would delete {count} call records with an INVITE before {cutoff:%Y-%m-%d %H:%M:%S%z}")
        return 0
    result = await prune_cdrs(conn, args.older_than_days, args.batch, args.pause)
    print(f"deleted {result.deleted} call records with an INVITE before {result.cutoff:%Y-%m-%d %H:%M:%S%z} "
          f"({result.batches} batches of at most {args.batch})")
    return 0


COMMANDS = {"migrate": _migrate, "import": _import, "export": _export, "token": _token, "cdr-prune": _cdr_prune}
