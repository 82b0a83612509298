"""Decision benchmark: cost per decision vs table size, compile time, memory.

    .venv/bin/python benchmarks/decision.py [--sizes 1000,100000,1000000] [--routes 10000]

For each DID count it builds a synthetic document (the given number of
routes spread over 10 tenants), then measures, in this one process:
validation + compile time, the table's memory (tracemalloc), and the time
of ``route_json`` (decision + orjson encoding) for a mix of inbound (DID),
outbound (route, 3 weighted trunks) and refused requests. Each decision is
timed alone; median and p99 are reported. Not a test: numbers depend on the
machine, so compare sizes within one run.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import time
import tracemalloc

from generate import routing_query  # benchmarks/, the script's own directory
from timing import time_pass

from c4kemi.core.decision import route_json
from c4kemi.core.table import compile_table

TENANTS = 10


def make_document(n_dids: int, n_routes: int, rng: random.Random) -> dict:
    tenants = [f"t{i}" for i in range(TENANTS)]
    profile = {
        "name": "it", "country_code": "39", "intl_prefix": "00", "ld_prefix": "0",
        "to_e164": [{"match": "^0([1-9][0-9]+)$", "replace": "39\\1"}],
        "from_e164": [{"match": "^39([0-9]+)$", "replace": "0\\1"}],
    }
    ipbxs = [
        {"name": f"pbx-{t}", "tenant": t, "targets": [f"sip:10.{i}.0.1:5060", f"sip:10.{i}.0.2:5060"],
         "sources": [f"10.{i}.0.0/24"], "normalization": "it"}
        for i, t in enumerate(tenants)
    ]
    trunks = [
        {"name": f"trunk-{i}", "carrier": "shared", "target": f"sip:192.0.2.{i + 1}:5060",
         "sources": [f"192.0.2.{i + 1}/32"], "normalization": "it"}
        for i in range(6)
    ]
    # DIDs: distinct 11-digit numbers, spread over the tenants.
    numbers = rng.sample(range(10**10, 10**11), n_dids)
    dids = [{"tenant": tenants[i % TENANTS], "prefix": str(n), "ipbx": f"pbx-{tenants[i % TENANTS]}"}
            for i, n in enumerate(numbers)]
    routes = []
    per_tenant = max(1, n_routes // TENANTS)
    for t in tenants:
        prefixes = {""}
        while len(prefixes) < per_tenant:
            k = rng.randrange(2, 8)
            prefixes.add(str(rng.randrange(10 ** (k - 1), 10**k)))
        for prefix in sorted(prefixes):
            picked = rng.sample(range(6), 3)
            routes.append({"tenant": t, "prefix": prefix, "trunks": [
                {"trunk": f"trunk-{picked[0]}", "priority": 0, "weight": 2},
                {"trunk": f"trunk-{picked[1]}", "priority": 0, "weight": 1},
                {"trunk": f"trunk-{picked[2]}", "priority": 1, "weight": 1},
            ]})
    return {
        "tenants": [{"name": t} for t in tenants],
        "normalization_profiles": [profile],
        "ipbxs": ipbxs,
        "carriers": [{"name": "shared", "tenant": None}],
        "trunks": trunks,
        "dids": dids,
        "routes": routes,
    }, numbers


# Request i is of kind KINDS[i % 10]: half inbound, 40 % outbound, 10 % refused.
KINDS = ["inbound"] * 5 + ["outbound"] * 4 + ["refused"]


def make_requests(numbers: list[int], count: int, rng: random.Random) -> list[dict]:
    requests = []
    for i in range(count):
        kind = KINDS[i % 10]
        if kind == "inbound":  # to a DID, in E.164 from a carrier
            did = str(rng.choice(numbers))
            source, called = f"192.0.2.{rng.randrange(1, 7)}", "+" + did
        elif kind == "outbound":  # from an IPBX, national format, 3 trunks in 2 priorities
            source, called = f"10.{rng.randrange(TENANTS)}.0.{rng.randrange(1, 255)}", "0" + str(rng.randrange(10**8, 10**9))
        else:  # unknown source
            source, called = "203.0.113.9", "0612345678"
        requests.append(routing_query(source, called, rng))
    return requests


def measure(n_dids: int, n_routes: int, n_requests: int) -> dict:
    rng = random.Random(n_dids)
    document, numbers = make_document(n_dids, n_routes, rng)
    requests = make_requests(numbers, n_requests, rng)
    gc.collect()
    start = time.perf_counter()
    table = compile_table(document)  # validates, then compiles
    compile_s = time.perf_counter() - start
    # Memory from a second compile under tracemalloc, which slows allocation
    # too much to time the first one with it on.
    del table
    gc.collect()
    tracemalloc.start()
    table = compile_table(document)
    table_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()

    for query in requests[:2000]:  # warm up
        route_json(table, query)
    timings = time_pass(table, requests)
    by_kind = {kind: sorted(t for i, t in enumerate(timings) if KINDS[i % 10] == kind) for kind in set(KINDS)}
    timings.sort()
    return {
        "dids": n_dids,
        "routes": len(document["routes"]),
        "compile_s": compile_s,
        "table_mb": table_mb,
        "median_us": statistics.median(timings) / 1000,
        "p99_us": timings[int(len(timings) * 0.99)] / 1000,
        **{f"{kind}_us": statistics.median(values) / 1000 for kind, values in by_kind.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--routes", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=50000)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| DIDs | routes | validate+compile (s) | table memory (MiB) | decision median (µs) | p99 (µs) "
          "| inbound median (µs) | outbound median (µs) | refused median (µs) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        r = measure(size, args.routes, args.requests)
        print(f"| {r['dids']:,} | {r['routes']:,} | {r['compile_s']:.2f} | {r['table_mb']:.0f} | "
              f"{r['median_us']:.2f} | {r['p99_us']:.2f} | {r['inbound_us']:.2f} | {r['outbound_us']:.2f} | "
              f"{r['refused_us']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
