"""The router tried as a hostile peer would: raw SIP over UDP, both modes.

Forged in-dialog requests (toll fraud through the router), caller-supplied
identity headers, bytes that are not UTF-8. UdpPeers play the carriers and
the IPBX and record, byte for byte, whatever the router sends them. That
real dialogs (re-INVITE, BYE, CANCEL) still work is tested in test_calls.py.
"""

from __future__ import annotations

import time
import uuid

import pytest

from c4kemi.node.launch_plan import kamailio_binary
from c4kemi.node.secret import dialog_mac

from .documents import (
    CALLER_E164,
    CALLER_NATIONAL,
    DID_NATIONAL,
    OUT_CALLED_E164,
    OUT_CALLED_NATIONAL,
    PBX,
    STRANGER,
    TRUNK_A,
    TRUNK_B,
    routing_document,
)
from .harness import UdpPeers, sip_invite, sip_options_ok

THIRD_PARTY = "127.0.0.77"  # in no table: a premium number, another network...
SETTLE = 0.5  # seconds for a relayed request to reach a peer


@pytest.fixture
def peers():
    udp = UdpPeers([TRUNK_A, TRUNK_B, PBX, THIRD_PARTY])
    yield udp
    udp.close()


@pytest.fixture
def r(router, peers):
    """A router whose trunks and IPBX are the recording peers."""
    return router.start(routing_document(pbx_port=peers.ports[PBX], trunk_a_port=peers.ports[TRUNK_A],
                                         trunk_b_port=peers.ports[TRUNK_B]))


def outbound(r, headers: str | bytes = "", from_header: str | bytes = f'"Alice" <sip:{CALLER_E164}@{PBX}>;tag=out1',
             to_header: str | bytes = f"<sip:{OUT_CALLED_E164}@c4.test>", ruri: str | bytes | None = None,
             call_id: str | bytes | None = None, source: str = PBX, **kwargs):
    """An INVITE from the IPBX to an outbound number (the first trunk answers 486)."""
    return sip_invite(r.address, r.port, source, ruri or f"sip:{OUT_CALLED_E164}@{r.target}", from_header, to_header,
                      call_id=call_id, headers=headers, **kwargs)


def header_line(raw: bytes, name: bytes) -> bytes:
    for line in raw.split(b"\r\n")[1:]:
        if line.lower().startswith(name.lower() + b":"):
            return line
    raise AssertionError(f"no {name!r} header in {raw!r}")


# ------------------------------------------------------------ forged in-dialog requests


def forged_in_dialog(r, peers, source: str, route: str, method: str = "INVITE", target: str | None = None,
                     call_id: str | bytes | None = None, to_tag: str = "forged"):
    target = target or f"sip:{OUT_CALLED_NATIONAL}@{TRUNK_A}:{peers.ports[TRUNK_A]}"
    return sip_invite(r.address, r.port, source, target, f"<sip:{CALLER_E164}@{source}>;tag=f1",
                      f"<sip:{OUT_CALLED_NATIONAL}@{TRUNK_A}>;tag={to_tag}", call_id=call_id,
                      headers=f"Route: {route}\r\n", method=method, linger=0.3)


@pytest.mark.parametrize("source", [STRANGER, PBX], ids=["stranger", "known-ipbx"])
def test_forged_reinvite_routed_to_a_carrier_is_refused(r, peers, source):
    carrier = f"{TRUNK_A}:{peers.ports[TRUNK_A]}"
    final = forged_in_dialog(r, peers, source, f"<sip:{r.target};lr>, <sip:{carrier};lr>")
    assert final.finals == [403], final.finals
    time.sleep(SETTLE)
    assert peers.requests() == [], "a forged in-dialog INVITE reached a carrier"


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "BYE"])
def test_forged_route_to_a_third_party_is_refused(r, peers, method):
    third = f"{THIRD_PARTY}:{peers.ports[THIRD_PARTY]}"
    final = forged_in_dialog(r, peers, STRANGER, f"<sip:{third};lr>", method=method, target=f"sip:premium@{third}")
    assert final.finals == [403], final.finals
    time.sleep(SETTLE)
    assert peers.requests() == [], f"a forged in-dialog {method} was relayed to a third party"


def test_forged_in_dialog_ack_is_dropped(r, peers):
    carrier = f"{TRUNK_A}:{peers.ports[TRUNK_A]}"
    final = forged_in_dialog(r, peers, STRANGER, f"<sip:{r.target};lr>, <sip:{carrier};lr>", method="ACK")
    assert final.finals == [], final.finals  # an ACK is never answered
    time.sleep(SETTLE)
    assert peers.requests() == [], "a forged ACK reached a carrier"


