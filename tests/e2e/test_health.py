"""Trunk health through a real router, in both modes (docs/health.md).

Carrier A (127.0.0.2) and carrier B (127.0.0.3) are SipPeers whose answers
the tests change while the router runs; calls come from the IPBX to an
outbound number, whose route tries A, then B. B answers INVITEs with 486
(final, no failover): the caller's answer says at once which trunk took
the call, and how long it took.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from c4kemi.call.channels import KamailioRpc
from c4kemi.call.health import health_report
from c4kemi.core.health import ProbeTarget

from .documents import OUT_CALLED_E164, PBX, TRUNK_A, TRUNK_B, routing_document
from .harness import sip_invite
from .sip_peer import SipPeer

# A branch's fr_timer in these tables: a silent trunk costs this much per call until it is down.
FR_TIMER_MS = 1000


@pytest.fixture
def peers():
    made = []

    def make(address: str, **answers) -> SipPeer:
        peer = SipPeer(address, **answers)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def rpc_path():
    path = Path(tempfile.mkdtemp(prefix="c4rpc-"))  # a unix socket path is at most 107 bytes
    yield path / "rpc.sock"
    shutil.rmtree(path, ignore_errors=True)


def document(a: SipPeer, b: SipPeer, health_a: dict | None = None, health_b: dict | None = None, when_all_down: str | None = None) -> dict:
    doc = routing_document(trunk_a_port=a.port, trunk_b_port=b.port, fr_timer=FR_TIMER_MS)
    for trunk in doc["trunks"]:
        trunk["fr_timer"] = FR_TIMER_MS
        health = health_a if trunk["name"] == "carrier-a-1" else health_b
        trunk["health"] = health if health is not None else {}  # {}: the defaults (the harness turns probes off otherwise)
    if when_all_down:
        doc["routes"][0]["when_all_down"] = when_all_down
    return doc


def call(r):
    """One outbound call from the IPBX: its final reply (code, reason, seconds)."""
    return sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}",
                      f"<sip:39611111111@{PBX}>;tag=h", f"<sip:{OUT_CALLED_E164}@{r.target}>", timeout=15)


TRUNK_NAMES = {TRUNK_A: "carrier-a-1", TRUNK_B: "carrier-b-1"}


def report(rpc_path: Path, peer: SipPeer) -> list[dict]:
    """What Kamailio says of the peer's target ([] while it does not watch it)."""
    target = ProbeTarget(peer.uri, "", (f"trunk {TRUNK_NAMES[peer.address]}",))
    return health_report(KamailioRpc(str(rpc_path)), {peer.uri: target})


def state(rpc_path: Path, peer: SipPeer) -> dict:
    for entry in report(rpc_path, peer):
        return entry
    raise AssertionError(f"{peer.uri} is not watched")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except AssertionError:  # not watched yet: c4 health-sync hands the targets over within a second or two
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def start(router, rpc_path, doc, **kwargs):
    return router.start(doc, extra_args=["--rpc-socket", str(rpc_path)], **kwargs)


def test_a_silent_trunk_is_probed_down_and_calls_go_straight_to_the_next(router, peers, rpc_path):
    a = peers(TRUNK_A)  # silent: no answer to anything
    b = peers(TRUNK_B, options=200, invite=486)
    r = start(router, rpc_path, document(a, b, health_a={"probe_interval": 1}))

    # Probes alone (no call yet): three OPTIONS time out (tm's 5 s each, one sent per second).
    wait_for(lambda: state(rpc_path, a)["state"] == "down", 20, "carrier-a-1 marked down by its probes")
    entry = state(rpc_path, a)
    assert entry["trunks"] == ["carrier-a-1"]
    assert entry["last_failure_reason"] == "OPTIONS timed out"
    assert entry["went_down"] == 1
    # Carrier B, at the defaults: its first probe comes within 10 s (a second from a hash of its URI).
    wait_for(lambda: state(rpc_path, b)["last_probe_rtt_ms"] is not None, 15, "carrier-b-1 probed")
    assert state(rpc_path, b)["state"] == "up"

    invites_before = a.count("INVITE")
    for _ in range(5):
        final = call(r)
        assert final.code == 486, final  # carrier B took it
        assert final.elapsed < FR_TIMER_MS / 1000 / 2, f"{final.elapsed:.3f} s: carrier A was tried first"
    assert a.count("INVITE") == invites_before == 0


