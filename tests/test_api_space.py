"""Address and number space through the provisioning API (real PostgreSQL, real aiohttp).

A tenant token can take only space no other owner holds: no source CIDR
that overlaps, either way, a shared carrier's trunk or another tenant's
IPBX, no DID prefix nested in (or holding) another tenant's DID, no wide
source. The admin may overlap on purpose and is warned. Controls show that
free space is still taken freely.

BASE_DOCUMENT (tests/tables.py): shared carrier-a-1 has 192.0.2.0/28; acme's
own carrier-b has 198.51.100.0/24; acme's IPBXs 10.0.0.10/32, 10.0.0.11/32,
10.0.1.0/24; globex-pbx 2001:db8::/64; globex's DID 4420, acme's 3970,
39612345, 396123459.
"""

# ruff: noqa: F811  (the fixtures imported from test_api look like redefinitions to ruff)
from __future__ import annotations

import pytest
from test_api import api, db, seeded, table_file  # noqa: F401  (fixtures)

from c4kemi.db.documents import export_document


def ipbx(name: str, *sources: str, **extra) -> dict:
    return {"name": name, "targets": ["sip:10.9.9.9"], "sources": list(sources), **extra}


@pytest.fixture
def acme(api, seeded):
    return api.as_(seeded["tokens"]["acme"])


@pytest.fixture
def globex(api, seeded):
    return api.as_(seeded["tokens"]["globex"])


OWN_IPBX = {"acme": ("acme-branch", "10.0.1.0/24"), "globex": ("globex-pbx", "2001:db8::/64")}


@pytest.mark.parametrize("tenant, source", [
    ("acme", "192.0.2.0/24"),      # holds the shared carrier trunk's 192.0.2.0/28
    ("acme", "192.0.2.4/30"),      # inside it
    ("acme", "192.0.2.7"),         # one address of it
    ("acme", "2001:db8::1"),       # inside globex-pbx's network
    ("globex", "10.0.1.128/25"),   # inside acme's acme-branch
    ("globex", "10.0.0.0/8"),      # holds acme's IPBXs
    ("globex", "198.51.100.21"),   # inside acme's own carrier's trunk
])  # fmt: skip
async def test_a_tenant_cannot_claim_a_source_that_overlaps_what_it_does_not_own(api, seeded, tenant, source):
    asker = api.as_(seeded["tokens"][tenant])
    status, body, _ = await asker("POST", "/api/v1/ipbxs", ipbx("grab", source))
    assert status == 409, body
    assert "overlaps the address space of another tenant or of a carrier" in body["error"]
    assert not any(name in body["error"] for name in ("carrier-", "acme-", "globex-"))  # whose stays hidden
    # Nor by adding it to an IPBX it owns.
    name, current = OWN_IPBX[tenant]
    status, body, _ = await asker("PATCH", f"/api/v1/ipbxs/{name}", {"sources": [current, source]})
    assert status == 409, body
    exported, _ = await db(seeded["dsn"], export_document)
    assert "grab" not in [i["name"] for i in exported["ipbxs"]]
    assert next(i for i in exported["ipbxs"] if i["name"] == name)["sources"] == [current]


async def test_a_tenant_may_overlap_its_own_space_and_take_free_space(acme, globex):
    # Free space: accepted (the control for the refusals above).
    status, body, headers = await globex("POST", "/api/v1/ipbxs", ipbx("g-free", "203.0.113.0/24"))
    assert status == 201 and "Warning" not in headers, body
    # Inside its own carrier's trunk network (carrier-b is acme's): its own traffic.
    status, body, _ = await acme("POST", "/api/v1/ipbxs", ipbx("a-own", "198.51.100.128/25"))
    assert status == 201, body
    # Inside globex's new network, from acme: refused; from globex: fine.
    assert (await acme("POST", "/api/v1/ipbxs", ipbx("a-grab", "203.0.113.64/26")))[0] == 409
    assert (await globex("POST", "/api/v1/ipbxs", ipbx("g-more", "203.0.113.64/26")))[0] == 201


async def test_wide_sources_need_the_admin_and_an_explicit_allowance(api, acme):
    for source in ("0.0.0.0/0", "::/0", "0.0.0.0/1", "2000::/3", "10.0.0.0/7"):
        status, body, _ = await api("POST", "/api/v1/ipbxs", ipbx("wide", source, tenant="acme"))
        assert status == 422 and "set allow_wide_sources to true" in body["error"], (source, body)
    # A tenant token may not allow them at all.
    status, body, _ = await acme("POST", "/api/v1/ipbxs", ipbx("wide", "172.0.0.0/6", allow_wide_sources=True))
    assert status == 403 and "allow_wide_sources" in body["error"], body
    # The admin may, explicitly; it overlaps no one here, so no warning.
    status, body, headers = await api("POST", "/api/v1/ipbxs", ipbx("wide", "172.0.0.0/6", tenant="acme", allow_wide_sources=True))
    assert status == 201 and body["allow_wide_sources"] is True, body
    # The tenant edits its IPBX without losing (or being refused for) the admin's allowance.
    status, body, _ = await acme("PATCH", "/api/v1/ipbxs/wide", {"fr_timer": 1000})
    assert status == 200 and body["allow_wide_sources"] is True, body
    # Items without it read as before: no such field.
    status, body, _ = await api("GET", "/api/v1/ipbxs/acme-pbx")
    assert status == 200 and "allow_wide_sources" not in body


