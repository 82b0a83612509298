"""Render the SIP benchmark's results into benchmarks/README.md, with plots.

    .venv/bin/python benchmarks/report.py [--results benchmarks/results/sip.json] [--http benchmarks/results/http.json]
        [--readme benchmarks/README.md] [--no-plots]

Reads the JSON written by benchmarks/sip.py and, when it exists, the HTTP
benchmark's JSON (rendered generically: its list of row dicts as a table,
its other fields as a list). Only the text between the markers
``<!-- bench:sip:start -->`` / ``<!-- bench:sip:end -->`` (and the
``bench:http`` pair) is replaced; the rest of the README is kept. Plots
(matplotlib, the ``bench`` extra) go to benchmarks/results/*.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from points import RETRANSMISSION_LIMIT, highest_clean_rate, rows  # noqa: E402

RESULTS = BENCH / "results"
# The aims: highest clean rate as a share of static's, CPU per call as a multiple of static's.
RATE_AIMS = {"kemi": 0.90, "http": 0.85}
CPU_AIMS = {"kemi": 1.5, "http": 1.8}
CPU_AIM_RATE = 1000
OVERLOAD_AIM = 0.80  # completed calls/s at least 80 % of the highest clean rate


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and digits == 0):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def table(header: list[str], body: list[list[str]]) -> list[str]:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|", *("| " + " | ".join(r) + " |" for r in body)]


def setups_in_order(results: dict) -> list[str]:
    seen: list[str] = []
    for point in results["points"]:
        if point["setup"] not in seen:
            seen.append(point["setup"])
    return seen


def cpu_reference_rate(ladder: list[dict]) -> int | None:
    """The rate CPU per call is compared at: 1000 calls/s if static has it, else static's highest measured rate."""
    static_rates = sorted(r["rate"] for r in ladder if r["setup"] == "static")
    if CPU_AIM_RATE in static_rates:
        return CPU_AIM_RATE
    return static_rates[-1] if static_rates else None


def row_at(ladder: list[dict], setup: str, rate) -> dict | None:
    return next((r for r in ladder if r["setup"] == setup and r["rate"] == rate), None)


def summary(results: dict) -> dict:
    """The figures the tables and the reading are made of."""
    setups = setups_in_order(results)
    ladder = rows(results["points"], "ladder")
    overload = sorted(rows(results["points"], "overload"), key=lambda r: (setups.index(r["setup"]), r["rate"]))
    best = {s: highest_clean_rate(ladder, s) for s in setups}
    at = cpu_reference_rate(ladder)
    cpu = {s: (row_at(ladder, s, at) or {}).get("cpu_total_ms") for s in setups}
    # A ladder that stopped on a clean rate only shows a lower bound of the capacity.
    at_top = {s: best[s] is not None and best[s] == max(r["rate"] for r in ladder if r["setup"] == s) for s in setups}
    return {"ladder": ladder, "overload": overload, "setups": setups, "best": best, "at_top": at_top, "cpu_rate": at, "cpu": cpu}


def capacity(s: dict, setup: str) -> str:
    """The highest clean rate, marked "≥" when the ladder never found an unclean rate above it."""
    return ("≥ " if s["at_top"][setup] else "") + fmt(s["best"][setup], 0)


