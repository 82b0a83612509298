"""What only HTTP mode has: the routing API down or slow, and admission control.

The router is a real Kamailio with kamailio-http.cfg; the API is the real
``c4 serve``, reached directly or through tests/e2e/api_stub.py (a real
aiohttp server that delays, counts and forwards). Kamailio gives a caller
503 when the API does not answer in time, and refuses new INVITEs with a
fast 503 past ``--max-inflight`` queries waiting for the API.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from .documents import CALLER_NATIONAL, DID_NATIONAL, NO_DID_NATIONAL, PBX, TRUNK_A, routing_document
from .harness import (
    REPO_ROOT,
    BusyPeers,
    SipMessage,
    free_tcp_port,
    free_udp_port,
    http_ok,
    sip_invite,
    sip_options_ok,
    start_api_stub,
    write_json_atomically,
)

# "Promptly": far below the caller's INVITE timer B (32 s) and tm's fr_inv_timer
# (30 s), which is what a stuck transaction would take. Not a speed benchmark.
PROMPT = 5.0


def invite(r, called: str, source: str = TRUNK_A, timeout: float = 15.0):
    """A raw INVITE to the router, as a carrier at SOURCE would send it."""
    tag = uuid.uuid4().hex[:8]
    return sip_invite(
        r.address, r.port, source,
        ruri=f"sip:{called}@{r.target}",
        from_header=f'"Alice" <sip:{CALLER_NATIONAL}@{source}>;tag={tag}',
        to_header=f"<sip:{called}@{r.target}>",
        timeout=timeout,
    )  # fmt: skip


def call_did(r, sipp, pbx):
    caller = sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)
    assert caller.wait() == 0, f"call failed\n{sipp.describe_all()}"
    assert pbx.wait() == 0, f"IPBX {pbx.name} failed\n{sipp.describe_all()}"
    assert caller.received_finals() == [200]
    assert len(pbx.received("INVITE")) == 1


def start_behind_stub(http_router, processes, tmp_path, document, delay, extra_args):
    """Kamailio asking c4 serve through the api_stub, which holds each query DELAY seconds."""
    table = tmp_path / "table.json"
    write_json_atomically(table, document)
    serve_proc, serve_log = http_router.serve(table, port := free_tcp_port())
    stub = start_api_stub(processes, tmp_path, upstream_port=port, delay=delay)
    r = http_router.start(document, api=stub.url, extra_args=extra_args)
    r.api_logs.append(serve_log)
    return r, stub, serve_proc


def test_api_down_gives_503_promptly_and_calls_resume_when_it_is_up(http_router, sipp):
    pbx = sipp.uas("uas_answer.xml", PBX)
    # Nothing listens on the --api port. One slot in flight: a failed query
    # that did not give its slot back would make the last call a 503 too.
    r = http_router.start(routing_document(pbx_port=pbx.port), api=None, extra_args=["--max-inflight", "1"])

    for _ in range(3):
        final = invite(r, DID_NATIONAL)
        assert (final.code, final.reason) == (503, "Service Unavailable"), final
        assert final.elapsed < PROMPT, f"503 after {final.elapsed:.1f}s"
    assert sip_options_ok(r.address, r.port), "Kamailio stopped answering OPTIONS"
    assert "routing API unavailable" in r.log_text()
    assert pbx.received() == []

    r.start_api()
    call_did(r, sipp, pbx)
    assert r.alive()


def test_api_too_slow_gives_503_not_a_stuck_transaction(http_router, sipp, processes, tmp_path):
    pbx = sipp.uas("uas_answer.xml", PBX)
    # The stub holds every query far longer than the 500 ms API timeout.
    r, stub, serve_proc = start_behind_stub(
        http_router, processes, tmp_path, routing_document(pbx_port=pbx.port),
        delay=60, extra_args=["--api-timeout", "500", "--max-inflight", "1"],
    )  # fmt: skip

    for _ in range(2):
        final = invite(r, DID_NATIONAL)
        assert (final.code, final.reason) == (503, "Service Unavailable"), final
        # After the API timeout (so it was the timeout), well before a transaction timer.
        assert 0.4 <= final.elapsed < PROMPT, f"503 after {final.elapsed:.2f}s with a 500 ms API timeout"
    assert stub.stats()["requests"] == 2, "Kamailio did not even ask the API"
    assert sip_options_ok(r.address, r.port), "Kamailio stopped answering OPTIONS"
    assert "routing API unavailable" in r.log_text()

    stub.set_delay(0)  # the API is fast again: calls go through, the slot was given back
    call_did(r, sipp, pbx)
    assert r.alive() and serve_proc.poll() is None


def test_admission_control_refuses_past_max_inflight_and_recovers(http_router, processes, tmp_path):
    # Each query takes 1.5 s; Kamailio waits up to 4 s for it.
    r, stub, _ = start_behind_stub(
        http_router, processes, tmp_path, routing_document(),
        delay=1.5, extra_args=["--max-inflight", "2", "--api-timeout", "4000"],
    )  # fmt: skip

    def burst(size):
        with ThreadPoolExecutor(size) as pool:
            return list(pool.map(lambda _: invite(r, NO_DID_NATIONAL), range(size)))

    # A burst of 6: two get the API's answer (404 No Route for this number),
    # the four past the bound a 503 without waiting for the API.
    finals = burst(6)
    codes = sorted(f.code for f in finals)
    assert codes == [404, 404, 503, 503, 503, 503], finals
    answered = [f for f in finals if f.code == 404]
    refused = [f for f in finals if f.code == 503]
    assert all(f.reason == "No Route" for f in answered), answered
    assert max(f.elapsed for f in refused) < min(f.elapsed for f in answered), "the 503s waited for the API"
    stats = stub.stats()
    assert stats["requests"] == 2 and stats["peak"] <= 2, stats
    assert r.log_text().count("refusing call") == 4

    # No leaked slot: exactly max-inflight concurrent slow queries are all admitted again.
    finals = burst(2)
    assert [f.code for f in finals] == [404, 404], finals
    stub.set_delay(0)
    assert invite(r, NO_DID_NATIONAL).code == 404
    assert stub.stats()["requests"] == 5
    assert sip_options_ok(r.address, r.port) and r.alive()


def test_launcher_serve_api_runs_c4_serve_and_stops_it_with_kamailio(processes, sipp, tmp_path):
    """`c4 kamailio --mode http --serve-api` (what `make run MODE=http` runs): one command, both processes."""
    pbx = sipp.uas("uas_answer.xml", PBX)
    table = tmp_path / "table.json"
    write_json_atomically(table, routing_document(pbx_port=pbx.port))
    port, api_port = free_udp_port("127.0.0.1"), free_tcp_port()
    log = tmp_path / "launcher.log"
    launcher = processes.start(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--mode", "http", "--serve-api", "--table", str(table),
         "--api", f"http://127.0.0.1:{api_port}", "--listen", f"udp:127.0.0.1:{port}", "--workers", "2", "--shm", "64"],
        log, cwd=REPO_ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not sip_options_ok("127.0.0.1", port):
        assert launcher.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    assert http_ok(f"http://127.0.0.1:{api_port}/health")

    caller = sipp.uac("uac_call.xml", f"127.0.0.1:{port}", TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)
    assert caller.wait() == 0 and pbx.wait() == 0, sipp.describe_all()

    launcher.send_signal(signal.SIGTERM)  # the launcher alone, not its group: it must stop both itself
    assert launcher.wait(timeout=20) == 0, log.read_text(errors="replace")[-3000:]
    assert not http_ok(f"http://127.0.0.1:{api_port}/health"), "c4 serve outlived the launcher"
    assert not sip_options_ok("127.0.0.1", port), "Kamailio outlived the launcher"


def test_cancel_while_waiting_for_the_api(http_router, processes, tmp_path):
    """A CANCEL while the query is out: 487 at once, the late answer relays nothing, the slot is freed.

    tm answers 487 itself and ends the transaction, so http_async_client
    finds no transaction to resume and the response route never runs.
    """
    peers = BusyPeers([PBX])
    try:
        # One slot: a cancelled query that kept its slot would refuse every later call.
        r, stub, _ = start_behind_stub(
            http_router, processes, tmp_path, routing_document(pbx_port=peers.ports[PBX]),
            delay=1.0, extra_args=["--api-timeout", "3000", "--max-inflight", "1"],
        )  # fmt: skip

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((TRUNK_A, 0))
            sock.settimeout(0.2)
            local = f"{TRUNK_A}:{sock.getsockname()[1]}"
            common = (
                f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
                f"From: <sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag=c4cancel\r\nTo: <sip:{DID_NATIONAL}@{r.target}>\r\n"
                f"Call-ID: {uuid.uuid4().hex}@cancel\r\nMax-Forwards: 70\r\n"
            )
            ruri = f"sip:{DID_NATIONAL}@{r.target}"

            def send(method, extra=""):
                message = f"{method} {ruri} SIP/2.0\r\n{common}CSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
                sock.sendto(message.encode(), (r.address, r.port))

            send("INVITE", f"Contact: <sip:raw@{local}>\r\n")
            time.sleep(0.3)  # the query is out (the stub holds it for 1 s)
            send("CANCEL")
            finals = []
            deadline = time.monotonic() + 3.0  # past the stub's answer: a late relay would show
            while time.monotonic() < deadline:
                try:
                    data, _ = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                reply = SipMessage("received", data.decode(errors="replace").replace("\r\n", "\n"))
                if reply.status >= 200:
                    finals.append((reply.status, reply.cseq_method))
                    if reply.cseq_method == "INVITE":
                        to = reply.header("To")
                        ack = common.replace(f"To: <sip:{DID_NATIONAL}@{r.target}>", f"To: {to}")
                        sock.sendto(f"ACK {ruri} SIP/2.0\r\n{ack}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(), (r.address, r.port))
        assert sorted(finals) == [(200, "CANCEL"), (487, "INVITE")], finals
        assert stub.stats()["answered"] == 1, "the API never answered: the test proves nothing"
        assert peers.invites == [], "the call was relayed after it was cancelled"
        assert sip_options_ok(r.address, r.port) and r.alive()
        # The slot came back: the next call is routed (to the busy IPBX), not refused.
        stub.set_delay(0)
        final = invite(r, DID_NATIONAL)
        assert final.code == 486, f"{final}: the cancelled query kept its in-flight slot"
        assert len(peers.invites) == 1
    finally:
        peers.close()


def test_c4_serve_listens_with_a_deep_backlog(processes, tmp_path):
    """A burst of new connections from http_async_client must not overflow the listen queue (README, "Capacity")."""
    port = free_tcp_port()
    table = tmp_path / "table.json"
    write_json_atomically(table, routing_document())
    argv = [sys.executable, "-m", "c4kemi.cli", "serve", "--table", str(table), "--port", str(port), "--backlog", "777"]
    proc = processes.start(argv, tmp_path / "serve.log", cwd=REPO_ROOT)
    deadline = time.monotonic() + 20
    while not http_ok(f"http://127.0.0.1:{port}/health"):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
        time.sleep(0.05)
    listen = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout.split()
    assert listen[2] == "777", listen  # LISTEN Recv-Q Send-Q: Send-Q is the backlog
