"""Channel limits through a real router: trunks and tenants, in both modes (docs/routing.md, "Channel limits")."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from c4kemi.call.channels import KamailioRpc, live_counts
from c4kemi.core.table import compile_table

from .documents import (
    CALLER_NATIONAL,
    DID_NATIONAL,
    NO_DID_NATIONAL,
    OUT_CALLED_E164,
    PBX,
    STRANGER,
    TRUNK_A,
    TRUNK_B,
    routing_document,
)
from .harness import REPO_ROOT, BusyPeers, free_tcp_port, http_ok, sip_invite

# Long enough for every call of a test to overlap and for the counts to be
# read while they last, even on a loaded machine.
HOLD_MS = 6000


def limited(document: dict, trunk_a: dict | None = None, tenant: dict | None = None) -> dict:
    for trunk in document["trunks"]:
        if trunk["name"] == "carrier-a-1":
            trunk.update(trunk_a or {})
    document["tenants"][0].update(tenant or {})
    return document


def hold_outbound(sipp, r, count: int, stagger: float = 0.0):
    """COUNT outbound calls from the IPBX, each answered and held HOLD_MS before its BYE, STAGGER s apart."""
    callers = []
    for n in range(count):
        if n and stagger:
            time.sleep(stagger)
        callers.append(sipp.uac("uac_call_hold.xml", r.target, PBX, called=OUT_CALLED_E164, caller="39611111111",
                                hold_ms=HOLD_MS, wait=False, timeout=30))
    return callers


def test_trunk_at_max_channels_sends_the_next_call_to_the_next_trunk(router, sipp):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A, calls=2)
    trunk_b = sipp.uas("uas_answer.xml", TRUNK_B)
    r = router.start(limited(routing_document(trunk_a_port=trunk_a.port, trunk_b_port=trunk_b.port), {"max_channels": 2}))

    # Apart: calls racing for the last channel can both be refused (join, then count: never both let
    # through); this test is about the next call after the trunk is full, not about that race.
    callers = hold_outbound(sipp, r, 3, stagger=0.5)

    for caller in callers:
        assert caller.wait(40) == 0, sipp.describe_all()
    assert trunk_a.wait(10) == 0 and trunk_b.wait(10) == 0, sipp.describe_all()
    assert len(trunk_a.received("INVITE")) == 2
    assert len(trunk_b.received("INVITE")) == 1


def test_every_trunk_full_gives_503(router, sipp):
    document = limited(routing_document(), {"max_channels": 0})
    for trunk in document["trunks"]:
        trunk["max_channels"] = 0
    r = router.start(document)

    final = sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}",
                       f"<sip:39611111111@{PBX}>;tag=a", f"<sip:{OUT_CALLED_E164}@{r.target}>")

    assert (final.code, final.reason) == (503, "All Trunks Busy")


def test_tenant_at_max_channels_refuses_new_calls_in_either_direction(router, sipp, rpc_dir):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A)
    r, rpc, table = start_counted(router, rpc_dir, limited(routing_document(trunk_a_port=trunk_a.port), tenant={"max_channels": 1}))

    (held,) = hold_outbound(sipp, r, 1)
    assert trunk_a.received("INVITE") or _wait_for(lambda: trunk_a.received("INVITE")), sipp.describe_all()

    inbound = sip_invite(r.address, r.port, TRUNK_B, f"sip:{DID_NATIONAL}@{r.target}",
                         f"<sip:{CALLER_NATIONAL}@{TRUNK_B}>;tag=b", f"<sip:{DID_NATIONAL}@{r.target}>")
    outbound = sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}",
                          f"<sip:39611111111@{PBX}>;tag=c", f"<sip:{OUT_CALLED_E164}@{r.target}>")

    assert (inbound.code, inbound.reason) == (503, "Tenant Channel Limit")
    assert (outbound.code, outbound.reason) == (503, "Tenant Channel Limit")
    one = {"tenants": {"acme": 1}, "trunks": {"carrier-a-1": 1, "carrier-b-1": 0}}
    assert counts_become(rpc, table, one) == one  # the refused calls took nothing
    assert held.wait(40) == 0, sipp.describe_all()
    assert counts_become(rpc, table, ZERO) == ZERO


def _wait_for(predicate, timeout: float = 5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def busy_peers():
    peers = BusyPeers([TRUNK_A, TRUNK_B, PBX])  # every INVITE answered 486: no failover, the call ends at once
    yield peers
    peers.close()


def test_max_cps_skips_a_trunk_outbound_and_refuses_it_inbound(router, busy_peers):
    ports = busy_peers.ports
    document = routing_document(pbx_port=ports[PBX], trunk_a_port=ports[TRUNK_A], trunk_b_port=ports[TRUNK_B])
    r = router.start(limited(document, {"max_cps": 1}))

    # Three calls within a fraction of a second cross at most one second of
    # the clock: at most two can be carrier-a-1's (one per second), so at
    # least one goes on to carrier-b-1.
    outbound = [
        sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}", f"<sip:39611111111@{PBX}>;tag=o{i}",
                   f"<sip:{OUT_CALLED_E164}@{r.target}>").code
        for i in range(3)
    ]
    time.sleep(1.1)  # the trunk's calls of a second count both directions: inbound starts in a later one
    inbound = [
        sip_invite(r.address, r.port, TRUNK_A, f"sip:{DID_NATIONAL}@{r.target}", f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag=i{i}",
                   f"<sip:{DID_NATIONAL}@{r.target}>")
        for i in range(3)
    ]

    assert outbound == [486, 486, 486]
    to_a = len(busy_peers.requests("INVITE", TRUNK_A))
    to_b = len(busy_peers.requests("INVITE", TRUNK_B))
    assert to_a + to_b == 3 and 1 <= to_a <= 2 and to_b >= 1, (to_a, to_b)
    codes = [(final.code, final.reason) for final in inbound]
    assert (503, "Trunk Call Rate Limit") in codes and codes.count((486, "Busy Here")) >= 1, codes


# ---------------------------------------------------------------- live counts


@pytest.fixture
def rpc_dir():
    """A short directory for Kamailio's RPC socket (a unix socket path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="c4rpc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_counted(router, rpc_dir, document):
    socket_path = rpc_dir / "rpc.sock"
    r = router.start(document, extra_args=["--rpc-socket", str(socket_path)])
    return r, KamailioRpc(str(socket_path)), compile_table(document)