def render_sip(results: dict, plots: list[str]) -> str:
    s = summary(results)
    ladder, overload, setups, best = s["ladder"], s["overload"], s["setups"], s["best"]
    opts, machine = results["options"], results["machine"]
    lines = [
        f"## SIP capacity and overload (`benchmarks/sip.py`), {results['date']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, kernel {machine['kernel']}, "
        f"{machine['kamailio']}, Python {machine['python']}; sipp on the same machine. Every setup: "
        f"{opts['workers']} SIP workers, {opts['shm']} MiB shared and {opts['pkg']} MiB private memory, memory manager "
        f"`{opts['memory_manager'] or 'default'}`; table of {opts['dids']:,} DIDs and {opts['routes']:,} routes "
        f"(benchmarks/generate.py). Ladder points of {opts['duration']:g} s, {opts['repetitions']} repetition(s) "
        f"per rate, setups interleaved; overload points of {opts['overload_duration']:g} s.",
        "",
        "Regenerate (`make bench`, or `make bench ARGS=--full` for the whole ladder):",
        "",
        "```sh",
        results["command"],
        f"{results['command'].split()[0]} benchmarks/report.py",
        "```",
        "",
        f"A rate is clean when, over its repetitions, the median failed calls and 503s are 0, the median "
        f"retransmissions stay under {RETRANSMISSION_LIMIT:.1%} of the calls attempted, and nothing crashed "
        "(benchmarks/points.py). A setup's highest clean rate is the top of its unbroken clean run from the "
        "lowest rate; \"≥\" marks a ladder that ended on a clean rate (the capacity is higher). CPU per call is per "
        "attempted call; setup time is INVITE sent to 200 received at the caller.",
        "",
        "### Highest clean rate and aims",
        "",
    ]
    static_best, static_cpu = best.get("static"), s["cpu"].get("static")
    body = []
    for setup in setups:
        share, cpu_ratio = ratio(best[setup], static_best), ratio(s["cpu"][setup], static_cpu)
        mode = setup.split("-")[0]
        rate_aim = f"≥ {RATE_AIMS[mode]:.0%}: {'met' if share is not None and share >= RATE_AIMS[mode] else 'missed'}" if mode in RATE_AIMS and setup == mode else ""
        cpu_aim = f"≤ {CPU_AIMS[mode]}x: {'met' if cpu_ratio is not None and cpu_ratio <= CPU_AIMS[mode] else 'missed'}" if mode in CPU_AIMS and setup == mode else ""
        body.append([setup, capacity(s, setup), fmt(share and share * 100, 0) + (" %" if share else ""), rate_aim,
                     fmt(s["cpu"][setup], 3), fmt(cpu_ratio), cpu_aim])
    lines += table(["setup", "highest clean rate (calls/s)", "of static", "aim", f"CPU per call at {fmt(s['cpu_rate'], 0)} calls/s (ms)",
                    "x static", "aim"], body)
    lines += ["", "### Ladder (medians over repetitions)", ""]
    body = []
    for r in sorted(ladder, key=lambda r: (r["rate"], setups.index(r["setup"]))):
        static = row_at(ladder, "static", r["rate"]) or {}
        body.append([r["setup"], fmt(r["rate"], 0), fmt(r["attempted"], 0), fmt(r["completed"], 0), fmt(r["failed"], 0),
                     fmt(r["refused"], 0), fmt(r["retransmission_share"] * 100, 3), fmt(r["setup_p50_ms"]), fmt(r["setup_p99_ms"]),
                     fmt(r["cpu_kamailio_ms"], 3), fmt(r["cpu_serve_ms"], 3), fmt(r["cpu_total_ms"], 3),
                     fmt(ratio(r["cpu_total_ms"], static.get("cpu_total_ms"))), fmt(r["shm_peak_mib"], 1), fmt(r["crashes"], 0),
                     "yes" if r["clean"] else "**no**"])
    lines += table(["setup", "offered (calls/s)", "attempted", "completed", "failed", "503", "retrans. (%)", "setup p50 (ms)",
                    "setup p99 (ms)", "CPU/call Kamailio (ms)", "CPU/call c4 serve (ms)", "CPU/call total (ms)", "x static",
                    "peak shm (MiB)", "crashes", "clean"], body)
    if overload:
        lines += ["", "### Overload", "",
                  f"Each setup at multiples of its highest clean rate. Aim: completed calls/s within {1 - OVERLOAD_AIM:.0%} "
                  "of the highest clean rate, 0 crashes. Setup times are those of the admitted (answered) calls. "
                  "\"failed\" counts calls that ended otherwise than answered or refused with a 503 (timeouts, "
                  "errors): the aim does not count them, a VoIP engineer should (refusing fast is what lets callers "
                  "retry elsewhere).", ""]
        body = []
        for r in overload:
            kept = ratio(r["completed_cps"], best.get(r["setup"]))
            aim = kept is not None and kept >= OVERLOAD_AIM and r["crashes"] == 0
            body.append([r["setup"], fmt(ratio(r["rate"], best.get(r["setup"])), 1) + "x", fmt(r["rate"], 0), fmt(r["completed_cps"], 0),
                         fmt(kept and kept * 100, 0) + (" %" if kept else ""), fmt(r["refused_share"] * 100, 1), fmt(r["failed"], 0),
                         fmt(r["setup_p50_ms"]), fmt(r["setup_p99_ms"]), fmt(r["shm_peak_mib"], 1), fmt(r["crashes"], 0),
                         "met" if aim else "**missed**"])
        lines += table(["setup", "load", "offered (calls/s)", "completed (calls/s)", "of highest clean", "503 (%)", "failed",
                        "setup p50 (ms)", "setup p99 (ms)", "peak shm (MiB)", "crashes", "aim"], body)
    lines += limits_cost(ladder, setups)
    if plots:
        lines += ["", "### Plots", ""] + [f"![{Path(p).stem}](results/{Path(p).name})" for p in plots]
    lines += ["", "### Reading", ""] + reading(s)
    return "\n".join(lines)


