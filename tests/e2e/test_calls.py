"""Calls through a real router: routing, number conversion, failover, dialogs, CANCEL."""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from .documents import (
    CALLER_E164,
    CALLER_NATIONAL,
    DID_E164,
    DID_NATIONAL,
    NO_DID_NATIONAL,
    OUT_CALLED_E164,
    OUT_CALLED_NATIONAL,
    PBX,
    STRANGER,
    TRUNK_A,
    TRUNK_B,
    routing_document,
)
from .harness import sip_invite, user_of


def assert_ok(sipp_proc, sipp):
    rc = sipp_proc.wait()
    assert rc == 0, f"sipp {sipp_proc.name} failed (rc={rc})\n{sipp.describe_all()}"


def only(messages, what):
    assert len(messages) == 1, f"expected one {what}, got {len(messages)}: {[m.first_line for m in messages]}"
    return messages[0]


def test_inbound_call_reaches_ipbx_with_converted_numbers(router, sipp):
    pbx = sipp.uas("uas_answer.xml", PBX)
    r = router.start(routing_document(pbx_port=pbx.port))

    caller = sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)

    assert_ok(caller, sipp)
    assert_ok(pbx, sipp)
    invite = only(pbx.received("INVITE"), "INVITE at the IPBX")
    assert invite.request_uri == f"sip:{DID_E164}@{PBX}:{pbx.port}"
    assert user_of(invite.header("From")) == CALLER_E164
    assert user_of(invite.header("To")) == DID_E164
    assert invite.header("P-Asserted-Identity") == f"<sip:+{CALLER_E164}@{TRUNK_A}>"
    assert any(r.target in rr for rr in invite.headers("Record-Route")), invite.headers("Record-Route")
    # The caller's side of the dialog keeps its own numbers (uac restore).
    answer = only(caller.received(200)[:1], "200 for the INVITE")
    assert user_of(answer.header("From")) == CALLER_NATIONAL
    assert user_of(answer.header("To")) == DID_NATIONAL


def test_full_dialog_goes_through_the_router(router, sipp):
    pbx = sipp.uas("uas_answer.xml", PBX)
    r = router.start(routing_document(pbx_port=pbx.port))

    caller = sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)

    assert_ok(caller, sipp)
    assert_ok(pbx, sipp)
    ack = only(pbx.received("ACK"), "ACK at the IPBX")
    bye = only(pbx.received("BYE"), "BYE at the IPBX")
    for request in (ack, bye):
        # Sent along the Record-Route set: the router is in the Via path...
        assert any(r.target in via for via in request.headers("Via")), request.text
        # ...and the IPBX sees the dialog with its converted From/To (uac restore in-dialog).
        assert user_of(request.header("From")) == CALLER_E164, request.text
        assert user_of(request.header("To")) == DID_E164, request.text
    assert caller.received(200)[-1].cseq_method == "BYE"


