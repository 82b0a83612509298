"""Routing documents for the end-to-end tests, built around live sipp ports.

Address plan (all loopback):
  127.0.0.1   the router
  127.0.0.2   carrier-a-1 (trunk, national "it" numbering): source and target
  127.0.0.3   carrier-b-1 (trunk, "it"): source and target
  127.0.0.10  acme-pbx (IPBX, E.164 numbering, no profile): source and target
  127.0.0.11  acme-pbx-2 (IPBX, E.164): source and target, for reload tests
  127.0.0.99  nobody: calls from there are refused
"""

from __future__ import annotations

import copy

from tables import IT_PROFILE  # tests/tables.py: the same profile as the unit tests

ROUTER = "127.0.0.1"
TRUNK_A = "127.0.0.2"
TRUNK_B = "127.0.0.3"
PBX = "127.0.0.10"
PBX2 = "127.0.0.11"
STRANGER = "127.0.0.99"

# Numbers as dialled (national) and as they should come out.
DID_NATIONAL = "0612345678"  # inbound called number, as the carrier sends it
DID_E164 = "39612345678"
CALLER_NATIONAL = "0611111111"
CALLER_E164 = "39611111111"
NO_DID_NATIONAL = "0799999999"  # inbound number with no DID
OUT_CALLED_E164 = "39298765432"  # outbound, as the IPBX dials it
OUT_CALLED_NATIONAL = "0298765432"  # what the carrier should receive

UNUSED = 9  # discard port: a target no test calls


def without_probes(document: dict) -> dict:
    """Trunks and IPBXs with no health setting get ``probe_interval: 0``: no OPTIONS while up.

    sipp's UAS scenarios take an OPTIONS for a call that went wrong (the
    scenario fails), and the recording peers of test_hostile.py count it as
    something the router should not have sent. Only tests/e2e/test_health.py
    is about probes, and it says what it wants. Calls still count (down_after).
    """
    for collection in ("trunks", "ipbxs"):
        for entity in document.get(collection, []):
            if isinstance(entity, dict) and "health" not in entity:
                entity["health"] = {"probe_interval": 0}
    return document


def routing_document(
    pbx_port: int = UNUSED,
    pbx2_port: int = UNUSED,
    trunk_a_port: int = UNUSED,
    trunk_b_port: int = UNUSED,
    did_ipbx: str = "acme-pbx",
    fr_timer: int = 5000,
    trunk_a_auth: dict | None = None,
) -> dict:
    trunk_a = {
        "name": "carrier-a-1",
        "carrier": "carrier-a",
        "target": f"sip:{TRUNK_A}:{trunk_a_port}",
        "sources": [f"{TRUNK_A}/32"],
        "normalization": "it",
        "fr_timer": fr_timer,
        "fr_inv_timer": 10000,
    }
    if trunk_a_auth:
        trunk_a["auth"] = dict(trunk_a_auth)
    return copy.deepcopy(
        {
            "tenants": [{"name": "acme"}],
            "normalization_profiles": [IT_PROFILE],
            "ipbxs": [
                {"name": "acme-pbx", "tenant": "acme", "targets": [f"sip:{PBX}:{pbx_port}"], "sources": [PBX]},
                {"name": "acme-pbx-2", "tenant": "acme", "targets": [f"sip:{PBX2}:{pbx2_port}"], "sources": [PBX2]},
            ],
            "carriers": [{"name": "carrier-a", "tenant": None}, {"name": "carrier-b", "tenant": "acme"}],
            "trunks": [
                trunk_a,
                {
                    "name": "carrier-b-1",
                    "carrier": "carrier-b",
                    "target": f"sip:{TRUNK_B}:{trunk_b_port}",
                    "sources": [TRUNK_B],
                    "normalization": "it",
                    "fr_timer": 5000,
                    "fr_inv_timer": 10000,
                },
            ],
            "dids": [{"tenant": "acme", "prefix": "39612345", "ipbx": did_ipbx}],
            "routes": [{"tenant": "acme", "prefix": "", "trunks": ["carrier-a-1", "carrier-b-1"]}],
        }
    )
