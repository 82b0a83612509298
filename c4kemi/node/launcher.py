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
the DIDs and routes that changed (c4kemi/db/changes.py).

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
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .launch_options import shm_reserve
from .launch_plan import LaunchError, check_options, plan
from .launch_supervision import start_helper, stop_helper, supervise

__all__ = ["run_kamailio"]


def run_kamailio(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except LaunchError as exc:
        print(f"c4 kamailio: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    check_options(args)
    rundir = Path(tempfile.mkdtemp(prefix="c4-kamailio-"))  # 0700
    try:
        launch, command = plan(args, rundir)
        env = dict(os.environ)
        env.update(launch.env)
        if args.dry_run:
            for name, value in launch.env.items():
                print(f"{name}={value}")
            for helper in launch.helpers:
                print(" ".join([*(f"{name}=***" for name in helper.env), *helper.argv]) + " &")
            print(" ".join(command))
            return 0
        for line in launch.banner:
            print(f"c4 kamailio: {line}")
        print(f"c4 kamailio: {args.mode} mode, listening on {', '.join(args.listen)}, {args.workers} workers, "
              f"{args.shm} MiB shm ({args.memory_manager}), new calls refused past {args.max_transactions} transactions in progress or under {shm_reserve(args)} MiB free")
        print("c4 kamailio: Ctrl-C or SIGTERM stops Kamailio", flush=True)
        helpers = []
        try:
            for helper in launch.helpers:
                helpers.append(start_helper(helper))
            return supervise(command, env)
        finally:
            for helper in reversed(helpers):
                stop_helper(helper)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)