def test_forged_signature_is_refused(r, peers):
    carrier = f"{TRUNK_A}:{peers.ports[TRUNK_A]}"
    final = forged_in_dialog(r, peers, STRANGER, f"<sip:{r.target};lr;c4d={'0' * 32}>, <sip:{carrier};lr>")
    assert final.finals == [403], final.finals
    time.sleep(SETTLE)
    assert peers.requests() == []


def real_record_route(r, peers, call_id: bytes) -> str:
    """The router's signed Record-Route of a real call (answered 486 by the carrier)."""
    assert outbound(r, call_id=call_id).code == 486
    (invite,) = peers.requests("INVITE", TRUNK_A)
    record_route = invite.header("Record-Route")
    assert "c4d=" in record_route, record_route
    deadline = time.monotonic() + 5
    while not peers.requests("ACK"):  # the router's ACK of the 486 comes a moment after the 486 itself
        assert time.monotonic() < deadline, "the router never ACKed the 486"
        time.sleep(0.02)
    peers.received.clear()
    return record_route


@pytest.mark.parametrize("call_id", [b"real-", b"zo\xe9-"], ids=["ascii", "latin-1"])
def test_a_real_dialog_signature_works_for_its_call_only(r, peers, call_id):
    """The router's own Record-Route opens its dialog (same Call-ID, whatever its bytes), and nothing else."""
    call_id += uuid.uuid4().hex.encode() + b"@real"
    record_route = real_record_route(r, peers, call_id)

    final = forged_in_dialog(r, peers, PBX, record_route, method="MESSAGE", call_id=f"{uuid.uuid4().hex}@other")
    assert final.finals == [403], "a signature was accepted for another Call-ID"
    time.sleep(SETTLE)
    assert peers.requests() == []

    final = forged_in_dialog(r, peers, PBX, record_route, method="MESSAGE", call_id=call_id, to_tag="peer")
    assert final.finals == [200], final.finals
    (message,) = peers.raw_requests("MESSAGE")
    assert header_line(message, b"Call-ID") == b"Call-ID: " + call_id


def test_without_a_dialog_key_no_in_dialog_request_is_relayed(router, peers, tmp_path):
    """An empty key (c4 kamailio always derives one) would make any signature computable: nothing gets through."""
    kamailio = tmp_path / "kamailio-without-dialog-key"
    kamailio.write_text(f'#!/bin/sh\nC4_DIALOG_KEY= exec {kamailio_binary(None)} "$@"\n')
    kamailio.chmod(0o755)
    r = router.start(routing_document(pbx_port=peers.ports[PBX], trunk_a_port=peers.ports[TRUNK_A],
                                      trunk_b_port=peers.ports[TRUNK_B]), extra_args=["--kamailio", str(kamailio)])
    call_id = uuid.uuid4().hex + "@no-key"
    carrier = f"{TRUNK_A}:{peers.ports[TRUNK_A]}"
    signed = f"<sip:{r.target};lr;c4d={dialog_mac('', call_id.encode())}>, <sip:{carrier};lr>"
    final = forged_in_dialog(r, peers, STRANGER, signed, method="MESSAGE", call_id=call_id)
    assert final.finals == [403], final.finals
    time.sleep(SETTLE)
    assert peers.requests() == []


# An IPv6 next hop: the router listens on IPv4 only, so the relay cannot even be sent.
UNSENDABLE_HOP = "<sip:[2001:db8::1]:5060;lr>"


def test_an_in_dialog_request_that_cannot_be_sent_gets_one_500(r, peers):
    call_id = uuid.uuid4().hex + "@unsendable"
    record_route = real_record_route(r, peers, call_id.encode())
    final = forged_in_dialog(r, peers, PBX, f"{record_route}, {UNSENDABLE_HOP}", method="MESSAGE",
                             call_id=call_id, to_tag="peer")
    assert final.finals == [500] and final.reason == "Relay Failed", (final.finals, final.reason)  # exactly one


def test_an_in_dialog_ack_that_cannot_be_sent_is_not_answered(r, peers):
    call_id = uuid.uuid4().hex + "@unsendable-ack"
    record_route = real_record_route(r, peers, call_id.encode())
    final = forged_in_dialog(r, peers, PBX, f"{record_route}, {UNSENDABLE_HOP}", method="ACK",
                             call_id=call_id, to_tag="peer")
    assert final.finals == [], final.finals


# ------------------------------------------------------------ identity


FORGED = "<sip:+18005551212@bank.example>"


def test_caller_supplied_identity_is_replaced_by_the_routers(r, peers):
    headers = (f"P-Asserted-Identity: {FORGED}\r\nP-Preferred-Identity: {FORGED}\r\n"
               f"Remote-Party-ID: {FORGED};party=calling;screen=yes;privacy=off\r\n")
    assert outbound(r, headers).code == 486
    (invite,) = peers.requests("INVITE", TRUNK_A)
    assert invite.headers("P-Asserted-Identity") == [f"<sip:+{CALLER_E164}@{PBX}>"]
    assert invite.headers("P-Preferred-Identity") == []
    assert invite.headers("Remote-Party-ID") == []
    assert invite.headers("Privacy") == []


