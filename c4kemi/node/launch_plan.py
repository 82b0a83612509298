"""What ``c4 kamailio`` starts: Kamailio's command line and environment, and its helper processes.

``plan`` turns the options into a ``Launch``: the mode's config file, the
``-A`` defines and environment it needs, the banner, and the helpers that
run beside Kamailio (``c4 feed`` or ``c4 db follow``, ``c4 serve``, ``c4
cdr``); then Kamailio's command line. Modes plug in through ``MODES``: a
mode names its config file and prepares its defines, environment, banner
and helpers. Options that cannot make a launch are refused here
(``LaunchError``). Nothing is started: c4kemi/node/launch_supervision.py runs
the plan.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import socket
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .launch_options import DEFAULT_CDR_SPOOL, DEFAULT_LISTEN, DEFAULT_TABLE_CACHE, HTTP_ASYNC_ENV, shm_reserve
from .secret import SECRET_ENV

__all__ = [
    "MODES", "Helper", "Launch", "LaunchError", "Mode", "build_command", "check_options", "kamailio_binary", "plan", "quoted",
    "rpc_socket",
]

# The c4kemi package directory (this module is in its node/ subpackage).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The directory holding the c4kemi package: the checkout, or site-packages.
PACKAGE_ROOT = PACKAGE_DIR.parent
# kamailio/ ships inside the package (c4kemi/kamailio links to it in a checkout).
CONFIG_DIR = (PACKAGE_DIR / "kamailio").resolve()
KEMI_SCRIPT = CONFIG_DIR / "c4_kemi.py"  # a shim importing c4kemi.call.kemi, see there
SIPP_SCENARIOS = PACKAGE_ROOT / "tests" / "e2e" / "scenarios"  # in a checkout only
RTJSON_PATH = "/kamailio/rtjson"  # c4http.web.RTJSON_PATH (not imported: no aiohttp here)
# tm's fr_timer (kamailio-base.cfg): the API must answer (or time out) before it.
CFG_FR_TIMER_MS = 5000


class LaunchError(Exception):
    """Kamailio cannot be started as asked; the message says why."""


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
    """A process started (and ready) before Kamailio, stopped after it, restarted if it exits meanwhile: c4 serve, c4 db follow."""

    argv: list[str]
    what: str  # for messages, e.g. "c4 serve on 127.0.0.1:8080"
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)  # the DSN travels here, never on a command line
    idle: bool = False  # the table's writer: the lowest CPU priority, so it never takes CPU from SIP workers
    restart: bool = True  # exits while Kamailio runs: started again, with a backoff (launch_supervision.py)
    ready_timeout: float | None = None  # seconds to be ready at start (None: API_START_TIMEOUT; inf: no bound)

    @property
    def name(self) -> str:
        """Its name in the launcher's log and the node's status file: cdr, feed, db-follow, serve, health-sync."""
        words = self.argv[self.argv.index("c4kemi.cli") + 1:] if "c4kemi.cli" in self.argv else []
        command = []
        for word in words:
            if word.startswith("-"):
                break
            command.append(word)
        return "-".join(command) or self.what


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
    # No bound on its start: without a table cache it waits for PostgreSQL, however long (the launcher says so).
    return Helper(argv, f"c4 db follow ({path})", (feed / "current").is_file, {"C4_DSN": args.dsn}, idle=True,
                  ready_timeout=float("inf"))


def feed_writer(table_path: Path, feed: Path) -> Helper:
    """c4 feed: checks TABLE_PATH once per change and publishes what changed to FEED."""
    argv = [sys.executable, "-m", "c4kemi.cli", "feed", "--table", str(table_path), "--out", str(feed)]
    return Helper(argv, f"c4 feed ({table_path})", (feed / "current").is_file, idle=True)


@dataclass(frozen=True)
class Mode:
    config_name: str
    prepare: Callable[[argparse.Namespace, Launch], None]


def health_sync(rpc: str, feed: Path | None = None, api: str | None = None) -> Helper:
    """c4 health-sync: hands the table's trunk and IPBX targets (from the feed, or the API) to Kamailio's health probes."""
    where = ["--feed", str(feed)] if feed is not None else ["--api", str(api)]
    argv = [sys.executable, "-m", "c4kemi.cli", "health-sync", *where, "--kamailio-rpc", rpc]
    return Helper(argv, "c4 health-sync", lambda: True, idle=True)


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
        from ..core.document import DocumentError, parse_document

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


def node_feed(args: argparse.Namespace, launch: Launch) -> tuple[Path, Path, dict | None]:
    """The node's table feed and its writer, for either mode: c4 db follow with --dsn, else c4 feed on --table.

    Returns the feed, the table file (the document, or the node's copy of
    PostgreSQL's) and the document when it was read here (else None).
    """
    feed = launch.rundir / "feed"
    if args.dsn:
        if args.table:
            raise LaunchError("--table or --dsn, not both: with --dsn the table comes from PostgreSQL")
        table_path, document = table_cache(args), None
        launch.helpers.append(follower(args, table_path, feed))
    else:
        table_path, document = table_file(args.table)
        launch.helpers.append(feed_writer(table_path, feed))
    launch.helpers.append(health_sync(rpc_socket(args, launch.rundir), feed=feed))
    return feed, table_path, document


def prepare_kemi(args: argparse.Namespace, launch: Launch) -> None:
    feed, table_path, document = node_feed(args, launch)
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
    if args.serve_api:  # not asked for routes: the node's /health, /metrics, /trunks/health (and API with --dsn)
        serve_api(args, launch, feed, table_path, None)
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


def serve_api(args: argparse.Namespace, launch: Launch, feed: Path, table_path: Path, document: dict | None) -> None:
    """--serve-api: c4 serve on the host and port of --api, reading the node's feed (and PostgreSQL with --dsn).

    HTTP mode asks it for routes; in KEMI mode it is the node's API all the
    same: /health, /metrics, /trunks/health, /channels, and with --dsn the
    provisioning API.
    """
    if urlsplit(args.api).scheme != "http" or urlsplit(args.api).path.strip("/"):
        raise LaunchError(f"--serve-api runs c4 serve at the root of a plain http URL, not {args.api!r}")
    _, host, port = api_endpoint(args.api)
    argv = [sys.executable, "-m", "c4kemi.cli", "serve", "--host", host, "--port", str(port), "--feed", str(feed)]
    health = http_answers(f"http://{urlsplit(args.api).netloc}/health")
    if args.dsn:
        # c4 db follow writes the feed from the change log; c4 serve reads it and serves the API on the database.
        env = {"C4_DSN": args.dsn, **({"C4_API_TOKEN": args.api_token} if getattr(args, "api_token", None) else {})}
        launch.helpers.append(Helper(argv, f"c4 serve on {host}:{port}", health, env))
        if not getattr(args, "api_token", None):
            launch.banner.append("warning: no admin token ($C4_API_TOKEN or --api-token-file): the provisioning API "
                                 "answers 401 to every admin call; tenant tokens still work")
        launch.banner.append(f"c4 serve on {host}:{port}, routing table from PostgreSQL through c4 db follow and the feed {feed} "
                             f"(saved in {table_path})")
        return
    launch.helpers.append(Helper(argv, f"c4 serve on {host}:{port}", health))
    launch.banner.append(f"c4 serve on {host}:{port}, routing table {table_path} through the feed {feed} (changes taken in within a second)")
    if args.mode == "http":
        hint(launch, document, args)


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
        serve_api(args, launch, *node_feed(args, launch))
    elif args.table or (args.dsn and not args.cdr_db):
        raise LaunchError("--table and --dsn are read by c4 serve in HTTP mode: add --serve-api, or run c4 serve yourself")
    else:  # the table is the API's: the targets to watch come from there
        launch.helpers.append(health_sync(rpc_socket(args, launch.rundir), api=args.api))


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


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_CLUSTER_NODES = 16  # kamailio-base.cfg numbers each node's dialogs in steps of 16
MAX_CLUSTER_PEERS = 3  # C4_DMQ_PEER1..3 in kamailio-base.cfg


def add_node_name(args: argparse.Namespace, launch: Launch) -> None:
    """The node's name in its call records (C4_NODE_NAME): --node-name, else the host name."""
    name = getattr(args, "node_name", None) or socket.gethostname().split(".")[0]
    if not NODE_NAME.fullmatch(name):
        raise LaunchError(f"--node-name {name!r}: letters, digits, '.', '_' and '-' only, at most 63")
    launch.defines["C4_NODE_NAME"] = quoted(name)


def add_cluster(args: argparse.Namespace, launch: Launch) -> None:
    """--cluster-node: DMQ on its own socket, dialogs (so channels) and call rates shared with the peers."""
    if getattr(args, "cluster_node", None) is None:
        if getattr(args, "cluster_peer", None):
            raise LaunchError("--cluster-peer needs --cluster-node")
        return
    if not 1 <= args.cluster_node <= MAX_CLUSTER_NODES:
        raise LaunchError(f"--cluster-node must be between 1 and {MAX_CLUSTER_NODES}")
    if not 1 <= len(args.cluster_peer) <= MAX_CLUSTER_PEERS:
        raise LaunchError(f"--cluster-node needs one to {MAX_CLUSTER_PEERS} --cluster-peer")
    proto, host, sip_port = _listen_parts(args.listen[0])
    if proto != "udp" or host in ("0.0.0.0", "::", "[::]") or not sip_port:
        raise LaunchError(f"--cluster-node needs a first --listen of the form udp:ADDRESS:PORT, not {args.listen[0]!r}: "
                          "the nodes reach each other at that address")
    port = args.cluster_port
    if not 1 <= port <= 65535 or str(port) == sip_port:
        raise LaunchError("--cluster-port must be a UDP port other than the SIP one")
    peers = []
    for peer in args.cluster_peer:
        try:
            address = ipaddress.ip_address(peer.strip("[]"))
        except ValueError:
            raise LaunchError(f"--cluster-peer {peer!r}: an IP address (the nodes route by IP, no DNS)") from None
        if str(address) == host.strip("[]"):
            raise LaunchError(f"--cluster-peer {peer}: that is this node's own address")
        peers.append(f"[{address}]" if address.version == 6 else str(address))
    launch.defines.update({
        # The first SIP socket, then DMQ's, in the config (with one receiving process for DMQ's); the command line has the rest.
        "C4_SIP_LISTEN": args.listen[0],
        "C4_DMQ_LISTEN": f"udp:{host}:{port}",
        "C4_CLUSTER_NODE": args.cluster_node,
        "C4_DMQ_SERVER": quoted(f"sip:{host}:{port}"),
        "C4_DMQ_PORT": port,
        "C4_CLUSTER_HOSTS": quoted(",".join(peer.strip("[]") for peer in peers)),
    })
    for number, peer in enumerate(peers, 1):
        launch.defines[f"C4_DMQ_PEER{number}"] = quoted(f"sip:{peer}:{port}")
        launch.defines[f"C4_PEER{number}_SIP"] = f"{peer}:{sip_port}"
    if args.cluster_grace < 0:
        raise LaunchError("--cluster-grace must be >= 0")
    argv = [sys.executable, "-m", "c4kemi.cli", "cluster-watch", "--kamailio-rpc", rpc_socket(args, launch.rundir),
            "--grace", str(args.cluster_grace)]
    launch.helpers.append(Helper(argv, "c4 cluster-watch", lambda: True, idle=True))
    launch.banner.append(f"cluster node {args.cluster_node}: DMQ on udp:{host}:{port}, peers {', '.join(peers)}; "
                         f"a node gone for {args.cluster_grace:.0f} s has its calls ended")


def _listen_parts(listen: str) -> tuple[str, str, str]:
    """udp:127.0.0.1:5060 -> ("udp", "127.0.0.1", "5060"); the port is "" when absent."""
    proto, _, rest = listen.partition(":")
    host, _, port = rest.rpartition(":")
    if not host or port.startswith("["):  # no port (an IPv6 address's colons, or a bare host)
        return proto.lower(), rest, ""
    return proto.lower(), host, port


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
    in_config = 1 if "C4_SIP_LISTEN" in launch.defines else 0  # a cluster node's first socket is in the config
    for listen in args.listen[in_config:]:
        command += ["-l", listen]
    defines = {
        "C4_LOG_LEVEL": args.log_level,
        "C4_CTL_SOCKET": quoted(f"unix:{rundir / 'ctl.sock'}"),
        "C4_RPC_SOCKET": quoted(rpc_socket(args, rundir)),
        "C4_MAX_TRANSACTIONS": args.max_transactions,
        "C4_SHM_RESERVE": shm_reserve(args),
        "C4_RETRY_AFTER": args.retry_after,
        "C4_ADMIT_INTERVAL": args.admit_interval,
        "C4_HEALTH_FROM_HOST": quoted(probe_from_host(args.listen[0])),
    }
    defines.update(launch.defines)
    for name, value in defines.items():
        command += ["-A", name if value is None else f"{name}={value}"]
    return command


def probe_from_host(listen: str) -> str:
    """The host[:port] of a --listen socket (udp:127.0.0.1:5060 -> 127.0.0.1:5060): the From of the health probes."""
    proto, _, rest = listen.partition(":")
    return rest if proto.lower() in ("udp", "tcp", "tls", "sctp") and rest else listen


def rpc_socket(args: argparse.Namespace, rundir: Path) -> str:
    """Where Kamailio answers JSON-RPC (the live channel counts)."""
    return str(Path(args.rpc_socket).resolve()) if getattr(args, "rpc_socket", None) else str(rundir / "rpc.sock")


def check_options(args: argparse.Namespace) -> None:
    """Refuse the values no launch can use; fill in the defaults that depend on others.

    The first ``--listen`` defaults to DEFAULT_LISTEN; the state directory
    and the files in it, the DSN and the admin token are resolved here
    (c4kemi/node/state.py).
    """
    if not args.listen:
        args.listen = [DEFAULT_LISTEN]
    resolve_state(args)
    resolve_secrets(args)
    if args.workers < 1 or args.shm < 16 or args.pkg < 4:
        raise LaunchError("--workers must be >= 1, --shm >= 16 MiB, --pkg >= 4 MiB")
    if args.max_transactions < 1 or args.retry_after < 0 or args.admit_interval < 0:
        raise LaunchError("--max-transactions must be >= 1, --retry-after and --admit-interval >= 0")
    if args.shm_reserve is not None and not 0 <= args.shm_reserve <= args.shm:
        raise LaunchError(f"--shm-reserve must be between 0 and --shm ({args.shm} MiB)")


def resolve_state(args: argparse.Namespace) -> None:
    """The instance's state directory, and the table cache, spool and secret in it unless given."""
    from .secret import default_path
    from .state import LEGACY_STATE_DIR, default_state_dir, instance_name

    instance = instance_name(getattr(args, "instance", None) or args.listen[0])
    explicit = getattr(args, "state_dir", None)
    state = Path(explicit).resolve() if explicit else default_state_dir(instance)
    args.state_dir = str(state)
    if getattr(args, "table_cache", None) is None:
        args.table_cache = str(state / DEFAULT_TABLE_CACHE)
    if getattr(args, "cdr_spool", None) is None:
        args.cdr_spool = str(state / DEFAULT_CDR_SPOOL)
    if getattr(args, "secret_file", None) is None:
        if os.environ.get("C4_SECRET_FILE"):
            args.secret_file = str(default_path())
        else:
            legacy = LEGACY_STATE_DIR / "secret"  # one per host, before per-instance state: keep the dialogs it signed
            mine = state / "secret"
            chosen = explicit or os.environ.get("C4_STATE_DIR")
            args.secret_file = str(legacy if not chosen and not mine.exists() and os.geteuid() == 0 and legacy.is_file() else mine)


def resolve_secrets(args: argparse.Namespace) -> None:
    """The DSN (--dsn, --dsn-file, $C4_DSN) and the API's admin token (--api-token-file, $C4_API_TOKEN).

    $C4_DSN or --dsn-file routes from PostgreSQL only where --dsn would
    (no --table; HTTP mode: with --serve-api); --cdr-db reads it either way.
    """
    from .state import SecretFileError, read_secret_file

    try:
        if getattr(args, "dsn_file", None):
            if args.dsn:
                raise LaunchError("--dsn or --dsn-file, not both")
            args.dsn = read_secret_file(args.dsn_file, "--dsn-file")
        elif not args.dsn and os.environ.get("C4_DSN") and not args.table and (args.mode == "kemi" or args.serve_api):
            args.dsn = os.environ["C4_DSN"]
        args.api_token = read_secret_file(args.api_token_file, "--api-token-file") if getattr(args, "api_token_file", None) \
            else os.environ.get("C4_API_TOKEN")
    except SecretFileError as exc:
        raise LaunchError(str(exc)) from None


def plan(args: argparse.Namespace, rundir: Path) -> tuple[Launch, list[str]]:
    """The launch ``args`` ask for, with ``rundir`` as Kamailio's runtime directory, and Kamailio's command line."""
    mode = MODES[args.mode]
    launch = Launch(config=CONFIG_DIR / mode.config_name, rundir=rundir)
    mode.prepare(args, launch)
    add_cdr(args, launch)
    add_node_name(args, launch)
    add_cluster(args, launch)
    _add_secret_keys(args, launch)
    if not launch.config.is_file():
        raise LaunchError(f"{launch.config}: config file missing")
    command = build_command(args, launch, rundir)
    for helper in launch.helpers:  # --serve-api: c4 serve reads the live counts
        if "serve" in helper.argv:
            helper.argv += ["--kamailio-rpc", rpc_socket(args, rundir)]
    return launch, command


def _add_secret_keys(args: argparse.Namespace, launch: Launch) -> None:
    """The keys derived from the deployment secret, in Kamailio's environment (see c4kemi/node/secret.py)."""
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
        if "serve" in helper.argv or "--api" in helper.argv:  # c4 health-sync --api asks with it
            helper.env[ROUTING_ENV] = launch.env[ROUTING_ENV]
        if "cdr" in helper.argv:  # c4 cdr authenticates on evapi with it
            helper.env[CDR_KEY_ENV] = launch.env[CDR_KEY_ENV]

