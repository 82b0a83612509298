"""One test (or more) per decision rule of docs/routing.md ("The decision")."""

from __future__ import annotations

import collections

import orjson
import pytest

from c4kemi.core.decision import RequestError, decide, encode, route_json
from c4kemi.core.table import compile_table
from tables import BASE_DOCUMENT, document, request

TABLE = compile_table(BASE_DOCUMENT)


def routes_of(reply: dict) -> list[dict]:
    assert reply["rtjson"]["success"] is True, reply
    return reply["rtjson"]["routes"]


def uris(reply: dict) -> list[str]:
    return [r["uri"] for r in routes_of(reply)]


# -- rule 1: source -------------------------------------------------------


def test_unknown_source_is_forbidden():
    reply = decide(TABLE, request("203.0.113.7", "0612345678"))
    assert reply == {"rtjson": {"success": False, "code": 403, "reason": "Forbidden"}}


def test_most_specific_cidr_names_the_sender():
    doc = document()
    # 10.0.1.0/24 is acme-branch; a /32 inside it belongs to a trunk.
    doc["trunks"][2]["sources"] = ["10.0.1.77/32"]
    table = compile_table(doc)
    # The trunk's call goes to a DID, the IPBX's on acme's "44" route.
    from_trunk = decide(table, request("10.0.1.77", "+39612345678"))
    from_ipbx = decide(table, request("10.0.1.78", "+44201234"))
    assert uris(from_trunk) == ["sip:0612345678@10.0.0.10:5060", "sip:0612345678@10.0.0.11:5060"]
    assert {r["dst_uri"] for r in routes_of(from_ipbx)} == {
        "sip:192.0.2.10:5060",
        "sip:198.51.100.20:5060;transport=tcp",
        "sip:198.51.100.30",
    }


def test_same_cidr_longest_match_across_families():
    # An IPv4 source never matches an IPv6 network and vice versa.
    assert decide(TABLE, request("2001:db8:1::1", "+4420555"))["rtjson"]["code"] == 403
    assert decide(TABLE, request("10.0.2.1", "+4420555"))["rtjson"]["code"] == 403


def test_ipv6_source():
    reply = decide(TABLE, request("2001:db8::99", "+390612345"))
    # globex-pbx has no profile; carrier-a-1 ("it") takes 39 off and puts 0 on.
    assert uris(reply) == ["sip:00612345@192.0.2.10:5060"]
    bracketed = decide(TABLE, request("[2001:db8::99]", "+390612345"))
    assert bracketed == reply


def test_ipv4_mapped_ipv6_source_uses_ipv4_table():
    reply = decide(TABLE, request("::ffff:192.0.2.3", "0612345678"))
    assert routes_of(reply)


# -- rule 2: numbers ------------------------------------------------------


def test_called_number_from_ruri_else_to_uri():
    query = request("192.0.2.1", "0612345678")
    query["ruri"] = "sip:c4.example.com"
    query["to_uri"] = "sip:0612345678@c4.example.com"
    assert uris(decide(TABLE, query))[0] == "sip:0612345678@10.0.0.10:5060"
    del query["ruri"]
    assert uris(decide(TABLE, query))[0] == "sip:0612345678@10.0.0.10:5060"


def test_tel_uris_and_visual_separators():
    query = request("192.0.2.1", "x", ruri="tel:+39 (6) 1234-56.78", to_uri="tel:+39-6-12345678;phone-context=x")
    query["from_uri"] = "tel:+39 611 111 111"
    route = routes_of(decide(TABLE, query))[0]
    assert route["uri"] == "sip:0612345678@10.0.0.10:5060"
    assert route["headers"]["to"]["uri"] == "tel:0612345678;phone-context=x"
    assert route["headers"]["from"]["uri"] == "tel:0611111111"
    # A tel: caller has no host: the P-Asserted-Identity is a tel: URI.
    assert route["headers"]["extra"] == "P-Asserted-Identity: <tel:+39611111111>\r\n"