def feature_off(setup: str) -> str:
    """The setup without its feature: kemi-limits -> kemi, http-cdr@before -> http@before (sip.py --before)."""
    name, at, tree = setup.partition("@")
    return name.split("-")[0] + at + tree


def limits_cost(ladder: list[dict], setups: list[str]) -> list[str]:
    """X-limits next to X at each rate both ran: what counting channels and calls/s costs."""
    body = []
    for setup in setups:
        base = feature_off(setup)
        if setup == base or base not in setups:
            continue
        for r in ladder:
            other = row_at(ladder, base, r["rate"]) if r["setup"] == setup else None
            if other:
                body.append([setup, fmt(r["rate"], 0), fmt(other["cpu_total_ms"], 3), fmt(r["cpu_total_ms"], 3),
                             fmt(ratio(r["cpu_total_ms"], other["cpu_total_ms"])), fmt(other["setup_p50_ms"]), fmt(r["setup_p50_ms"]),
                             fmt(other["setup_p99_ms"]), fmt(r["setup_p99_ms"])])
    if not body:
        return []
    return ["", "### What a feature costs (side by side with it off)", ""] + table(
        ["setup", "offered (calls/s)", "CPU/call off (ms)", "CPU/call on (ms)", "on/off", "p50 off (ms)", "p50 on (ms)",
         "p99 off (ms)", "p99 on (ms)"], body)


def reading(s: dict) -> list[str]:
    """A few sentences from the figures: comparisons only, worded by what was measured."""
    best, cpu, out = s["best"], s["cpu"], []
    for mode in ("kemi", "http"):
        if mode not in best:
            continue
        share, cpu_ratio = ratio(best[mode], best.get("static")), ratio(cpu.get(mode), cpu.get("static"))
        text = f"- **{mode.upper()} mode** carried {capacity(s, mode)} calls/s cleanly"
        text += f" ({share:.0%} of the plain relay's {capacity(s, 'static')})" if share is not None else ""
        text += f" at {cpu_ratio:.2f}x the relay's CPU per call." if cpu_ratio is not None else "."
        out.append(text)
    if cpu.get("kemi") and cpu.get("http"):
        kemi_p50 = (row_at(s["ladder"], "kemi", s["cpu_rate"]) or {}).get("setup_p50_ms")
        http_p50 = (row_at(s["ladder"], "http", s["cpu_rate"]) or {}).get("setup_p50_ms")
        cheaper = "KEMI" if cpu["kemi"] <= cpu["http"] else "HTTP"
        out.append(f"- At {fmt(s['cpu_rate'], 0)} calls/s HTTP mode costs {cpu['http'] / cpu['kemi']:.2f}x KEMI mode's CPU per call "
                   f"(Kamailio and c4 serve together; {cheaper} mode is the cheaper one on a node) and sets calls up in "
                   f"{fmt(http_p50)} ms against {fmt(kemi_p50)} ms (p50). What HTTP mode's cost buys is a routing API "
                   "deployed and scaled apart from Kamailio; where one node's capacity is what counts, compare the "
                   "highest clean rates above.")
    for setup in s["setups"]:
        runs = [r for r in s["overload"] if r["setup"] == setup and best.get(setup)]
        if runs:
            held = all(r["completed_cps"] >= OVERLOAD_AIM * best[setup] and r["crashes"] == 0 for r in runs)
            parts = [f"{fmt(r['rate'], 0)} offered: {r['completed_cps'] / best[setup]:.0%} completed, {r['refused_share']:.1%} 503, "
                     f"{fmt(r['failed'], 0)} failed otherwise (timeouts, errors), {fmt(r['crashes'], 0)} crash(es)" for r in runs]
            out.append(f"- Overload, {setup} ({'; '.join(parts)}): the aim {'held' if held else 'did not hold'} "
                       f"(shares of its highest clean rate, {fmt(best[setup], 0)} calls/s).")
    return out or ["- Not enough points for a reading."]


