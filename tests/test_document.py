"""Routing document loading and validation: every error class, named."""

from __future__ import annotations

import json

import pytest

from c4kemi.core.decision import decide
from c4kemi.core.document import DocumentError, load_document, validate_document
from c4kemi.core.table import compile_table, load_table
from tables import BASE_DOCUMENT, document, request


def errors_of(doc) -> list[str]:
    with pytest.raises(DocumentError) as info:
        validate_document(doc)
    return info.value.errors


def test_base_document_is_valid_and_normalised():
    doc = validate_document(document())
    trunk = doc["trunks"][2]
    assert (trunk["fr_timer"], trunk["fr_inv_timer"], trunk["branch_flags"], trunk["auth"]) == (5000, 30000, 0, None)
    assert doc["ipbxs"][0]["sources"] == ["10.0.0.10/32", "10.0.0.11/32"]


def test_missing_collections_are_empty():
    assert validate_document({})["dids"] == []


@pytest.mark.parametrize(
    "mutate, expected",
    [
        # unknown keys
        (lambda d: d.update(extra=[]), "extra: unknown collection"),
        (lambda d: d["trunks"][0].update(color="red"), "trunks[carrier-a-1].color: unknown field"),
        (lambda d: d["trunks"][0]["auth"].update(token="x"), "trunks[carrier-a-1].auth.token: unknown field"),
        (lambda d: d["dids"][1].update(note="x"), "dids[1].note: unknown field"),
        (lambda d: d["normalization_profiles"][0]["to_e164"][0].update(flags="i"), "normalization_profiles[it].to_e164[0].flags: unknown field"),
        # dangling references
        (lambda d: d["ipbxs"][0].update(tenant="nobody"), "ipbxs[acme-pbx].tenant: unknown tenant 'nobody'"),
        (lambda d: d["trunks"][1].update(carrier="carrier-z"), "trunks[carrier-b-1].carrier: unknown carrier 'carrier-z'"),
        (lambda d: d["trunks"][1].update(normalization="fr"), "trunks[carrier-b-1].normalization: unknown normalization profile 'fr'"),
        (lambda d: d["dids"][0].update(ipbx="nope"), "dids[0].ipbx: unknown IPBX 'nope'"),
        (lambda d: d["routes"][0]["trunks"].append("ghost"), "routes[0].trunks[2]: unknown trunk 'ghost'"),
        (lambda d: d["routes"][1]["trunks"][0].update(trunk="ghost"), "routes[1].trunks[0].trunk: unknown trunk 'ghost'"),
        (lambda d: d["carriers"][0].update(tenant="ghost"), "carriers[carrier-a].tenant: unknown tenant 'ghost'"),
        # bad CIDRs
        (lambda d: d["trunks"][0]["sources"].append("192.0.2.300"), "trunks[carrier-a-1].sources[1]: bad CIDR '192.0.2.300'"),
        (lambda d: d["ipbxs"][0]["sources"].append("10.0.0.0/33"), "ipbxs[acme-pbx].sources[2]: bad CIDR '10.0.0.0/33'"),
        (lambda d: d["ipbxs"][0]["sources"].append("10.0.0.1/24"), "ipbxs[acme-pbx].sources[2]: bad CIDR '10.0.0.1/24'"),
        (lambda d: d["ipbxs"][2]["sources"].append("2001:db8::g/64"), "ipbxs[globex-pbx].sources[1]: bad CIDR"),
        # bad regexes
        (lambda d: d["dids"][0].update(match="39(["), "dids[0].match: bad regular expression '39(['"),
        (lambda d: d["normalization_profiles"][0]["from_e164"][0].update(match="^(39"), "normalization_profiles[it].from_e164[0].match: bad regular expression"),
        (lambda d: d["normalization_profiles"][0]["to_e164"][0].update(replace="39\\2"), "normalization_profiles[it].to_e164[0].replace: bad replacement '39\\\\2': invalid group reference 2"),
        # templates that re.sub would reject at call time, or that write more than a number
        (lambda d: d["normalization_profiles"][0]["to_e164"][0].update(replace="0\\q1"), "normalization_profiles[it].to_e164[0].replace: bad replacement '0\\\\q1': bad escape \\q"),
        (lambda d: d["normalization_profiles"][0]["to_e164"][0].update(replace="\\g<name>"), "normalization_profiles[it].to_e164[0].replace: bad replacement '\\\\g<name>': unknown group name 'name'"),
        (lambda d: d["normalization_profiles"][0]["from_e164"][0].update(replace="\\1\r\nX-Evil: 1"), "normalization_profiles[it].from_e164[0].replace: bad replacement"),
        (lambda d: d["normalization_profiles"][0]["from_e164"][0].update(replace="0\\1;user=phone"), "normalization_profiles[it].from_e164[0].replace: bad replacement"),
        (lambda d: d["dids"][0].update(match="39\x00"), "dids[0].match: '39\\x00' contains a NUL character"),
        # patterns that backtrack badly on a caller-chosen number
        (lambda d: d["normalization_profiles"][0]["to_e164"][0].update(match="^(3+)+4$"), "normalization_profiles[it].to_e164[0].match: nested repetition"),
        (lambda d: d["dids"][0].update(match="^(0|00)*1$"), "dids[0].match: a repeated alternation"),
        (lambda d: d["dids"][0].update(match="^\\d*\\d*\\d*\\d*\\d*$"), "dids[0].match: '^\\\\d*\\\\d*\\\\d*\\\\d*\\\\d*$' has 5 variable-length quantifiers"),
        # duplicates
        (lambda d: d["tenants"].append({"name": "acme"}), "tenants[acme].name: duplicate name 'acme'"),
        (lambda d: d["trunks"].append(dict(d["trunks"][2], sources=[])), "trunks[carrier-b-2].name: duplicate name 'carrier-b-2'"),
        (lambda d: d["dids"].append({"tenant": "globex", "prefix": "4420", "ipbx": "globex-pbx"}), "dids[4].prefix: duplicate DID prefix '4420'"),
        (lambda d: d["routes"].append({"tenant": "acme", "prefix": "39", "trunks": ["carrier-a-1"]}), "routes[4].prefix: duplicate route prefix '39' for tenant 'acme'"),
        (lambda d: d["routes"][0]["trunks"].append("carrier-a-1"), "routes[0].trunks[2]: trunk 'carrier-a-1' listed twice"),
        (lambda d: d["trunks"][2]["sources"].append("10.0.0.10/32"), "trunks[carrier-b-2].sources: 10.0.0.10/32 is also a source of ipbxs[acme-pbx]"),
        # required fields and types
        (lambda d: d["trunks"][0].pop("target"), "trunks[carrier-a-1].target: is required"),
        (lambda d: d["trunks"][0].update(target="192.0.2.10"), "trunks[carrier-a-1].target: must be a SIP URI"),
        (lambda d: d["ipbxs"][0].update(targets=[]), "ipbxs[acme-pbx].targets: must be a non-empty list"),
        (lambda d: d["ipbxs"][0].update(fr_timer="2000"), "ipbxs[acme-pbx].fr_timer: must be an integer from 1 to 3600000, got '2000'"),
        (lambda d: d["ipbxs"][0].update(fr_timer=0), "ipbxs[acme-pbx].fr_timer: must be an integer from 1 to 3600000"),
        # integers beyond what Kamailio or a 64-bit encoder can hold
        (lambda d: d["trunks"][0].update(fr_timer=10**20), "trunks[carrier-a-1].fr_timer: must be an integer from 1 to 3600000, got 100000000000000000000"),
        (lambda d: d["trunks"][0].update(fr_inv_timer=10**400), "trunks[carrier-a-1].fr_inv_timer: must be an integer from 1 to 3600000, got 'an integer of 401 digits'"),
        (lambda d: d["trunks"][0].update(branch_flags=2**32), "trunks[carrier-a-1].branch_flags: must be an integer from 0 to 4294967295"),
        (lambda d: d["routes"][1]["trunks"][0].update(priority=2**63), "routes[1].trunks[0].priority: must be an integer from -2147483648 to 2147483647"),
        (lambda d: d["routes"][1]["trunks"][0].update(priority="1"), "routes[1].trunks[0].priority: must be an integer"),
        (lambda d: d["routes"][2]["trunks"][0].update(weight=10**400), "routes[2].trunks[0].weight: must be a number from 0 to 1000000"),
        (lambda d: d["routes"][2]["trunks"][0].update(weight=float("nan")), "routes[2].trunks[0].weight: must be a number from 0 to 1000000"),
        # numbers longer than any that is routed
        (lambda d: d["dids"][0].update(prefix="3" * 33), "dids[0].prefix: has 33 digits; numbers longer than 32 are never routed"),
        # targets Kamailio could not send to
        (lambda d: d["trunks"][0].update(target="sip:user@192.0.2.10"), "trunks[carrier-a-1].target: must be a SIP URI"),
        (lambda d: d["trunks"][0].update(target="sip:192.0.2.10:70000"), "trunks[carrier-a-1].target: must be a SIP URI like 'sip:192.0.2.10:5060' (host, port, parameters; no user part), got 'sip:192.0.2.10:70000': port 70000 out of range"),
        (lambda d: d["trunks"][0].update(target="sip:192.0.2.300"), "trunks[carrier-a-1].target: must be a SIP URI like 'sip:192.0.2.10:5060' (host, port, parameters; no user part), got 'sip:192.0.2.300': bad IPv4 address"),
        (lambda d: d["trunks"][0].update(target="sip:[2001:db8::zz]:5060"), "trunks[carrier-a-1].target: must be a SIP URI"),
        (lambda d: d["trunks"][0].update(target="sip:192.0.2.10?Route=x"), "trunks[carrier-a-1].target: must be a SIP URI"),
        (lambda d: d["ipbxs"][0]["targets"].append("sip:bad host"), "ipbxs[acme-pbx].targets[2]: must be a SIP URI"),
        # what goes into logs and SIP headers
        (lambda d: d["tenants"].append({"name": "evil\r\nX: 1"}), "tenants[evil\r\nX: 1].name: must be at most 200 characters without control characters"),
        (lambda d: d["trunks"][0]["auth"].update(username="u\r\nX: 1"), "trunks[carrier-a-1].auth.username: must not contain control characters"),
        (lambda d: d["trunks"][0].update(branch_flags=-1), "trunks[carrier-a-1].branch_flags: must be an integer from 0 to 4294967295"),
        (lambda d: d["dids"][0].update(prefix="+39"), "dids[0].prefix: must be a string of one or more digits"),
        (lambda d: d["dids"][0].update(prefix=""), "dids[0].prefix: must be a string of one or more digits"),
        (lambda d: d["routes"][0].update(prefix=39), "routes[0].prefix: must be a string of digits"),
        (lambda d: d["routes"][2]["trunks"][0].update(weight=-1), "routes[2].trunks[0].weight: must be a number from 0 to 1000000"),
        (lambda d: d["normalization_profiles"][0].update(always_plus="yes"), "normalization_profiles[it].always_plus: must be true or false"),
        (lambda d: d["tenants"].append({}), "tenants[2].name: is required"),
        (lambda d: d.update(dids={}), "dids: must be a list"),
        # cross-entity rules
        (lambda d: d["dids"][0].update(tenant="globex"), "dids[0].ipbx: IPBX 'acme-pbx' belongs to tenant 'acme', not 'globex'"),
        (lambda d: d["routes"][3]["trunks"].append("carrier-b-1"), "routes[3].trunks[1]: trunk 'carrier-b-1' belongs to carrier 'carrier-b' of tenant 'acme'"),
    ],
)
def test_error_names_entity_and_field(mutate, expected):
    doc = document()
    mutate(doc)
    errors = errors_of(doc)
    assert any(error.startswith(expected) for error in errors), errors