def test_a_down_trunk_comes_back_once_it_answers_probes(router, peers, rpc_path):
    a = peers(TRUNK_A)
    b = peers(TRUNK_B, options=200, invite=486)
    r = start(router, rpc_path, document(a, b, health_a={"probe_interval": 1, "up_after": 2}))
    wait_for(lambda: state(rpc_path, a)["state"] == "down", 20, "carrier-a-1 marked down")

    a.options, a.invite = 404, 503  # a 404 to OPTIONS still says the host is there
    wait_for(lambda: state(rpc_path, a)["state"] == "up", 10, "carrier-a-1 back after two answered probes")
    entry = state(rpc_path, a)
    assert entry["came_up"] == 1 and entry["probe_failures_in_a_row"] == 0

    since = time.monotonic()
    final = call(r)
    assert a.count("INVITE", since) == 1  # tried first again (its 503 fails over to B)
    assert final.code == 486


def test_a_trunk_answering_options_but_not_invites_is_caught_by_its_calls(router, peers, rpc_path):
    a = peers(TRUNK_A, options=200)  # alive to probes, every INVITE times out
    b = peers(TRUNK_B, options=200, invite=486)
    r = start(router, rpc_path, document(a, b, health_a={"probe_interval": 1, "down_after": 3}))
    wait_for(lambda: state(rpc_path, a)["last_probe_rtt_ms"] is not None, 10, "carrier-a-1 probed")

    for _ in range(3):  # each waits for carrier A's fr_timer, then reaches B
        final = call(r)
        assert final.code == 486 and final.elapsed >= FR_TIMER_MS / 1000 * 0.9, final
    entry = state(rpc_path, a)
    assert entry["state"] == "down", entry
    assert entry["last_failure_reason"] == "INVITE timed out"

    since = time.monotonic()
    final = call(r)
    assert final.code == 486 and final.elapsed < FR_TIMER_MS / 1000 / 2, final
    assert a.count("INVITE", since) == 0


def test_every_trunk_down_tries_them_all_by_default(router, peers, rpc_path):
    a = peers(TRUNK_A)
    b = peers(TRUNK_B)
    r = start(router, rpc_path, document(a, b, health_a={"probe_interval": 1}, health_b={"probe_interval": 1}))
    wait_for(lambda: all(state(rpc_path, p)["state"] == "down" for p in (a, b)), 20, "both trunks down")

    since = time.monotonic()
    final = call(r)
    # Tried anyway, in order: A, then B (both silent: the caller gets the timeout).
    assert a.count("INVITE", since) >= 1 and b.count("INVITE", since) >= 1, (final, a.received, b.received)
    assert final.code in (408, 500, 503), final


def test_every_trunk_down_with_when_all_down_refuse_answers_503_at_once(router, peers, rpc_path):
    a = peers(TRUNK_A)
    b = peers(TRUNK_B)
    r = start(router, rpc_path, document(a, b, {"probe_interval": 1}, {"probe_interval": 1}, when_all_down="refuse"))
    wait_for(lambda: all(state(rpc_path, p)["state"] == "down" for p in (a, b)), 20, "both trunks down")

    since = time.monotonic()
    final = call(r)
    assert (final.code, final.reason) == (503, "All Trunks Down"), final
    assert final.elapsed < 0.5
    assert a.count("INVITE", since) == 0 and b.count("INVITE", since) == 0


def test_a_trunk_removed_from_the_table_is_no_longer_probed(router, peers, rpc_path):
    a = peers(TRUNK_A, options=200)
    b = peers(TRUNK_B, options=200, invite=486)
    doc = document(a, b, health_a={"probe_interval": 1})
    r = start(router, rpc_path, doc)
    wait_for(lambda: a.count("OPTIONS") >= 2, 10, "carrier-a-1 probed")

    doc["routes"][0]["trunks"] = ["carrier-b-1"]
    doc["trunks"] = [t for t in doc["trunks"] if t["name"] != "carrier-a-1"]
    doc["carriers"] = [c for c in doc["carriers"] if c["name"] != "carrier-a"]
    r.update_table(doc)
    wait_for(lambda: not report(rpc_path, a), 10,
             "carrier-a-1's target no longer watched")
    time.sleep(1.5)  # a probe already on its way may still land
    settled = time.monotonic()
    time.sleep(3)
    assert a.count("OPTIONS", settled) == 0