def render_http(data) -> str:
    """The HTTP benchmark's JSON, whatever its columns: its list of row dicts as a table, the rest as a list."""
    if isinstance(data, list):
        data = {"rows": data}
    lines = ["## HTTP routing API (`benchmarks/results/http.json`)", ""]
    table_rows = next((v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)), [])
    for key, value in data.items():
        if value is table_rows:
            continue
        if isinstance(value, list):
            value = "; ".join(f"`{v}`" if key.startswith("command") else str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        lines.append(f"- {key}: {value}")
    if table_rows:
        columns: list[str] = []
        for row in table_rows:
            columns += [k for k in row if k not in columns]
        lines += ["", *table(columns, [[fmt(row.get(c)) for c in columns] for row in table_rows])]
    return "\n".join(lines)


def replace_between(text: str, name: str, content: str) -> str:
    """Put CONTENT between the bench:NAME markers, appending the pair at the end if missing."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{content.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """Completed calls/s and setup p99 against offered rate, one line per setup (overload points marked x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    s = summary(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, label, name, log in (("completed_cps", "completed calls/s", "sip-completed.png", False),
                                  ("setup_p99_ms", "setup time p99 (ms)", "sip-setup-p99.png", True)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for index, setup in enumerate(s["setups"]):
            color = f"C{index}"
            ladder = [r for r in s["ladder"] if r["setup"] == setup and r[key] is not None]
            ax.plot([r["rate"] for r in ladder], [r[key] for r in ladder], "o-", color=color, label=setup)
            over = [r for r in s["overload"] if r["setup"] == setup and r[key] is not None]
            if over:
                ax.plot([r["rate"] for r in over], [r[key] for r in over], "x", color=color, markersize=9, mew=2)
        if key == "completed_cps":
            top = max([r["rate"] for r in s["ladder"] + s["overload"]], default=1)
            ax.plot([0, top], [0, top], ":", color="grey", label="offered")
        if log:  # sub-millisecond to seconds under overload
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("offered calls/s (x: overload runs)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "sip.json")
    parser.add_argument("--http", type=Path, default=RESULTS / "http.json")
    parser.add_argument("--readme", type=Path, default=BENCH / "README.md")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    if args.results.is_file():
        results = json.loads(args.results.read_text())
        plots = [] if args.no_plots else write_plots(results, args.results.parent)
        text = replace_between(text, "sip", render_sip(results, plots))
    else:
        print(f"{args.results}: missing, run benchmarks/sip.py first", file=sys.stderr)
    if args.http.is_file():
        text = replace_between(text, "http", render_http(json.loads(args.http.read_text())))
    args.readme.write_text(text)
    print(f"{args.readme}: updated", file=sys.stderr)


if __name__ == "__main__":
    main()
