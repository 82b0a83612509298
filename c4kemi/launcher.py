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

Reload: the launcher runs ``c4 feed`` (c4kemi/feed.py), the node's one
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

Modes plug in through ``MODES``: a mode names its config file and prepares
its defines, environment, banner and helper processes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .secret import SECRET_ENV

PACKAGE_DIR = Path(__file__).resolve().parent
# The directory holding the c4kemi package: the checkout, or site-packages.
PACKAGE_ROOT = PACKAGE_DIR.parent
# kamailio/ ships inside the package (c4kemi/kamailio links to it in a checkout).
CONFIG_DIR = (PACKAGE_DIR / "kamailio").resolve()
KEMI_SCRIPT = CONFIG_DIR / "c4_kemi.py"  # a shim importing c4kemi.kemi, see there
DEFAULT_LISTEN = "udp:127.0.0.1:5060"
HTTP_ASYNC_ENV = "C4_HTTP_ASYNC_CLIENT"
# Where `make setup` builds it in a checkout.
HTTP_ASYNC_BUILT = PACKAGE_ROOT / "build" / "modules" / "http_async_client.so"
SIPP_SCENARIOS = PACKAGE_ROOT / "tests" / "e2e" / "scenarios"  # in a checkout only
DEFAULT_TABLE_CACHE = Path("/var/lib/c4/routing-table.json")
DEFAULT_CDR_SPOOL = Path("/var/lib/c4/cdr-spool.jsonl")
RTJSON_PATH = "/kamailio/rtjson"  # c4http.web.RTJSON_PATH (not imported: no aiohttp here)
# tm's fr_timer (kamailio-base.cfg): the API must answer (or time out) before it.
CFG_FR_TIMER_MS = 5000
API_START_TIMEOUT = 20.0  # seconds for c4 serve to answer /health
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


