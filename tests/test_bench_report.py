"""The SIP benchmark's arithmetic and report, on tiny fixtures (no Kamailio, no matplotlib).

benchmarks/points.py decides what a clean rate is and where a ladder
stops; benchmarks/report.py renders the results; benchmarks/sip.py parses
sipp's output and builds the bench table. A wrong rule here would publish
a wrong capacity figure, so each rule gets a case that breaks it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from c4kemi.core.decision import decide
from c4kemi.core.numbers import Profile
from c4kemi.core.table import compile_table
from tables import request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import native_table  # noqa: E402
import points  # noqa: E402
import report  # noqa: E402
import sip  # noqa: E402
from generate import PROFILES  # noqa: E402


def point(setup: str, rate: int, kind: str = "ladder", **changes) -> dict:
    attempted = rate * 10
    base = {
        "setup": setup, "kind": kind, "rate": rate, "repetition": 1, "duration_s": 10, "attempted": attempted,
        "completed": attempted, "failed": 0, "refused": 0, "retransmissions": 0, "completed_cps": rate,
        "setup_p50_ms": 0.8, "setup_p99_ms": 2.5, "cpu_kamailio_ms": 0.2, "cpu_serve_ms": None, "cpu_total_ms": 0.2,
        "shm_peak_mib": 30.0, "crashed": False,
    }
    base.update(changes)
    return base


def test_a_clean_rate_has_no_failure_no_503_few_retransmissions_and_no_crash():
    assert points.median_point([point("kemi", 100)])["clean"]
    assert not points.median_point([point("kemi", 100, failed=1)])["clean"]
    assert not points.median_point([point("kemi", 100, refused=1)])["clean"]
    # 1000 calls attempted: 0.1 % is one retransmission, and the limit is "under".
    assert not points.median_point([point("kemi", 100, retransmissions=1)])["clean"]
    assert points.median_point([point("kemi", 100, retransmissions=0), point("kemi", 100, retransmissions=1)])["clean"]
    assert not points.median_point([point("kemi", 100, crashed=True), point("kemi", 100), point("kemi", 100)])["clean"]


def test_repetitions_are_summarized_by_their_median():
    runs = [point("kemi", 100, failed=0, setup_p99_ms=1.0), point("kemi", 100, failed=0, setup_p99_ms=9.0),
            point("kemi", 100, failed=5, setup_p99_ms=2.0)]
    row = points.median_point(runs)
    assert row["failed"] == 0 and row["setup_p99_ms"] == 2.0 and row["clean"] and row["repetitions"] == 3


def test_highest_clean_rate_is_the_top_of_the_unbroken_clean_run():
    ladder = points.rows([point("kemi", 500), point("kemi", 1000), point("kemi", 1500, failed=3), point("kemi", 2000),
                          point("static", 500, failed=1)], "ladder")
    assert points.highest_clean_rate(ladder, "kemi") == 1000  # 2000 clean after an unclean 1500: noise, not capacity
    assert points.highest_clean_rate(ladder, "static") is None
    assert points.highest_clean_rate(ladder, "http") is None


def test_a_setup_leaves_the_ladder_after_two_consecutive_unclean_rates():
    assert not points.ladder_done([True, False])
    assert not points.ladder_done([False, True, False])
    assert points.ladder_done([True, False, False])


def results(points_list: list[dict]) -> dict:
    return {
        "date": "2026-01-01 00:00 UTC", "command": ".venv/bin/python benchmarks/sip.py --rates 500,1000",
        "machine": {"cpu": "test CPU", "cores": 2, "memory_gib": 4, "kernel": "6", "kamailio": "kamailio 5.6.3", "python": "3.11"},
        "options": {"workers": 4, "shm": 512, "pkg": 32, "memory_manager": "tlsf", "dids": 100_000, "routes": 1_000,
                    "duration": 10, "repetitions": 1, "overload_duration": 20},
        "points": points_list,
    }


def test_report_gives_capacity_ratios_aims_and_overload():
    text = report.render_sip(results([
        point("static", 500), point("kemi", 500, cpu_total_ms=0.4), point("http", 500, cpu_total_ms=0.3, cpu_serve_ms=0.1),
        point("static", 1000), point("kemi", 1000, failed=2), point("http", 1000),
        point("kemi", 750, kind="overload", completed_cps=300.0, refused=2000),
    ]), plots=[])
    lines = text.splitlines()
    # static never failed: a lower bound; kemi's capacity is 500, half of static's, missing its 90 % aim.
    assert "| static | ≥ 1,000 | 100 % |" in text
    assert any(line.startswith("| kemi | 500 | 50 % | ≥ 90%: missed |") for line in lines)
    assert any(line.startswith("| http | ≥ 1,000 | 100 % | ≥ 85%: met |") for line in lines)
    # The CPU aims are taken at 1000 calls/s when static measured that rate.
    assert "CPU per call at 1,000 calls/s" in text
    overload = next(line for line in lines if line.startswith("| kemi | 1.5x"))
    assert "| 300 | 60 % | 26.7 |" in overload and overload.endswith("**missed** |")
    assert "![" not in text  # no plots asked for
    # The reading names the calls that failed otherwise than with a fast 503 (the aim does not count them).
    assert "failed otherwise (timeouts, errors)" in text


def test_report_replaces_only_its_own_section():
    readme = "# Benchmarks\n\nkept\n\n<!-- bench:sip:start -->\nold\n<!-- bench:sip:end -->\n\ntail kept\n"
    once = report.replace_between(readme, "sip", "new table")
    assert once == "# Benchmarks\n\nkept\n\n<!-- bench:sip:start -->\nnew table\n<!-- bench:sip:end -->\n\ntail kept\n"
    assert report.replace_between(once, "sip", "new table") == once
    appended = report.replace_between("# Benchmarks\n", "http", "rows")
    assert appended == "# Benchmarks\n\n<!-- bench:http:start -->\nrows\n<!-- bench:http:end -->\n"


def test_http_results_render_whatever_their_columns():
    text = report.render_http({"date": "today", "commands": ["wrk -c 16"], "rows": [
        {"server": "c4", "rps": 10469.2}, {"server": "fastapi", "rps": 3000.0, "errors": 0}]})
    assert "- commands: `wrk -c 16`" in text
    assert "| server | rps | errors |" in text
    assert "| c4 | 10,469.20 | – |" in text and "| fastapi | 3,000.00 | 0 |" in text
    assert "| a | b |" in report.render_http([{"a": 1, "b": "x"}])


def test_sipp_logs_give_setup_times_and_refused_calls(tmp_path):
    (tmp_path / "uac_bench_123_logs.log").write_text(
        "setup 10 999500 11 500\nrefused 15 0\nsomething else\nsetup 20 0 20 1250\n")
    log = sip.read_log(tmp_path)
    assert sorted(log.setup_ms) == pytest.approx([1.0, 1.25]) and log.refused == 1
    assert log.sending_s == pytest.approx(20 - 10.9995)
    (tmp_path / "uac_bench_123_.csv").write_text("TotalCallCreated;SuccessfulCall(C);Retransmissions(C);Date\n"
                                                 "5;4;0;x\n10;9;3;2026-01-01\n")
    assert sip.read_stat(tmp_path) == {"TotalCallCreated": 10, "SuccessfulCall(C)": 9, "Retransmissions(C)": 3}


@pytest.mark.parametrize("limits", [False, True])
def test_the_bench_table_routes_the_bench_call_to_the_callee(limits):
    document = sip.bench_table(5099, limits, dids=1000, routes=200)
    reply = decide(compile_table(document), request(sip.CALLER, sip.CALLED))
    routes = reply["rtjson"]["routes"]
    assert [r["dst_uri"] for r in routes] == [f"sip:{sip.CALLEE}:5099"]
    assert routes[0]["uri"] == f"sip:{sip.CALLED}@{sip.CALLEE}:5099"
    trunk = next(t for t in document["trunks"] if t["name"] == "bench-trunk")
    assert ("max_cps" in trunk) is limits and ("max_channels" in document["tenants"][0]) is limits


def test_every_setup_names_a_known_mode_and_the_options_pick_them():
    assert {s.mode for s in sip.SETUPS.values()} <= {"static", "native", "kemi", "http"}
    opts = sip.parse_args(["--setups", "static,kemi-limits", "--rates", "100,200", "--overload", ""])
    assert opts.setups == ["static", "kemi-limits"] and opts.rates == [100, 200] and opts.overload == []
    assert sip.parse_args(["--full"]).setups == list(sip.SETUPS)
    with pytest.raises(SystemExit):
        sip.parse_args(["--setups", "nope"])


def dialplan_apply(rules: list[tuple[str, str]], number: str) -> str:
    """What Kamailio's dialplan makes of NUMBER: the first rule whose subst_exp matches, its repl_exp alone."""
    for subst, repl in rules:
        found = re.search(subst, number)
        if found:
            return re.sub(r"\\(\d)", lambda m, found=found: found.group(int(m.group(1))) or "", repl)
    raise AssertionError(f"no rule for {number}")


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=lambda p: p["name"] if p else "none")
@pytest.mark.parametrize("number", ["0612345678", "+39612345678", "0039612345678", "39612345678", "0112025550123",
                                    "12025550123", "33612345678", "0123"])
