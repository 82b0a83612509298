"""A carrier-scale routing document, deterministic from a seed.

    .venv/bin/python benchmarks/generate.py [--dids 1000000] [--routes 100000] OUT.json

Shape (issue #8): 100 tenants, 1,000 trunks (900 of 100 shared carriers,
100 of tenant-owned ones), 2 IPBXs per tenant, 5 normalization profiles,
``--routes`` outbound routes spread evenly over the tenants (country, area
and mobile prefixes of real numbering plans, each with 2 to 4 trunks in one
or two priorities) and ``--dids`` DIDs: mostly single 11/12-digit numbers,
one in 50 a number block (a shorter prefix), one in 500 with a ``match``.
Used by benchmarks/scale.py; importable (``make_document``).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import orjson

TENANTS = 100
IPBXS_PER_TENANT = 2
SHARED_CARRIERS = 100
TRUNKS = 1000
# Country code -> national significant lengths of area/mobile prefixes seen in DIDs and routes.
COUNTRIES = {"39": 10, "33": 9, "44": 10, "49": 10, "1": 10, "34": 9, "41": 9, "32": 8}
PROFILES = [
    {"name": "it", "country_code": "39", "intl_prefix": "00", "ld_prefix": "0",
     "to_e164": [{"match": "^0([1-9][0-9]+)$", "replace": "39\\1"}],
     "from_e164": [{"match": "^39([0-9]+)$", "replace": "0\\1"}]},
    {"name": "fr", "country_code": "33", "intl_prefix": "00", "ld_prefix": "0",
     "from_e164": [{"match": "^33([0-9]{9})$", "replace": "0\\1"}]},
    {"name": "us", "country_code": "1", "intl_prefix": "011", "ld_prefix": "1", "always_plus": True},
    {"name": "e164", "always_plus": True},
    {"name": "plain"},
]


def tenant_names() -> list[str]:
    return [f"t{i:03d}" for i in range(TENANTS)]


def routing_query(source: str, called: str, rng: random.Random) -> dict:
    """One routing request as the Kamailio configs send it, with a random Call-ID."""
    return {
        "event": "sip-routing", "source_ip": source, "source_port": 5060, "auth": 0,
        "call_id": f"{rng.getrandbits(64):x}@bench", "ruri": f"sip:{called}@c4.example.com",
        "from_name": "Bench", "from_uri": "sip:0611111111@pbx.example.com", "from_tag": "t",
        "to_name": "", "to_uri": f"sip:{called}@c4.example.com", "to_tag": "",
    }


def make_document(n_dids: int = 1_000_000, n_routes: int = 100_000, seed: int = 8) -> dict:
    rng = random.Random(seed)
    tenants = tenant_names()
    ipbxs = []
    for i, t in enumerate(tenants):
        for j in range(IPBXS_PER_TENANT):
            ipbxs.append({
                "name": f"pbx-{t}-{j}", "tenant": t,
                "targets": [f"sip:10.{i}.{j}.1:5060", f"sip:10.{i}.{j}.2:5060"],
                "sources": [f"10.{i}.{j}.0/24"], "normalization": PROFILES[i % 3]["name"],
            })
    carriers = [{"name": f"carrier-{c:03d}", "tenant": None} for c in range(SHARED_CARRIERS)]
    carriers += [{"name": f"carrier-{t}", "tenant": t} for t in tenants]
    trunks = []
    for k in range(TRUNKS):
        carrier = carriers[k % SHARED_CARRIERS]["name"] if k < 900 else f"carrier-{tenants[k - 900]}"
        trunk = {
            "name": f"trunk-{k:04d}", "carrier": carrier, "target": f"sip:172.{16 + k // 250}.{k % 250}.1:5060",
            "sources": [f"172.{16 + k // 250}.{k % 250}.0/28"], "normalization": PROFILES[k % len(PROFILES)]["name"],
        }
        if k % 10 == 0:
            trunk["auth"] = {"username": f"u{k}", "password": f"p{k}", "realm": f"{carrier}.example.net"}
        trunks.append(trunk)
    shared_trunks = [t["name"] for t in trunks[:900]]

    # DIDs: numbers under a few area codes per country; blocks are shorter prefixes.
    dids, seen = [], set()
    ccs = list(COUNTRIES)
    while len(dids) < n_dids:
        i = len(dids)
        cc = ccs[i % len(ccs)]
        national = COUNTRIES[cc]
        number = cc + str(rng.randrange(2 * 10 ** (national - 1), 10**national))
        if i % 50 == 49:
            number = number[: len(number) - 2]  # a block of 100 numbers
        if number in seen:
            continue
        seen.add(number)
        t = i % TENANTS
        did = {"tenant": tenants[t], "prefix": number, "ipbx": f"pbx-{tenants[t]}-{i % IPBXS_PER_TENANT}"}
        if i % 500 == 499:
            did["match"] = f"{number}[0-9]{{0,4}}"
        dids.append(did)

    routes = []
    per_tenant = max(1, n_routes // TENANTS)
    for t_index, t in enumerate(tenants):
        prefixes = {""}
        while len(prefixes) < per_tenant:
            cc = rng.choice(ccs)
            prefixes.add(cc + str(rng.randrange(10 ** rng.randrange(0, 5)))[: rng.randrange(0, 5)])
        own = f"trunk-{900 + t_index:04d}"
        for prefix in sorted(prefixes):
            picked = rng.sample(shared_trunks, rng.randrange(1, 4))
            choices = [{"trunk": name, "priority": 0, "weight": rng.choice([1, 2, 3])} for name in picked[:2]]
            choices += [{"trunk": name, "priority": 1, "weight": 1} for name in picked[2:]]
            if rng.random() < 0.3:
                choices.append({"trunk": own, "priority": 2, "weight": 1})
            routes.append({"tenant": t, "prefix": prefix, "trunks": choices})
    return {
        "tenants": [{"name": t} for t in tenants],
        "normalization_profiles": PROFILES,
        "ipbxs": ipbxs,
        "carriers": carriers,
        "trunks": trunks,
        "dids": dids,
        "routes": routes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dids", type=int, default=1_000_000)
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    document = make_document(args.dids, args.routes, args.seed)
    args.out.write_bytes(orjson.dumps(document))
    print(f"{args.out}: {len(document['dids']):,} DIDs, {len(document['routes']):,} routes", file=sys.stderr)


if __name__ == "__main__":
    main()
