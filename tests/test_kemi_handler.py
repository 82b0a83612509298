"""The KEMI handler (c4kemi/kemi.py) against a fake KSR: its branches, fast.

The end-to-end suite runs the same handler inside Kamailio; these tests pin
the decisions of each route block (failover codes, the challenge answered
once, internal errors answered once) without starting anything.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import orjson
import pytest

from fake_ksr import FakeKSR

PBX_SOURCE = "10.0.0.10"  # acme-pbx in tables.BASE_DOCUMENT
TRUNK_AUTH = {"username": "u", "password": "p", "realm": "carrier-a.net"}


def invite(ksr: FakeKSR, source: str = PBX_SOURCE, called: str = "39298765432", **pvs) -> None:
    """An initial INVITE's pseudo-variables."""
    ksr.pv_values.update({
        "$rm": "INVITE", "$si": source, "$sp": 5060, "$ci": "call-1@test", "$ru": f"sip:{called}@c4.test",
        "$fn": "Alice", "$fu": "sip:39611111111@pbx.test", "$ft": "ft1", "$tn": None,
        "$tu": f"sip:{called}@c4.test", "$tt": None,
    })
    ksr.pv_values.update(pvs)
    ksr.returns.update({"siputils.has_totag": -1, "tmx.t_precheck_trans": -1, "tm.t_check_trans": -1,
                        "tmx.t_is_failure_route": -1, "tmx.t_is_request_route": 1})


def failure(ksr: FakeKSR, code: int, routes: list[dict] | None = None, idx: int = 1, timeout: bool = False) -> None:
    """The failure route's view: the failed branch's code and the rtjson xavps."""
    routes = routes if routes is not None else [{"uri": "sip:a@192.0.2.10", "dst_uri": "sip:192.0.2.10"}]
    ksr.pv_values.update({"$rm": "INVITE", "$ci": "call-1@test",
                          "$xavp(rtjson=>json)": orjson.dumps({"routes": routes}).decode(),
                          "$xavp(rtjson=>idx)": idx})
    ksr.returns.update({"tm.t_is_canceled": -1, "tm.t_get_status_code": code,
                        "tm.t_branch_timeout": 1 if timeout else -1, "tm.t_any_timeout": 1 if timeout else -1,
                        "tmx.t_is_failure_route": 1, "tmx.t_is_request_route": -1})


# -- failure route: which codes fail over ------------------------------------


@pytest.mark.parametrize("code", [408, 500, 503, 599])
def test_408_and_5xx_try_the_next_route(handler, ksr, code):
    failure(ksr, code)
    handler.ksr_failure_manage(None)
    assert ksr.called("rtjson.next_route") == [()]
    assert ksr.called("tm.t_relay") == [()]
    # The native blocks of kamailio-kemi.cfg that call ksr_failure_manage and ksr_branch_manage.
    assert ksr.called("tm.t_on_failure") == [("MANAGE_FAILURE",)]
    assert ksr.called("tm.t_on_branch") == [("MANAGE_BRANCH",)]
    assert ksr.called("tm.t_reply") == []


def test_no_answer_before_fr_timer_tries_the_next_route(handler, ksr):
    failure(ksr, 408, timeout=True)
    handler.ksr_failure_manage(None)
    assert ksr.called("rtjson.next_route") == [()]


@pytest.mark.parametrize("code", [404, 486, 487, 603])
def test_4xx_and_6xx_go_back_to_the_caller(handler, ksr, code):
    failure(ksr, code)
    handler.ksr_failure_manage(None)
    assert "rtjson.next_route" not in ksr.names()
    assert "tm.t_relay" not in ksr.names()
    assert ksr.called("tm.t_reply") == []  # tm relays the branch's reply


def test_no_route_left_lets_tm_send_the_best_reply(handler, ksr):
    failure(ksr, 503)
    ksr.returns["rtjson.next_route"] = -1
    handler.ksr_failure_manage(None)
    assert "tm.t_relay" not in ksr.names() and ksr.called("tm.t_reply") == []


def test_a_canceled_transaction_is_left_alone(handler, ksr):
    failure(ksr, 503)
    ksr.returns["tm.t_is_canceled"] = 1
    handler.ksr_failure_manage(None)
    assert ksr.names() == ["tm.t_is_canceled"]


# -- relay: a route that cannot be sent ----------------------------------------