def test_failover_branches_lack_the_callers_identity_too(router, peers):
    peers.answer = {TRUNK_A: (503, "Service Unavailable")}  # trunk B: 486
    r = router.start(routing_document(trunk_a_port=peers.ports[TRUNK_A], trunk_b_port=peers.ports[TRUNK_B]))
    assert outbound(r, f"P-Asserted-Identity: {FORGED}\r\nRemote-Party-ID: {FORGED}\r\n").code == 486
    for trunk in (TRUNK_A, TRUNK_B):
        (invite,) = peers.requests("INVITE", trunk)
        assert invite.headers("P-Asserted-Identity") == [f"<sip:+{CALLER_E164}@{PBX}>"], trunk
        assert invite.headers("Remote-Party-ID") == [], trunk


def test_identity_headers_from_a_carrier_are_replaced_too(r, peers):
    final = sip_invite(r.address, r.port, TRUNK_A, f"sip:{DID_NATIONAL}@{r.target}", f"<sip:{CALLER_NATIONAL}@{TRUNK_A}>;tag=in1",
                       f"<sip:{DID_NATIONAL}@c4.test>", headers=f"P-Asserted-Identity: {FORGED}\r\n")
    assert final.code == 486
    (invite,) = peers.requests("INVITE", PBX)
    assert invite.headers("P-Asserted-Identity") == [f"<sip:+{CALLER_E164}@{TRUNK_A}>"]


ANONYMOUS = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=anon1'
# As the IPBX writes it; the router asserts it normalized (separators removed).
CLAIMED = f"<sip:+{CALLER_E164[:2]}-{CALLER_E164[2:5]}-{CALLER_E164[5:]}@pbx.acme.test>"


@pytest.mark.parametrize("privacy", ["id", "id;header", None])
def test_anonymous_caller_identity_is_asserted_and_kept_private(r, peers, privacy):
    headers = f"P-Asserted-Identity: {CLAIMED}\r\n" + (f"Privacy: {privacy}\r\n" if privacy else "")
    assert outbound(r, headers, from_header=ANONYMOUS).code == 486
    (invite,) = peers.requests("INVITE", TRUNK_A)
    assert invite.headers("P-Asserted-Identity") == [f"<sip:+{CALLER_E164}@pbx.acme.test>"]
    assert invite.headers("Privacy") == [privacy or "id"]  # the caller's own, or id: never disclosed
    assert "anonymous" in invite.header("From")


def test_anonymous_caller_with_a_preferred_identity(r, peers):
    assert outbound(r, f"P-Preferred-Identity: {CLAIMED}\r\nPrivacy: id\r\n", from_header=ANONYMOUS).code == 486
    (invite,) = peers.requests("INVITE", TRUNK_A)
    assert invite.headers("P-Asserted-Identity") == [f"<sip:+{CALLER_E164}@pbx.acme.test>"]
    assert invite.headers("P-Preferred-Identity") == []
    assert invite.headers("Privacy") == ["id"]


def test_anonymous_caller_with_an_identity_that_is_not_a_number(r, peers):
    assert outbound(r, "P-Asserted-Identity: <sip:bank@bank.example>\r\nPrivacy: id\r\n", from_header=ANONYMOUS).code == 486
    (invite,) = peers.requests("INVITE", TRUNK_A)
    assert invite.headers("P-Asserted-Identity") == []
    assert invite.headers("Privacy") == ["id"]


# ------------------------------------------------------------ bytes that are not UTF-8

LATIN1_NAME = b"Zo\xe9"  # "Zoé" in ISO-8859-1, as old PBXs send it
UTF8_NAME = "Zoé".encode()


@pytest.mark.parametrize("name", [LATIN1_NAME, UTF8_NAME], ids=["latin-1", "utf-8"])
def test_from_display_name_goes_out_byte_for_byte(r, peers, name):
    final = outbound(r, from_header=b'"' + name + f'" <sip:{CALLER_E164}@{PBX}>;tag=n1'.encode())
    assert final.code == 486, final
    (raw,) = peers.raw_requests("INVITE")
    assert header_line(raw, b"From").startswith(b'From: "' + name + b'" <sip:'), raw
    assert f"<sip:{CALLER_NATIONAL}@{PBX}>".encode() in header_line(raw, b"From"), raw  # the number still converted