def counts_become(rpc, table, expected: dict, timeout: float = 10.0) -> dict:
    """The live counts once they equal EXPECTED (those names only), or the last ones seen."""
    deadline = time.monotonic() + timeout
    while True:
        counts = live_counts(rpc, table)
        seen = {kind: {name: counts[kind][name] for name in names} for kind, names in expected.items()}
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


ZERO = {"tenants": {"acme": 0}, "trunks": {"carrier-a-1": 0, "carrier-b-1": 0}}


def test_counts_follow_a_held_call_in_each_direction_and_return_to_zero(router, sipp, rpc_dir):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A)
    pbx = sipp.uas("uas_answer.xml", PBX)
    r, rpc, table = start_counted(router, rpc_dir, routing_document(trunk_a_port=trunk_a.port, pbx_port=pbx.port))
    assert counts_become(rpc, table, ZERO) == ZERO

    (outbound,) = hold_outbound(sipp, r, 1)
    busy = {"tenants": {"acme": 1}, "trunks": {"carrier-a-1": 1, "carrier-b-1": 0}}
    assert counts_become(rpc, table, busy) == busy
    inbound = sipp.uac("uac_call_hold.xml", r.target, TRUNK_B, called=DID_NATIONAL, caller=CALLER_NATIONAL,
                       hold_ms=HOLD_MS, wait=False, timeout=30)
    both = {"tenants": {"acme": 2}, "trunks": {"carrier-a-1": 1, "carrier-b-1": 1}}
    assert counts_become(rpc, table, both) == both

    assert outbound.wait(40) == 0 and inbound.wait(40) == 0, sipp.describe_all()
    assert counts_become(rpc, table, ZERO) == ZERO


def test_counts_return_to_zero_after_every_kind_of_call_end(router, sipp, rpc_dir):
    document = routing_document(fr_timer=1000)
    for trunk in document["trunks"]:
        trunk["fr_timer"] = 1000
    # busy (486), failed over (503 then 486), no answer (408 on both trunks), cancelled, refused (403, 404)
    trunk_a = sipp.uas("uas_reject.xml", TRUNK_A, code=486, reason="Busy Here")
    pbx = sipp.uas("uas_ring_cancel.xml", PBX)
    document["trunks"][0]["target"] = f"sip:{TRUNK_A}:{trunk_a.port}"
    document["ipbxs"][0]["targets"] = [f"sip:{PBX}:{pbx.port}"]
    r, rpc, table = start_counted(router, rpc_dir, document)

    busy = sipp.uac("uac_final.xml", r.target, PBX, called=OUT_CALLED_E164, caller="39611111111", code=486)
    assert busy.proc.returncode == 0, sipp.describe_all()
    assert counts_become(rpc, table, ZERO) == ZERO

    trunk_a = sipp.uas("uas_reject.xml", TRUNK_A, code=503, reason="Service Unavailable")
    trunk_b = sipp.uas("uas_reject.xml", TRUNK_B, code=486, reason="Busy Here")
    document["trunks"][0]["target"] = f"sip:{TRUNK_A}:{trunk_a.port}"
    document["trunks"][1]["target"] = f"sip:{TRUNK_B}:{trunk_b.port}"
    r.update_table(document)
    time.sleep(1.5)  # the table is reloaded at most once a second
    failed_over = sipp.uac("uac_final.xml", r.target, PBX, called=OUT_CALLED_E164, caller="39611111111", code=486)
    assert failed_over.proc.returncode == 0 and len(trunk_b.received("INVITE")) == 1, sipp.describe_all()
    assert counts_become(rpc, table, ZERO) == ZERO

    silent_a = sipp.uas("uas_silent.xml", TRUNK_A, silence=8000)
    silent_b = sipp.uas("uas_silent.xml", TRUNK_B, silence=8000)
    for trunk, silent in zip(document["trunks"], (silent_a, silent_b), strict=True):
        trunk.update(target=f"sip:{silent.address}:{silent.port}", fr_timer=2000)
    r.update_table(document)
    time.sleep(1.5)
    no_answer = sipp.uac("uac_final.xml", r.target, PBX, called=OUT_CALLED_E164, caller="39611111111", code=408, wait=False)
    ringing = {"tenants": {"acme": 1}}  # counted while it rings out, two seconds on each trunk
    assert counts_become(rpc, table, ringing, timeout=3.5) == ringing
    assert no_answer.wait(20) == 0, sipp.describe_all()
    assert counts_become(rpc, table, ZERO) == ZERO

    cancelled = sipp.uac("uac_cancel.xml", r.target, TRUNK_A, called=DID_NATIONAL)
    assert cancelled.proc.returncode == 0 and cancelled.received_finals() == [487], sipp.describe_all()
    for source, called, code in ((STRANGER, DID_NATIONAL, 403), (TRUNK_A, NO_DID_NATIONAL, 404)):
        final = sip_invite(r.address, r.port, source, f"sip:{called}@{r.target}",
                           f"<sip:{CALLER_NATIONAL}@{source}>;tag=r", f"<sip:{called}@{r.target}>")
        assert final.code == code
    assert counts_become(rpc, table, ZERO) == ZERO