class LaunchError(Exception):
    """Kamailio cannot be started as asked; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("kemi", "http"), default="kemi")
    parser.add_argument("--table", help="routing document (KEMI mode, or with --serve-api)")
    parser.add_argument("--listen", action="append", help="Kamailio listen socket, e.g. udp:127.0.0.1:5060 (repeatable)")
    parser.add_argument("--workers", type=int, default=4, help="SIP worker processes")
    parser.add_argument("--shm", type=int, default=512, help="shared memory in MiB")
    parser.add_argument("--pkg", type=int, default=32, help="private memory per process in MiB")
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
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="c4http base URL (HTTP mode)")
    parser.add_argument("--log-level", type=int, default=2, help="Kamailio debug level (2: info)")
    parser.add_argument("--api-timeout", type=int, default=1000, help="HTTP mode: ms to wait for the API before answering 503 (< 5000)")
    parser.add_argument("--max-inflight", type=int, default=100, help="HTTP mode: API queries in flight before new INVITEs get 503 (default 100)")
    parser.add_argument("--api-workers", type=int, default=4, help="HTTP mode: http_async_client workers (they also run the resume route)")
    parser.add_argument("--serve-api", action="store_true", help="HTTP mode: also run `c4 serve --table FILE` on the --api host and port")
    parser.add_argument(
        "--http-async-client", default=os.environ.get(HTTP_ASYNC_ENV) or str(HTTP_ASYNC_BUILT),
        help=f"HTTP mode: path of http_async_client.so (default: ${HTTP_ASYNC_ENV}, else the checkout's build/modules)",
    )
    parser.add_argument("--dsn", help="PostgreSQL DSN: the table comes from the database instead of --table (KEMI mode, or with --serve-api)")
    parser.add_argument(
        "--table-cache", default=str(DEFAULT_TABLE_CACHE),
        help="with --dsn: the node's copy of the table, kept by a follower and used when PostgreSQL is down at start",
    )
    parser.add_argument(
        "--rpc-socket", default=None,
        help="Kamailio's JSON-RPC datagram socket, read by `c4 serve --kamailio-rpc` for the live channel counts "
             "(default: rpc.sock in Kamailio's runtime directory, given to --serve-api's c4 serve)",
    )
    parser.add_argument("--cdr-file", default=None, help="call records on: append them to this JSON-lines file (docs/cdr.md)")
    parser.add_argument("--cdr-db", action="store_true",
                        help="call records on: ship them to the cdrs table of --dsn (or $C4_DSN), spooled in --cdr-spool")
    parser.add_argument("--cdr-spool", default=str(DEFAULT_CDR_SPOOL), help="with --cdr-db: where records wait for PostgreSQL")
    parser.add_argument("--cdr-spool-max-mb", type=int, default=1024,
                        help="with --cdr-db: the spool's bound in MiB; when full, new records are dropped (and logged)")
    parser.add_argument("--cdr-unknown-sources", action="store_true",
                        help="with --cdr-file or --cdr-db: also record the calls refused 403 because their source is in no "
                             "trunk or IPBX (by default they are only counted: Kamailio statistic c4_refused_unknown_source)")
    parser.add_argument("--kamailio", default=None, help="Kamailio binary (default: kamailio on PATH or /usr/sbin)")
    parser.add_argument("--dry-run", action="store_true", help="print the Kamailio command and environment, do not start")
    parser.add_argument("--secret-file", default=None,
                        help="deployment secret (uac restore and dialog keys), created 0600 if missing "
                             "(default: $C4_SECRET_FILE, $C4_STATE_DIR/secret, /var/lib/c4/secret as root)")


@dataclass
class Launch:
    """What one mode contributes to the Kamailio command line."""

    config: Path
    defines: dict[str, str | int | None] = field(default_factory=dict)  # -A NAME=VALUE (None: just NAME)
    env: dict[str, str] = field(default_factory=dict)
    banner: list[str] = field(default_factory=list)
    helpers: list[Helper] = field(default_factory=list)
    rundir: Path = Path(".")  # Kamailio's runtime directory (private, removed on exit)


@dataclass
class Helper:
    """A process started (and ready) before Kamailio, stopped after it: c4 serve, c4 db follow."""

    argv: list[str]
    what: str  # for messages, e.g. "c4 serve on 127.0.0.1:8080"
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)  # the DSN travels here, never on a command line
    idle: bool = False  # the table's writer: the lowest CPU priority, so it never takes CPU from SIP workers


def http_answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return ready


def table_cache(args: argparse.Namespace) -> Path:
    """The node's copy of the PostgreSQL table; its directory is made private (it holds trunk passwords)."""
    path = Path(args.table_cache).resolve()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"--table-cache {path}: cannot create its directory: {exc.strerror}") from None
    return path


def follower(args: argparse.Namespace, path: Path, feed: Path) -> Helper:
    """c4 db follow: keeps PATH, the node's copy of the table, equal to PostgreSQL, and publishes it to FEED."""
    argv = [sys.executable, "-m", "c4kemi.cli", "db", "follow", "--out", str(path), "--feed", str(feed)]
    return Helper(argv, f"c4 db follow ({path})", (feed / "current").is_file, {"C4_DSN": args.dsn}, idle=True)


def feed_writer(table_path: Path, feed: Path) -> Helper:
    """c4 feed: checks TABLE_PATH once per change and publishes what changed to FEED."""
    argv = [sys.executable, "-m", "c4kemi.cli", "feed", "--table", str(table_path), "--out", str(feed)]
    return Helper(argv, f"c4 feed ({table_path})", (feed / "current").is_file, idle=True)


@dataclass(frozen=True)
class Mode:
    config_name: str
    prepare: Callable[[argparse.Namespace, Launch], None]


def quoted(value: str | Path) -> str:
    """A string define for the cfg preprocessor: -A 'NAME="value"'."""
    text = str(value)
    if '"' in text:
        raise LaunchError(f"a double quote cannot be passed to Kamailio as a define: {text!r}")
    return f'"{text}"'


# Above this size the launcher does not read the table for its call hint (start time, issue #8).
HINT_MAX_BYTES = 1 << 20