def test_the_native_dialplan_reads_and_writes_numbers_as_c4_does(profile, number):
    """benchmarks/native_table.py's dialplan rules against c4's own conversions, both ways."""
    compiled = Profile(**profile) if profile else None
    e164 = dialplan_apply(native_table.to_e164_rules(profile), number)
    assert e164 == (compiled.to_e164(number) if compiled else number.removeprefix("+"))
    assert dialplan_apply(native_table.from_e164_rules(profile), e164) == (compiled.from_e164(e164) if compiled else e164)


def test_a_rule_that_leaves_part_of_the_number_keeps_it_in_dialplan():
    subst, repl = native_table.dialplan_rule("^00", "")
    assert dialplan_apply([(subst, repl)], "0039612") == re.sub("^00", "", "0039612", count=1) == "39612"
    subst, repl = native_table.dialplan_rule("^(?P<cc>39)0?", "\\g<cc>", plus=True)
    assert dialplan_apply([(subst, repl)], "390612") == "+39612"


def test_native_routes_keep_priorities_and_list_order_where_c4_keeps_it():
    gw = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    assert native_table.route_gwlist(["a", "b", "c"], gw) == "1;2;3"  # names alone: one priority each
    entries = [{"trunk": "c", "priority": 1}, {"trunk": "a", "priority": 0, "weight": 2}, {"trunk": "b", "priority": 0},
               {"trunk": "e", "priority": 0, "weight": 0}, {"trunk": "d", "priority": 0, "weight": 0}]
    # priority 0's weighted trunks shuffled together, then its weight-0 ones in list order, then priority 1
    assert native_table.route_gwlist(entries, gw) == "1,2;5;4;3"