def test_to_e164_rule_then_from_e164_rule():
    # Sender trunk profile "it": 0612345678 -> 39612345678 (rule), DID 39612345 -> acme-pbx,
    # whose profile "it" turns it back to 0612345678.
    reply = decide(TABLE, request("192.0.2.1", "0612345678", "0611111111"))
    route = routes_of(reply)[0]
    assert route["uri"] == "sip:0612345678@10.0.0.10:5060"
    assert route["headers"]["from"]["uri"] == "sip:0611111111@acme.example.com"
    assert route["headers"]["extra"] == "P-Asserted-Identity: <sip:+39611111111@acme.example.com>\r\n"


def test_intl_prefix_stripped_when_no_rule_matches():
    # 0039612345678: the to_e164 rule needs 0[1-9], so the intl prefix 00 is stripped.
    reply = decide(TABLE, request("192.0.2.1", "0039612345678"))
    assert uris(reply)[0] == "sip:0612345678@10.0.0.10:5060"


def test_leading_plus_dropped_first():
    reply = decide(TABLE, request("192.0.2.1", "+39612345678"))
    assert uris(reply)[0] == "sip:0612345678@10.0.0.10:5060"


def test_ld_prefix_becomes_country_code():
    # Profile "plus" (carrier-b-1, source 198.51.100.20): ld_prefix "1", country code "1".
    doc = document()
    doc["normalization_profiles"][1]["ld_prefix"] = "9"
    doc["dids"].append({"tenant": "acme", "prefix": "1555", "ipbx": "acme-branch"})
    table = compile_table(doc)
    reply = decide(table, request("198.51.100.20", "95551234"))
    assert uris(reply) == ["sip:15551234@10.0.1.10"]


def test_first_matching_to_e164_rule_wins():
    doc = document()
    doc["normalization_profiles"][0]["to_e164"] = [
        {"match": "^1([0-9]+)", "replace": "3961234\\1"},
        {"match": "^1", "replace": "44"},
    ]
    table = compile_table(doc)
    reply = decide(table, request("192.0.2.1", "15678"))
    assert uris(reply)[0] == "sip:061234" + "5678@10.0.0.10:5060"


def test_no_profile_drops_plus_only():
    # acme-branch (10.0.1.0/24) has no profile: the number must already be E.164.
    reply = decide(TABLE, request("10.0.1.5", "+44 20 1234"))
    trunks = [r["dst_uri"] for r in routes_of(reply)]
    assert trunks[-1] == "sip:198.51.100.30"
    assert decide(TABLE, request("10.0.1.5", "0044201234")) != reply  # no intl_prefix without a profile


def test_non_numeric_called_number_is_no_route():
    for called in ("alice", "", "12a4", "+", "٣٤٥"):
        reply = decide(TABLE, request("192.0.2.1", called))
        assert reply == {"rtjson": {"success": False, "code": 404, "reason": "No Route"}}, called


def test_anonymous_caller_kept_without_pai():
    reply = decide(TABLE, request("192.0.2.1", "0612345678", "anonymous"))
    route = routes_of(reply)[0]
    assert route["headers"]["from"]["uri"] == "sip:anonymous@acme.example.com"
    assert route["headers"]["extra"] == ""


# -- rule 3: inbound ------------------------------------------------------


def test_inbound_longest_did_prefix_wins():
    assert uris(decide(TABLE, request("192.0.2.1", "0612345678"))) == [
        "sip:0612345678@10.0.0.10:5060",
        "sip:0612345678@10.0.0.11:5060",
    ]
    # 396123459... is the longer DID of acme-branch (no profile: E.164 goes out as is).
    assert uris(decide(TABLE, request("192.0.2.1", "0612345999"))) == ["sip:39612345999@10.0.1.10"]


def test_inbound_did_match_must_fullmatch():
    assert decide(TABLE, request("192.0.2.1", "+39701234"))["rtjson"]["success"] is True
    assert decide(TABLE, request("192.0.2.1", "+397012345"))["rtjson"]["code"] == 404
    assert decide(TABLE, request("192.0.2.1", "+3970123"))["rtjson"]["code"] == 404