def table_file(path: str | None) -> tuple[Path, dict | None]:
    """The table file, and its document for the call hint when it is small.

    Not checked here: ``c4 feed`` checks it once, before Kamailio starts
    (a refused table stops the launch with its errors), and Kamailio's main
    process compiles what it published without checking again.
    """
    if not path:
        raise LaunchError("--table FILE is required")
    table_path = Path(path).resolve()
    if not table_path.is_file():
        raise LaunchError(f"{path}: no such file")
    document = None
    if table_path.stat().st_size <= HINT_MAX_BYTES:
        from .document import DocumentError, parse_document

        try:
            document = parse_document(table_path.read_bytes(), table_path.suffix.lower().lstrip(".") or "json")
        except DocumentError:
            pass  # c4 feed names the errors
    return table_path, document


def python_path() -> str:
    """Where c4kemi is and this venv's site-packages, for the embedded interpreter."""
    paths = [str(PACKAGE_ROOT)]
    for key in ("purelib", "platlib"):
        site = sysconfig.get_paths()[key]
        if site not in paths:
            paths.append(site)
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        paths.append(inherited)
    return os.pathsep.join(paths)


def call_hint(document: dict, listen: str) -> list[str]:
    """sipp commands that place a test call through the router.

    In a checkout, the test scenarios (tests/e2e/scenarios), which follow
    Record-Route so that ACK and BYE go through the router too; installed,
    sipp's built-in uac/uas, which do not.
    """
    hostport = listen.split(":", 1)[1] if listen.count(":") >= 2 else listen
    if SIPP_SCENARIOS.is_dir():
        uas, uac = f"-sf {SIPP_SCENARIOS / 'uas_answer.xml'}", f"-sf {SIPP_SCENARIOS / 'uac_call.xml'}"
        keys = " -key caller 0611111111 -key caller_name Alice"
    else:
        uas, uac, keys = "-sn uas", "-sn uac", ""
    source, callee = "127.0.0.10", None
    for ipbx in document.get("ipbxs", []):
        hosts = [cidr.split("/")[0] for cidr in ipbx.get("sources", []) if "/" not in cidr or cidr.endswith(("/32", "/128"))]
        if hosts:
            source = hosts[0]
            targets = ipbx.get("targets") or []
            callee = targets[0].split(":", 1)[1] if targets else None
            break
    lines = []
    if callee and ":" in callee and not callee.startswith("["):
        host, port = callee.rsplit(":", 1)
        lines.append(f"callee: sipp {uas} -i {host} -p {port} -m 1")
    lines.append(f"caller: sipp {uac} -i {source} -p 0 -s 0612345678{keys} -m 1 {hostport}")
    return lines


def prepare_kemi(args: argparse.Namespace, launch: Launch) -> None:
    feed = launch.rundir / "feed"
    if args.dsn:
        if args.table:
            raise LaunchError("--table or --dsn, not both: with --dsn the table comes from PostgreSQL")
        table_path = table_cache(args)
        launch.helpers.append(follower(args, table_path, feed))
        document = None
    else:
        table_path, document = table_file(args.table)
        launch.helpers.append(feed_writer(table_path, feed))
    if sys.version_info[:2] != (3, 11):
        launch.banner.append(
            f"warning: this is Python {sys.version_info[0]}.{sys.version_info[1]}; app_python3 embeds 3.11, "
            "so its site-packages may not match (run c4 from a venv made with /usr/bin/python3)"
        )
    launch.defines["C4_KEMI_SCRIPT"] = quoted(KEMI_SCRIPT)
    launch.env["C4_TABLE"] = str(table_path)
    launch.env["C4_FEED"] = str(feed)
    launch.env["PYTHONPATH"] = python_path()
    launch.env["PYTHONDONTWRITEBYTECODE"] = "1"
    if args.dsn:
        launch.banner.append(f"routing table from PostgreSQL, kept in {table_path} and published to {feed} by c4 db follow")
        return
    launch.banner.append(f"routing table {table_path}: checked by c4 feed on change, workers take in what changed within a second")
    hint(launch, document, args)


def hint(launch: Launch, document: dict | None, args: argparse.Namespace) -> None:
    if isinstance(document, dict):
        launch.banner.append("place a test call (called number from the example table):")
        launch.banner.extend("  " + line for line in call_hint(document, args.listen[0]))