def test_c4_serve_shows_the_live_counts_in_metrics_and_channels(router, sipp, rpc_dir, processes, tmp_path):
    trunk_a = sipp.uas("uas_answer.xml", TRUNK_A)
    document = limited(routing_document(trunk_a_port=trunk_a.port), {"max_channels": 2, "max_cps": 10}, {"max_channels": 5})
    r, rpc, table = start_counted(router, rpc_dir, document)
    port = free_tcp_port()
    serve = processes.start(
        [sys.executable, "-m", "c4kemi.cli", "serve", "--table", str(r.table_path), "--port", str(port),
         "--kamailio-rpc", str(rpc_dir / "rpc.sock")],
        tmp_path / "serve-counts.log", cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 20
    while not http_ok(f"http://127.0.0.1:{port}/health"):
        assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve-counts.log").read_text()
        time.sleep(0.05)

    (held,) = hold_outbound(sipp, r, 1)
    busy = {"tenants": {"acme": 1}, "trunks": {"carrier-a-1": 1}}
    assert counts_become(rpc, table, busy) == busy
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/channels", timeout=5) as response:
        channels = orjson.loads(response.read())
    assert channels["calls"] == 1
    assert {"name": "acme", "calls": 1, "max_channels": 5} in channels["tenants"]
    assert {"name": "carrier-a-1", "calls": 1, "max_channels": 2, "max_cps": 10} in channels["trunks"]
    assert {"name": "carrier-b-1", "calls": 0} in channels["trunks"]
    assert sip_invite(r.address, r.port, STRANGER, f"sip:{DID_NATIONAL}@{r.target}", f"<sip:{CALLER_NATIONAL}@{STRANGER}>;tag=m",
                      f"<sip:{DID_NATIONAL}@{r.target}>").code == 403
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    # Kamailio's own counters (kamailio-base.cfg), records off here
    assert "c4_refused_unknown_source_total 1.0" in metrics and "c4_cdr_dropped_total 0.0" in metrics
    assert 'c4_tenant_calls_in_progress{tenant="acme"} 1.0' in metrics
    assert 'c4_trunk_calls_in_progress{trunk="carrier-a-1"} 1.0' in metrics
    assert 'c4_trunk_calls_in_progress{trunk="carrier-b-1"} 0.0' in metrics
    assert "c4_kamailio_up 1.0" in metrics and "c4_calls_in_progress 1.0" in metrics
    assert held.wait(40) == 0, sipp.describe_all()


def test_a_failed_over_call_gives_the_failed_trunk_its_channel_back(router, sipp, rpc_dir):
    trunk_a = sipp.uas("uas_reject.xml", TRUNK_A, code=503, reason="Service Unavailable")
    trunk_b = sipp.uas("uas_answer.xml", TRUNK_B)
    r, rpc, table = start_counted(router, rpc_dir, routing_document(trunk_a_port=trunk_a.port, trunk_b_port=trunk_b.port))

    (held,) = hold_outbound(sipp, r, 1)

    on_b = {"tenants": {"acme": 1}, "trunks": {"carrier-a-1": 0, "carrier-b-1": 1}}
    assert counts_become(rpc, table, on_b) == on_b
    assert held.wait(40) == 0, sipp.describe_all()
    assert counts_become(rpc, table, ZERO) == ZERO
