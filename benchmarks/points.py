"""What the SIP benchmark's measured points mean: medians and the clean rule.

Pure functions over the point dicts benchmarks/sip.py writes (one dict per
run of one setup at one offered rate); sip.py uses them to stop a setup's
ladder, benchmarks/report.py to render the tables.

A rate is *clean* for a setup when, over its repetitions, the median of
failed calls is 0, the median share of refused (503) calls is 0, the
median retransmission share is under 0.1 % of attempted calls, and no
repetition crashed. Medians, not worst cases: the machine is noisy and
one hiccup in one repetition should not move the capacity figure; a crash
is never noise.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

RETRANSMISSION_LIMIT = 0.001  # 0.1 % of attempted calls
# Counters summed over repetitions; every other number is a median.
SUMMED = ("crashes",)
MEASURES = (
    "attempted", "completed", "failed", "refused", "retransmissions", "completed_cps",
    "setup_p50_ms", "setup_p99_ms", "cpu_kamailio_ms", "cpu_serve_ms", "cpu_total_ms", "shm_peak_mib",
)


def retransmission_share(point: dict) -> float:
    return point["retransmissions"] / point["attempted"] if point["attempted"] else 0.0


def refused_share(point: dict) -> float:
    return point["refused"] / point["attempted"] if point["attempted"] else 0.0


def median_point(runs: list[dict]) -> dict:
    """One row from the repetitions of one setup at one rate."""
    row = {"setup": runs[0]["setup"], "kind": runs[0]["kind"], "rate": runs[0]["rate"], "repetitions": len(runs)}
    for key in MEASURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    row["crashes"] = sum(1 for r in runs if r["crashed"])
    row["retransmission_share"] = statistics.median(retransmission_share(r) for r in runs)
    row["refused_share"] = statistics.median(refused_share(r) for r in runs)
    row["clean"] = is_clean(row)
    return row


def is_clean(row: dict) -> bool:
    return (row["crashes"] == 0 and row["failed"] == 0 and row["refused_share"] == 0
            and row["retransmission_share"] < RETRANSMISSION_LIMIT)


def rows(points: list[dict], kind: str) -> list[dict]:
    """Median rows of one kind ("ladder" or "overload"), by setup then rate."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for point in points:
        if point["kind"] == kind:
            groups[(point["setup"], point["rate"])].append(point)
    return [median_point(groups[key]) for key in sorted(groups, key=lambda k: (k[0], k[1]))]


def highest_clean_rate(ladder_rows: list[dict], setup: str) -> float | None:
    """The highest rate below which every measured rate of the setup was clean.

    A ladder climbs until two consecutive rates are unclean; a clean point
    above an unclean one (noise) does not count, so the figure is the top of
    the first unbroken clean run from the bottom.
    """
    best = None
    for row in sorted((r for r in ladder_rows if r["setup"] == setup), key=lambda r: r["rate"]):
        if not row["clean"]:
            break
        best = row["rate"]
    return best


def ladder_done(clean_by_rate: list[bool]) -> bool:
    """A setup leaves the ladder after two consecutive unclean rates."""
    return len(clean_by_rate) >= 2 and not clean_by_rate[-1] and not clean_by_rate[-2]