def test_every_error_is_reported():
    doc = document()
    doc["trunks"][0]["sources"] = ["nope"]
    doc["dids"][0]["match"] = "(("
    doc["routes"][0]["trunks"] = ["ghost"]
    doc["ipbxs"][1]["color"] = "blue"
    errors = errors_of(doc)
    assert len(errors) == 4, errors
    assert [e.split(":")[0] for e in errors] == [
        "ipbxs[acme-branch].color",
        "trunks[carrier-a-1].sources[0]",
        "dids[0].match",
        "routes[0].trunks[0]",
    ]


def test_document_must_be_an_object():
    assert errors_of([1, 2]) == ["document: must be an object with the collections " + ", ".join(BASE_DOCUMENT)]
    assert errors_of("x")[0].startswith("document: must be an object")


def test_json_and_toml_give_the_same_table(tmp_path):
    json_path = tmp_path / "t.json"
    json_path.write_text(json.dumps(BASE_DOCUMENT))
    toml_path = tmp_path / "t.toml"
    toml_path.write_text(to_toml(BASE_DOCUMENT))
    from_json, from_toml = load_table(json_path), load_table(toml_path)
    # TOML has no null: carrier-a's tenant is simply absent, which means the same.
    assert from_json.version == from_toml.version
    query = request("192.0.2.1", "0612345678")
    assert decide(from_json, query) == decide(from_toml, query)


def test_unreadable_or_malformed_files_are_refused(tmp_path):
    with pytest.raises(DocumentError, match="cannot read file"):
        load_document(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"tenants": [}')
    with pytest.raises(DocumentError, match="not valid JSON"):
        load_document(bad)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("tenants = [[[")
    with pytest.raises(DocumentError, match="not valid TOML"):
        load_document(bad_toml)


def test_compiled_table_counts_and_version():
    table = compile_table(document())
    assert table.counts["dids"] == 4 and table.counts["trunks"] == 3
    other = compile_table(document(dids=[]))
    assert other.version != table.version


def to_toml(doc: dict) -> str:
    """A tiny TOML writer for the test (arrays of tables, strings, ints, bools)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(v)

    lines = []
    for collection, items in doc.items():
        for item in items:
            lines.append(f"[[{collection}]]")
            lines.extend(f"{k} = {value(v)}" for k, v in item.items() if v is not None)
            lines.append("")
    return "\n".join(lines)


def test_compile_table_validates_raw_documents():
    with pytest.raises(DocumentError, match=r"ipbxs\[acme-pbx\]\.targets"):
        compile_table(document(ipbxs=[dict(BASE_DOCUMENT["ipbxs"][0], targets="sip:x")]))
