"""``c4 kamailio``: run Kamailio in the foreground with the router.

    c4 kamailio --mode kemi --table FILE --listen udp:127.0.0.1:5060 [--workers N] [--shm MiB]
                [--memory-manager tlsf|qm|fm] [--max-transactions N] [--shm-reserve MiB] [--retry-after SECONDS]
                [--admit-interval MS]

Kamailio runs as a child (``-DD -E``: no daemon, logs on stderr) with the
mode's config from ``kamailio/``; everything the config needs comes in on
the command line (``-A`` defines, ``-l``, ``-n``, ``-m``, ``-M``, ``-Y``) and
the environment (``C4_TABLE``, ``PYTHONPATH``), so the config files are never
edited by hand. SIGINT/SIGTERM are forwarded to Kamailio, which stops its
workers and exits; if this launcher dies, Kamailio gets SIGTERM too.

Reload: the launcher runs ``c4 feed`` (c4kemi/sources/feed_writer.py), the node's one
checker of the table file: on a change it checks the document once and
publishes what changed to a private feed directory in Kamailio's runtime
directory (``C4_FEED``). Each Kamailio worker (and ``--serve-api``'s c4
serve) looks at the feed at most twice a second and applies the change set:
milliseconds, not a recompile. A broken document is logged and the last
good table keeps serving. Write the new file atomically (write a temp file
and rename it over the old one). The table is checked by ``c4 feed`` only:
a bad table at start stops the launch with its errors.

HTTP mode runs ``kamailio-http.cfg`` against the c4http service at
``--api`` (base URL; the routing endpoint is ``/kamailio/rtjson`` under it)
with ``http_async_client`` loaded by absolute path from ``build/modules``
(built by ``make setup``). ``--api-timeout`` (ms, below the 5000 ms
``fr_timer``) bounds each query, ``--max-inflight`` the queries waiting for
the API (past it new INVITEs get a fast 503), ``--api-workers`` the
http_async_client workers. With ``--serve-api`` (and ``--table`` or
``--dsn``) the launcher also runs ``c4 serve`` on the host and port of
``--api``, waits for its ``/health``, and stops it with Kamailio; c4 serve
reads the table feed (``--feed``) that ``c4 feed`` writes, as the KEMI
workers do.

With ``--dsn`` (either mode), ``c4 db follow`` is the feed's writer
instead of ``c4 feed``: it follows PostgreSQL's change log and publishes
the DIDs and routes that changed (c4kemi/db/changes.py). The launcher
first tries one connection: PostgreSQL unreachable, ``--require-db`` exits
at once (2); else with a table cache (``--table-cache``) the node routes
from it, and without one it waits for the database as long as it takes,
saying so every 30 s, Kamailio not started (nothing listens) until then.

Helpers that exit are started again, with a backoff, counted in the
node's status file (``helpers.json`` in the runtime directory,
``$C4_NODE_STATUS`` in every helper's environment): see
c4kemi/node/launch_supervision.py. "listening on ..." is said once
Kamailio answers on its RPC socket; whatever ends the node, its last line
is "c4 kamailio: stopped ..." and the runtime directory is removed.

Call records (docs/cdr.md): ``--cdr-file FILE`` or ``--cdr-db`` turns them on
in either mode: the launcher starts ``c4 cdr`` before Kamailio, on a free
loopback port for Kamailio's ``evapi``, and stops it after; ``c4 cdr``
authenticates there with ``C4_CDR_KEY`` (from the deployment secret, in its
environment). Calls refused for an unknown source (403) are only counted,
unless ``--cdr-unknown-sources``. Off by default: then evapi is not loaded
and no call keeps any record state.

Overload protection, both modes: past ``--max-transactions`` SIP
transactions in progress, or with less than ``--shm-reserve`` MiB (an
eighth of ``--shm``) free, new INVITEs get a stateless 503 with
``Retry-After: --retry-after`` (kamailio-base.cfg, "Admission control");
each SIP worker reads those counts at most every ``--admit-interval`` ms.
``--memory-manager`` picks Kamailio's allocator (``-x``/``-X``), TLSF by
default.

The options are c4kemi/node/launch_options.py's; c4kemi/node/launch_plan.py makes
the command line, environment and helpers from them (modes plug in there
through ``MODES``), and c4kemi/node/launch_supervision.py runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from .launch_options import shm_reserve
from .launch_plan import Helper, Launch, LaunchError, check_options, plan, rpc_socket
from .launch_supervision import STATUS_FILE, Node, Stopped, say

__all__ = ["dsn_where", "run_kamailio"]

DB_PROBE_TIMEOUT = 5.0  # seconds for PostgreSQL to answer the launcher's one connection at start


def run_kamailio(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except LaunchError as exc:
        print(f"c4 kamailio: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    check_options(args)
    node = Node(None)
    with node:  # from here a signal stops the node, at any step (and the runtime directory is removed)
        rundir = Path(tempfile.mkdtemp(prefix="c4-kamailio-"))  # 0700
        try:
            launch, command = plan(args, rundir)
            if args.dry_run:
                for name, value in launch.env.items():
                    print(f"{name}={value}")
                for helper in launch.helpers:
                    print(" ".join([*(f"{name}=***" for name in helper.env), *helper.argv]) + " &")
                print(" ".join(command))
                return 0
            node.status_path = rundir / STATUS_FILE
            return _launch(args, launch, command, rundir, node)
        finally:
            shutil.rmtree(rundir, ignore_errors=True)


def _launch(args: argparse.Namespace, launch: Launch, command: list[str], rundir: Path, node: Node) -> int:
    """Helpers, then Kamailio, supervised; whatever ends it, everything is stopped and the last line says so."""
    env = {**os.environ, **launch.env}
    try:
        node.check_stop()
        said, waiting = _database_at_start(args, launch)
        for line in [*launch.banner, *said, "Ctrl-C or SIGTERM stops the node"]:
            print(f"c4 kamailio: {line}", flush=True)
        for helper in launch.helpers:
            node.start(helper, waiting.get(id(helper)))
        from ..call.channels import KamailioRpc, RpcError

        rpc = KamailioRpc(rpc_socket(args, rundir), timeout=0.2)

        def routing() -> bool:
            try:
                rpc.call("core.uptime")
            except RpcError:
                return False
            return True

        code, reason = node.run(command, env, routing, lambda: _listening(args))
    except LaunchError as exc:
        say(str(exc))
        code, reason = 2, ": Kamailio not started"
    except Stopped as stop:
        code, reason = 0, f" (signal {signal.Signals(stop.args[0]).name}) before Kamailio started"
    finally:
        node.stop_helpers()
    say(f"stopped{reason}")
    return code


def _listening(args: argparse.Namespace) -> None:
    """Said once Kamailio answers: it routes now."""
    print(f"c4 kamailio: {args.mode} mode, listening on {', '.join(args.listen)}, {args.workers} workers, "
          f"{args.shm} MiB shm ({args.memory_manager}), new calls refused past {args.max_transactions} transactions in "
          f"progress or under {shm_reserve(args)} MiB free", flush=True)


# ---------------------------------------------------------------- PostgreSQL at start


def _database_at_start(args: argparse.Namespace, launch: Launch) -> tuple[list[str], dict[int, str]]:
    """With the table from PostgreSQL: can it be reached now? What the node does if not.

    Reached: nothing to add. Not reached: with --require-db, LaunchError
    (exit 2); with a table cache, the node routes from it (c4 db follow
    publishes it at once); without one, the node waits for the database,
    as long as it takes, and Kamailio does not start (nor listen) before.
    Returns the lines for the banner, and what to say, by helper, while the
    launcher waits for it.
    """
    follower = next((helper for helper in launch.helpers if helper.name == "db-follow"), None)
    if follower is None:
        return [], {}
    dsn = follower.env.get("C4_DSN") or args.dsn or os.environ.get("C4_DSN")
    if not dsn:
        return [], {}
    where = dsn_where(dsn)
    problem = database_problem(dsn)
    if problem is None:
        return [f"PostgreSQL at {where} answers"], {}
    if getattr(args, "require_db", False):
        raise LaunchError(f"PostgreSQL at {where} cannot be reached ({problem}), and --require-db says not to start without it")
    cache = _argument(follower, "--out")
    if cache is not None and cache.is_file():
        saved = datetime.fromtimestamp(cache.stat().st_mtime).astimezone().isoformat(timespec="seconds")
        return [f"PostgreSQL at {where} cannot be reached ({problem}): routing from the table cache {cache} "
                f"(saved {saved}) until it is back; c4 db follow takes its changes in then"], {}
    return ([f"waiting for PostgreSQL at {where}: no table cache yet ({cache}); Kamailio starts, and listens, "
             f"once the table is read (PostgreSQL: {problem})"],
            {id(follower): f"still waiting for PostgreSQL at {where}: no table cache yet"})


def _argument(helper: Helper, option: str) -> Path | None:
    try:
        return Path(helper.argv[helper.argv.index(option) + 1])
    except (ValueError, IndexError):
        return None


def database_problem(dsn: str, timeout: float = DB_PROBE_TIMEOUT) -> str | None:
    """Why PostgreSQL cannot be reached with DSN now (one connection, at most TIMEOUT seconds), or None."""
    from ..db.documents import connect

    async def probe() -> None:
        conn = await connect(dsn, timeout=timeout)
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), timeout + 1))
    except (OSError, TimeoutError) as exc:
        return getattr(exc, "strerror", None) or type(exc).__name__
    except Exception as exc:  # refused: authentication, no such database, a bad DSN ...
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def dsn_where(dsn: str) -> str:
    """Where a DSN points, without its user or password: host:port, every host of a multi-host DSN."""
    from ..db.dsn import describe

    return describe(dsn)
