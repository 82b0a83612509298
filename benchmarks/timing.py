"""One timed pass of the decision over a request list, shared by decision.py and scale.py."""

from __future__ import annotations

import gc
import time

from c4kemi.core.decision import route_json


def time_pass(table, requests) -> list[int]:
    """Nanoseconds of ``route_json`` (decision and encoding) per request, the collector off."""
    gc.disable()
    timings = []
    clock = time.perf_counter_ns
    try:
        for query in requests:
            t0 = clock()
            route_json(table, query)
            timings.append(clock() - t0)
    finally:
        gc.enable()
    return timings
