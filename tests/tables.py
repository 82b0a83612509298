"""Routing documents and requests shared by the unit, CLI and service tests."""

from __future__ import annotations

import copy

IT_PROFILE = {
    "name": "it",
    "country_code": "39",
    "intl_prefix": "00",
    "ld_prefix": "0",
    "always_plus": False,
    "to_e164": [{"match": "^0([1-9][0-9]+)$", "replace": "39\\1"}],
    "from_e164": [{"match": "^39([0-9]+)$", "replace": "0\\1"}],
}

BASE_DOCUMENT = {
    "tenants": [{"name": "acme"}, {"name": "globex"}],
    "normalization_profiles": [
        IT_PROFILE,
        {"name": "plus", "country_code": "1", "intl_prefix": "011", "ld_prefix": "1", "always_plus": True},
    ],
    "ipbxs": [
        {
            "name": "acme-pbx",
            "tenant": "acme",
            "targets": ["sip:10.0.0.10:5060", "sip:10.0.0.11:5060"],
            "sources": ["10.0.0.10", "10.0.0.11/32"],
            "normalization": "it",
        },
        {
            "name": "acme-branch",
            "tenant": "acme",
            "targets": ["sip:10.0.1.10"],
            "sources": ["10.0.1.0/24"],
            "fr_timer": 3000,
            "branch_flags": 4,
        },
        {
            "name": "globex-pbx",
            "tenant": "globex",
            "targets": ["sip:[2001:db8::10]:5060"],
            "sources": ["2001:db8::/64"],
        },
    ],
    "carriers": [{"name": "carrier-a", "tenant": None}, {"name": "carrier-b", "tenant": "acme"}],
    "trunks": [
        {
            "name": "carrier-a-1",
            "carrier": "carrier-a",
            "target": "sip:192.0.2.10:5060",
            "sources": ["192.0.2.0/28"],
            "normalization": "it",
            "fr_timer": 2000,
            "fr_inv_timer": 30000,
            "auth": {"username": "u", "password": "p", "realm": "carrier-a.net"},
        },
        {
            "name": "carrier-b-1",
            "carrier": "carrier-b",
            "target": "sip:198.51.100.20:5060;transport=tcp",
            "sources": ["198.51.100.0/24", "198.51.100.20/32"],
            "normalization": "plus",
        },
        {
            "name": "carrier-b-2",
            "carrier": "carrier-b",
            "target": "sip:198.51.100.30",
            "sources": [],
        },
    ],
    "dids": [
        {"tenant": "acme", "prefix": "39612345", "ipbx": "acme-pbx"},
        {"tenant": "acme", "prefix": "396123459", "ipbx": "acme-branch"},
        {"tenant": "acme", "prefix": "3970", "ipbx": "acme-branch", "match": "3970[0-9]{4}"},
        {"tenant": "globex", "prefix": "4420", "ipbx": "globex-pbx"},
    ],
    "routes": [
        {"tenant": "acme", "prefix": "39", "trunks": ["carrier-a-1", "carrier-b-1"]},
        {"tenant": "acme", "prefix": "", "trunks": [{"trunk": "carrier-b-1", "priority": 1, "weight": 1}]},
        {
            "tenant": "acme",
            "prefix": "44",
            "trunks": [
                {"trunk": "carrier-a-1", "priority": 0, "weight": 3},
                {"trunk": "carrier-b-1", "priority": 0, "weight": 1},
                {"trunk": "carrier-b-2", "priority": 5, "weight": 1},
            ],
        },
        {"tenant": "globex", "prefix": "", "trunks": ["carrier-a-1"]},
    ],
}


def document(**changes) -> dict:
    """A deep copy of BASE_DOCUMENT with whole collections replaced."""
    doc = copy.deepcopy(BASE_DOCUMENT)
    doc.update(copy.deepcopy(changes))
    return doc


def request(source_ip: str, called: str, calling: str = "0611111111", **extra) -> dict:
    query = {
        "event": "sip-routing",
        "source_ip": source_ip,
        "source_port": 5060,
        "auth": 0,
        "call_id": "call-1@host",
        "ruri": f"sip:{called}@c4.example.com",
        "from_name": "Alice",
        "from_uri": f"sip:{calling}@acme.example.com",
        "from_tag": "t1",
        "to_name": "Bob",
        "to_uri": f"sip:{called}@c4.example.com",
        "to_tag": "",
    }
    query.update(extra)
    return query