@pytest.mark.parametrize("code,reason", [(503, "Service Unavailable"), (500, "Server Internal Error"), (408, "Request Timeout")])
def test_outbound_failover_on_5xx_and_408(router, sipp, code, reason):
    first = sipp.uas("uas_reject.xml", TRUNK_A, code=code, reason=reason)
    second = sipp.uas("uas_answer.xml", TRUNK_B)
    r = router.start(routing_document(trunk_a_port=first.port, trunk_b_port=second.port))

    caller = sipp.uac("uac_call.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164)

    assert_ok(caller, sipp)
    assert_ok(first, sipp)
    assert_ok(second, sipp)
    tried = only(first.received("INVITE"), "INVITE at the first trunk")
    assert tried.request_uri == f"sip:{OUT_CALLED_NATIONAL}@{TRUNK_A}:{first.port}"
    invite = only(second.received("INVITE"), "INVITE at the second trunk")
    assert invite.request_uri == f"sip:{OUT_CALLED_NATIONAL}@{TRUNK_B}:{second.port}"
    assert user_of(invite.header("From")) == CALLER_NATIONAL
    assert user_of(invite.header("To")) == OUT_CALLED_NATIONAL
    assert invite.header("P-Asserted-Identity") == f"<sip:+{CALLER_E164}@{PBX}>"
    assert len(second.received("BYE")) == 1


@pytest.mark.parametrize("code,reason", [(486, "Busy Here"), (404, "Not Found"), (603, "Decline")])
def test_outbound_4xx_6xx_are_not_failed_over(router, sipp, code, reason):
    first = sipp.uas("uas_reject.xml", TRUNK_A, code=code, reason=reason)
    second = sipp.uas("uas_answer.xml", TRUNK_B, timeout=15)
    r = router.start(routing_document(trunk_a_port=first.port, trunk_b_port=second.port))

    caller = sipp.uac("uac_final.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164, code=code)

    assert_ok(caller, sipp)
    assert_ok(first, sipp)
    assert caller.received_finals() == [code]
    time.sleep(0.3)
    assert second.received() == [], f"a {code} must go back to the caller, not to the next trunk"


def test_outbound_no_answer_fails_over_after_fr_timer(router, sipp):
    first = sipp.uas("uas_silent.xml", TRUNK_A, silence=4000)
    second = sipp.uas("uas_answer.xml", TRUNK_B)
    r = router.start(routing_document(trunk_a_port=first.port, trunk_b_port=second.port, fr_timer=1000))

    started = time.monotonic()
    caller = sipp.uac("uac_call.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164)
    elapsed = time.monotonic() - started

    assert_ok(caller, sipp)
    assert_ok(second, sipp)
    assert len(first.received("INVITE")) >= 1, "the first trunk never saw the call"
    assert len(second.received("INVITE")) == 1
    assert elapsed >= 1.0, f"failed over after {elapsed:.2f}s, before the 1000 ms fr_timer"
    assert elapsed < 4.0, f"failover took {elapsed:.2f}s with a 1000 ms fr_timer"


@pytest.mark.parametrize(
    "source, called, code",
    [(STRANGER, DID_NATIONAL, 403), (TRUNK_A, NO_DID_NATIONAL, 404)],
    ids=["unknown-source-forbidden", "unroutable-number-not-found"],
)
def test_refusal_reaches_the_caller_and_nobody_else(router, sipp, source, called, code):
    pbx = sipp.uas("uas_answer.xml", PBX, timeout=15)
    r = router.start(routing_document(pbx_port=pbx.port))

    caller = sipp.uac("uac_final.xml", r.target, source, called=called, code=code)

    assert_ok(caller, sipp)
    assert caller.received_finals() == [code]
    assert pbx.received() == []


def test_cancel_before_answer_cancels_the_branch(router, sipp):
    pbx = sipp.uas("uas_ring_cancel.xml", PBX)
    r = router.start(routing_document(pbx_port=pbx.port))

    caller = sipp.uac("uac_cancel.xml", r.target, TRUNK_A, called=DID_NATIONAL)

    assert_ok(caller, sipp)
    assert_ok(pbx, sipp)
    assert len(pbx.received("CANCEL")) == 1
    assert caller.received_finals() == [487]
    assert [m.cseq_method for m in caller.received(200)] == ["CANCEL"]



CHALLENGES = {401: ("Unauthorized", "WWW-Authenticate", "Authorization"), 407: ("Proxy Authentication Required", "Proxy-Authenticate", "Proxy-Authorization")}


def digest_params(value: str) -> dict:
    assert value.startswith("Digest "), value
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', value[len("Digest "):])}


def expected_digest_response(params: dict, password: str, method: str = "INVITE") -> str:
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{params['username']}:{params['realm']}:{password}")
    ha2 = md5(f"{method}:{params['uri']}")
    return md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}")


@pytest.mark.parametrize("code", [401, 407])
def test_auth_challenge_answered_with_trunk_credentials(router, sipp, code):
    reason, challenge, answer = CHALLENGES[code]
    auth = {"username": "c4user", "password": "s3cret", "realm": "carrier-a.test"}
    carrier = sipp.uas("uas_auth.xml", TRUNK_A, code=code, reason=reason, challenge=challenge, realm=auth["realm"])
    r = router.start(routing_document(trunk_a_port=carrier.port, trunk_a_auth=auth))

    caller = sipp.uac("uac_call.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164)

    assert_ok(caller, sipp)
    assert_ok(carrier, sipp)
    invites = carrier.received("INVITE")
    assert len(invites) == 2, "expected the INVITE and one authenticated retry"
    assert invites[0].header(answer) is None
    params = digest_params(invites[1].header(answer) or "Digest ")
    assert params["username"] == auth["username"] and params["realm"] == auth["realm"]
    assert params["response"] == expected_digest_response(params, auth["password"]), "wrong digest"
    assert invites[1].request_uri == f"sip:{OUT_CALLED_NATIONAL}@{TRUNK_A}:{carrier.port}"
    assert user_of(invites[1].header("From")) == CALLER_NATIONAL
    assert invites[1].header("P-Asserted-Identity") == f"<sip:+{CALLER_E164}@{PBX}>"
    assert caller.received_finals() == [200]


def test_auth_challenge_is_answered_only_once(router, sipp):
    reason, challenge, _ = CHALLENGES[407]
    auth = {"username": "c4user", "password": "wrong", "realm": "carrier-a.test"}
    carrier = sipp.uas("uas_auth_twice.xml", TRUNK_A, code=407, reason=reason, challenge=challenge, realm=auth["realm"])
    second = sipp.uas("uas_answer.xml", TRUNK_B, timeout=15)
    r = router.start(routing_document(trunk_a_port=carrier.port, trunk_b_port=second.port, trunk_a_auth=auth))

    caller = sipp.uac("uac_final.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164, code=407)

    assert_ok(caller, sipp)
    assert_ok(carrier, sipp)
    assert caller.received_finals() == [407]
    assert len(carrier.received("INVITE")) == 2
    assert second.received() == [], "a 4xx must not fail over"


def test_auth_challenge_without_credentials_goes_back_to_caller(router, sipp):
    reason, challenge, _ = CHALLENGES[407]
    carrier = sipp.uas("uas_auth_twice.xml", TRUNK_A, code=407, reason=reason, challenge=challenge, realm="carrier-a.test", timeout=15)
    r = router.start(routing_document(trunk_a_port=carrier.port))

    caller = sipp.uac("uac_final.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164, code=407)

    assert_ok(caller, sipp)
    assert caller.received_finals() == [407]
    assert len(carrier.received("INVITE")) == 1


@pytest.mark.parametrize("code,reason", [(200, "OK"), (500, "Server Internal Error")])
def test_reinvite_goes_through_the_router_without_rtjson(router, sipp, code, reason):
    """A re-INVITE follows the route set; the rtjson branch/failure routes are not armed for it."""
    pbx = sipp.uas("uas_reinvite.xml", PBX, reinvite_code=code, reinvite_reason=reason)
    r = router.start(routing_document(pbx_port=pbx.port))

    caller = sipp.uac("uac_reinvite.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL,
                      reinvite_code=code, reinvite_ack_branch="[branch]" if code < 300 else "[branch-3]")

    assert_ok(caller, sipp)
    assert_ok(pbx, sipp)
    reinvite = pbx.received("INVITE")[1]
    assert reinvite.header("Subject") == "c4 re-INVITE"
    assert user_of(reinvite.header("From")) == CALLER_E164, reinvite.text  # uac restore, not rtjson
    assert [m.status for m in caller.received() if not m.is_request and m.status >= 200 and m.header("CSeq") == "2 INVITE"] == [code]
    # rtjson's routes belong to the initial INVITE: a failure route armed for
    # the re-INVITE would run rtjson_next_route on a transaction without any.
    assert "no json for routing" not in r.log_text()


def add_trunk(document: dict, name: str, target: str, position: int) -> dict:
    """A third trunk (carrier-b's) at POSITION in the outbound route."""
    document["trunks"].append({"name": name, "carrier": "carrier-b", "target": target, "sources": [f"127.0.0.{50 + len(document['trunks'])}"],
                               "normalization": "it", "fr_timer": 2000, "fr_inv_timer": 10000})
    document["routes"][0]["trunks"].insert(position, name)
    return document


UNSENDABLE = {
    "ipv6-while-listening-on-ipv4": "sip:[::1]:5060",
    "unresolvable-host": "sip:no-such-host.invalid:5060",
}


@pytest.mark.parametrize("target", UNSENDABLE.values(), ids=UNSENDABLE.keys())
def test_relay_that_fails_inside_failover_moves_on(router, sipp, target):
    """503 from the first trunk, the second cannot even be sent: the third answers."""
    first = sipp.uas("uas_reject.xml", TRUNK_A, code=503, reason="Service Unavailable")
    third = sipp.uas("uas_answer.xml", TRUNK_B)
    r = router.start(add_trunk(routing_document(trunk_a_port=first.port, trunk_b_port=third.port), "carrier-c-1", target, 1))

    caller = sipp.uac("uac_call.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164)

    assert_ok(caller, sipp)
    assert_ok(third, sipp)
    assert caller.received_finals() == [200]


@pytest.mark.parametrize("target", UNSENDABLE.values(), ids=UNSENDABLE.keys())
def test_first_route_that_cannot_be_sent_moves_on(router, sipp, target):
    second = sipp.uas("uas_answer.xml", TRUNK_A)
    r = router.start(add_trunk(routing_document(trunk_a_port=second.port), "carrier-c-1", target, 0))

    caller = sipp.uac("uac_call.xml", r.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164)

    assert_ok(caller, sipp)
    assert_ok(second, sipp)
    assert caller.received_finals() == [200]


def test_no_route_can_be_sent_gives_exactly_one_final(router, sipp):
    first = sipp.uas("uas_reject.xml", TRUNK_A, code=503, reason="Service Unavailable")
    document = routing_document(trunk_a_port=first.port)
    document["routes"][0]["trunks"] = ["carrier-a-1"]
    add_trunk(document, "carrier-c-1", UNSENDABLE["ipv6-while-listening-on-ipv4"], 1)
    add_trunk(document, "carrier-d-1", UNSENDABLE["unresolvable-host"], 2)
    r = router.start(document)

    final = sip_invite(r.address, r.port, PBX, f"sip:{OUT_CALLED_E164}@{r.target}", f"<sip:{CALLER_E164}@{PBX}>;tag=x1",
                       f"<sip:{OUT_CALLED_E164}@{r.target}>", linger=1.0)

    assert final.finals == [500], final.finals
    assert len(first.received("INVITE")) == 1
