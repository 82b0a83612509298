"""The SIP benchmark's harness on a tiny load: the plain relay config and a c4 setup really carry calls.

benchmarks/sip.py is run by hand on a quiet machine; this keeps its parts
working in between (kamailio-static.cfg parses and relays,
kamailio-native.cfg loads its tables and routes the bench call, the
caller's 503 branch, the shared memory poller, the sipp output parsing).
Counts only, no timing: 20 calls/s for 2 s, and one burst meant to be shed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import sip  # noqa: E402

OPTIONS = sip.parse_args(["--dids", "1000", "--routes", "100"])


@pytest.mark.parametrize("setup", ["static", "native", "kemi-limits"])
def test_a_setup_carries_every_call_of_a_light_load(setup):
    point = sip.run_point(sip.SETUPS[setup], "ladder", 20, 2, 1, OPTIONS)
    assert (point["attempted"], point["completed"], point["failed"], point["refused"]) == (40, 40, 0, 0), point
    assert not point["crashed"] and point["shm_peak_mib"] > 0
    assert point["setup_p50_ms"] is not None and point["cpu_serve_ms"] is None


def test_refused_calls_are_counted_apart_from_completed_and_failed():
    """HTTP mode with one query in flight at most sheds most of a 1000 calls/s burst with 503."""
    tiny = sip.Setup("http-tiny", "http", args=("--max-inflight", "1", "--api-workers", "1"))
    point = sip.run_point(tiny, "overload", 1000, 1, 1, OPTIONS)
    assert point["refused"] > 0 and point["failed"] == 0, point
    assert point["completed"] + point["refused"] == point["attempted"] == 1000
    assert point["cpu_serve_ms"] is not None and not point["crashed"]