def test_unsendable_route_moves_to_the_next_one(handler, ksr):
    failure(ksr, 503)
    ksr.returns["tm.t_relay"] = [-1, 1]
    handler.ksr_failure_manage(None)
    assert len(ksr.called("tm.t_relay")) == 2
    assert len(ksr.called("rtjson.next_route")) == 2  # after the 503, after the send failure
    assert len(ksr.called("tm.t_on_failure")) == 2  # armed again for the new branch
    assert ksr.called("tm.t_reply") == []
    assert ksr.called("tm.t_set_disable_internal_reply") == [(1,)]  # tm must not answer 477/478 itself


def test_no_sendable_route_gives_one_500(handler, ksr):
    failure(ksr, 503)
    ksr.returns["tm.t_relay"] = -1
    ksr.returns["rtjson.next_route"] = [1, 1, -1]
    handler.ksr_failure_manage(None)
    assert len(ksr.called("tm.t_relay")) == 2
    assert ksr.called("tm.t_reply") == [(500, "Relay Failed")]
    assert "sl.sl_reply_error" not in ksr.names() and "sl.send_reply" not in ksr.names()


# -- 401/407: answered once -------------------------------------------------------


@pytest.mark.parametrize("code", [401, 407])
def test_challenge_is_answered_with_the_route_credentials(handler, ksr, code):
    routes = [{"uri": "sip:0298765432@192.0.2.10:5060", "dst_uri": "sip:192.0.2.10:5060", "auth": TRUNK_AUTH},
              {"uri": "sip:0298765432@198.51.100.20", "dst_uri": "sip:198.51.100.20"}]
    failure(ksr, code, routes, idx=1)
    handler.ksr_failure_manage(None)
    assert ksr.called("uac.uac_auth") == [()]
    assert ksr.pv_values["$avp(c4_auth_username)"] == "u"
    assert ksr.pv_values["$avp(c4_auth_password)"] == "p"
    assert ksr.pv_values["$avp(c4_auth_realm)"] == "carrier-a.net"
    assert ksr.pv_values["$ru"] == routes[0]["uri"] and ksr.pv_values["$du"] == routes[0]["dst_uri"]
    assert 1 in ksr.flags  # FLT_AUTH
    assert ksr.called("tm.t_relay") == [()]
    assert "rtjson.next_route" not in ksr.names()


def test_second_challenge_goes_back_to_the_caller(handler, ksr):
    failure(ksr, 407, [{"uri": "sip:x@192.0.2.10", "dst_uri": "sip:192.0.2.10", "auth": TRUNK_AUTH}])
    ksr.flags.add(1)  # already answered once on this route
    handler.ksr_failure_manage(None)
    assert "uac.uac_auth" not in ksr.names()
    assert "tm.t_relay" not in ksr.names()


def test_challenge_without_credentials_goes_back_to_the_caller(handler, ksr):
    failure(ksr, 401, [{"uri": "sip:x@192.0.2.10", "dst_uri": "sip:192.0.2.10"}])
    handler.ksr_failure_manage(None)
    assert "uac.uac_auth" not in ksr.names() and "tm.t_relay" not in ksr.names()


def test_failover_resets_the_challenge_flag(handler, ksr):
    failure(ksr, 503)
    ksr.flags.add(1)
    handler.ksr_failure_manage(None)
    assert 1 not in ksr.flags


# -- internal errors: one 500, nothing left hanging -----------------------------


def test_exception_in_the_request_route_gives_a_stateful_500(handler, ksr, monkeypatch, kemi):
    invite(ksr)
    monkeypatch.setattr(kemi, "decide_call", lambda table, query: 1 / 0)
    handler.ksr_request_route(None)
    assert ksr.called("tm.t_newtran") == [()]
    assert ksr.called("sl.send_reply") == [(500, "Server Internal Error")]
    assert any("ZeroDivisionError" in text for level, text in ksr.logs if level == "err")


def test_exception_in_the_failure_route_gives_t_reply_500(handler, ksr):
    failure(ksr, 503)
    ksr.returns["rtjson.next_route"] = lambda: 1 / 0
    handler.ksr_failure_manage(None)
    assert ksr.called("tm.t_reply") == [(500, "Server Internal Error")]


def test_exception_in_the_branch_route_drops_the_branch(handler, ksr):
    ksr.returns["siputils.has_totag"] = -1
    ksr.returns["rtjson.update_branch"] = lambda: 1 / 0
    # -1: branch_route[MANAGE_BRANCH] drops the branch (python_exec's return value).
    assert handler.ksr_branch_manage(None) == -1


def test_no_table_gives_500(handler, ksr, monkeypatch):
    invite(ksr)
    handler.table_path = "/nonexistent/table.json"
    handler.ksr_request_route(None)
    assert ksr.called("sl.sl_send_reply") == [(500, "No Routing Table")]


# -- initial INVITE ---------------------------------------------------------------


