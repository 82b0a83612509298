"""Property tests: the fast lookups against naive references written here."""

from __future__ import annotations

import ipaddress
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from c4kemi.core.decision import RequestError, call_json, decide
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.indexes import PrefixIndex, SourceIndex
from c4kemi.core.numbers import Profile, strip_separators
from c4kemi.core.table import compile_table
from tables import document

digits = st.text(alphabet="0123456789", max_size=12)
prefixes = st.dictionaries(st.text(alphabet="0123", max_size=6), st.integers(), max_size=30)


@given(prefixes, st.text(alphabet="0123", max_size=10))
def test_longest_prefix_matches_naive_scan(entries, number):
    index = PrefixIndex.build(entries)
    expected = sorted((p for p in entries if number.startswith(p)), key=len, reverse=True)
    assert list(index.candidates(number)) == [(p, entries[p]) for p in expected]


def ipv4_networks():
    return st.builds(
        lambda addr, length: ipaddress.ip_network(f"{ipaddress.IPv4Address(addr)}/{length}", strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def ipv6_networks():
    return st.builds(
        lambda addr, length: ipaddress.ip_network(f"{ipaddress.IPv6Address(addr)}/{length}", strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    )


@given(
    st.lists(st.one_of(ipv4_networks(), ipv6_networks()), max_size=25, unique=True),
    st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)),
    st.data(),
)
def test_source_lookup_matches_naive_longest_cidr(networks, address, data):
    # Make hits likely: often pick an address inside one of the networks.
    if networks and data.draw(st.booleans()):
        network = data.draw(st.sampled_from(networks))
        offset = data.draw(st.integers(0, network.num_addresses - 1))
        address = network.network_address + offset
    index = SourceIndex.build([(net, str(net)) for net in networks])
    # An IPv4-mapped IPv6 address (::ffff:a.b.c.d, a dual-stack socket's view of an IPv4 peer) is that IPv4 address.
    seen_as = address.ipv4_mapped if address.version == 6 and address.ipv4_mapped is not None else address
    holders = [net for net in networks if net.version == seen_as.version and seen_as in net]
    expected = str(max(holders, key=lambda n: n.prefixlen)) if holders else None
    assert index.lookup(str(address)) == expected


rules = st.lists(
    st.tuples(st.sampled_from(["^0([1-9][0-9]*)$", "^00", "^1([0-9]{3})", "^(9)9", "^$", "^[0-9]{4}$"]),
              st.sampled_from(["39\\1", "", "44", "\\1\\1", "1", "7"])),
    max_size=3,
)


def naive_to_e164(number, rules, cc, intl, ld):
    for match, replace in rules:
        if re.match(match, number):
            return re.sub(match, replace, number, count=1)
    if number.startswith("+"):
        return number[1:]
    if intl and number.startswith(intl):
        return number[len(intl):]
    if ld and number.startswith(ld):
        return cc + number[len(ld):]
    return number


def naive_from_e164(number, rules, always_plus):
    for match, replace in rules:
        if re.match(match, number):
            number = re.sub(match, replace, number, count=1)
            break
    return "+" + number if always_plus else number


def valid(rule_list):
    ok = []
    for match, replace in rule_list:
        groups = re.compile(match).groups
        if "\\1" in replace and groups < 1:
            continue
        ok.append((match, replace))
    return ok


@given(st.one_of(digits, digits.map(lambda d: "+" + d)), rules, rules, digits, st.sampled_from(["", "00", "011"]),
       st.sampled_from(["", "0", "1"]), st.booleans())
def test_normalization_matches_naive_reference(number, to_rules, from_rules, cc, intl, ld, always_plus):
    to_rules, from_rules = valid(to_rules), valid(from_rules)
    profile = Profile("p", cc, intl, ld, always_plus,
                      [{"match": m, "replace": r} for m, r in to_rules],
                      [{"match": m, "replace": r} for m, r in from_rules])
    assert profile.to_e164(number) == naive_to_e164(number, to_rules, cc, intl, ld)
    assert profile.from_e164(number) == naive_from_e164(number, from_rules, always_plus)


@given(st.text(alphabet="0123456789 -.()+", max_size=20))
def test_separators_removed(number):
    assert strip_separators(number) == "".join(c for c in number if c not in " -.()")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(["tenants", "normalization_profiles", "ipbxs", "carriers", "trunks", "dids", "routes"]),
       st.integers(0, 3), st.text(max_size=12), json_values)
def test_any_corruption_gives_document_error_not_a_crash(collection, index, field, value):
    doc = document()
    items = doc[collection]
    if index < len(items):
        items[index][field] = value
    else:
        items.append(value)
    try:
        validate_document(doc)
    except DocumentError as exc:
        assert exc.errors and all(isinstance(e, str) and ": " in e for e in exc.errors)


@given(st.dictionaries(st.sampled_from(["source_ip", "from_uri", "to_uri", "ruri", "call_id", "from_name", "to_name"]),
                       json_values, max_size=7))
def test_any_request_gives_a_reply_or_request_error(query):
    table = compile_table(document())
    try:
        reply = decide(table, query)
    except RequestError:
        return
    assert isinstance(reply["rtjson"]["success"], bool)


@given(st.one_of(st.text(max_size=30), st.text(alphabet="+0123456789 -()", max_size=14).map(lambda u: f"sip:{u}@h")),
       st.text(max_size=30))
def test_any_uri_text_routes_or_refuses(ruri, from_uri):
    table = compile_table(document())
    reply = decide(table, {"source_ip": "192.0.2.1", "ruri": ruri, "from_uri": from_uri, "to_uri": ruri})
    rtjson = reply["rtjson"]
    if rtjson["success"]:
        assert all(re.fullmatch(r"sip:\+?[0-9]+@\S+", route["uri"]) for route in rtjson["routes"])
    else:
        assert rtjson["code"] == 404


calls = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), calls, max_size=6))
def test_call_json_is_the_text_of_json_dumps(call):
    # The C4-Call header's fast path (orjson) against the reference encoding.
    assert call_json(call) == json.dumps(call, ensure_ascii=True, separators=(",", ":"))