def test_inbound_no_did_is_404():
    assert decide(TABLE, request("192.0.2.1", "+4930123"))["rtjson"]["code"] == 404


def test_inbound_did_scope_is_the_carriers_tenant():
    # carrier-b belongs to acme: globex's DID 4420 is out of its scope.
    assert decide(TABLE, request("198.51.100.20", "+4420555"))["rtjson"]["code"] == 404
    # carrier-a is shared: it reaches every tenant's DIDs.
    assert uris(decide(TABLE, request("192.0.2.1", "+4420555"))) == ["sip:4420555@[2001:db8::10]:5060"]


def test_did_scope_skips_other_tenants_longer_prefix():
    doc = document()
    doc["dids"].append({"tenant": "globex", "prefix": "396123456", "ipbx": "globex-pbx"})
    table = compile_table(doc)
    # From acme's carrier-b, globex's longer DID is out of scope: acme's 39612345 wins.
    assert uris(decide(table, request("198.51.100.20", "+39612345678")))[0] == "sip:0612345678@10.0.0.10:5060"
    # From the shared carrier, the longest prefix wins across tenants.
    assert uris(decide(table, request("192.0.2.1", "+39612345678"))) == ["sip:39612345678@[2001:db8::10]:5060"]


# -- rule 4: outbound -----------------------------------------------------


def test_outbound_on_net_to_own_tenants_did():
    reply = decide(TABLE, request("10.0.0.10", "0612345999"))
    assert uris(reply) == ["sip:39612345999@10.0.1.10"]


def test_outbound_ignores_other_tenants_did():
    # 4420 is globex's DID: acme's IPBX goes out through its 44 route instead.
    reply = decide(TABLE, request("10.0.0.10", "00442055"))
    assert {r["dst_uri"] for r in routes_of(reply)} == {
        "sip:192.0.2.10:5060",
        "sip:198.51.100.20:5060;transport=tcp",
        "sip:198.51.100.30",
    }


def test_outbound_longest_route_prefix_and_list_order():
    reply = decide(TABLE, request("10.0.0.10", "0298765432"))
    assert [r["dst_uri"] for r in routes_of(reply)] == ["sip:192.0.2.10:5060", "sip:198.51.100.20:5060;transport=tcp"]
    catch_all = decide(TABLE, request("10.0.0.10", "001212555"))
    assert [r["dst_uri"] for r in routes_of(catch_all)] == ["sip:198.51.100.20:5060;transport=tcp"]


def test_outbound_no_route_is_404():
    doc = document()
    doc["routes"] = [r for r in doc["routes"] if r["prefix"] != ""]
    table = compile_table(doc)
    assert decide(table, request("10.0.0.10", "001212555"))["rtjson"]["code"] == 404


def test_outbound_lower_priority_first():
    reply = decide(TABLE, request("10.0.0.10", "0044201234"))
    assert routes_of(reply)[-1]["dst_uri"] == "sip:198.51.100.30"  # priority 5 last


def test_weighted_order_is_deterministic_per_call_id():
    orders = set()
    for _ in range(3):
        reply = decide(TABLE, request("10.0.0.10", "0044201234", call_id="same-call"))
        orders.add(tuple(r["dst_uri"] for r in routes_of(reply)))
    assert len(orders) == 1


def test_weighted_order_follows_weights():
    first = collections.Counter()
    n = 4000
    for i in range(n):
        reply = decide(TABLE, request("10.0.0.10", "0044201234", call_id=f"call-{i}@host"))
        first[routes_of(reply)[0]["dst_uri"]] += 1
    share = first["sip:192.0.2.10:5060"] / n  # weight 3 of 4
    assert 0.72 < share < 0.78, first
    assert set(first) == {"sip:192.0.2.10:5060", "sip:198.51.100.20:5060;transport=tcp"}


