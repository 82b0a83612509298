"""End-to-end harness: a real Kamailio (through ``c4 kamailio``) and real sipp.

Everything listens on loopback (the whole 127.0.0.0/8 is local): the router
on 127.0.0.1, callers and callees on their own 127.0.0.x address so the
routing table can tell trunks from IPBXs by source address. Ports are picked
free at run time. Every process is started in its own session (process
group) and killed by group when the test ends, whatever happened.
"""

from __future__ import annotations

import copy
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from ports import free_tcp_port, free_udp_port

from .documents import without_probes

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = "sipp"


def http_ok(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def udp_port_taken(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def write_json_atomically(path: Path, document) -> None:
    """Write then rename, as an operator should: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # the group may outlive its leader (forked workers)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)


class Processes:
    """Every process a test started, killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        out = open(log, "ab")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)
        self.procs.clear()


# ---------------------------------------------------------------- SIP messages


@dataclass
class SipMessage:
    direction: str  # "sent" / "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        return self.cseq_method

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        return int(self.first_line.split(" ", 2)[1])

    @property
    def request_uri(self) -> str:
        return self.first_line.split(" ")[1]

    @property
    def cseq_method(self) -> str:
        return (self.header("CSeq") or " ").split()[-1]

    def headers(self, name: str) -> list[str]:
        values = []
        wanted = name.lower()
        for line in self.text.split("\n")[1:]:
            line = line.rstrip("\r")
            if not line.strip():
                break
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == wanted:
                values.append(value.strip())
        return values

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None


SEPARATOR = re.compile(r"^-{20,}.*$", re.MULTILINE)


def parse_message_log(text: str) -> list[SipMessage]:
    """sipp's -trace_msg log as a list of messages."""
    messages = []
    for chunk in SEPARATOR.split(text):
        chunk = chunk.strip("\n")
        if not chunk.strip():
            continue
        head, _, body = chunk.partition("\n")
        if "message sent" in head:
            direction = "sent"
        elif "message received" in head:
            direction = "received"
        else:
            continue
        body = body.lstrip("\n").lstrip()
        if body:
            messages.append(SipMessage(direction, body))
    return messages


def user_of(uri_or_header: str) -> str:
    """The user part of the first SIP URI in a header value or URI."""
    match = re.search(r"(?:sips?|tel):([^@;>]+)", uri_or_header)
    return match.group(1) if match else ""


# ---------------------------------------------------------------- sipp


@dataclass
class Sipp:
    """One sipp process and its message log."""

    name: str
    proc: subprocess.Popen
    message_log: Path
    screen_log: Path
    address: str
    port: int

    @property
    def uri(self) -> str:
        return f"sip:{self.address}:{self.port}"

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise AssertionError(f"sipp {self.name} did not finish within {timeout}s\n{self.describe()}") from None

    def messages(self) -> list[SipMessage]:
        if not self.message_log.exists():
            return []
        return parse_message_log(self.message_log.read_text(errors="replace"))

    def received(self, method_or_status=None) -> list[SipMessage]:
        out = []
        for msg in self.messages():
            if msg.direction != "received":
                continue
            if method_or_status is None:
                out.append(msg)
            elif isinstance(method_or_status, int):
                if msg.status == method_or_status:
                    out.append(msg)
            elif msg.is_request and msg.method == method_or_status:
                out.append(msg)
        return out

    def received_finals(self) -> list[int]:
        return [m.status for m in self.received() if not m.is_request and m.status >= 200 and m.cseq_method == "INVITE"]

    def describe(self) -> str:
        screen = self.screen_log.read_text(errors="replace")[-3000:] if self.screen_log.exists() else ""
        flow = "\n".join(f"  {m.direction:8} {m.first_line}" for m in self.messages())
        return f"--- sipp {self.name} (rc={self.proc.poll()}) message flow:\n{flow}\n--- screen/errors tail:\n{screen}"


class SippFactory:
    """Starts sipp UAS (carriers, IPBXs) and UAC (callers) for one test."""

    def __init__(self, processes: Processes, workdir: Path) -> None:
        self.processes = processes
        self.workdir = workdir
        self.count = 0
        self.all: list[Sipp] = []

    def scenario(self, name: str, **values) -> Path:
        """A scenario from tests/e2e/scenarios with its @NAME@ placeholders filled."""
        text = (SCENARIOS / name).read_text()
        for key, value in values.items():
            text = text.replace(f"@{key.upper()}@", str(value))
        left = re.findall(r"@[A-Z_]+@", text)
        if left:
            raise ValueError(f"scenario {name}: no value for {sorted(set(left))}")
        self.count += 1
        path = self.workdir / f"{self.count:02d}-{name}"
        path.write_text(text)
        return path

    def _start(self, role: str, scenario: Path, address: str, port: int, extra: list[str], timeout: int) -> Sipp:
        name = f"{role}-{address}-{port}"
        message_log = self.workdir / f"{name}.msg.log"
        screen_log = self.workdir / f"{name}.screen.log"
        argv = [
            SIPP, "-sf", str(scenario),
            "-i", str(address), "-p", str(port),
            "-m", "1",
            "-nostdin",
            "-timeout", f"{timeout}s", "-timeout_error",
            "-max_retrans", "5",
            "-trace_msg", "-message_file", str(message_log),
            "-trace_err", "-error_file", str(screen_log),
        ] + extra
        proc = self.processes.start(argv, self.workdir / f"{name}.stdout.log", cwd=self.workdir)
        sipp = Sipp(name, proc, message_log, screen_log, address, port)
        self.all.append(sipp)
        return sipp

    def uas(self, scenario: str, address: str, timeout: int = 30, calls: int = 1, **values) -> Sipp:
        """A callee listening on ADDRESS:free-port for CALLS calls; returns once it is bound."""
        port = free_udp_port(address)
        extra = ["-m", str(calls)] if calls != 1 else []  # sipp takes the last -m
        sipp = self._start("uas", self.scenario(scenario, **values), address, port, extra, timeout)
        deadline = time.monotonic() + 10
        while not udp_port_taken(address, port):
            if sipp.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sipp UAS did not start on {address}:{port}\n{sipp.describe()}")
            time.sleep(0.02)
        return sipp

    def uac(
        self,
        scenario: str,
        target: str,
        address: str,
        called: str = "",
        caller: str = "0611111111",
        caller_name: str = "Alice",
        timeout: int = 30,
        wait: bool = True,
        **values,
    ) -> Sipp:
        """A caller from ADDRESS to the router TARGET (host:port); waits for it unless wait=False."""
        port = free_udp_port(address)
        extra = [
            "-s", called or "s",
            "-key", "caller", caller,
            "-key", "caller_name", caller_name,
            "-default_behaviors", "all,-abortunexp",
            target,
        ]
        sipp = self._start("uac", self.scenario(scenario, **values), address, port, extra, timeout)
        if wait:
            sipp.wait(timeout + 10)
        return sipp

    def describe_all(self) -> str:
        return "\n".join(s.describe() for s in self.all)


# ---------------------------------------------------------------- the router


def sip_request(address: str, port: int, method: str = "OPTIONS", user: str = "", headers: str = "",
                max_forwards: int = 70, source: str = "127.0.0.1", to_tag: str = "", timeout: float = 0.5) -> str | None:
    """Send one out-of-dialog request over UDP; the first line of the first reply, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        local_port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        ruri = f"sip:{user + '@' if user else ''}{address}:{port}"
        request = (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{local_port};branch=z9hG4bK{call_id[:16]}\r\n"
            f"From: <sip:probe@{source}>;tag={call_id[:8]}\r\n"
            f"To: <{ruri}>{';tag=' + to_tag if to_tag else ''}\r\n"
            f"Call-ID: {call_id}@probe\r\n"
            f"CSeq: 1 {method}\r\nMax-Forwards: {max_forwards}\r\n{headers}Content-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout)
        try:
            sock.sendto(request.encode(), (address, port))
            while True:
                data, _ = sock.recvfrom(65535)
                line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                if not line.startswith("SIP/2.0 1"):  # skip provisional replies
                    return line
        except OSError:
            return None


def sip_options_ok(address: str, port: int, timeout: float = 0.5) -> bool:
    """True if the router answers an out-of-dialog OPTIONS with 200."""
    line = sip_request(address, port, "OPTIONS", timeout=timeout)
    return bool(line and line.startswith("SIP/2.0 200"))


@dataclass
class Router:
    """One running router (Kamailio, plus the API in HTTP mode)."""

    mode: str
    address: str
    port: int
    table_path: Path
    log: Path
    proc: subprocess.Popen
    factory: RouterFactory
    api_url: str | None = None  # HTTP mode: the --api base URL
    api_proc: subprocess.Popen | None = None  # the c4 serve the harness runs for it, if any
    api_logs: list = field(default_factory=list)
    dsn: str | None = None  # the table comes from PostgreSQL

    @property
    def target(self) -> str:
        """host:port for sipp's remote address."""
        return f"{self.address}:{self.port}"

    @property
    def api_port(self) -> int | None:
        return int(self.api_url.rsplit(":", 1)[1]) if self.api_url else None

    def update_table(self, document) -> None:
        if isinstance(document, dict):
            document = without_probes(copy.deepcopy(document))
        write_json_atomically(self.table_path, document)

    def log_text(self) -> str:
        """Kamailio's log, then (HTTP mode) the logs of every c4 serve it used."""
        parts = [path.read_text(errors="replace") for path in [self.log, *self.api_logs] if path.exists()]
        return "\n".join(parts)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Stop Kamailio (and the c4 serve the harness runs for it)."""
        kill_group(self.proc)
        self.stop_api()

    def start_api(self) -> subprocess.Popen:
        """HTTP mode: run c4 serve on this router's --api port (again)."""
        assert self.api_url and (self.api_proc is None or self.api_proc.poll() is not None), "c4 serve already running"
        self.api_proc, log = self.factory.serve(self.table_path, self.api_port, dsn=self.dsn)
        self.api_logs.append(log)
        return self.api_proc

    def stop_api(self) -> None:
        if self.api_proc is not None:
            kill_group(self.api_proc)
            self.api_proc = None


class RouterFactory:
    """Starts the router in one mode with a per-test routing table.

    ``start(document)`` writes the document to the test's tmp dir, runs
    ``c4 kamailio --mode MODE`` on a free 127.0.0.1 port and returns once the
    router answers OPTIONS. In HTTP mode it first runs ``c4 serve`` on a free
    TCP port (the harness owns it, so a test can stop and restart the API:
    ``Router.stop_api()`` / ``start_api()``); ``api=None`` leaves that port
    empty (API down), ``api=URL`` points Kamailio at something else.
    """

    def __init__(self, mode: str, processes: Processes, workdir: Path) -> None:
        self.mode = mode
        self.processes = processes
        self.workdir = workdir
        self.routers: list[Router] = []

    def serve(self, table_path: Path, port: int, timeout: float = 20.0, dsn: str | None = None) -> tuple[subprocess.Popen, Path]:
        """c4 serve on 127.0.0.1:PORT (its table from DSN if given); returns once /health answers."""
        log = self.workdir / f"c4serve-{port}-{len(self.processes.procs)}.log"
        source = ["--dsn", dsn, "--table-cache", str(self.workdir / "serve-cache.json")] if dsn else ["--table", str(table_path)]
        argv = [sys.executable, "-m", "c4kemi.cli", "serve", *source, "--host", "127.0.0.1", "--port", str(port)]
        proc = self.processes.start(argv, log, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while not http_ok(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise AssertionError(f"c4 serve did not come up on port {port} (rc={proc.poll()}):\n{text[-3000:]}")
            time.sleep(0.05)
        return proc, log

    def start(
        self,
        document,
        workers: int = 2,
        shm: int = 64,
        ready_timeout: float = 20.0,
        api: str | None = "serve",
        extra_args: list[str] | tuple = (),
        env: dict[str, str] | None = None,
        dsn: str | None = None,
        port: int | None = None,
        node_api: bool = False,
        address: str = "127.0.0.1",
    ) -> Router:
        """With ``dsn``, the table comes from PostgreSQL (the document is not written there: import it first).

        ``node_api``: the node runs its own c4 serve (``c4 kamailio --serve-api``, either mode), at ``router.api_url``.
        ``address``: the loopback address it listens on (several nodes of a cluster: one each).
        """
        table_path = self.workdir / "table.json"
        if isinstance(document, dict):
            document = without_probes(copy.deepcopy(document))
        write_json_atomically(table_path, document)
        port = port or free_udp_port(address)
        log = self.workdir / f"router-{self.mode}-{address}-{port}.log"
        cache = "cache.json" if address == "127.0.0.1" else f"cache-{address}.json"  # a cluster's nodes share the workdir
        api_url = api_proc = None
        api_logs = []
        if self.mode == "kemi":
            mode_args = ["--dsn", dsn, "--table-cache", str(self.workdir / f"kemi-{cache}")] if dsn else ["--table", str(table_path)]
            if node_api:
                api_url = f"http://127.0.0.1:{free_tcp_port()}"
                mode_args += ["--serve-api", "--api", api_url]
        elif self.mode == "http" and node_api:
            api_url = f"http://127.0.0.1:{free_tcp_port()}"
            source = ["--dsn", dsn, "--table-cache", str(self.workdir / f"http-{cache}")] if dsn else ["--table", str(table_path)]
            mode_args = ["--api", api_url, "--serve-api", *source]
        elif self.mode == "http":
            if api is None or api == "serve":
                api_url = f"http://127.0.0.1:{free_tcp_port()}"
            else:
                api_url = api
            if api == "serve":
                api_proc, api_log = self.serve(table_path, int(api_url.rsplit(":", 1)[1]), dsn=dsn)
                api_logs.append(api_log)
            mode_args = ["--api", api_url]
        else:
            raise NotImplementedError(f"router mode {self.mode!r} is not wired into the e2e harness")
        argv = [
            sys.executable, "-m", "c4kemi.cli", "kamailio",
            "--mode", self.mode,
            "--listen", f"udp:{address}:{port}",
            "--workers", str(workers),
            "--shm", str(shm),
            "--pkg", "16",
        ] + mode_args + list(extra_args)
        proc = self.processes.start(argv, log, cwd=REPO_ROOT, env={**os.environ, **(env or {})})
        router = Router(self.mode, address, port, table_path, log, proc, self, api_url, api_proc, api_logs, dsn)
        self.routers.append(router)
        deadline = time.monotonic() + ready_timeout
        while not sip_options_ok(address, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"router ({self.mode}) did not come up on {address}:{port}:\n{router.log_text()[-5000:]}")
            time.sleep(0.1)
        return router


# ---------------------------------------------------------------- API stand-in


@dataclass
class ApiStub:
    """tests/e2e/api_stub.py: a slow and/or recording HTTP server in front of c4 serve."""

    proc: subprocess.Popen
    port: int
    record: Path | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_delay(self, seconds: float) -> None:
        request = urllib.request.Request(f"{self.url}/_delay", data=orjson.dumps({"delay": seconds}), method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=5) as response:
            return orjson.loads(response.read())

    def exchanges(self) -> list[dict]:
        if self.record is None or not self.record.exists():
            return []
        return [orjson.loads(line) for line in self.record.read_bytes().splitlines() if line]


def start_api_stub(processes: Processes, workdir: Path, upstream_port: int | None = None, delay: float = 0.0,
                   record: bool = False, timeout: float = 20.0) -> ApiStub:
    port = free_tcp_port()
    record_path = workdir / f"api-stub-{port}.jsonl" if record else None
    argv = [sys.executable, str(Path(__file__).resolve().parent / "api_stub.py"), "--port", str(port), "--delay", str(delay)]
    if upstream_port is not None:
        argv += ["--upstream", f"http://127.0.0.1:{upstream_port}/kamailio/rtjson"]
    if record_path is not None:
        argv += ["--record", str(record_path)]
    log = workdir / f"api-stub-{port}.log"
    proc = processes.start(argv, log, cwd=REPO_ROOT)
    deadline = time.monotonic() + timeout
    while not http_ok(f"http://127.0.0.1:{port}/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"API stub did not come up on {port}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return ApiStub(proc, port, record_path)


# ---------------------------------------------------------------- raw SIP peers


@dataclass
class Final:
    """The final reply a raw INVITE got (code None: nothing within the timeout)."""

    code: int | None
    reason: str
    elapsed: float
    # Every final reply received (with linger: also those after the first).
    finals: list[int] = field(default_factory=list)
    message: SipMessage | None = None  # the first final reply


def sip_invite(address: str, port: int, source: str, ruri: str, from_header: str, to_header: str,
               call_id: str | None = None, timeout: float = 10.0, headers: str | bytes = "",
               linger: float = 0.0, method: str = "INVITE") -> Final:
    """One INVITE from SOURCE to the router, with free-form R-URI, From and To.

    ``headers`` are extra header lines ("Name: value\\r\\n" each). Any of
    the texts may be ``bytes`` to send bytes that are not UTF-8 (an old PBX's
    ISO-8859-1). Waits for the final reply and ACKs it if negative (hop by
    hop, as a UAC must), so the router's transaction ends cleanly; with
    ``linger`` it then listens that many seconds more and records every
    further final reply in ``finals`` (a request must get exactly one).
    Provisional replies are skipped; the INVITE is not retransmitted
    (loopback does not lose packets). ``method`` sends another method the
    same way (no ACK then).
    """
    def raw(value) -> bytes:
        return value if isinstance(value, bytes) else value.encode()

    call_id = call_id or f"{uuid.uuid4().hex}@raw"
    branch = f"z9hG4bK{uuid.uuid4().hex[:16]}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        local = f"{source}:{sock.getsockname()[1]}"
        via = f"Via: SIP/2.0/UDP {local};branch={branch};rport\r\n"
        invite = (
            raw(f"{method} ") + raw(ruri) + raw(f" SIP/2.0\r\n{via}From: ") + raw(from_header) + b"\r\nTo: " + raw(to_header)
            + b"\r\nCall-ID: " + raw(call_id) + raw(f"\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n")
            + raw(f"Contact: <sip:raw@{local}>\r\n") + raw(headers) + b"Content-Length: 0\r\n\r\n"
        )
        started = time.monotonic()
        sock.sendto(invite, (address, port))
        deadline = started + timeout
        result = None
        seen = set()
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = sock.recvfrom(65535)
            except (TimeoutError, OSError):
                return result or Final(None, "", time.monotonic() - started)
            if data in seen:  # a retransmission of a reply already counted
                continue
            seen.add(data)
            text = data.decode(errors="replace")
            first = text.split("\r\n", 1)[0]
            if not first.startswith("SIP/2.0 ") or first.startswith("SIP/2.0 1"):
                continue
            code, _, reason = first[8:].partition(" ")
            elapsed = time.monotonic() - started
            reply = SipMessage("received", text.replace("\r\n", "\n"))
            if int(code) >= 300 and method == "INVITE":
                ack = (
                    b"ACK " + raw(ruri) + raw(f" SIP/2.0\r\n{via}From: ") + raw(from_header)
                    + raw(f"\r\nTo: {reply.header('To')}\r\nCall-ID: ") + raw(call_id)
                    + b"\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                )
                sock.sendto(ack, (address, port))
            if result is None:
                result = Final(int(code), reason, elapsed, [int(code)], reply)
                if linger <= 0:
                    return result
                deadline = time.monotonic() + linger
            else:
                result.finals.append(int(code))


class UdpPeers:
    """Raw UDP SIP peers (carriers, IPBXs) on several loopback addresses, recording what they receive.

    ``received`` holds every request as raw bytes (what the router sent, byte
    for byte) with the address it reached; ``invites`` the INVITE request
    lines. An INVITE is answered ``answer`` (default 486 Busy Here: a 4xx
    ends the call without failover, so a relayed call comes back to the
    caller at once), or per address when ``answer`` is a dict; any other
    request but ACK gets 200 OK.
    """

    def __init__(self, addresses: list[str], answer: tuple[int, str] | dict = (486, "Busy Here")) -> None:
        import selectors
        import threading

        self.answer = answer
        self.selector = selectors.DefaultSelector()
        self.ports: dict[str, int] = {}
        self.invites: list[str] = []
        self.received: list[tuple[str, bytes]] = []
        for address in addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, 0))
            sock.setblocking(False)
            self.ports[address] = sock.getsockname()[1]
            self.selector.register(sock, selectors.EVENT_READ, address)
        self.running = True
        self.thread = threading.Thread(target=self._serve, name="udp-peers", daemon=True)
        self.thread.start()

    def requests(self, method: str | None = None, address: str | None = None) -> list[SipMessage]:
        """What was received (requests only), parsed; bytes that are not UTF-8 show as U+FFFD."""
        out = []
        for where, data in list(self.received):
            message = SipMessage("received", data.decode(errors="replace").replace("\r\n", "\n"))
            if message.is_request and (method is None or message.method == method) and (address is None or where == address):
                out.append(message)
        return out

    def raw_requests(self, method: str) -> list[bytes]:
        return [data for _, data in list(self.received) if data.startswith(method.encode() + b" ")]

    def _serve(self) -> None:
        while self.running:
            for key, _ in self.selector.select(timeout=0.1):
                try:
                    data, peer = key.fileobj.recvfrom(65535)
                except OSError:
                    continue
                message = SipMessage("received", data.decode(errors="replace").replace("\r\n", "\n"))
                if not message.is_request:
                    continue
                self.received.append((key.data, data))
                if message.method == "ACK":
                    continue
                if message.method == "INVITE":
                    self.invites.append(message.first_line)
                    answer = self.answer.get(key.data, (486, "Busy Here")) if isinstance(self.answer, dict) else self.answer
                    code, reason = answer
                else:
                    code, reason = 200, "OK"
                to = message.header("To") or ""
                lines = [f"Via: {via}" for via in message.headers("Via")]
                lines += [f"From: {message.header('From')}", f"To: {to}{'' if ';tag=' in to else ';tag=peer'}",
                          f"Call-ID: {message.header('Call-ID')}", f"CSeq: {message.header('CSeq')}", "Content-Length: 0"]
                reply = f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(lines) + "\r\n\r\n"
                key.fileobj.sendto(reply.encode(errors="surrogateescape"), peer)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()
        self.selector.close()


class BusyPeers(UdpPeers):
    """UDP peers answering every INVITE 486 Busy Here (see UdpPeers)."""