@pytest.mark.parametrize("name", [LATIN1_NAME, UTF8_NAME], ids=["latin-1", "utf-8"])
def test_to_display_name_goes_out_byte_for_byte(r, peers, name):
    final = outbound(r, to_header=b'"' + name + f'" <sip:{OUT_CALLED_E164}@c4.test>'.encode())
    assert final.code == 486, final
    (raw,) = peers.raw_requests("INVITE")
    assert header_line(raw, b"To").startswith(b'To: "' + name + b'" <sip:'), raw
    assert f"<sip:{OUT_CALLED_NATIONAL}@c4.test>".encode() in header_line(raw, b"To"), raw


def test_call_id_that_is_not_utf8_is_routed(r, peers):
    call_id = b"zo\xe9-" + uuid.uuid4().hex.encode() + b"@raw"
    final = outbound(r, call_id=call_id)
    assert final.code == 486, final
    (raw,) = peers.raw_requests("INVITE")
    assert header_line(raw, b"Call-ID") == b"Call-ID: " + call_id


def test_called_number_that_is_not_utf8_is_refused_not_replaced(r, peers):
    """The To user is a routable number: the R-URI's must not be silently swapped for it."""
    final = outbound(r, ruri=f"sip:{OUT_CALLED_E164[:-1]}".encode() + b"\xe9@" + r.target.encode(), linger=0.3)
    assert final.finals == [404], final.finals
    time.sleep(SETTLE)
    assert peers.requests() == []


def test_from_uri_that_is_not_utf8_is_a_bad_request(r, peers):
    final = outbound(r, from_header=f"<sip:{CALLER_E164}".encode() + b"\xe9@" + PBX.encode() + b">;tag=b1", linger=0.3)
    assert final.finals == [400], final.finals
    assert peers.requests() == []


# ------------------------------------------------------------ the deployment secret


def test_a_dialog_outlives_a_restart(router, sipp, tmp_path):
    """Same secret file after the restart: the BYE passes the c4d check and uac still restores From/To."""
    from .documents import DID_E164

    state = {"C4_STATE_DIR": str(tmp_path / "state")}
    pbx = sipp.uas("uas_answer.xml", PBX, timeout=40)
    first = router.start(routing_document(pbx_port=pbx.port), env=state)
    caller = sipp.uac("uac_call_hold.xml", first.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL,
                      hold_ms=8000, wait=False, timeout=40)
    deadline = time.monotonic() + 10
    while not pbx.received("ACK"):
        assert time.monotonic() < deadline, sipp.describe_all()
        time.sleep(0.05)
    first.stop()
    router.start(routing_document(pbx_port=pbx.port), env=state, port=first.port)

    assert caller.wait(50) == 0, sipp.describe_all()
    assert pbx.wait(10) == 0, sipp.describe_all()
    (bye,) = pbx.received("BYE")
    assert any(first.target in via for via in bye.headers("Via")), bye.text
    assert CALLER_E164 in bye.header("From") and DID_E164 in bye.header("To"), bye.text  # restored with the same key


# ------------------------------------------------------------ call records cannot stall calls

FLOOD = 30_000  # INVITEs from an unknown source, each a call event when their records are on
FLOOD_RATE = 2_500  # a second: what this 2-core machine sustains with the router, c4 cdr and the sender on it


def test_idle_clients_on_every_port_and_a_refusal_flood_do_not_stall_calls(router, sipp, tmp_path):
    """Records on, unknown sources' too: 30,000 refusals make 30,000 call events while a client
    connected to every TCP port of the node (evapi's, c4 serve's in HTTP mode) never reads.
    Before: evapi wrote every event to every client, blocked on the idle one, and then every
    SIP worker blocked handing it events; OPTIONS and calls went unanswered."""
    from .flood import flood_invites, idle_clients
    from .test_cdr import wait_connected

    pbx = sipp.uas("uas_answer.xml", PBX)
    r = router.start(routing_document(pbx_port=pbx.port), shm=256,
                     extra_args=["--cdr-file", str(tmp_path / "cdr.jsonl"), "--cdr-unknown-sources"])
    wait_connected(r)
    groups = [r.proc.pid] + ([r.api_proc.pid] if r.api_proc else [])
    clients = idle_clients(groups)
    try:
        assert len(clients) >= (2 if r.mode == "http" else 1), "no TCP port of the node found"
        flood = flood_invites(r.address, r.port, STRANGER, FLOOD, FLOOD_RATE)
        print(f"{r.mode}: {flood.sent} INVITEs in {flood.elapsed:.1f}s ({flood.rate:.0f}/s), finals {dict(flood.codes)}")
        # Each answered, as it came: 403, or 503 when the node sheds load (HTTP mode: the API behind).
        assert sum(flood.codes.values()) >= FLOOD * 0.95, flood.codes

        started = time.monotonic()
        assert sip_options_ok(r.address, r.port, timeout=1.0), "OPTIONS unanswered after the flood"
        caller = sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL, timeout=10)
        assert caller.proc.returncode == 0, sipp.describe_all()
        assert time.monotonic() - started < 3.0
    finally:
        for client in clients:
            client.close()
