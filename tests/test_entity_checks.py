"""validate_entity: one entity checked alone, as validate_document checks it in a document."""

from __future__ import annotations

import pytest

from c4kemi.core.document import (
    DocumentError,
    validate_document,
    validate_entity,
)
from c4kemi.core.entity_checks import entity_where
from tables import document


def refs_of(doc: dict) -> dict:
    return {
        "tenants": {t["name"] for t in doc["tenants"]},
        "normalization_profiles": {p["name"] for p in doc["normalization_profiles"]},
        "carriers": {c["name"]: c for c in doc["carriers"]},
        "ipbxs": {i["name"]: i for i in doc["ipbxs"]},
        "trunks": {t["name"]: t for t in doc["trunks"]},
    }


def test_every_entity_alone_gives_its_checked_form():
    raw = document()
    checked = validate_document(document())
    refs = refs_of(checked)
    for collection, items in raw.items():
        for item, expected in zip(items, checked[collection]):
            assert validate_entity(collection, item, refs) == expected, (collection, item)


def errors(collection, item, refs=None):
    with pytest.raises(DocumentError) as caught:
        validate_entity(collection, item, refs_of(validate_document(document())) if refs is None else refs)
    return caught.value.errors


def test_errors_name_the_entity_by_key_and_the_field():
    trunk = dict(document()["trunks"][0], fr_timer=0)
    assert errors("trunks", trunk) == ["trunks[carrier-a-1].fr_timer: must be an integer from 1 to 3600000, got 0"]
    assert errors("dids", {"tenant": "acme", "prefix": "39", "ipbx": "globex-pbx"}) == [
        "dids[39].ipbx: IPBX 'globex-pbx' belongs to tenant 'globex', not 'acme'"
    ]
    assert errors("routes", {"tenant": "globex", "prefix": "", "trunks": ["carrier-b-1", "ghost"]}) == [
        "routes[globex/].trunks[0]: trunk 'carrier-b-1' belongs to carrier 'carrier-b' of tenant 'acme'",
        "routes[globex/].trunks[1]: unknown trunk 'ghost'",
    ]
    assert errors("tenants", {"name": "x" * 201}) == ["tenants[?].name: must be at most 200 characters without control characters"]
    assert errors("carriers", ["carrier"]) == ["carriers[?]: must be an object"]


def test_a_reference_missing_from_refs_is_unknown():
    # What the caller leaves out of refs (another tenant's IPBX) is refused without naming its owner.
    assert errors("dids", {"tenant": "acme", "prefix": "39", "ipbx": "globex-pbx"}, {"tenants": {"acme"}}) == [
        "dids[39].ipbx: unknown IPBX 'globex-pbx'"
    ]


def test_entity_where():
    assert entity_where("routes", {"tenant": "acme", "prefix": ""}) == "routes[acme/]"
    assert entity_where("dids", {"prefix": 39}) == "dids[?]"
    assert entity_where("trunks", {"name": "a\nb"}) == "trunks[?]"