def test_initial_invite_is_routed_with_rtjson(handler, ksr):
    invite(ksr)
    handler.ksr_request_route(None)
    assert ksr.called("hdr.remove")[0] == ("Route",)
    (document,) = ksr.called("rtjson.init_routes")[0]
    assert orjson.loads(document)["success"] is True
    assert ksr.called("rr.record_route") or ksr.called("rr.record_route_params")
    assert ksr.called("tm.t_relay") == [()]
    assert ksr.called("tm.t_on_failure") == [("MANAGE_FAILURE",)]


def test_refusal_is_answered_with_its_code(handler, ksr):
    invite(ksr, source="203.0.113.99")
    handler.ksr_request_route(None)
    assert ksr.called("sl.sl_send_reply") == [(403, "Forbidden")]
    assert "tm.t_relay" not in ksr.names()


# -- admission control (route[ADMIT]) -----------------------------------------------


def at_load(ksr: FakeKSR, in_progress: int, free_mib: int = 400, bound: int = 10, reserve: int = 64, retry_after: int = 3,
            ringing: int = 0, interval_ms: int = 10) -> None:
    """The cfg's defines, and the JSON-RPC answers: IN_PROGRESS transactions in progress (plus 4 waiting), RINGING
    of them early dialogs, FREE_MIB of shm free."""
    ksr.pv_values["$defn(C4_MAX_TRANSACTIONS)"] = bound
    ksr.pv_values["$defn(C4_SHM_RESERVE)"] = reserve
    ksr.pv_values["$defn(C4_RETRY_AFTER)"] = retry_after
    ksr.pv_values["$defn(C4_ADMIT_INTERVAL)"] = interval_ms
    results = {"tm.stats": {"current": in_progress + 4, "waiting": 4, "total": 99},
               "core.shmmem": {"total": 512, "free": free_mib, "used": 512 - free_mib},
               "stats.get_statistics": [f"dialog:early_dialogs = {ringing}"]}

    def response():
        (command,) = ksr.called("jsonrpcs.exec")[-1]
        return orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": results[orjson.loads(command)["method"]]}).decode()

    ksr.returns["jsonrpcs.response"] = response


def test_past_the_bound_a_new_invite_gets_a_stateless_503_with_retry_after(handler, ksr):
    at_load(ksr, in_progress=10)
    handler.child_init(1)
    invite(ksr)
    handler.ksr_request_route(None)
    assert ksr.called("hdr.append_to_reply") == [("Retry-After: 3\r\n",)]
    assert ksr.called("sl.sl_send_reply") == [(503, "Service Unavailable")]
    assert not ksr.called("tm.t_newtran") and not ksr.called("rtjson.init_routes")


def test_short_of_shared_memory_a_new_invite_gets_the_same_503(handler, ksr):
    at_load(ksr, in_progress=0, free_mib=63)
    handler.child_init(1)
    invite(ksr)
    handler.ksr_request_route(None)
    assert ksr.called("sl.sl_send_reply") == [(503, "Service Unavailable")]
    assert not ksr.called("tm.t_newtran") and not ksr.called("rtjson.init_routes")


def test_ringing_calls_do_not_count_against_the_bound(handler, ksr):
    at_load(ksr, in_progress=10, ringing=1)  # 9 not ringing: below the bound of 10
    handler.child_init(1)
    invite(ksr)
    handler.ksr_request_route(None)
    assert not ksr.called("sl.sl_send_reply") and ksr.called("tm.t_relay") == [()]
    assert not [text for level, text in ksr.logs if "cannot read" in text]


def test_below_the_bound_a_new_invite_is_routed(handler, ksr):
    at_load(ksr, in_progress=9)
    handler.child_init(1)
    invite(ksr)
    handler.ksr_request_route(None)
    assert not ksr.called("sl.sl_send_reply") and ksr.called("tm.t_relay") == [()]


def test_unreadable_transaction_counts_admit_the_call_and_say_so_once(handler, ksr):
    at_load(ksr, in_progress=0)
    ksr.returns["jsonrpcs.response"] = "not json"
    handler.child_init(1)
    for _ in range(2):
        invite(ksr)
        handler.ksr_request_route(None)
    assert ksr.called("tm.t_relay") == [(), ()]
    assert len([text for level, text in ksr.logs if "cannot read" in text]) == 1, ksr.logs


