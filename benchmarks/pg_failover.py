"""PostgreSQL failover: how long API writes stop, and how long until the follower has a change made after it.

    .venv/bin/python benchmarks/pg_failover.py [--repeat 5]

Each repetition (tests/failover.py): a fresh primary and streaming replica
on this machine (unix sockets), the provisioning API (c4http, a real aiohttp
server) and a ``ChangeFollower`` (``c4 db follow``'s, 5 s periodic check) on
one DSN naming both. The API takes a new DID every 20 ms; then the primary
is stopped (``pg_ctl stop -m fast``) and the replica promoted at once
(``pg_ctl promote``), as a failover manager would after deciding to. Times
are from the moment the stop began:

- ``promoted``: pg_ctl promote returned (the stop and the promotion themselves);
- ``writes stopped``: the longest time between two acknowledged API writes
  (from the last one before the stop; writes on connections the old primary
  still serves succeed for a moment), and when it ended (``resumed``); the
  writes in it were refused 503 ``database unavailable``;
- ``follower reconnected``: the follower's new connection (to the new primary);
- ``follower has it``: the follower held the DID of the first write started
  after the promotion (through the change log: a change set, not a whole
  document), and how long after that write was acknowledged.

The time a real failover manager takes to notice a dead primary and decide
(Patroni: its TTL, 30 s by default) comes before all of this and is not
measured here. Results: benchmarks/results/pg_failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from failover import Pair, failover  # noqa: E402  (tests/failover.py)
from sip import machine, tree_state  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "pg_failover.json"


def once() -> dict:
    pair = Pair()
    try:
        outcome = asyncio.run(failover(pair))
    finally:
        pair.destroy()
    assert set(outcome.acknowledged) <= outcome.stored, "an acknowledged write is missing from the new primary"
    assert outcome.documents == (1, 1), "the follower read a whole document after the failover"
    stopped, resumed = outcome.writes_stopped
    return {
        "promoted_ms": outcome.promoted_at * 1000,
        "writes_stopped_ms": stopped * 1000,
        "writes_resumed_ms": resumed * 1000,
        "writes_refused": len(outcome.refused),
        "refusals": sorted({f"{w.status} {w.body.get('error') if isinstance(w.body, dict) else w.body}" for w in outcome.refused}),
        "api_errors_logged": outcome.errors,
        "follower_reconnected_ms": outcome.follower_resumed_at * 1000,
        "follower_has_it_ms": outcome.follower_has_it_at * 1000,
        "follower_lag_after_write_ms": (outcome.follower_has_it_at - outcome.after_promotion.ended) * 1000,
        "follower_connections": outcome.connections,
        "change_sets_after": outcome.change_sets[1] - outcome.change_sets[0],
        "whole_documents_after": outcome.documents[1] - outcome.documents[0],
        "writes_acknowledged": len(outcome.acknowledged),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = []
    for n in range(args.repeat):
        run = once()
        runs.append(run)
        print(f"run {n + 1}: promoted {run['promoted_ms']:.0f} ms; writes stopped {run['writes_stopped_ms']:.0f} ms, resumed at "
              f"{run['writes_resumed_ms']:.0f} ms ({run['writes_refused']} refused: {'; '.join(run['refusals'])}); follower "
              f"reconnected at {run['follower_reconnected_ms']:.0f} ms, had a post-promotion write at {run['follower_has_it_ms']:.0f} ms"
              f" ({run['follower_lag_after_write_ms']:.0f} ms after it was acknowledged; {run['change_sets_after']} change sets,"
              f" {run['whole_documents_after']} whole documents since the stop)"
              + (f"; API errors logged: {run['api_errors_logged']}" if run["api_errors_logged"] else ""), flush=True)
    medians = {key: statistics.median(run[key] for run in runs)
               for key in ("promoted_ms", "writes_stopped_ms", "writes_resumed_ms", "writes_refused", "follower_reconnected_ms",
                           "follower_has_it_ms", "follower_lag_after_write_ms")}
    print("medians: " + ", ".join(f"{key} {value:.0f}" for key, value in medians.items()))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(), "tree": tree_state(ROOT),
        "load_average_start": os.getloadavg(), "runs": runs, "medians": medians,
    }, indent=2) + "\n")
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
