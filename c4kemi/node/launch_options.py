"""``c4 kamailio``'s options: their names, defaults and help (c4kemi/node/launcher.py tells what they do).

Read by ``c4 kamailio --help`` (c4kemi/cli.py). What the values must be is
checked where they are used, in the launch plan (c4kemi/node/launch_plan.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = [
    "DEFAULT_ADMIT_INTERVAL", "DEFAULT_CDR_SPOOL", "DEFAULT_CLUSTER_PORT", "DEFAULT_LISTEN", "DEFAULT_MAX_TRANSACTIONS", "DEFAULT_MEMORY_MANAGER",
    "DEFAULT_RETRY_AFTER", "DEFAULT_TABLE_CACHE", "HTTP_ASYNC_BUILT", "HTTP_ASYNC_ENV", "MEMORY_MANAGERS", "SHM_RESERVE_FRACTION",
    "add_arguments", "shm_reserve",
]

DEFAULT_LISTEN = "udp:127.0.0.1:5060"
HTTP_ASYNC_ENV = "C4_HTTP_ASYNC_CLIENT"
# Where `make setup` builds it in a checkout (beside the directory holding the c4kemi package).
HTTP_ASYNC_BUILT = Path(__file__).resolve().parents[2] / "build" / "modules" / "http_async_client.so"
# In the instance's state directory (c4kemi/node/state.py) unless given.
DEFAULT_TABLE_CACHE = "routing-table.json"
DEFAULT_CDR_SPOOL = "cdr-spool.jsonl"
# Kamailio's memory managers (-x shared, -X private). TLSF by default: with
# qm (Debian's default) a third of the CPU under load went to qm_malloc
# (README, "Capacity and overload").
MEMORY_MANAGERS = ("tlsf", "qm", "fm")
DEFAULT_MEMORY_MANAGER = "tlsf"
# Admission control (kamailio-base.cfg): new INVITEs get 503 past this many
# SIP transactions in progress, with this Retry-After (README, "Capacity and overload").
DEFAULT_MAX_TRANSACTIONS = 1000
DEFAULT_RETRY_AFTER = 2
DEFAULT_ADMIT_INTERVAL = 10
# ... and while less than 1/8 of --shm is free: room for the calls already
# admitted (1000 in setup and the answered calls' lingering transactions).
SHM_RESERVE_FRACTION = 8
# A cluster's node-to-node bus (DMQ): a UDP socket of its own on each node.
DEFAULT_CLUSTER_PORT = 5090


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("kemi", "http"), default="kemi", help="where the decision runs (default: %(default)s)")
    parser.add_argument("--table", help="routing document (KEMI mode, or with --serve-api)")
    parser.add_argument("--listen", action="append", help="Kamailio listen socket, e.g. udp:127.0.0.1:5060 (repeatable)")
    parser.add_argument("--workers", type=int, default=4, help="SIP worker processes (default: %(default)s)")
    parser.add_argument("--shm", type=int, default=512, help="shared memory in MiB (default: %(default)s)")
    parser.add_argument("--pkg", type=int, default=32, help="private memory per process in MiB (default: %(default)s)")
    parser.add_argument(
        "--memory-manager", choices=MEMORY_MANAGERS, default=DEFAULT_MEMORY_MANAGER,
        help=f"Kamailio's memory manager for shared and private memory (-x/-X; default {DEFAULT_MEMORY_MANAGER}, "
             "Debian's default is qm)",
    )
    parser.add_argument(
        "--max-transactions", type=int, default=DEFAULT_MAX_TRANSACTIONS,
        help="overload protection: SIP transactions in progress at which new INVITEs get 503 with Retry-After "
             f"(default {DEFAULT_MAX_TRANSACTIONS})",
    )
    parser.add_argument("--shm-reserve", type=int, default=None,
                        help="overload protection: MiB of shared memory kept free; below it new INVITEs get 503 "
                             "(default: an eighth of --shm)")
    parser.add_argument("--retry-after", type=int, default=DEFAULT_RETRY_AFTER,
                        help=f"seconds in the Retry-After of an overload 503 (default {DEFAULT_RETRY_AFTER}; 0: no header)")
    parser.add_argument("--admit-interval", type=int, default=DEFAULT_ADMIT_INTERVAL,
                        help="overload protection: ms a SIP worker keeps its reading of the node's counts "
                             f"(default {DEFAULT_ADMIT_INTERVAL}; 0: read on every INVITE)")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="c4http base URL: HTTP mode asks it for routes; --serve-api runs c4 serve there (default: %(default)s)")
    parser.add_argument("--log-level", type=int, default=2, help="Kamailio debug level (default: %(default)s, info)")
    parser.add_argument("--api-timeout", type=int, default=1000, help="HTTP mode: ms to wait for the API before answering 503, below 5000 (default: %(default)s)")
    parser.add_argument("--max-inflight", type=int, default=100, help="HTTP mode: API queries in flight before new INVITEs get 503 (default 100)")
    parser.add_argument("--api-workers", type=int, default=4, help="HTTP mode: http_async_client workers, which also run the resume route (default: %(default)s)")
    parser.add_argument("--serve-api", action="store_true", help="also run c4 serve on the --api host and port, on the node's table: HTTP mode asks it for routes; "
                        "in either mode it serves /health, /metrics, /trunks/health (and the API with --dsn)")
    parser.add_argument(
        "--http-async-client", default=os.environ.get(HTTP_ASYNC_ENV) or str(HTTP_ASYNC_BUILT),
        help=f"HTTP mode: path of http_async_client.so (default: ${HTTP_ASYNC_ENV}, else the checkout's build/modules)",
    )
    parser.add_argument("--dsn", help="PostgreSQL DSN: the table comes from the database instead of --table (KEMI mode, or with "
                        "--serve-api). On the command line every local user sees it in ps: prefer $C4_DSN or --dsn-file "
                        "(either one is used when no --table is given)")
    parser.add_argument("--dsn-file", default=None, help="read the DSN from this file (mode 600, first line)")
    parser.add_argument("--api-token-file", default=None,
                        help="--serve-api with a database: the provisioning API's admin token, from this file (mode 600); "
                             "or $C4_API_TOKEN")
    parser.add_argument("--instance", default=None,
                        help="this instance's name, for its state directory (default: from the first --listen, e.g. udp-127.0.0.1-5060)")
    parser.add_argument("--state-dir", default=None,
                        help="the instance's state: deployment secret, table cache, call-record spool (default: $C4_STATE_DIR, "
                             "else /var/lib/c4/INSTANCE as root, $XDG_STATE_HOME/c4/INSTANCE otherwise)")
    parser.add_argument(
        "--table-cache", default=None,
        help="with a database: the node's copy of the table, kept by a follower and used when PostgreSQL is down at start "
             f"(default: STATE_DIR/{DEFAULT_TABLE_CACHE})",
    )
    parser.add_argument(
        "--rpc-socket", default=None,
        help="Kamailio's JSON-RPC datagram socket, read by `c4 serve --kamailio-rpc` for the live channel counts "
             "(default: rpc.sock in Kamailio's runtime directory, given to --serve-api's c4 serve)",
    )
    parser.add_argument("--cdr-file", default=None, help="call records on: append them to this JSON-lines file (docs/cdr.md)")
    parser.add_argument("--cdr-db", action="store_true",
                        help="call records on: ship them to the cdrs table of --dsn (or $C4_DSN), spooled in --cdr-spool")
    parser.add_argument("--cdr-spool", default=None, help=f"with --cdr-db: where records wait for PostgreSQL (default: STATE_DIR/{DEFAULT_CDR_SPOOL})")
    parser.add_argument("--cdr-spool-max-mb", type=int, default=1024,
                        help="with --cdr-db: the spool's bound in MiB; when full, new records are dropped and logged (default: %(default)s)")
    parser.add_argument("--cdr-unknown-sources", action="store_true",
                        help="with --cdr-file or --cdr-db: also record the calls refused 403 because their source is in no "
                             "trunk or IPBX (by default they are only counted: Kamailio statistic c4_refused_unknown_source)")
    parser.add_argument("--kamailio", default=None, help="Kamailio binary (default: kamailio on PATH or /usr/sbin)")
    parser.add_argument("--dry-run", action="store_true", help="print the Kamailio command and environment, do not start")
    parser.add_argument("--secret-file", default=None,
                        help="deployment secret (uac restore and dialog keys), created 0600 if missing "
                             "(default: $C4_SECRET_FILE, else STATE_DIR/secret; as root, /var/lib/c4/secret if an earlier "
                             "version made it and STATE_DIR has none)")
    cluster = parser.add_argument_group("cluster (docs/cluster.md)")
    cluster.add_argument("--node-name", default=None,
                         help="this node's name in its call records (default: the host name)")
    cluster.add_argument("--cluster-node", type=int, default=None, metavar="N",
                         help="join a cluster as node N (1 to 16, unique in the cluster): calls, and so channel and "
                              "call-rate limits, are shared with the --cluster-peer nodes over Kamailio's DMQ")
    cluster.add_argument("--cluster-peer", action="append", default=[], metavar="HOST",
                         help="another node of the cluster, by address (repeatable, at most 3; the rest are learned "
                              "from them): it listens for SIP on the same port as this node, and for DMQ on --cluster-port")
    cluster.add_argument("--cluster-grace", type=float, default=30.0,
                         help="seconds a node may be out of the cluster (a restart) before the others end its calls "
                              "and take its channels back (default: %(default)s)")
    cluster.add_argument("--cluster-port", type=int, default=DEFAULT_CLUSTER_PORT,
                         help="UDP port of every node's DMQ socket, on the address of its first --listen "
                              "(default: %(default)s)")
    parser.add_argument("--require-db", action="store_true",
                        help="with a database: exit at once (code 2) when PostgreSQL cannot be reached at start, instead of "
                             "routing from the table cache or waiting for the database")


def shm_reserve(args: argparse.Namespace) -> int:
    """MiB of shared memory the admission control keeps free: --shm-reserve, else an eighth of --shm."""
    return args.shm // SHM_RESERVE_FRACTION if args.shm_reserve is None else args.shm_reserve
