"""The KEMI handler's channel limits (c4kemi/kemi.py) against a fake KSR.

The end-to-end suite (tests/e2e/test_channels.py) runs them inside Kamailio
in both modes; these pin each decision without starting anything.
"""

from __future__ import annotations

import json

import orjson
import pytest
from test_kemi_handler import PBX_SOURCE, failure, invite

from c4kemi.decision import decide_call
from c4kemi.table import compile_table
from fake_ksr import FakeKSR
from tables import document, request


def limited() -> dict:
    doc = document()
    doc["tenants"][0]["max_channels"] = 10
    doc["trunks"][0].update(max_channels=2, max_cps=5)
    return doc


@pytest.fixture
def table_document() -> dict:
    return limited()  # the kemi fixture (tests/conftest.py) loads this table


def sizes(ksr: FakeKSR, by_value: dict) -> None:
    """get_profile_size stores the size of VALUE's profile entry in its pv, as Kamailio does."""
    def get_profile_size(profile, value, pv):
        ksr.pv_values[pv] = by_value.get((profile, value), 0)
        return 1
    ksr.returns["dialog.get_profile_size"] = get_profile_size


def test_a_routed_call_joins_its_tenant_profile_and_carries_the_call(handler, ksr):
    invite(ksr, called="39298765432")
    sizes(ksr, {("c4_tenant", "acme"): 1})
    handler.ksr_request_route(None)
    assert ksr.called("dialog.dlg_manage") == [()]
    assert ksr.called("dialog.set_dlg_profile") == [("c4_tenant", "acme")]
    call = orjson.loads(ksr.pv_values["$avp(c4_call)"])
    table = compile_table(limited())
    assert call == decide_call(table, {**request(PBX_SOURCE, "39298765432"), "call_id": "call-1@test"})[1]
    assert [r["trunk"] for r in call["routes"]] == ["carrier-a-1", "carrier-b-1"]
    assert ksr.called("tm.t_relay") == [()]


def test_a_tenant_over_its_limit_gets_a_stateful_503_and_no_routes(handler, ksr):
    invite(ksr, called="39298765432")
    sizes(ksr, {("c4_tenant", "acme"): 11})
    handler.ksr_request_route(None)
    assert ksr.called("tm.t_reply") == [(503, "Tenant Channel Limit")]
    assert ksr.called("tm.t_newtran") == [()]
    assert ksr.called("rtjson.init_routes") == [] and ksr.called("tm.t_relay") == []


def test_an_inbound_call_over_its_trunk_limit_gets_503(handler, ksr):
    invite(ksr, source="192.0.2.1", called="0612345678")
    sizes(ksr, {("c4_tenant", "acme"): 1, ("c4_trunk", "carrier-a-1"): 3})
    ksr.returns["htable.sht_inc"] = 1
    handler.ksr_request_route(None)
    assert ksr.called("dialog.set_dlg_profile") == [("c4_tenant", "acme"), ("c4_trunk", "carrier-a-1")]
    assert ksr.called("tm.t_reply") == [(503, "Trunk Channel Limit")]


def test_an_inbound_call_over_its_trunk_rate_gets_503_before_taking_a_channel(handler, ksr):
    invite(ksr, source="192.0.2.1", called="0612345678", **{"$Ts": 1700000000})
    sizes(ksr, {})
    ksr.returns["htable.sht_inc"] = 6
    handler.ksr_request_route(None)
    assert ksr.called("htable.sht_inc") == [("c4cps", "carrier-a-1;1700000000")]
    assert ksr.called("dialog.set_dlg_profile") == [("c4_tenant", "acme")]
    assert ksr.called("tm.t_reply") == [(503, "Trunk Call Rate Limit")]


def branch(ksr: FakeKSR, idx: int, in_profile: bool = False) -> None:
    table = compile_table(limited())
    call = decide_call(table, request(PBX_SOURCE, "39298765432"))[1]
    ksr.pv_values.update({"$avp(c4_call)": json.dumps(call), "$xavp(rtjson=>idx)": idx, "$ci": "call-1@test"})
    ksr.returns.update({"siputils.has_totag": -1, "dialog.is_in_profile": 1 if in_profile else -1, "htable.sht_inc": 1})


def test_a_branch_to_a_full_trunk_gives_the_channel_back_and_is_dropped(handler, ksr):
    branch(ksr, idx=1)
    sizes(ksr, {("c4_trunk", "carrier-a-1"): 3})
    assert handler.ksr_branch_manage(None) == -1  # branch_route[MANAGE_BRANCH] drops the branch
    assert ksr.called("dialog.set_dlg_profile") == [("c4_trunk", "carrier-a-1")]
    assert ksr.called("dialog.unset_dlg_profile") == [("c4_trunk", "carrier-a-1")]
    assert ksr.called("rtjson.update_branch") == []
    assert handler._full


def test_a_branch_within_the_limits_takes_its_channel_once(handler, ksr):
    branch(ksr, idx=1)
    sizes(ksr, {("c4_trunk", "carrier-a-1"): 2})
    assert handler.ksr_branch_manage(None) == 1  # the branch goes
    assert ksr.called("dialog.set_dlg_profile") == [("c4_trunk", "carrier-a-1")]
    assert ksr.called("dialog.unset_dlg_profile") == []
    assert ksr.called("rtjson.update_branch") == [()]
    # the same route again (a 401/407 answered) holds its channel already
    ksr.calls.clear()
    branch(ksr, idx=1, in_profile=True)
    handler.ksr_branch_manage(None)
    assert ksr.called("dialog.set_dlg_profile") == [] and ksr.called("htable.sht_inc") == []
    # an unlimited trunk is counted, never checked
    ksr.calls.clear()
    branch(ksr, idx=2)
    handler.ksr_branch_manage(None)
    assert ksr.called("dialog.set_dlg_profile") == [("c4_trunk", "carrier-b-1")]
    assert ksr.called("dialog.get_profile_size") == [] and ksr.called("htable.sht_inc") == []


def test_no_route_left_after_a_full_trunk_is_503_all_trunks_busy(handler, ksr):
    invite(ksr)
    ksr.returns.update({"tm.t_relay": -1, "rtjson.next_route": -1})

    def relay_after_a_full_branch():
        handler._full = True  # what the branch route does for a trunk at its limit
        return -1

    ksr.returns["tm.t_relay"] = relay_after_a_full_branch
    handler.ksr_route_relay_routes(None)
    assert ksr.called("tm.t_reply") == [(503, "All Trunks Busy")]
    ksr.calls.clear()
    ksr.returns["tm.t_relay"] = -1  # nothing full: a route that cannot be sent
    handler.ksr_route_relay_routes(None)
    assert ksr.called("tm.t_reply") == [(500, "Relay Failed")]


def test_failing_over_gives_the_failed_trunk_its_channel_back(handler, ksr):
    failure(ksr, 503, routes=[{"uri": "sip:a@192.0.2.10", "dst_uri": "sip:192.0.2.10"}] * 2, idx=1)
    branch(ksr, idx=1, in_profile=True)
    handler.ksr_failure_manage(None)
    assert ksr.called("dialog.unset_dlg_profile") == [("c4_trunk", "carrier-a-1")]
    assert ksr.called("rtjson.next_route") == [()]