async def test_the_admin_may_overlap_on_purpose_and_is_warned(api, seeded, caplog):
    status, body, headers = await api("POST", "/api/v1/ipbxs", ipbx("edge", "192.0.2.8/29", tenant="globex"))
    assert status == 201, body
    warnings = headers.getall("Warning")
    assert len(warnings) == 1 and warnings[0].startswith('199 c4 "ipbxs[edge].sources: 192.0.2.8/29 overlaps 192.0.2.0/28 of trunks[carrier-a-1]'), warnings
    assert "event=api_overlap" in caplog.text
    # Same owner: no warning (acme's IPBX inside acme's carrier's trunk network).
    status, body, headers = await api("POST", "/api/v1/ipbxs", ipbx("own", "198.51.100.64/26", tenant="acme"))
    assert status == 201 and "Warning" not in headers
    # The same CIDR twice stays refused for everyone.
    status, body, _ = await api("POST", "/api/v1/ipbxs", ipbx("dup", "192.0.2.8/29", tenant="acme"))
    assert status == 409 and body["error"] == "ipbxs[dup].sources: 192.0.2.8/29 is also a source of ipbxs[edge]"
    # A DID nested in another tenant's: allowed for the admin, with a warning.
    status, body, headers = await api("POST", "/api/v1/dids", {"tenant": "acme", "prefix": "44201", "ipbx": "acme-pbx"})
    assert status == 201, body
    assert headers.getall("Warning") == ['199 c4 "dids[44201].prefix: inside DID 4420 of tenant \'globex\'"']


@pytest.mark.parametrize("prefix", ["44201", "4420123", "442", "4", "44"])
async def test_a_tenant_cannot_take_numbers_nested_with_another_tenants_did(acme, seeded, prefix):
    status, body, _ = await acme("POST", "/api/v1/dids", {"prefix": prefix, "ipbx": "acme-pbx"})
    assert status == 409 and "overlaps the numbers of another tenant" in body["error"], body
    assert "globex" not in body["error"]
    exported, _ = await db(seeded["dsn"], export_document)
    assert prefix not in [d["prefix"] for d in exported["dids"]]


async def test_a_tenant_takes_free_numbers_and_nests_in_its_own(acme, globex):
    assert (await acme("POST", "/api/v1/dids", {"prefix": "4421", "ipbx": "acme-pbx"}))[0] == 201  # free
    assert (await acme("POST", "/api/v1/dids", {"prefix": "397012", "ipbx": "acme-pbx"}))[0] == 201  # in its own 3970
    assert (await acme("POST", "/api/v1/dids", {"prefix": "39", "ipbx": "acme-pbx"}))[0] == 201  # holds only its own
    # Now 39 is acme's: globex cannot take a number inside it.
    status, body, _ = await globex("POST", "/api/v1/dids", {"prefix": "3902555", "ipbx": "globex-pbx"})
    assert status == 409, body


async def test_blocks_the_admin_assigns_are_held_before_anything_is_provisioned(api, acme, globex, seeded):
    blocks = {"number_blocks": ["3902", "4420"], "address_blocks": ["203.0.113.0/24", "2001:db8::/48"]}
    status, tenant, _ = await api("PATCH", "/api/v1/tenants/globex", blocks)
    assert status == 200 and tenant == {"name": "globex", **blocks}, tenant
    assert (await acme("GET", "/api/v1/tenants/globex"))[0] == 403  # tenants stay the admin's
    # Nobody holds 3902... or 203.0.113.0/24 yet, but they are globex's: not acme's to take.
    for collection, item in (("dids", {"prefix": "390255", "ipbx": "acme-pbx"}), ("dids", {"prefix": "39", "ipbx": "acme-pbx"}),
                             ("ipbxs", ipbx("grab", "203.0.113.9")), ("ipbxs", ipbx("grab", "203.0.0.0/16"))):  # fmt: skip
        status, body, _ = await acme("POST", f"/api/v1/{collection}", item)
        assert status == 409 and "overlaps" in body["error"] and "globex" not in body["error"], (item, body)
    # globex provisions inside its blocks, and only there.
    assert (await globex("POST", "/api/v1/dids", {"prefix": "390255", "ipbx": "globex-pbx"}))[0] == 201
    assert (await globex("POST", "/api/v1/ipbxs", ipbx("g2", "203.0.113.0/25")))[0] == 201
    status, body, _ = await globex("POST", "/api/v1/dids", {"prefix": "4421", "ipbx": "globex-pbx"})
    assert status == 403 and body["error"] == (
        "dids[4421].prefix: 4421 outside the number blocks of tenant 'globex' (3902, 4420)"
    ), body
    status, body, _ = await globex("POST", "/api/v1/ipbxs", ipbx("g3", "198.18.0.0/24", "203.0.113.128/25"))
    assert status == 403 and "198.18.0.0/24 outside the address blocks of tenant 'globex'" in body["error"], body
    # The admin may still provision there for another tenant, and is told.
    status, body, headers = await api("POST", "/api/v1/dids", {"tenant": "acme", "prefix": "39029", "ipbx": "acme-pbx"})
    assert status == 201 and headers.getall("Warning") == ['199 c4 "dids[39029].prefix: inside number block 3902 of tenant \'globex\'"']
    # The blocks are part of the document: exported, and c4 check reads them back.
    exported, _ = await db(seeded["dsn"], export_document)
    assert next(t for t in exported["tenants"] if t["name"] == "globex") == {"name": "globex", **blocks}
    assert next(t for t in exported["tenants"] if t["name"] == "acme") == {"name": "acme"}
    # Invalid blocks are refused, naming the field.
    status, body, _ = await api("PATCH", "/api/v1/tenants/globex", {"number_blocks": ["39x"], "address_blocks": ["10.0.0.1/8"]})
    assert status == 422 and body["errors"] == [
        "tenants[globex].number_blocks[0]: must be a string of one or more digits (E.164 without '+'), got '39x'",
        "tenants[globex].address_blocks[0]: bad CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set",
    ], body