def test_weight_zero_goes_last_in_its_group():
    doc = document()
    doc["routes"][2]["trunks"][0]["weight"] = 0
    table = compile_table(doc)
    for i in range(50):
        reply = decide(table, request("10.0.0.10", "0044201234", call_id=f"c{i}"))
        assert [r["dst_uri"] for r in routes_of(reply)][:2] == ["sip:198.51.100.20:5060;transport=tcp", "sip:192.0.2.10:5060"]


# -- rule 5: each route ---------------------------------------------------


def test_route_fields_for_a_trunk():
    reply = decide(TABLE, request("10.0.0.10", "0298765432", "0611111111", from_uri="sip:0611111111@acme.example.com:5060;user=phone"))
    route = routes_of(reply)[0]
    assert route == {
        "uri": "sip:0298765432@192.0.2.10:5060",
        "dst_uri": "sip:192.0.2.10:5060",
        "path": "",
        "socket": "",
        "headers": {
            "from": {"display": "Alice", "uri": "sip:0611111111@acme.example.com:5060;user=phone"},
            "to": {"display": "Bob", "uri": "sip:0298765432@c4.example.com"},
            "extra": "P-Asserted-Identity: <sip:+39611111111@acme.example.com>\r\n",
        },
        "branch_flags": 0,
        "fr_timer": 2000,
        "fr_inv_timer": 30000,
        "auth": {"username": "u", "password": "p", "realm": "carrier-a.net"},
    }
    second = routes_of(reply)[1]
    # Profile "plus": no from_e164 rule, always_plus.
    assert second["uri"] == "sip:+39298765432@198.51.100.20:5060;transport=tcp"
    assert second["headers"]["from"]["uri"] == "sip:+39611111111@acme.example.com:5060;user=phone"
    assert "auth" not in second
    assert (second["fr_timer"], second["fr_inv_timer"], second["branch_flags"]) == (5000, 30000, 0)


def test_route_fields_for_an_ipbx_without_profile():
    reply = decide(TABLE, request("192.0.2.1", "0612345999", "0611111111", from_name="", to_name=""))
    route = routes_of(reply)[0]
    assert route["uri"] == "sip:39612345999@10.0.1.10"
    assert route["headers"]["from"] == {"display": "", "uri": "sip:39611111111@acme.example.com"}
    assert (route["fr_timer"], route["fr_inv_timer"], route["branch_flags"]) == (3000, 30000, 4)


def test_reply_key_order_and_bytes():
    data = route_json(TABLE, request("192.0.2.1", "0612345678"))
    assert data.startswith(b'{"rtjson":{"version":"1.0","routing":"serial","success":true,"routes":[{"uri":')
    assert encode(orjson.loads(data)) == data


# -- the request ----------------------------------------------------------


@pytest.mark.parametrize(
    "change, member",
    [
        ({"source_ip": None}, "source_ip"),
        ({"from_uri": None}, "from_uri"),
        ({"to_uri": None}, "to_uri"),
        ({"source_ip": 17}, "source_ip"),
        ({"to_uri": ["sip:1@x"]}, "to_uri"),
        ({"source_ip": "not-an-ip"}, "source_ip"),
        ({"call_id": 5}, "call_id"),
    ],
)
def test_malformed_request_names_the_member(change, member):
    query = request("192.0.2.1", "0612345678")
    for key, value in change.items():
        if value is None:
            del query[key]
        else:
            query[key] = value
    with pytest.raises(RequestError, match=member):
        decide(TABLE, query)


def test_request_must_be_an_object():
    with pytest.raises(RequestError, match="object"):
        decide(TABLE, ["source_ip"])


def test_extra_members_ignored_and_optional_ones_default():
    minimal = {"source_ip": "192.0.2.1", "from_uri": "sip:0611111111@a", "to_uri": "sip:0612345678@b"}
    reply = decide(TABLE, {**minimal, "something": {"else": 1}})
    route = routes_of(reply)[0]
    assert route["headers"]["from"]["display"] == "" and route["headers"]["to"]["display"] == ""
