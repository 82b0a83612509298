"""Live table reload, and the requests the router answers itself."""

from __future__ import annotations

import time

from .documents import CALLER_NATIONAL, DID_NATIONAL, PBX, PBX2, TRUNK_A, routing_document
from .harness import sip_request

# FileTableSource looks at the file at most once a second per worker.
RELOAD_WAIT = 1.3


def call_did(router, r, sipp, pbx):
    caller = sipp.uac("uac_call.xml", r.target, TRUNK_A, called=DID_NATIONAL, caller=CALLER_NATIONAL)
    assert caller.wait() == 0, f"call failed\n{sipp.describe_all()}"
    assert pbx.wait() == 0, f"IPBX {pbx.name} failed\n{sipp.describe_all()}"
    assert len(pbx.received("INVITE")) == 1
    return caller


def test_reload_moves_the_next_call_without_restart(router, sipp):
    first = sipp.uas("uas_answer.xml", PBX)
    second = sipp.uas("uas_answer.xml", PBX2)
    document = routing_document(pbx_port=first.port, pbx2_port=second.port)
    r = router.start(document)

    call_did(router, r, sipp, first)
    assert second.received() == []

    document["dids"][0]["ipbx"] = "acme-pbx-2"
    r.update_table(document)
    time.sleep(RELOAD_WAIT)
    call_did(router, r, sipp, second)

    assert r.alive()
    assert len(first.received("INVITE")) == 1, "the first IPBX got the call after the reload"
    assert "reloaded" in r.log_text()


def test_broken_table_keeps_the_old_one_serving(router, sipp):
    first = sipp.uas("uas_answer.xml", PBX)
    r = router.start(routing_document(pbx_port=first.port))

    broken = routing_document(pbx_port=first.port)
    broken["dids"][0]["ipbx"] = "no-such-pbx"  # dangling reference: an invalid document
    r.update_table(broken)
    time.sleep(RELOAD_WAIT)
    call_did(router, r, sipp, first)

    assert r.alive()
    log = r.log_text()
    assert "refused" in log and "no-such-pbx" in log, "the broken table was not even looked at"

    # And the next good table is picked up again.
    second = sipp.uas("uas_answer.xml", PBX2)
    fixed = routing_document(pbx_port=first.port, pbx2_port=second.port, did_ipbx="acme-pbx-2")
    r.update_table(fixed)
    time.sleep(RELOAD_WAIT)
    call_did(router, r, sipp, second)


def test_options_is_answered_200(router, sipp):
    r = router.start(routing_document())
    probe = sipp.uac("uac_request.xml", r.target, TRUNK_A, method="OPTIONS", ruri_user="", code=200)
    assert probe.wait() == 0, sipp.describe_all()
    assert [m.status for m in probe.received() if m.status and m.status >= 200] == [200]


def test_register_is_rejected(router, sipp):
    r = router.start(routing_document())
    probe = sipp.uac("uac_request.xml", r.target, PBX, method="REGISTER", ruri_user="", code=405)
    assert probe.wait() == 0, sipp.describe_all()
    assert [m.status for m in probe.received() if m.status and m.status >= 200] == [405]


def test_requests_the_router_refuses_itself(router):
    r = router.start(routing_document())
    # Max-Forwards exhausted: 483, before any routing.
    line = sip_request(r.address, r.port, "INVITE", user=DID_NATIONAL, max_forwards=0, source=TRUNK_A)
    assert line and line.startswith("SIP/2.0 483"), line
    # Out-of-dialog methods other than INVITE/OPTIONS are not routed.
    line = sip_request(r.address, r.port, "MESSAGE", user=DID_NATIONAL, source=TRUNK_A)
    assert line and line.startswith("SIP/2.0 405"), line
    # An in-dialog request the router has no Record-Route for.
    line = sip_request(r.address, r.port, "BYE", user=DID_NATIONAL, source=TRUNK_A, to_tag="nodialog")
    assert line and line.startswith("SIP/2.0 404"), line
    assert r.alive()
