"""The KEMI handler's call records (c4kemi/kemi.py, docs/cdr.md) against a fake KSR.

The end-to-end suite (tests/e2e/test_cdr.py) checks the records of real calls
in both modes; these pin what the handler keeps and sends at each step.
"""

from __future__ import annotations

import orjson
import pytest
from test_kemi_channels import branch, sizes
from test_kemi_handler import failure, invite

from c4kemi.cdr import make_record


@pytest.fixture
def recording(kemi, monkeypatch):
    monkeypatch.setenv("C4_CDR", "1")
    return kemi.mod_init()


def sent(ksr) -> list[dict]:
    """The events handed to route[CDR_QUEUE] (in $var(cdr)), which queues them for c4 cdr."""
    events, pending = [], None
    for name, args in ksr.calls:
        if name == "pv.sets" and args[0] == "$var(cdr)":
            pending = args[1]
        elif name == "route" and args == ("CDR_QUEUE",):
            assert pending is not None, "route[CDR_QUEUE] without an event"
            events.append(orjson.loads(pending))
            pending = None
    assert pending is None, "an event never queued"
    return events


def test_an_answered_call_after_failover_sends_one_event_when_it_ends(recording, ksr):
    invite(ksr, called="39298765432")
    sizes(ksr, {})
    recording.ksr_request_route(None)
    assert ksr.pv_values["$dlg_var(c4_call)"] == ksr.pv_values["$avp(c4_call)"]
    invite_at = ksr.pv_values["$dlg_var(c4_invite)"]

    branch(ksr, idx=1)
    recording.ksr_branch_manage(None)
    failure(ksr, 503, idx=1)
    recording.ksr_failure_manage(None)
    branch(ksr, idx=2)
    recording.ksr_branch_manage(None)
    ksr.pv_values.update({"$rs": 200, "$rr": "OK"})
    recording.ksr_dialog_event(None, "dialog:start")
    assert sent(ksr) == []  # nothing until the call ends
    ksr.pv_values.update({"$rm": "BYE", "$ft": "ft1", "$dlg(from_tag)": "ft1", "$dlg(callid)": "call-1@test"})
    recording.ksr_dialog_event(None, "dialog:end")

    (event,) = sent(ksr)
    assert (event["call_id"], event["invite"], event["tries"], event["code"], event["by"]) == (
        "call-1@test", invite_at, "0:503,1:200", 200, "caller")
    record = make_record(event, "1")
    assert [(a["destination"], a["code"]) for a in record["attempts"]] == [("carrier-a-1", 503), ("carrier-b-1", 200)]
    assert (record["tenant"], record["answered_by"], record["direction"]) == ("acme", "carrier-b-1", "outbound")


def test_the_callee_hanging_up_and_the_dialog_timeout_say_so(recording, ksr):
    ksr.pv_values.update({"$rm": "BYE", "$ft": "callee-tag", "$dlg(from_tag)": "ft1", "$dlg_var(c4_invite)": "1.0",
                          "$dlg_var(c4_code)": "200"})
    recording.ksr_dialog_event(None, "dialog:end")
    ksr.pv_values["$rm"] = "OPTIONS"  # the faked message of a timeout
    recording.ksr_dialog_event(None, "dialog:end")
    assert [event["by"] for event in sent(ksr)] == ["callee", "timeout"]


@pytest.mark.parametrize("canceled, timeout, by", [(True, False, "caller"), (False, True, "timeout"), (False, False, "callee")])
def test_a_failed_branch_says_who_ended_the_call_so_far(recording, ksr, canceled, timeout, by):
    failure(ksr, 487 if canceled else 408 if timeout else 486, timeout=timeout)
    ksr.returns["tm.t_is_canceled"] = 1 if canceled else -1
    ksr.pv_values.update({"$dlg_var(c4_try)": "0", "$T_reply_reason": "Whatever"})
    recording.ksr_failure_manage(None)
    assert ksr.pv_values["$dlg_var(c4_by)"] == by
    assert ksr.pv_values["$dlg_var(c4_tries)"] == f"0:{ksr.returns['tm.t_get_status_code']}"