def test_native_sources_put_hosts_first_and_narrower_networks_before_wider_ones():
    rows = native_table.source_rows(["10.0.0.7", "10.0.0.0/24", "10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0"], "tag")
    hosts = [r for r in rows if r[0] == 1]
    assert hosts == [(1, "10.0.0.7", 32, "tag")]
    groups = {(ip, mask): grp for grp, ip, mask, _ in rows}
    assert groups[("10.0.0.0", 24)] < groups[("10.0.0.0", 8)] < groups[("0.0.0.0", 1)]
    assert ("128.0.0.0", 1) in groups and groups[("2001:db8::", 32)] == 129 - 32  # /0: mask 0 means a host to permissions


def test_the_native_tables_hold_the_bench_call_and_every_did(tmp_path):
    document = sip.bench_table(5099, False, dids=1000, routes=200)
    tables = native_table.write_tables(document, tmp_path)
    assert tables.rows["c4did"] == 1000 and tables.max_rows > max(tables.rows.values())
    assert tables.db_url == f"text://{tmp_path}" and tables.did_lengths[0] <= tables.did_lengths[1] <= 12
    address = (tmp_path / "address").read_text().splitlines()
    # A host (group 1, hash table); its tag: an IPBX, its tenant, t000's route group (1) and "it"'s to_e164 dialplan id (2).
    assert any(line.endswith(f":1:{sip.CALLER}:32:0:i|bench-pbx|t000|1|2") for line in address)
    gateways = (tmp_path / "dr_gateways").read_text()
    bench_gw = next(line for line in gateways.splitlines() if line.endswith(":bench-trunk"))
    assert f":2:{sip.CALLEE}\\:5099:0::t|bench-trunk|t000|3:" in bench_gw  # ':' escaped for db_text
    rules = (tmp_path / "dr_rules").read_text().splitlines()
    assert any(line.split(":")[1:3] == ["1", sip.BENCH_ROUTE] and line.split(":")[6] == bench_gw.split(":")[0]
               for line in rules)


def test_before_runs_each_c4_setup_again_from_the_other_tree_right_after_it(tmp_path):
    (tmp_path / "c4kemi").mkdir()
    (tmp_path / "c4kemi" / "cli.py").write_text("")
    (tmp_path / "kamailio").mkdir()
    opts = sip.parse_args(["--setups", "static,native,kemi,kemi-limits", "--before", str(tmp_path)])
    setups = sip.selected(opts)
    assert [s.name for s in setups] == ["static", "native", "kemi", "kemi@before", "kemi-limits", "kemi-limits@before"]
    assert setups[3].tree == tmp_path.resolve() and setups[3].mode == "kemi" and setups[2].tree is None
    assert setups[5].limits and setups[5].tree == tmp_path.resolve()
    assert [s.name for s in sip.selected(sip.parse_args(["--setups", "static,kemi"]))] == ["static", "kemi"]
    with pytest.raises(SystemExit):  # HTTP mode needs the tree's build/modules
        sip.parse_args(["--setups", "http", "--before", str(tmp_path)])
    with pytest.raises(SystemExit):  # not a checkout
        sip.parse_args(["--setups", "kemi", "--before", str(tmp_path / "kamailio")])


def test_report_takes_native_and_before_setups():
    text = report.render_sip(results([
        point("static", 500), point("native", 500, cpu_total_ms=0.3), point("kemi", 500, cpu_total_ms=0.4),
        point("kemi@before", 500, cpu_total_ms=0.5), point("kemi-limits", 500, cpu_total_ms=0.44),
        point("kemi-limits@before", 500, cpu_total_ms=0.6),
    ]), plots=[])
    assert "| native | ≥ 500 | 100 % |" in text and "| kemi@before | ≥ 500 | 100 % |  | 0.500 | 2.50 |  |" in text
    # A feature's cost is measured against the same tree's setup without it.
    assert "| kemi-limits | 500 | 0.400 | 0.440 | 1.10 |" in text
    assert "| kemi-limits@before | 500 | 0.500 | 0.600 | 1.20 |" in text