def test_replies_the_router_did_not_ask_for_change_nothing(router, peers, rpc_path):
    """Forged OPTIONS answers from a down trunk's own address do not bring it back; nothing is forwarded."""
    a = peers(TRUNK_A)
    b = peers(TRUNK_B, options=200, invite=486)
    r = start(router, rpc_path, document(a, b, health_a={"probe_interval": 1}))
    wait_for(lambda: state(rpc_path, a)["state"] == "down", 20, "carrier-a-1 marked down")

    # The forger knows the probes' shape (c4probe-... Call-IDs, CSeq OPTIONS) but not tm's branch.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((TRUNK_A, 0))
        for n in range(200):
            reply = (
                f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {r.target};branch=z9hG4bK{n:08x}.0\r\n"
                f"From: <sip:c4-probe@{r.target}>;tag={n}\r\nTo: <{a.uri}>;tag=x\r\n"
                f"Call-ID: c4probe-{n}\r\nCSeq: 10 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendto(reply.encode(), (r.address, r.port))
    time.sleep(3)
    entry = state(rpc_path, a)
    assert entry["state"] == "down" and entry["came_up"] == 0, entry
    final = call(r)
    assert final.code == 486 and a.count("INVITE") == 0


def test_the_node_api_shows_trunk_health_and_its_metrics(router, peers, rpc_path):
    """GET /trunks/health and /metrics of the node's own c4 serve (--serve-api), in either mode."""
    a = peers(TRUNK_A)
    b = peers(TRUNK_B, options=200, invite=486)
    r = router.start(document(a, b, health_a={"probe_interval": 1}), node_api=True, extra_args=["--rpc-socket", str(rpc_path)])
    base = r.api_url
    wait_for(lambda: state(rpc_path, a)["state"] == "down", 20, "carrier-a-1 marked down")

    with urllib.request.urlopen(f"{base}/trunks/health", timeout=5) as response:
        body = orjson.loads(response.read())
    by_trunk = {t: entry for entry in body["targets"] for t in entry["trunks"]}
    assert body["down"] == 1
    assert by_trunk["carrier-a-1"]["state"] == "down" and by_trunk["carrier-a-1"]["target"] == a.uri
    assert by_trunk["carrier-a-1"]["last_failure_reason"] == "OPTIONS timed out"
    assert by_trunk["carrier-b-1"]["state"] == "up"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'c4_trunk_up{trunk="carrier-a-1"} 0.0' in metrics
    assert 'c4_trunk_up{trunk="carrier-b-1"} 1.0' in metrics
    assert 'c4_trunk_state_changes_total{state="down",trunk="carrier-a-1"} 1.0' in metrics
    assert "c4_targets_down_total 1.0" in metrics


def test_a_call_record_says_which_route_was_skipped_as_down(router, peers, rpc_path, tmp_path):
    from .test_cdr import read_records

    a = peers(TRUNK_A)
    b = peers(TRUNK_B, options=200, invite=486)
    records = tmp_path / "cdr.jsonl"
    r = router.start(document(a, b, health_a={"probe_interval": 1}),
                     extra_args=["--rpc-socket", str(rpc_path), "--cdr-file", str(records)])
    wait_for(lambda: state(rpc_path, a)["state"] == "down", 20, "carrier-a-1 marked down")

    assert call(r).code == 486
    (record,) = read_records(records, 1)
    assert record["attempts"] == [
        {"destination": "carrier-a-1", "kind": "trunk", "uri": a.uri, "code": None, "skipped": "down"},
        {"destination": "carrier-b-1", "kind": "trunk", "uri": b.uri, "code": 486},
    ]


def test_a_share_of_503s_marks_a_trunk_down_when_failure_percent_is_set(router, peers, rpc_path):
    """Optional (off by default): carrier A answers OPTIONS but refuses every INVITE with 503."""
    a = peers(TRUNK_A, options=200, invite=503)
    b = peers(TRUNK_B, options=200, invite=486)
    health_a = {"failure_percent": 50, "failure_window": 60, "failure_min_calls": 4}
    r = start(router, rpc_path, document(a, b, health_a=health_a))

    for _ in range(4):  # A's 503 fails over to B
        assert call(r).code == 486
    entry = wait_for(lambda: (e := state(rpc_path, a))["state"] == "down" and e, 5, "carrier-a-1 down on its 503s")
    assert entry["invite_failures_in_a_row"] == 0  # 503s are answers: not failures in a row
    since = time.monotonic()
    assert call(r).code == 486 and a.count("INVITE", since) == 0
    log = r.log_text()
    assert "4 of 4 INVITEs failed within 60 s" in log
    assert "div by 0" not in log  # the branches of targets without failure_percent parse nothing
