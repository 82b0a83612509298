"""No accepted document may fail a call.

Whatever a routing document can hold, either the checker refuses it (naming
the entity and field) or every decision on it returns a reply or a
RequestError, encoded to bytes. Random documents are drawn from pools of
hostile values: bad templates, catastrophic regexes, integers beyond 64
bits, odd weights and targets. And whatever the table holds, the work per
call stays bounded.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c4kemi.core.decision import RequestError, route_json
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.numbers import MAX_NUMBER_LENGTH
from c4kemi.core.table import compile_table, compile_validated
from tables import document

PATTERNS = ["^0([1-9][0-9]+)$", "^(00|\\+)?(\\d+)$", "^(3+)+4$", "^(?P<n>\\d+)$", "^$", "(", "^3\\d*\\d*\\d*\\d*$",
            "^(0|00)*1$", "39", "^[0-9]{4}$", "(?=3)", "(a)\\1"]
TEMPLATES = ["39\\1", "", "0\\q1", "\\g<n>", "\\g<1>", "\\2", "\\1\\r\\n", "+\\1", "\\\\", "\\g<0>", "x", "0\\10"]
INTEGERS = st.one_of(st.integers(-3, 5000), st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**20, 10**400, -(2**63)]))
WEIGHTS = st.one_of(INTEGERS, st.floats(allow_nan=True, allow_infinity=True), st.just(5e-324))
TARGETS = ["sip:10.0.0.1", "sip:[::1]:5060", "sip:carrier.example.com", "sips:10.0.0.1:5061;transport=tls",
           "sip:10.0.0.1:0", "sip:u@10.0.0.1", "sip:10.0.0.1?h=1", "sip:", "sip:999.1.1.1", "tel:+1"]
NUMBERS = st.one_of(
    st.sampled_from(["0612345678", "+39612345901", "0044201234", "00442012", "3970123", "1234", "anonymous"]),
    st.text(alphabet="0123456789+ -().", max_size=40),
    st.integers(1, 200).map(lambda n: "3" * n),
    st.text(max_size=20),
)


def _mutations(draw):
    """One hostile value each, into an otherwise valid document."""
    rule = lambda: {"match": draw(st.sampled_from(PATTERNS)), "replace": draw(st.sampled_from(TEMPLATES))}  # noqa: E731
    return [
        lambda d: d["normalization_profiles"][0]["to_e164"].insert(0, rule()),
        lambda d: d["normalization_profiles"][0]["from_e164"].insert(0, rule()),
        lambda d: d["normalization_profiles"][0].update(always_plus=draw(st.booleans())),
        lambda d: d["trunks"][draw(st.integers(0, 2))].update({draw(st.sampled_from(["fr_timer", "fr_inv_timer", "branch_flags"])): draw(INTEGERS)}),
        lambda d: d["ipbxs"][draw(st.integers(0, 2))].update({draw(st.sampled_from(["fr_timer", "fr_inv_timer", "branch_flags"])): draw(INTEGERS)}),
        lambda d: d["trunks"][0].update(target=draw(st.sampled_from(TARGETS))),
        lambda d: d["ipbxs"][0].update(targets=draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=2))),
        lambda d: d["dids"][draw(st.integers(0, 3))].update(match=draw(st.sampled_from(PATTERNS))),
        lambda d: d["dids"][1].update(prefix=draw(st.sampled_from(["3961234591", "3" * 33]))),
        lambda d: d["routes"][1]["trunks"][0].update(priority=draw(INTEGERS), weight=draw(WEIGHTS)),
        lambda d: d["routes"].append({"tenant": "acme", "prefix": "44", "trunks": [
            {"trunk": "carrier-a-1", "priority": 0, "weight": draw(WEIGHTS)},
            {"trunk": "carrier-b-1", "priority": draw(INTEGERS), "weight": draw(WEIGHTS)},
        ]}),
    ]


@st.composite
def hostile_documents(draw):
    doc = document()
    mutations = _mutations(draw)
    for index in draw(st.lists(st.integers(0, len(mutations) - 1), min_size=1, max_size=3)):
        mutations[index](doc)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_documents(), st.lists(st.tuples(st.sampled_from(["192.0.2.1", "10.0.0.10", "10.0.1.5", "2001:db8::5"]),
                                               NUMBERS, NUMBERS, st.text(max_size=10)), min_size=1, max_size=4))
def test_an_accepted_document_never_fails_a_decision(doc, calls):
    try:
        table = compile_validated(validate_document(doc))
    except DocumentError as exc:
        assert exc.errors and all(": " in error for error in exc.errors)
        return
    for source_ip, called, calling, call_id in calls:
        query = {"source_ip": source_ip, "call_id": call_id, "ruri": f"sip:{called}@c4.example.com",
                 "from_uri": f"sip:{calling}@pbx.example.com", "to_uri": f"sip:{called}@c4.example.com"}
        try:
            assert route_json(table, query).startswith(b'{"rtjson":')
        except RequestError:
            pass


def test_the_worst_accepted_pattern_on_the_longest_number_is_cheap():
    # The longest run of variable quantifiers the checker accepts, as a DID
    # match and as a to_e164 rule that fails only at the last character,
    # against numbers of the longest accepted length. Exponential patterns
    # took 0.7 s at 24 digits and most of a minute at 30 before they were
    # refused; what is accepted stays polynomial over 32 characters.
    worst = "^3*3*3*3*4$"
    doc = document()
    doc["normalization_profiles"][0]["to_e164"] = [{"match": worst, "replace": "4"}]
    doc["dids"][2]["match"] = "^3*3*3*3*4$"
    table = compile_table(doc)
    number = "3" * MAX_NUMBER_LENGTH
    query = {"source_ip": "10.0.0.10", "ruri": f"sip:{number}@c4", "from_uri": f"sip:{number}@pbx", "to_uri": "sip:x@c4"}
    started = time.perf_counter()
    route_json(table, query)
    # Generous by three orders of magnitude: this guards against exponential
    # blow-up, it does not measure speed (benchmarks/ does).
    assert time.perf_counter() - started < 1.0


def test_refused_patterns_include_the_catastrophic_ones():
    for pattern in ["^(3+)+4$", "^(\\d*)*$", "^(0|00)*1$", "^(\\d|\\d\\d)+$", "^3*3*3*3*3*4$"]:
        doc = document()
        doc["dids"][0]["match"] = pattern
        try:
            validate_document(doc)
        except DocumentError as exc:
            assert any(error.startswith("dids[0].match: ") for error in exc.errors), exc.errors
        else:
            raise AssertionError(f"{pattern!r} was accepted")


def test_an_over_long_number_never_reaches_a_regex():
    doc = document()
    doc["normalization_profiles"][0]["to_e164"] = [{"match": "^(?P<all>.*)$", "replace": "39\\g<all>"}]
    table = compile_table(doc)
    long_called = "0" + "6" * MAX_NUMBER_LENGTH
    query = {"source_ip": "10.0.0.10", "ruri": f"sip:{long_called}@c4", "from_uri": "sip:0611111111@pbx", "to_uri": "sip:x@c4"}
    assert route_json(table, query) == b'{"rtjson":{"success":false,"code":404,"reason":"No Route"}}'