def test_a_refusal_is_sent_at_once_with_what_the_decision_knew(recording, ksr):
    invite(ksr, source="192.0.2.1", called="0799999999")  # a trunk, no DID: 404
    recording.ksr_request_route(None)
    (event,) = sent(ksr)
    assert (event["code"], event["reason"], event["by"]) == (404, "No Route", "router")
    assert (event["call"]["source"], event["call"]["called"]) == ("carrier-a-1", "39799999999")
    assert "$dlg_var(c4_call)" not in ksr.pv_values


def test_records_off_keep_and_send_nothing(handler, ksr):
    invite(ksr, called="39298765432")
    sizes(ksr, {})
    handler.ksr_request_route(None)
    branch(ksr, idx=1)
    handler.ksr_branch_manage(None)
    failure(ksr, 503)
    handler.ksr_failure_manage(None)
    assert sent(ksr) == [] and not any(name.startswith("$dlg_var") for name in ksr.pv_values)


def test_a_call_shed_by_the_admission_control_still_gets_its_record(recording, ksr):
    from test_kemi_handler import at_load

    at_load(ksr, in_progress=10)
    recording.child_init(1)
    invite(ksr)
    recording.ksr_request_route(None)
    assert ksr.called("sl.sl_send_reply") == [(503, "Service Unavailable")]
    (event,) = sent(ksr)
    assert (event["call_id"], event["code"], event["reason"], event["by"]) == ("call-1@test", 503, "Service Unavailable", "router")
    assert "call" not in event  # shed before any decision: nothing known of tenant or numbers


def test_a_refusal_of_an_unknown_source_is_counted_and_recorded_only_when_asked(recording, ksr):
    invite(ksr, source="203.0.113.9")  # in no trunk or IPBX: 403
    recording.ksr_request_route(None)
    assert ksr.called("sl.sl_send_reply") == [(403, "Forbidden")]
    assert ksr.called("statistics.update_stat") == [("c4_refused_unknown_source", 1)]
    assert sent(ksr) == []  # strangers must not fill the disk

    ksr.pv_values["$defn(C4_CDR_UNKNOWN_SOURCES)"] = "1"  # c4 kamailio --cdr-unknown-sources
    recording.child_init(1)
    recording.ksr_request_route(None)
    (event,) = sent(ksr)
    assert (event["code"], event["reason"], event["by"]) == (403, "Forbidden", "router") and "call" not in event
    assert len(ksr.called("statistics.update_stat")) == 2


def test_unknown_sources_are_counted_with_records_off_too(handler, ksr):
    invite(ksr, source="203.0.113.9")
    handler.ksr_request_route(None)
    assert ksr.called("statistics.update_stat") == [("c4_refused_unknown_source", 1)] and sent(ksr) == []


def test_what_a_peer_sends_is_cut_where_the_event_is_made(recording, ksr):
    """256 bytes of a Call-ID, 128 of a reason phrase, as kamailio-http.cfg cuts them ({s.substr}):
    a cut that splits a character leaves the member out, as jansson does in HTTP mode."""
    long_id = "c" * 50_000 + "@test"
    invite(ksr, called="39298765432", **{"$ci": long_id})
    sizes(ksr, {})
    recording.ksr_request_route(None)
    assert ksr.pv_values["$dlg_var(c4_callid)"] == long_id[:256]  # $dlg(callid) gives nothing past 8 KiB
    branch(ksr, idx=1)
    recording.ksr_branch_manage(None)
    failure(ksr, 486)
    ksr.pv_values["$T_reply_reason"] = "Busy " + "e" * 10_000
    recording.ksr_failure_manage(None)
    ksr.pv_values["$dlg(callid)"] = None
    recording.ksr_dialog_event(None, "dialog:failed")
    (event,) = sent(ksr)
    assert event["call_id"] == long_id[:256] and event["reason"] == ("Busy " + "e" * 10_000)[:128]

    ksr.calls.clear()
    refused_id = "a" + "é" * 200  # 401 bytes: the first 256 end in the middle of a character
    invite(ksr, source="192.0.2.1", called="0799999999", **{"$ci": refused_id})  # 404
    recording.ksr_request_route(None)
    (event,) = sent(ksr)
    assert event["code"] == 404 and "call_id" not in event
    assert make_record(event, "5")["call_id"] == ""