def api_endpoint(api: str) -> tuple[str, str, int]:
    """--api base URL -> (routing endpoint URL, host, port)."""
    parts = urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LaunchError(f"--api {api!r}: expected a base URL such as http://127.0.0.1:8080")
    if parts.query or parts.fragment:
        raise LaunchError(f"--api {api!r}: no query or fragment, just the base URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise LaunchError(f"--api {api!r}: bad port") from None
    url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{RTJSON_PATH}"
    return url, parts.hostname, port


def prepare_http(args: argparse.Namespace, launch: Launch) -> None:
    url, host, port = api_endpoint(args.api)
    if not 1 <= args.api_timeout < CFG_FR_TIMER_MS:
        raise LaunchError(f"--api-timeout must be between 1 and {CFG_FR_TIMER_MS - 1} ms (below fr_timer, {CFG_FR_TIMER_MS} ms)")
    if args.max_inflight < 1 or args.api_workers < 1:
        raise LaunchError("--max-inflight and --api-workers must be >= 1")
    if args.max_inflight > args.max_transactions:
        # Every query in flight is a transaction in progress: the node's bound would always bite first.
        raise LaunchError(f"--max-inflight ({args.max_inflight}) cannot exceed --max-transactions ({args.max_transactions})")
    module = Path(args.http_async_client).resolve()
    if not module.is_file():
        raise LaunchError(
            f"{module} is missing: HTTP mode needs the http_async_client module, which Debian does not ship. "
            f"In a checkout `make setup` builds it; otherwise run {CONFIG_DIR / 'build-http-async-client.sh'} DIR "
            f"and pass --http-async-client DIR/http_async_client.so (or set ${HTTP_ASYNC_ENV})"
        )
    launch.defines["C4_API_URL"] = quoted(url)
    launch.defines["C4_API_TIMEOUT"] = args.api_timeout
    launch.defines["C4_API_WORKERS"] = args.api_workers
    launch.defines["C4_MAX_INFLIGHT"] = args.max_inflight
    launch.defines["C4_HTTP_ASYNC_MODULE"] = quoted(module)
    launch.banner.append(
        f"routing API {url}: {args.api_timeout} ms timeout, at most {args.max_inflight} queries in flight, "
        f"{args.api_workers} http_async_client workers"
    )
    if args.serve_api:
        if urlsplit(args.api).scheme != "http" or urlsplit(args.api).path.strip("/"):
            raise LaunchError(f"--serve-api runs c4 serve at the root of a plain http URL, not {args.api!r}")
        argv = [sys.executable, "-m", "c4kemi.cli", "serve", "--host", host, "--port", str(port)]
        health = http_answers(f"http://{urlsplit(args.api).netloc}/health")
        feed = launch.rundir / "feed"
        if args.dsn:
            if args.table:
                raise LaunchError("--table or --dsn, not both: with --dsn the table comes from PostgreSQL")
            # c4 db follow writes the feed from the change log; c4 serve reads it and serves the API on the database.
            cache = table_cache(args)
            launch.helpers.append(follower(args, cache, feed))
            launch.helpers.append(Helper(argv + ["--feed", str(feed)], f"c4 serve on {host}:{port}", health, {"C4_DSN": args.dsn}))
            launch.banner.append(f"c4 serve on {host}:{port}, routing table from PostgreSQL through c4 db follow and the feed {feed} "
                                 f"(saved in {cache})")
            return
        table_path, document = table_file(args.table)
        launch.helpers.append(feed_writer(table_path, feed))
        launch.helpers.append(Helper(argv + ["--feed", str(feed)], f"c4 serve on {host}:{port}", health))
        launch.banner.append(f"c4 serve on {host}:{port}, routing table {table_path} through the feed {feed} (changes taken in within a second)")
        hint(launch, document, args)
    elif args.table or (args.dsn and not args.cdr_db):
        raise LaunchError("--table and --dsn are read by c4 serve in HTTP mode: add --serve-api, or run c4 serve yourself")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_cdr(args: argparse.Namespace, launch: Launch) -> None:
    """Call records on (--cdr-file, --cdr-db): evapi in Kamailio, c4 cdr beside it."""
    if args.cdr_file and args.cdr_db:
        raise LaunchError("--cdr-file or --cdr-db, not both")
    if not (args.cdr_file or args.cdr_db):
        if getattr(args, "cdr_unknown_sources", False):
            raise LaunchError("--cdr-unknown-sources needs --cdr-file or --cdr-db")
        return
    evapi = f"127.0.0.1:{free_loopback_port()}"
    argv = [sys.executable, "-m", "c4kemi.cli", "cdr", "--evapi", evapi]
    env = {}
    if args.cdr_db:
        dsn = args.dsn or os.environ.get("C4_DSN")
        if not dsn:
            raise LaunchError("--cdr-db needs --dsn or $C4_DSN")
        if args.cdr_spool_max_mb < 1:
            raise LaunchError("--cdr-spool-max-mb must be >= 1")
        output = Path(args.cdr_spool).resolve()
        argv += ["--db", "--spool", str(output), "--spool-max-mb", str(args.cdr_spool_max_mb)]
        env["C4_DSN"] = dsn
        where = f"the cdrs table (spooled in {output}, at most {args.cdr_spool_max_mb} MiB)"
    else:
        output = Path(args.cdr_file).resolve()
        argv += ["--file", str(output)]
        where = str(output)
    launch.helpers.append(Helper(argv, f"c4 cdr on evapi {evapi}", output.exists, env))
    launch.defines["C4_CDR_EVAPI"] = quoted(evapi)
    if getattr(args, "cdr_unknown_sources", False):
        launch.defines["C4_CDR_UNKNOWN_SOURCES"] = 1
        where += ", unknown sources' refusals included"
    launch.banner.append(f"call records to {where}")


MODES: dict[str, Mode] = {
    "kemi": Mode("kamailio-kemi.cfg", prepare_kemi),
    "http": Mode("kamailio-http.cfg", prepare_http),
}


def kamailio_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    found = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise LaunchError("kamailio not found (Debian package kamailio; run make setup)")
    return found


def build_command(args: argparse.Namespace, launch: Launch, rundir: Path) -> list[str]:
    command = [
        kamailio_binary(args.kamailio),
        "-f", str(launch.config),
        "-DD", "-E",
        "-m", str(args.shm),
        "-M", str(args.pkg),
        "-x", args.memory_manager,
        "-X", args.memory_manager,
        "-n", str(args.workers),
        "-Y", str(rundir),
        "-w", str(rundir),
    ]
    for listen in args.listen:
        command += ["-l", listen]
    defines = {
        "C4_LOG_LEVEL": args.log_level,
        "C4_CTL_SOCKET": quoted(f"unix:{rundir / 'ctl.sock'}"),
        "C4_RPC_SOCKET": quoted(rpc_socket(args, rundir)),
        "C4_MAX_TRANSACTIONS": args.max_transactions,
        "C4_SHM_RESERVE": shm_reserve(args),
        "C4_RETRY_AFTER": args.retry_after,
        "C4_ADMIT_INTERVAL": args.admit_interval,
    }
    defines.update(launch.defines)
    for name, value in defines.items():
        command += ["-A", name if value is None else f"{name}={value}"]
    return command


def shm_reserve(args: argparse.Namespace) -> int:
    """MiB of shared memory the admission control keeps free: --shm-reserve, else an eighth of --shm."""
    return args.shm // SHM_RESERVE_FRACTION if args.shm_reserve is None else args.shm_reserve


def rpc_socket(args: argparse.Namespace, rundir: Path) -> str:
    """Where Kamailio answers JSON-RPC (the live channel counts)."""
    return str(Path(args.rpc_socket).resolve()) if getattr(args, "rpc_socket", None) else str(rundir / "rpc.sock")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM if the launcher goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def _idle_child() -> None:
    """In a writer's child before exec: die with the launcher, and run only on CPU time SIP workers leave.

    SCHED_IDLE (docs/scale.md, "The writer's CPU priority"): a Kamailio
    worker woken by a packet preempts it at once, and under contention it
    gets a minimal share (not none: a change still gets through, slowly).
    nice 19 where the policy cannot be set. Inherited across exec.
    """
    _die_with_parent()
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def run_kamailio(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except LaunchError as exc:
        print(f"c4 kamailio: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    mode = MODES[args.mode]
    if not args.listen:
        args.listen = [DEFAULT_LISTEN]
    if args.workers < 1 or args.shm < 16 or args.pkg < 4:
        raise LaunchError("--workers must be >= 1, --shm >= 16 MiB, --pkg >= 4 MiB")
    if args.max_transactions < 1 or args.retry_after < 0 or args.admit_interval < 0:
        raise LaunchError("--max-transactions must be >= 1, --retry-after and --admit-interval >= 0")
    if args.shm_reserve is not None and not 0 <= args.shm_reserve <= args.shm:
        raise LaunchError(f"--shm-reserve must be between 0 and --shm ({args.shm} MiB)")
    rundir = Path(tempfile.mkdtemp(prefix="c4-kamailio-"))  # 0700
    try:
        launch = Launch(config=CONFIG_DIR / mode.config_name, rundir=rundir)
        mode.prepare(args, launch)
        add_cdr(args, launch)
        _add_secret_keys(args, launch)
        if not launch.config.is_file():
            raise LaunchError(f"{launch.config}: config file missing")
        command = build_command(args, launch, rundir)
        for helper in launch.helpers:  # --serve-api: c4 serve reads the live counts
            if "serve" in helper.argv:
                helper.argv += ["--kamailio-rpc", rpc_socket(args, rundir)]
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
                helpers.append(_start_helper(helper))
            return _supervise(command, env)
        finally:
            for helper in reversed(helpers):
                _stop_helper(helper)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _add_secret_keys(args: argparse.Namespace, launch: Launch) -> None:
    """The keys derived from the deployment secret, in Kamailio's environment (see c4kemi/secret.py)."""
    from .secret import CDR_KEY_ENV, ROUTING_ENV, SecretError, default_path, kamailio_env, load_or_create

    path = getattr(args, "secret_file", None) or default_path()
    if args.dry_run:  # name the file, create nothing, print no key
        launch.env.update({name: f"(derived from {path})" for name in SECRET_ENV})
    else:
        try:
            launch.env.update(kamailio_env(load_or_create(path)))
        except SecretError as exc:
            raise LaunchError(f"deployment secret: {exc}") from None
    if "C4_CDR_EVAPI" not in launch.defines:  # records off: nobody needs the call record key
        launch.env.pop(CDR_KEY_ENV, None)
    for helper in launch.helpers:  # --serve-api: c4 serve answers only queries with the routing key
        if "serve" in helper.argv:
            helper.env[ROUTING_ENV] = launch.env[ROUTING_ENV]
        if "cdr" in helper.argv:  # c4 cdr authenticates on evapi with it
            helper.env[CDR_KEY_ENV] = launch.env[CDR_KEY_ENV]


def _start_helper(helper: Helper) -> subprocess.Popen:
    """Start a helper and wait until it is ready."""
    proc = subprocess.Popen(helper.argv, stdin=subprocess.DEVNULL, env={**os.environ, **helper.env},
                            preexec_fn=_idle_child if helper.idle else _die_with_parent)
    deadline = time.monotonic() + API_START_TIMEOUT
    while not helper.ready():
        code = proc.poll()
        if code is not None:
            raise LaunchError(f"{helper.what} exited with code {code} before it was ready; Kamailio not started")
        if time.monotonic() > deadline:
            _stop_helper(proc)
            raise LaunchError(f"{helper.what} was not ready within {API_START_TIMEOUT:.0f}s; Kamailio not started")
        time.sleep(0.1)
    if proc.poll() is not None:  # something else answered in its place
        raise LaunchError(f"{helper.what} exited with code {proc.returncode}; is its port already taken?")
    print(f"c4 kamailio: {helper.what} is up (pid {proc.pid})", flush=True)
    return proc


def _stop_helper(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _supervise(command: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        print(f"c4 kamailio: stopped (signal {signal.Signals(stopping[0]).name}), Kamailio exit code {code}", file=sys.stderr)
        return 0 if code in (0, -signal.SIGTERM) else exit_status(code)
    if code != 0:
        print(f"c4 kamailio: Kamailio exited with code {code}", file=sys.stderr)
    return exit_status(code)


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
