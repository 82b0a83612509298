"""The KEMI handler (c4kemi/call/kemi.py) against a fake KSR, fast.

Python only decides: route[DECIDE] (kamailio-kemi.cfg) calls
``ksr_route_decide``, which reads the request, decides, and hands over
``$var(rtjson)`` and ``$avp(c4_call)``; everything after that is the native
call path both modes share, tested end to end in tests/e2e in both modes.
These tests pin the hand-over and the query without starting anything.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import orjson

from fake_ksr import FakeKSR

PBX_SOURCE = "10.0.0.10"  # acme-pbx in tables.BASE_DOCUMENT


def invite(ksr: FakeKSR, source: str = PBX_SOURCE, called: str = "39298765432", **pvs) -> None:
    """An initial INVITE's pseudo-variables."""
    ksr.pv_values.update({
        "$rm": "INVITE", "$si": source, "$sp": 5060, "$ci": "call-1@test", "$ru": f"sip:{called}@c4.test",
        "$fn": "Alice", "$fu": "sip:39611111111@pbx.test", "$ft": "ft1", "$tn": None,
        "$tu": f"sip:{called}@c4.test", "$tt": None,
    })
    ksr.pv_values.update(pvs)


def decided(ksr: FakeKSR) -> tuple[dict, dict | None]:
    """What route[DECIDED] gets: the rtjson member, and the call (None when not set)."""
    call = ksr.pv_values.get("$avp(c4_call)")
    return orjson.loads(ksr.pv_values["$var(rtjson)"]), (orjson.loads(call) if call is not None else None)


# -- the hand-over to route[DECIDED] --------------------------------------------


def test_a_routed_invite_hands_over_the_rtjson_and_the_call(handler, ksr):
    invite(ksr)
    assert handler.ksr_route_decide(None) == 1
    rtjson, call = decided(ksr)
    assert rtjson["success"] is True and rtjson["routes"][0]["uri"].startswith("sip:")
    assert call["tenant"] == "acme" and call["source_kind"] == "ipbx"
    assert len(call["routes"]) == len(rtjson["routes"])
    # Python decides only: no SIP work here, the native call path does it.
    assert not [name for name in ksr.names() if not name.startswith("pv.")], ksr.names()


def test_the_hand_over_is_what_c4_serve_answers_http_mode(handler, ksr, kemi):
    """The same bytes: rtjson as c4 serve's reply holds it, the call as its C4-Call header."""
    from c4kemi.core.decision import call_json, decide_call, encode

    invite(ksr)
    handler.ksr_route_decide(None)
    reply, call = decide_call(handler.source().current(), kemi.routing_query())
    assert ksr.pv_values["$var(rtjson)"].encode() == encode(reply["rtjson"])
    assert ksr.pv_values["$avp(c4_call)"] == call_json(call)


def test_an_unknown_source_is_a_403_with_no_call(handler, ksr):
    invite(ksr, source="203.0.113.99")
    handler.ksr_route_decide(None)
    rtjson, call = decided(ksr)
    assert (rtjson["success"], rtjson["code"], rtjson["reason"]) == (False, 403, "Forbidden") and call is None


def test_a_404_still_names_what_its_record_keeps(handler, ksr):
    invite(ksr, called="not-a-number")
    handler.ksr_route_decide(None)
    rtjson, call = decided(ksr)
    assert (rtjson["success"], rtjson["code"]) == (False, 404) and call["tenant"] == "acme"


def test_a_malformed_request_is_a_400(handler, ksr):
    invite(ksr, **{"$si": None})
    handler.ksr_route_decide(None)
    rtjson, call = decided(ksr)
    assert (rtjson["code"], rtjson["reason"], call) == (400, "Bad Request", None)
    assert any("bad routing request" in text for level, text in ksr.logs)


def test_no_table_is_a_500(handler, ksr):
    invite(ksr)
    handler.table_path = "/nonexistent/table.json"
    handler.ksr_route_decide(None)
    rtjson, _ = decided(ksr)
    assert (rtjson["code"], rtjson["reason"]) == (500, "No Routing Table")


def test_an_exception_hands_over_nothing_and_says_so(handler, ksr, monkeypatch, kemi):
    """python_exec is then false and route[DECIDE] has cleared $var(rtjson): route[DECIDED] answers 500."""
    invite(ksr)
    monkeypatch.setattr(kemi, "decide_call", lambda table, query: 1 / 0)
    assert handler.ksr_route_decide(None) == -1
    assert "$var(rtjson)" not in ksr.pv_values
    assert any("ZeroDivisionError" in text for level, text in ksr.logs if level == "err")


# -- the KEMI import path stays lean -----------------------------------------------


def test_kemi_entry_imports_neither_aiohttp_nor_asyncpg():
    """In a fresh interpreter (other tests' imports would mask it), with a fake KSR."""
    code = textwrap.dedent("""
        import sys, types
        sys.modules["KSR"] = types.ModuleType("KSR")
        import c4kemi.call.kemi
        heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("aiohttp", "asyncpg", "c4http"))
        print(",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the KEMI entry imported {result.stdout.strip()}"


# -- the SIP edge: foreign bytes, identity -----------------------------------------------
#
# In-dialog requests, identity stripping, the signed Record-Route never
# reach Python: the native config does them in both modes, tested end to
# end in tests/e2e/test_hostile.py.


def test_values_that_are_not_utf8_are_left_out_like_http_mode(handler, ksr, kemi):
    invite(ksr, **{"$fn": b'"Zo\xe9"', "$tn": b"Bj\xf6rn", "$ci": b"c\xe9@x"})
    query = kemi.routing_query()
    assert query["from_name"] is None and query["to_name"] is None and query["call_id"] is None
    handler.ksr_route_decide(None)
    assert decided(ksr)[0]["success"] is True, "the call is still routed"


def test_a_ruri_that_is_not_utf8_is_refused_not_routed_on_the_to_user(handler, ksr, kemi):
    invite(ksr, **{"$ru": b"sip:3929876543\xe9@c4.test"})
    assert kemi.routing_query()["ruri"] == kemi.NOT_UTF8_RURI
    handler.ksr_route_decide(None)
    assert decided(ksr)[0]["code"] == 404


def test_the_identity_the_peer_claims_goes_into_the_query(kemi, ksr):
    invite(ksr, **{"$fu": "sip:anonymous@anonymous.invalid", "$ai": "sip:+39611111111@pbx.test", "$hdr(Privacy)": "id"})
    query = kemi.routing_query()
    assert query["identity_uri"] == "sip:+39611111111@pbx.test" and query["privacy"] == "id"


def test_the_table_is_loaded_once_before_fork_and_inherited(handler, ksr):
    # mod_init runs in Kamailio's main process: the workers it forks share its table.
    preloaded = handler._source
    assert preloaded is not None and gc.get_freeze_count() > 0
    handler.child_init(1)
    assert handler.source() is preloaded
    gc.unfreeze()