def test_the_counts_are_read_once_per_interval_and_judge_the_invites_of_that_window(handler, ksr, monkeypatch, kemi):
    clock = [100.0]
    monkeypatch.setattr(kemi, "monotonic", lambda: clock[0])
    at_load(ksr, in_progress=9)
    handler.child_init(1)
    for _ in range(3):  # one reading (tm.stats, core.shmmem) for the three
        invite(ksr)
        handler.ksr_request_route(None)
    assert len(ksr.called("jsonrpcs.exec")) == 2 and len(ksr.called("tm.t_relay")) == 3

    at_load(ksr, in_progress=10)  # the node reaches its bound: seen at the next reading, not before
    invite(ksr)
    handler.ksr_request_route(None)
    assert len(ksr.called("tm.t_relay")) == 4 and not ksr.called("sl.sl_send_reply")
    clock[0] += 0.009  # C4_ADMIT_INTERVAL is 10 ms: still the old reading
    invite(ksr)
    handler.ksr_request_route(None)
    assert len(ksr.called("jsonrpcs.exec")) == 2 and len(ksr.called("tm.t_relay")) == 5
    clock[0] += 0.002
    invite(ksr)
    handler.ksr_request_route(None)
    assert len(ksr.called("jsonrpcs.exec")) == 5  # tm.stats, core.shmmem, and the ringing calls near the bound
    assert ksr.called("sl.sl_send_reply") == [(503, "Service Unavailable")] and len(ksr.called("tm.t_relay")) == 5


# -- the KEMI import path stays lean -----------------------------------------------


def test_kemi_entry_imports_neither_aiohttp_nor_asyncpg():
    """In a fresh interpreter (other tests' imports would mask it), with a fake KSR."""
    code = textwrap.dedent("""
        import sys, types
        sys.modules["KSR"] = types.ModuleType("KSR")
        import c4kemi.kemi
        heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("aiohttp", "asyncpg", "c4http"))
        print(",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the KEMI entry imported {result.stdout.strip()}"


# -- the SIP edge: foreign bytes, identity -----------------------------------------------
#
# In-dialog requests (the c4d signature check, identity stripping, the relay
# and its one 500) never reach Python: kamailio-base.cfg routes them natively
# in both modes, tested end to end in tests/e2e/test_hostile.py.


def decided_query(handler, ksr, monkeypatch, kemi) -> dict:
    seen = {}
    real = kemi.decide_call
    monkeypatch.setattr(kemi, "decide_call", lambda table, query: seen.setdefault("q", query) and real(table, query))
    handler.ksr_request_route(None)
    return seen["q"]


def test_values_that_are_not_utf8_are_left_out_like_http_mode(handler, ksr, monkeypatch, kemi):
    invite(ksr, **{"$fn": b'"Zo\xe9"', "$tn": b"Bj\xf6rn", "$ci": b"c\xe9@x"})
    query = decided_query(handler, ksr, monkeypatch, kemi)
    assert query["from_name"] is None and query["to_name"] is None and query["call_id"] is None
    assert ksr.called("rtjson.init_routes"), "the call is still routed"
    assert "sl.send_reply" not in ksr.names()  # no 500


def test_a_ruri_that_is_not_utf8_is_refused_not_routed_on_the_to_user(handler, ksr, monkeypatch, kemi):
    invite(ksr, **{"$ru": b"sip:3929876543\xe9@c4.test"})
    query = decided_query(handler, ksr, monkeypatch, kemi)
    assert query["ruri"] == kemi.NOT_UTF8_RURI
    assert ksr.called("sl.sl_send_reply") == [(404, "No Route")]


def test_identity_headers_are_read_then_removed(handler, ksr, monkeypatch, kemi):
    invite(ksr, **{"$fu": "sip:anonymous@anonymous.invalid", "$ai": "sip:+39611111111@pbx.test", "$hdr(Privacy)": "id"})
    query = decided_query(handler, ksr, monkeypatch, kemi)
    assert query["identity_uri"] == "sip:+39611111111@pbx.test" and query["privacy"] == "id"
    removed = {args[0] for args in ksr.called("hdr.remove")}
    assert {"P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID"} <= removed
    assert "Privacy" not in removed


def test_initial_invite_record_route_is_signed(handler, ksr, monkeypatch):
    monkeypatch.setattr(handler, "dialog_key", "k" * 64)
    invite(ksr)
    handler.ksr_request_route(None)
    ((params,),) = ksr.called("rr.record_route_params")
    from c4kemi.secret import dialog_mac
    assert params == ";c4d=" + dialog_mac("k" * 64, b"call-1@test")


def test_the_table_is_loaded_once_before_fork_and_inherited(handler, ksr):
    # mod_init runs in Kamailio's main process: the workers it forks share its table.
    preloaded = handler._source
    assert preloaded is not None and gc.get_freeze_count() > 0
    handler.child_init(1)
    assert handler.source() is preloaded
    gc.unfreeze()
