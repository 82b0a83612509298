"""The explanation of a decision: what it says, and that it agrees with decide."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_accepted_documents import NUMBERS as HOSTILE_NUMBERS
from test_accepted_documents import hostile_documents

from c4kemi.core import explain as explain_module
from c4kemi.core.decision import RequestError, decide
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.explain import MASK, explain, from_e164_step, masked, render_text, to_e164_step
from c4kemi.core.numbers import Profile
from c4kemi.core.table import compile_table, compile_validated
from tables import BASE_DOCUMENT, IT_PROFILE, document, request

TABLE = compile_table(BASE_DOCUMENT)
IT_TO_RULE = {"step": "to_e164_rule", "index": 0, "match": IT_PROFILE["to_e164"][0]["match"], "replace": "39\\1"}
IT_FROM_RULE = {"step": "from_e164_rule", "index": 0, "match": IT_PROFILE["from_e164"][0]["match"], "replace": "0\\1", "plus_added": False}


def branch_uris(ex: dict) -> list[str]:
    return [b["uri"] for d in ex["destinations"] for b in d["branches"]]


def step_of(number: dict) -> dict:
    return {k: v for k, v in number.items() if k not in ("uri", "user", "without_separators", "e164", "is_number", "out")}


# -- what the explanation says --------------------------------------------------------


def test_inbound_names_source_numbers_did_and_destinations():
    query = request("192.0.2.1", "06 1234-5678", "0611111111")
    ex = explain(TABLE, query)
    assert ex["reply"] == decide(TABLE, query)
    assert ex["consistent"] is True
    assert ex["source"] == {
        "ip": "192.0.2.1", "cidr": "192.0.2.0/28", "kind": "trunk", "name": "carrier-a-1",
        "tenant": None, "carrier": "carrier-a", "profile": "it",
    }
    called = ex["numbers"]["called"]
    assert (called["uri"], called["user"], called["without_separators"], called["e164"]) == ("ruri", "06 1234-5678", "0612345678", "39612345678")
    assert step_of(called) == IT_TO_RULE
    assert ex["kind"] == "inbound"
    assert ex["dids"] == {
        "scope": None,
        "considered": [{"prefix": "39612345", "tenant": "acme", "ipbx": "acme-pbx", "match": None, "verdict": "chosen"}],
        "chosen": "39612345",
    }
    assert "route" not in ex and "trunk_order" not in ex
    [dest] = ex["destinations"]
    assert (dest["kind"], dest["name"], dest["profile"]) == ("ipbx", "acme-pbx", "it")
    assert dest["called"] == {"e164": "39612345678", "out": "0612345678", **IT_FROM_RULE}
    assert dest["calling"] == {"e164": "39611111111", "out": "0611111111", **IT_FROM_RULE}
    assert dest["branches"] == [
        {"uri": "sip:0612345678@10.0.0.10:5060", "dst_uri": "sip:10.0.0.10:5060"},
        {"uri": "sip:0612345678@10.0.0.11:5060", "dst_uri": "sip:10.0.0.11:5060"},
    ]
    assert ex["outcome"] == {"success": True, "code": None, "reason": None, "why": None}


def test_outbound_shows_route_and_trunk_order_with_priorities_and_weights():
    for call_id in ("w-1", "w-2", "w-3", "w-4", "w-5"):
        query = request("10.0.0.10", "0044201234", call_id=call_id)
        ex = explain(TABLE, query)
        assert ex["kind"] == "outbound"
        assert ex["route"] == {"tenant": "acme", "prefix": "44", "matching_prefixes": ["44", ""], "when_all_down": "try"}
        settings_by_trunk = {t["trunk"]: (t["priority"], t["weight"]) for t in ex["trunk_order"]}
        assert settings_by_trunk == {"carrier-a-1": (0, 3), "carrier-b-1": (0, 1), "carrier-b-2": (5, 1)}
        assert ex["trunk_order"][-1]["trunk"] == "carrier-b-2"  # priority 5 after both of priority 0
        # The order shown is the order of decide's routes for this call.
        dst = {"carrier-a-1": "sip:192.0.2.10:5060", "carrier-b-1": "sip:198.51.100.20:5060;transport=tcp", "carrier-b-2": "sip:198.51.100.30"}
        assert [dst[t["trunk"]] for t in ex["trunk_order"]] == [r["dst_uri"] for r in decide(TABLE, query)["rtjson"]["routes"]]
        assert ex["consistent"] is True
    # The other tenant's DID 4420 was looked at and set aside.
    assert ex["dids"]["considered"] == [
        {"prefix": "4420", "tenant": "globex", "ipbx": "globex-pbx", "match": None, "verdict": "other_tenant", "why": "DID of tenant globex, not acme"}
    ]


def test_outbound_destination_numbers_per_trunk_profile():
    ex = explain(TABLE, request("10.0.0.10", "0298765432", "0611111111"))
    by_name = {d["name"]: d for d in ex["destinations"]}
    assert step_of(by_name["carrier-a-1"]["called"]) == IT_FROM_RULE
    assert by_name["carrier-a-1"]["called"]["out"] == "0298765432"
    # carrier-b-1's profile "plus" has no from_e164 rule, and always_plus.
    assert by_name["carrier-b-1"]["called"] == {"e164": "39298765432", "out": "+39298765432", "step": "none", "plus_added": True}
    assert by_name["carrier-a-1"]["auth"] == {"username": "u", "realm": "carrier-a.net", "password": MASK}
    assert by_name["carrier-b-1"]["auth"] is None
    assert ex["route"]["prefix"] == "39"


def test_on_net_call_to_own_tenants_did():
    ex = explain(TABLE, request("10.0.0.10", "0612345999"))
    assert ex["kind"] == "on-net"
    assert ex["dids"]["scope"] == "acme"
    assert ex["dids"]["considered"][0] == {"prefix": "396123459", "tenant": "acme", "ipbx": "acme-branch", "match": None, "verdict": "chosen"}
    assert [d["name"] for d in ex["destinations"]] == ["acme-branch"]
    assert "route" not in ex
    assert "DIDs      of tenant acme (on-net)" in render_text(ex)


def test_did_whose_match_failed_and_the_shorter_one_chosen():
    doc = document()
    doc["dids"].append({"tenant": "acme", "prefix": "3961234567", "ipbx": "acme-branch", "match": "3961234567[0-4]"})
    table = compile_table(doc)
    ex = explain(table, request("192.0.2.1", "0612345678"))
    assert [(d["prefix"], d["verdict"]) for d in ex["dids"]["considered"]] == [("3961234567", "match_failed"), ("39612345", "chosen")]
    assert ex["dids"]["considered"][0]["why"] == "39612345678 does not fully match '3961234567[0-4]'"
    assert [d["name"] for d in ex["destinations"]] == ["acme-pbx"]
    assert ex["consistent"] is True
    assert "3961234567 (tenant acme, IPBX acme-branch match '3961234567[0-4]'): not used: 39612345678 does not fully match" in render_text(ex)
    # A match that fits the start of the number but not all of it fails too.
    partial = explain(TABLE, request("192.0.2.1", "+397012345"))
    assert [(d["prefix"], d["verdict"]) for d in partial["dids"]["considered"]] == [("3970", "match_failed")]
    assert partial["outcome"]["code"] == 404 and partial["consistent"] is True


def test_other_tenants_longer_did_from_an_ipbx():
    doc = document()
    doc["dids"].append({"tenant": "globex", "prefix": "3961234567", "ipbx": "globex-pbx"})
    table = compile_table(doc)
    ex = explain(table, request("10.0.0.10", "0612345678"))
    assert [(d["prefix"], d["verdict"]) for d in ex["dids"]["considered"]] == [("3961234567", "other_tenant"), ("39612345", "chosen")]
    assert ex["kind"] == "on-net"
    # From the shared carrier the same longer DID is in scope and wins.
    inbound = explain(table, request("192.0.2.1", "0612345678"))
    assert [(d["prefix"], d["verdict"]) for d in inbound["dids"]["considered"]] == [("3961234567", "chosen")]
    assert inbound["destinations"][0]["name"] == "globex-pbx"


def test_unknown_source_is_explained_403():
    ex = explain(TABLE, request("203.0.113.7", "0612345678"))
    assert ex["source"] == {"ip": "203.0.113.7", "cidr": None}
    assert ex["outcome"] == {"success": False, "code": 403, "reason": "Forbidden", "why": "no trunk or IPBX source CIDR holds 203.0.113.7"}
    assert ex["reply"] == {"rtjson": {"success": False, "code": 403, "reason": "Forbidden"}}
    assert ex["consistent"] is True
    assert "numbers" not in ex


def test_most_specific_cidr_is_named():
    doc = document()
    doc["trunks"][2]["sources"] = ["10.0.1.77/32"]
    table = compile_table(doc)
    assert explain(table, request("10.0.1.77", "+39612345678"))["source"]["cidr"] == "10.0.1.77/32"
    assert explain(table, request("10.0.1.78", "+39612345678"))["source"]["cidr"] == "10.0.1.0/24"
    assert explain(table, request("::ffff:192.0.2.3", "1"))["source"]["cidr"] == "192.0.2.0/28"
    assert explain(table, request("[2001:db8::99]", "1"))["source"]["cidr"] == "2001:db8::/64"


def test_called_number_not_digits_is_explained_404():
    ex = explain(TABLE, request("10.0.0.10", "alice", "anonymous"))
    assert ex["outcome"]["code"] == 404
    assert ex["outcome"]["why"] == "the called number 'alice' is not digits after normalization"
    assert ex["numbers"]["called"]["is_number"] is False
    assert ex["numbers"]["calling"]["is_number"] is False
    assert "dids" not in ex and ex["consistent"] is True


def test_over_long_numbers_are_explained():
    long = "0" + "6" * 40
    ex = explain(TABLE, request("192.0.2.1", long, "0611111111" + "1" * 30))
    assert ex["reply"]["rtjson"]["code"] == 404 and ex["consistent"] is True
    assert step_of(ex["numbers"]["called"]) == {"step": "too_long", "max_length": 32}
    assert step_of(ex["numbers"]["calling"]) == {"step": "too_long", "max_length": 32}
    assert ex["outcome"]["why"] == "the called number is longer than 32 characters"
    assert "longer than 32 characters: no rule tried" in render_text(ex)
    # 32 characters fit, but the to_e164 rule makes 33 of them.
    grown = explain(TABLE, request("192.0.2.1", "0" + "6" * 31))
    assert grown["numbers"]["called"]["e164"] == "39" + "6" * 31
    assert grown["outcome"]["why"] == "the called number is longer than 32 characters after normalization"
    assert grown["reply"]["rtjson"]["code"] == 404 and grown["consistent"] is True
    # An over-long caller is kept as it is, and the call still routes.
    routed = explain(TABLE, request("192.0.2.1", "0612345678", "0611111111" + "1" * 30))
    assert routed["outcome"]["success"] is True and routed["consistent"] is True
    assert routed["destinations"][0]["calling"]["step"] == "kept_not_a_number"


def test_no_did_from_a_trunk_lists_what_was_considered():
    ex = explain(TABLE, request("198.51.100.20", "+4420555"))  # carrier-b is acme's; 4420 is globex's
    assert ex["outcome"]["code"] == 404
    assert ex["dids"]["considered"][0]["verdict"] == "other_tenant"
    assert ex["outcome"]["why"] == "no DID in scope applies to 4420555 (calls from a trunk only go to DIDs)"
    nothing = explain(TABLE, request("192.0.2.1", "+4930123"))
    assert nothing["dids"]["considered"] == []
    assert nothing["outcome"]["why"] == "no DID prefix starts 4930123 (calls from a trunk only go to DIDs)"


def test_no_route_from_an_ipbx_is_explained_404():
    doc = document()
    doc["routes"] = [r for r in doc["routes"] if r["prefix"] != ""]
    table = compile_table(doc)
    ex = explain(table, request("10.0.0.10", "001212555"))
    assert ex["reply"]["rtjson"]["code"] == 404
    assert ex["route"] == {"tenant": "acme", "prefix": None, "matching_prefixes": []}
    assert ex["outcome"]["why"] == "no DID of tenant acme applies and no route prefix of tenant acme starts 1212555"
    globex = explain(table, request("2001:db8::5", "+1212555"))
    assert globex["outcome"]["why"] == "no DID of tenant globex applies and tenant globex has no routes"
    assert ex["consistent"] and globex["consistent"]


@pytest.mark.parametrize(
    "source, called, step",
    [
        ("192.0.2.1", "0612345678", IT_TO_RULE),
        ("192.0.2.1", "+39612345678", {"step": "plus_dropped"}),
        ("192.0.2.1", "0039612345678", {"step": "intl_prefix_stripped", "intl_prefix": "00"}),
        ("198.51.100.20", "12025550100", {"step": "ld_prefix_to_country_code", "ld_prefix": "1", "country_code": "1"}),
        ("192.0.2.1", "39612345678", {"step": "none"}),
        ("10.0.1.5", "+39612345678", {"step": "no_profile_plus_dropped"}),
        ("10.0.1.5", "39612345678", {"step": "no_profile"}),
    ],
)
def test_normalization_step_is_named(source, called, step):
    ex = explain(TABLE, request(source, called))
    assert step_of(ex["numbers"]["called"]) == step


def test_first_matching_to_e164_rule_is_the_one_named():
    doc = document()
    doc["normalization_profiles"][0]["to_e164"] = [{"match": "^1([0-9]+)", "replace": "3961234\\1"}, {"match": "^1", "replace": "44"}, IT_PROFILE["to_e164"][0]]
    ex = explain(compile_table(doc), request("192.0.2.1", "15678"))
    assert step_of(ex["numbers"]["called"]) == {"step": "to_e164_rule", "index": 0, "match": "^1([0-9]+)", "replace": "3961234\\1"}
    assert step_of(ex["numbers"]["calling"]) == dict(IT_TO_RULE, index=2)


def test_anonymous_caller_is_kept():
    ex = explain(TABLE, request("192.0.2.1", "0612345678", "anonymous"))
    assert ex["destinations"][0]["calling"] == {"e164": "anonymous", "out": "anonymous", "step": "kept_not_a_number"}
    assert "not a number: kept as is, no P-Asserted-Identity" in render_text(ex)


def test_text_from_the_request_cannot_fake_lines():
    ex = explain(TABLE, request("192.0.2.1", "0612345678", "x\nresult    refused 403"))
    lines = render_text(ex).splitlines()
    assert not any(line.startswith("result    refused") for line in lines)
    assert sum(line.startswith("result    ") for line in lines) == 1


@pytest.mark.parametrize("query", [["source_ip"], {"source_ip": "192.0.2.1"}, dict(request("192.0.2.1", "1"), source_ip="nope"), dict(request("192.0.2.1", "1"), call_id=5)])
def test_malformed_request_raises_what_decide_raises(query):
    with pytest.raises(RequestError) as decided:
        decide(TABLE, query)
    with pytest.raises(RequestError) as explained:
        explain(TABLE, query)
    assert str(explained.value) == str(decided.value)


# -- passwords ------------------------------------------------------------------------


def test_text_never_shows_the_password_but_reply_is_decides():
    doc = document()
    doc["trunks"][0]["auth"]["password"] = "s3cret-Pa55"
    table = compile_table(doc)
    query = request("10.0.0.10", "0298765432")
    ex = explain(table, query)
    assert ex["reply"] == decide(table, query)  # the JSON explanation carries decide's reply as is
    assert ex["reply"]["rtjson"]["routes"][0]["auth"]["password"] == "s3cret-Pa55"
    text = render_text(ex)
    assert "s3cret-Pa55" not in text
    assert "auth: user u, realm carrier-a.net, password ***" in text
    assert '"password": "***"' in text
    hidden = masked(ex)
    assert "s3cret-Pa55" not in repr(hidden)
    assert hidden["reply"]["rtjson"]["routes"][0]["auth"] == {"username": "u", "password": MASK, "realm": "carrier-a.net"}
    assert ex["reply"]["rtjson"]["routes"][0]["auth"]["password"] == "s3cret-Pa55"  # masking copies


def test_text_sections():
    text = render_text(explain(TABLE, request("10.0.0.10", "0044201234", call_id="w-1")))
    assert "source    10.0.0.10 is in 10.0.0.10/32: IPBX acme-pbx (tenant acme; profile it)" in text
    assert "called    '0044201234' (user part of ruri) -> '44201234' (no to_e164 rule matches: intl prefix '00' stripped)" in text
    assert "4420 (tenant globex, IPBX globex-pbx): not used: DID of tenant globex, not acme" in text
    assert "route     tenant acme, prefix '44', the longest that starts the number (also matching, shorter: '' (catch-all))" in text
    assert re.search(r"1\. carrier-\S+  priority 0  weight [13]\n.*2\. carrier-\S+  priority 0  weight [13]\n.*3\. carrier-b-2  priority 5  weight 1", text)
    assert "result    outbound: 3 branch(es), tried in this order" in text
    refused = render_text(explain(TABLE, request("203.0.113.7", "1")))
    assert "result    refused 403 Forbidden: no trunk or IPBX source CIDR holds 203.0.113.7" in refused


def test_a_disagreement_with_decide_is_flagged(monkeypatch):
    """The consistency check can fail: feed the explainer another reply."""
    query = request("192.0.2.1", "0612345678")
    other = decide(TABLE, request("10.0.0.10", "0298765432"))
    monkeypatch.setattr(explain_module, "decide", lambda table, q: other)
    ex = explain(TABLE, query)
    assert ex["consistent"] is False
    assert ex["reply"] is other
    assert "WARNING" in render_text(ex)


# -- consistency with decide over a corpus ------------------------------------------------

RICH = document()
RICH["dids"] += [
    {"tenant": "globex", "prefix": "3961234567", "ipbx": "globex-pbx"},
    {"tenant": "acme", "prefix": "4420123", "ipbx": "acme-branch", "match": "4420123[0-5][0-9]*"},
]
RICH["routes"].append({"tenant": "globex", "prefix": "1", "trunks": [{"trunk": "carrier-a-1", "priority": 3, "weight": 0}]})
TABLES = [TABLE, compile_table(RICH)]
SOURCES = ["192.0.2.1", "192.0.2.15", "198.51.100.20", "198.51.100.7", "10.0.0.10", "10.0.0.11", "10.0.1.200",
           "2001:db8::5", "[2001:db8::5]", "::ffff:192.0.2.3", "203.0.113.7", "2001:db8:1::1"]
numbers = st.one_of(
    st.tuples(st.sampled_from(["", "+", "00", "0", "011", "1"]), st.sampled_from(["39612345", "3970", "4420", "44", "1", "3961234567", ""]),
              st.text(alphabet="0123456789", max_size=6)).map("".join),
    st.text(alphabet="0123456789 -.()+a", max_size=14),
    st.text(alphabet="0123456789", min_size=28, max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TABLES), st.sampled_from(SOURCES), numbers, st.one_of(numbers, st.just("anonymous")),
       st.text(max_size=10), st.booleans())
def test_explanation_agrees_with_decide(table, source, called, calling, call_id, tel):
    ruri = f"tel:{called}" if tel else f"sip:{called}@c4.example.com"
    query = {"source_ip": source, "call_id": call_id, "ruri": ruri, "from_uri": f"sip:{calling}@a.example", "to_uri": f"sip:{called}@b"}
    reply = decide(table, query)
    ex = explain(table, query)
    assert ex["reply"] == reply
    assert ex["consistent"] is True, ex
    rt = reply["rtjson"]
    assert ex["outcome"]["success"] is rt["success"]
    if rt["success"]:
        assert branch_uris(ex) == [r["uri"] for r in rt["routes"]]
        assert [b["dst_uri"] for d in ex["destinations"] for b in d["branches"]] == [r["dst_uri"] for r in rt["routes"]]
        chosen = [d for d in ex["dids"]["considered"] if d["verdict"] == "chosen"]
        assert len(chosen) == (1 if ex["kind"] in ("inbound", "on-net") else 0)
    else:
        assert ex["outcome"]["code"] == rt["code"]
    for did in ex.get("dids", {}).get("considered", ()):
        assert did["verdict"] in ("chosen", "other_tenant", "match_failed"), did
    render_text(ex)  # renders whatever the outcome


rules = st.lists(
    st.tuples(st.sampled_from(["^0([1-9][0-9]*)$", "^00", "^1([0-9]{3})", "^(9)9", "^$", "^[0-9]{4}$"]),
              st.sampled_from(["39\\1", "", "44", "\\1\\1", "1", "7"])),
    max_size=3,
).map(lambda rs: [{"match": m, "replace": r} for m, r in rs if not ("\\1" in r and re.compile(m).groups < 1)])


@given(st.text(alphabet="0123456789+", max_size=12), rules, rules, st.sampled_from(["", "39"]), st.sampled_from(["", "00", "011"]),
       st.sampled_from(["", "0", "1"]), st.booleans())
def test_named_step_reproduces_the_profiles_result(number, to_rules, from_rules, cc, intl, ld, always_plus):
    """Applying the step the explanation names gives what Profile computed."""
    profile = Profile("p", cc, intl, ld, always_plus, to_rules, from_rules)
    step = to_e164_step(profile, number)
    kind = step["step"]
    if kind == "to_e164_rule":
        assert all(not re.match(r["match"], number) for r in to_rules[: step["index"]])
        expected = re.sub(step["match"], step["replace"], number, count=1)
    elif kind == "plus_dropped":
        expected = number[1:]
    elif kind == "intl_prefix_stripped":
        expected = number[len(intl):]
    elif kind == "ld_prefix_to_country_code":
        expected = cc + number[len(ld):]
    else:
        assert kind == "none"
        expected = number
    assert profile.to_e164(number) == expected
    out = from_e164_step(profile, number)
    converted = re.sub(out["match"], out["replace"], number, count=1) if out["step"] == "from_e164_rule" else number
    assert out["plus_added"] is always_plus
    assert profile.from_e164(number) == ("+" if always_plus else "") + converted


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_documents(), st.sampled_from(["192.0.2.1", "198.51.100.20", "10.0.0.10", "10.0.1.5", "2001:db8::5"]),
       HOSTILE_NUMBERS, HOSTILE_NUMBERS, st.text(max_size=10))
def test_explanation_agrees_with_decide_on_any_accepted_document(doc, source, called, calling, call_id):
    """Whatever a document the checker accepts holds, the explanation renders and agrees."""
    try:
        table = compile_validated(validate_document(doc))
    except DocumentError:
        return
    query = {"source_ip": source, "call_id": call_id, "ruri": f"sip:{called}@c4.example.com",
             "from_uri": f"sip:{calling}@pbx.example.com", "to_uri": f"sip:{called}@c4.example.com"}
    try:
        reply = decide(table, query)
    except RequestError:
        with pytest.raises(RequestError):
            explain(table, query)
        return
    ex = explain(table, query)
    assert ex["reply"] == reply
    assert ex["consistent"] is True, ex
    orjson.dumps(ex)
    render_text(ex)
