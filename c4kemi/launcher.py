"""``c4 kamailio``: run Kamailio in the foreground with the router.

    c4 kamailio --mode kemi --table FILE --listen udp:127.0.0.1:5060 [--workers N] [--shm MiB]

Kamailio runs as a child (``-DD -E``: no daemon, logs on stderr) with the
mode's config from ``kamailio/``; everything the config needs comes in on
the command line (``-A`` defines, ``-l``, ``-n``, ``-m``, ``-M``, ``-Y``) and
the environment (``C4_TABLE``, ``PYTHONPATH``), so the config files are never
edited by hand. SIGINT/SIGTERM are forwarded to Kamailio, which stops its
workers and exits; if this launcher dies, Kamailio gets SIGTERM too.

Reload (KEMI mode): each Kamailio worker watches the table file through
``FileTableSource``; on a call it stats the file at most once a second and
swaps in the new table when the file changed. A broken document is logged
and the last good table keeps serving. Write the new file atomically
(write a temp file and rename it over the old one).

Modes plug in through ``MODES``: a mode names its config file and prepares
its defines, environment and banner. HTTP mode (``kamailio-http.cfg``,
``--api URL``, ``http_async_client`` from ``build/modules``) is not done yet.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
CONFIG_DIR = REPO_ROOT / "kamailio"
MODULES_BUILD_DIR = REPO_ROOT / "build" / "modules"
KEMI_SCRIPT = CONFIG_DIR / "c4_kemi.py"  # a shim importing c4kemi.kemi, see there
DEFAULT_LISTEN = "udp:127.0.0.1:5060"


class LaunchError(Exception):
    """Kamailio cannot be started as asked; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("kemi", "http"), default="kemi")
    parser.add_argument("--table", help="routing document (KEMI mode, or with --serve-api)")
    parser.add_argument("--listen", action="append", help="Kamailio listen socket, e.g. udp:127.0.0.1:5060 (repeatable)")
    parser.add_argument("--workers", type=int, default=4, help="SIP worker processes")
    parser.add_argument("--shm", type=int, default=512, help="shared memory in MiB")
    parser.add_argument("--pkg", type=int, default=32, help="private memory per process in MiB")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="c4http base URL (HTTP mode)")
    parser.add_argument("--log-level", type=int, default=2, help="Kamailio debug level (2: info)")
    parser.add_argument("--serve-api", action="store_true", help="HTTP mode: also run c4 serve (not yet)")
    parser.add_argument("--kamailio", default=None, help="Kamailio binary (default: kamailio on PATH or /usr/sbin)")
    parser.add_argument("--dry-run", action="store_true", help="print the Kamailio command and environment, do not start")


@dataclass
class Launch:
    """What one mode contributes to the Kamailio command line."""

    config: Path
    defines: dict[str, str | int | None] = field(default_factory=dict)  # -A NAME=VALUE (None: just NAME)
    env: dict[str, str] = field(default_factory=dict)
    banner: list[str] = field(default_factory=list)


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


def check_table(path: str | None) -> tuple[Path, dict]:
    """``c4 check`` semantics: the document must load and compile."""
    from .document import DocumentError, load_document
    from .table import compile_table

    if not path:
        raise LaunchError("--table FILE is required")
    table_path = Path(path).resolve()
    if not table_path.is_file():
        raise LaunchError(f"{path}: no such file")
    try:
        document = load_document(table_path)
        table = compile_table(document)
    except DocumentError as exc:
        lines = [f"{path}: {error}" for error in exc.errors]
        lines.append(f"{path}: refused, {len(exc.errors)} error(s); Kamailio not started")
        raise LaunchError("\n".join(lines)) from None
    return table_path, {"document": document, "version": table.version}


def python_path() -> str:
    """The repository root and this venv's site-packages, for the embedded interpreter."""
    paths = [str(REPO_ROOT)]
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

    The scenarios (tests/e2e/scenarios) follow Record-Route, so ACK and BYE
    go through the router too (sipp's built-in uac/uas do not).
    """
    hostport = listen.split(":", 1)[1] if listen.count(":") >= 2 else listen
    scenarios = REPO_ROOT / "tests" / "e2e" / "scenarios"
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
        lines.append(f"callee: sipp -sf {scenarios / 'uas_answer.xml'} -i {host} -p {port} -m 1")
    lines.append(
        f"caller: sipp -sf {scenarios / 'uac_call.xml'} -i {source} -p 0 -s 0612345678 "
        f"-key caller 0611111111 -key caller_name Alice -m 1 {hostport}"
    )
    return lines


def prepare_kemi(args: argparse.Namespace, launch: Launch) -> None:
    table_path, info = check_table(args.table)
    if sys.version_info[:2] != (3, 11):
        launch.banner.append(
            f"warning: this is Python {sys.version_info[0]}.{sys.version_info[1]}; app_python3 embeds 3.11, "
            "so its site-packages may not match (run c4 from a venv made with /usr/bin/python3)"
        )
    launch.defines["C4_KEMI_SCRIPT"] = quoted(KEMI_SCRIPT)
    launch.env["C4_TABLE"] = str(table_path)
    launch.env["PYTHONPATH"] = python_path()
    launch.env["PYTHONDONTWRITEBYTECODE"] = "1"
    launch.banner.append(f"routing table {table_path}: version {info['version']} (reloaded on change, checked at most once a second per worker)")
    launch.banner.append("place a test call (called number from the example table):")
    launch.banner.extend("  " + line for line in call_hint(info["document"], args.listen[0]))


def prepare_http(args: argparse.Namespace, launch: Launch) -> None:
    raise LaunchError(
        "--mode http is not yet implemented: it will run kamailio/kamailio-http.cfg with "
        f"http_async_client from {MODULES_BUILD_DIR} against --api {args.api}; use --mode kemi for now"
    )


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
        "-n", str(args.workers),
        "-Y", str(rundir),
        "-w", str(rundir),
    ]
    for listen in args.listen:
        command += ["-l", listen]
    defines = {"C4_LOG_LEVEL": args.log_level, "C4_CTL_SOCKET": quoted(f"unix:{rundir / 'ctl.sock'}")}
    defines.update(launch.defines)
    for name, value in defines.items():
        command += ["-A", name if value is None else f"{name}={value}"]
    return command


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM if the launcher goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


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
    launch = Launch(config=CONFIG_DIR / mode.config_name)
    mode.prepare(args, launch)
    if not launch.config.is_file():
        raise LaunchError(f"{launch.config}: config file missing")

    rundir = Path(tempfile.mkdtemp(prefix="c4-kamailio-"))
    try:
        command = build_command(args, launch, rundir)
        env = dict(os.environ)
        env.update(launch.env)
        if args.dry_run:
            for name, value in launch.env.items():
                print(f"{name}={value}")
            print(" ".join(command))
            return 0
        for line in launch.banner:
            print(f"c4 kamailio: {line}")
        print(f"c4 kamailio: {args.mode} mode, listening on {', '.join(args.listen)}, {args.workers} workers, {args.shm} MiB shm")
        print("c4 kamailio: Ctrl-C or SIGTERM stops Kamailio", flush=True)
        return _supervise(command, env)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


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
        return 0 if code in (0, -signal.SIGTERM) else code
    if code != 0:
        print(f"c4 kamailio: Kamailio exited with code {code}", file=sys.stderr)
    return code if code >= 0 else 128 - code
