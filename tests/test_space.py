"""Address and number space in routing documents: wide sources, overlaps across owners."""

from __future__ import annotations

import json

import pytest
from test_cli import c4

from c4kemi.core.decision import decide
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.overlaps import overlap_warnings
from c4kemi.core.table import compile_table
from tables import document


@pytest.mark.parametrize("source", ["0.0.0.0/0", "::/0", "128.0.0.0/1", "2000::/3", "10.0.0.0/7", "2001:db8::/31"])
def test_a_wide_source_is_refused_naming_the_entity_and_field(source):
    doc = document()
    doc["ipbxs"][0]["sources"].append(source)
    with pytest.raises(DocumentError) as refused:
        validate_document(doc)
    assert refused.value.errors == [
        f"ipbxs[acme-pbx].sources[2]: {source} is wider than /{8 if '.' in source else 32}: it would take calls"
        " from anyone there; set allow_wide_sources to true if that is meant"
    ]


def test_a_wide_source_explicitly_allowed_routes_like_any_other():
    doc = document()
    doc["ipbxs"][0]["sources"].append("0.0.0.0/0")
    doc["ipbxs"][0]["allow_wide_sources"] = True
    checked = validate_document(doc)
    assert checked["ipbxs"][0]["allow_wide_sources"] is True
    table = compile_table(doc)
    # The most specific source still wins; everything else is now acme-pbx's.
    assert table.sources.lookup("192.0.2.1").name == "carrier-a-1"
    assert table.sources.lookup("203.0.113.9").name == "acme-pbx"
    reply = decide(table, {"source_ip": "203.0.113.9", "ruri": "sip:0612345678@x", "from_uri": "sip:1@x", "to_uri": "sip:2@x"})
    assert reply["rtjson"]["success"] is True
    # Not a boolean: refused; /8 and /32 are not wide; absent or false reads back absent.
    doc["ipbxs"][0]["allow_wide_sources"] = "yes"
    with pytest.raises(DocumentError, match=r"ipbxs\[acme-pbx\]\.allow_wide_sources: must be true or false"):
        validate_document(doc)
    doc = document()
    doc["ipbxs"][0]["sources"] += ["11.0.0.0/8", "2001:db9::/32"]
    doc["ipbxs"][0]["allow_wide_sources"] = False
    assert "allow_wide_sources" not in validate_document(doc)["ipbxs"][0]


def test_overlaps_across_owners_are_warned_and_nothing_else():
    doc = document()
    assert overlap_warnings(validate_document(doc)) == []  # carrier-b-1's own nested sources: one owner
    doc["ipbxs"][2]["sources"].append("192.0.2.8/29")  # globex inside the shared carrier's trunk
    doc["ipbxs"][1]["sources"].append("198.51.100.64/26")  # acme inside acme's own carrier: one owner
    doc["dids"].append({"tenant": "acme", "prefix": "44209", "ipbx": "acme-pbx"})  # acme inside globex's 4420
    doc["dids"].append({"tenant": "acme", "prefix": "3970123", "ipbx": "acme-pbx"})  # acme inside acme's own
    doc["tenants"][1]["number_blocks"] = ["3970"]  # globex's block around acme's DID 3970
    assert overlap_warnings(validate_document(doc)) == [
        "ipbxs[globex-pbx].sources: 192.0.2.8/29 lies inside 192.0.2.0/28 of trunks[carrier-a-1].sources"
        " (the platform (a shared carrier)): the longer match gives what they share to tenant 'globex'",
        "dids[3970].prefix: 3970 lies inside 3970 of tenants[globex].number_blocks (tenant 'globex'):"
        " tenant 'globex' and tenant 'acme' both hold it",
        "dids[3970123].prefix: 3970123 lies inside 3970 of tenants[globex].number_blocks (tenant 'globex'):"
        " tenant 'globex' and tenant 'acme' both hold it",
        "dids[44209].prefix: 44209 lies inside 4420 of dids[4420].prefix (tenant 'globex'):"
        " the longer match gives what they share to tenant 'acme'",
    ]


def test_check_prints_the_overlap_warnings_and_accepts(tmp_path):
    doc = document()
    doc["dids"].append({"tenant": "acme", "prefix": "4", "ipbx": "acme-pbx"})  # holds globex's 4420
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    result = c4("check", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: warning: dids[4420].prefix: 4420 lies inside 4 of dids[4].prefix (tenant 'acme'):" in result.stderr.decode()


def test_db_import_round_trips_blocks_and_wide_sources_and_warns(pg_dsn, tmp_path):
    doc = document()
    doc["tenants"][1].update(number_blocks=["3970"], address_blocks=["203.0.113.0/24"])
    doc["trunks"][0].update(sources=["0.0.0.0/0"], allow_wide_sources=True)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    result = c4("db", "import", str(path), "--dsn", pg_dsn)
    assert result.returncode == 0, result.stderr
    # The wide trunk holds acme's 5 IPv4 sources and globex's address block; globex's number block holds acme's DID 3970.
    warnings = [line for line in result.stderr.decode().splitlines() if ": warning: " in line]
    assert len(warnings) == 7 and f"{path}: warning: dids[3970].prefix: 3970 lies inside 3970 of tenants[globex].number_blocks" in (
        "\n".join(warnings)
    ), warnings
    exported = c4("db", "export", "--dsn", pg_dsn)
    assert exported.returncode == 0
    exported, expected = json.loads(exported.stdout), validate_document(doc)
    for name, items in expected.items():  # the export is in key order
        assert sorted(map(canonical, exported[name])) == sorted(map(canonical, items)), name


def canonical(item: dict) -> str:
    return json.dumps(item, sort_keys=True)
