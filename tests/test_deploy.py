"""What deploy/ ships is usable as it is (issue 21, items 5 and 7).

1. The systemd units (deploy/systemd) load: ``systemd-analyze verify`` on
   copies whose ExecStart names this venv's ``c4`` instead of
   /opt/c4/.venv/bin/c4 (the only substitution), with the hardening the
   docs promise and an exposure score systemd calls OK; the sysusers file
   makes the ``c4`` user; every C4_OPTIONS line of c4.env.example is a
   command line ``c4 kamailio`` takes; no secret is on a command line.
2. ``c4 --version`` is pyproject's version.
3. The Grafana dashboard and the Prometheus alerts (deploy/grafana,
   deploy/prometheus) load, and every metric they name is one c4 serve
   exposes (c4http/metrics.py) or one of PENDING_METRICS below.
4. Kamailio starts both modes' configs without a config warning.

systemd-analyze and systemd-sysusers come with Debian's ``systemd``
package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
DASHBOARD = ROOT / "deploy" / "grafana" / "c4-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "c4-alerts.yml"
C4 = Path(sys.executable).parent / "c4"
INSTALLED_C4 = "/opt/c4/.venv/bin/c4"
EXAMPLE_TABLE = ROOT / "c4kemi" / "examples" / "example.json"

# Metrics the dashboard and the alerts use that c4http/metrics.py does not
# expose yet, each with what should count it. Empty this as they land.
PENDING_METRICS = {
}
PROMETHEUS_OWN = {"up"}  # the scrape's own series


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: it comes with Debian's systemd package")
    return path


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values, in order]}} of a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture
def rendered(tmp_path) -> Path:
    """The units as an install would have them, with ExecStart on this venv's c4."""
    assert C4.is_file(), C4
    out = tmp_path / "units"
    out.mkdir()
    for unit in SYSTEMD.glob("*@.*"):
        text = unit.read_text()
        if unit.suffix == ".service":
            assert INSTALLED_C4 in text, f"{unit.name}: ExecStart no longer names {INSTALLED_C4}"
        (out / unit.name).write_text(text.replace(INSTALLED_C4, str(C4)))
    return out


UNITS = ["c4@edge1.service", "c4-cdr-prune@edge1.service", "c4-cdr-prune@edge1.timer"]


def test_the_units_pass_systemd_analyze_verify(rendered):
    tool = systemd_tool("systemd-analyze")
    result = subprocess.run([tool, "verify", "--man=no", *(str(rendered / unit) for unit in UNITS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("unit", ["c4@edge1.service", "c4-cdr-prune@edge1.service"])
def test_the_services_are_hardened(rendered, unit):
    result = subprocess.run([systemd_tool("systemd-analyze"), "security", "--offline=true", "--man=no", str(rendered / unit)],
                            capture_output=True, text=True, timeout=120)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= 3.0, result.stdout  # systemd calls up to 3.9 "OK"; these are at about 2


def test_the_node_unit_has_what_the_docs_promise():
    service = unit_settings(SYSTEMD / "c4@.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["EnvironmentFile"] == "/etc/c4/%i.env"
    assert one["Restart"] == "on-failure" and one["RestartSec"]
    assert one["User"] == "c4" and one["StateDirectory"] == "c4/%i"
    assert "C4_STATE_DIR=%S/c4/%i" in service["Environment"]
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
                       "KillSignal": "SIGTERM", "KillMode": "mixed"}.items():
        assert one.get(key) == value, (key, one.get(key))
    assert int(one["LimitNOFILE"]) >= 65536 and one["TimeoutStopSec"]
    # The command line holds no secret: the DSN and the admin token come from the environment file.
    assert one["ExecStart"] == f"{INSTALLED_C4} kamailio --instance %i $C4_OPTIONS"
    prune = {key: values[-1] for key, values in unit_settings(SYSTEMD / "c4-cdr-prune@.service")["Service"].items()}
    assert prune["ExecStart"] == f"{INSTALLED_C4} db cdr-prune --older-than-days ${{C4_CDR_RETENTION_DAYS}}"
    assert prune["EnvironmentFile"] == "/etc/c4/%i.env" and prune["Type"] == "oneshot"
    assert unit_settings(SYSTEMD / "c4-cdr-prune@.timer")["Timer"]["OnCalendar"] == ["daily"]


def test_sysusers_makes_the_c4_user(tmp_path):
    (tmp_path / "etc").mkdir()
    subprocess.run([systemd_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSTEMD / "c4.sysusers.conf")],
                   check=True, capture_output=True, timeout=60)
    user = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines() if line.startswith("c4:")]
    assert user and user[0][6] == "/usr/sbin/nologin", user
    assert int(user[0][2]) < 1000  # a system user


def env_example() -> tuple[dict[str, str], list[str]]:
    """The example's variables, and every C4_OPTIONS line (the commented alternatives too)."""
    variables, options = {}, []
    for line in (SYSTEMD / "c4.env.example").read_text().splitlines():
        bare = line.lstrip("#")
        name, sep, value = bare.partition("=")
        if not sep or not re.fullmatch(r"[A-Z0-9_]+", name):
            continue
        if name == "C4_OPTIONS":
            options.append(value)
        if not line.startswith("#"):
            variables[name] = value
    return variables, options


def test_the_environment_file_names_only_what_c4_reads():
    variables, options = env_example()
    assert set(variables) == {"C4_DSN", "C4_API_TOKEN", "C4_OPTIONS"}
    assert len(options) == 4
    for line in options:  # secrets stay in their variables
        assert "--dsn " not in line + " " and "--api-token " not in line + " ", line


@pytest.mark.parametrize("options", env_example()[1], ids=lambda o: o.split()[1] + ("-table" if "--table" in o else ""))
def test_each_example_command_line_is_one_c4_kamailio_takes(options, tmp_path):
    """As the unit runs it (--instance, C4_STATE_DIR, the env file's variables), in --dry-run.

    The example's paths under /etc/c4 and /var/log/c4 are replaced by the
    example table and a temporary directory; nothing else.
    """
    dsn = "postgresql://c4:hunter2-password@127.0.0.1/c4"
    argv = options.replace("/etc/c4/edge1.json", str(EXAMPLE_TABLE)).replace("/var/log/c4/edge1", str(tmp_path)).split()
    env = {**os.environ, "C4_DSN": dsn, "C4_API_TOKEN": "admin-token-hunter3", "C4_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run([str(C4), "kamailio", "--instance", "edge1", *argv, "--dry-run"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "hunter3" not in result.stdout  # helpers get them in their environment
    if "--table" not in argv:
        assert "db follow" in result.stdout  # the table comes from C4_DSN


def test_c4_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run([str(C4), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"c4 {version}", result


# -- Monitoring --------------------------------------------------------------


def exposed_metrics() -> set[str]:
    """The series names c4 serve's /metrics can show, read from c4http/metrics.py."""
    text = (ROOT / "c4http" / "metrics.py").read_text()
    bases = set(re.findall(r"[\"'](c4_[a-z0-9_]+)[\"']", text))
    for placeholder, rest in re.findall(r"f[\"']c4_\{(\w+)\}_([a-z0-9_]+)[\"']", text):
        assert placeholder == "kind", f"c4http/metrics.py: a new metric name template c4_{{{placeholder}}}_{rest}: teach this test"
        bases |= {f"c4_tenant_{rest}", f"c4_trunk_{rest}"}
    suffixes = ("", "_total", "_info", "_bucket", "_sum", "_count", "_created")
    return {base + suffix for base in bases for suffix in suffixes}


def promql_metrics(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    names = set(re.findall(r"\b(c4_[a-z0-9_]+)\b", without_strings))
    names |= {name for name in PROMETHEUS_OWN if re.search(rf"\b{name}\s*[{{(\[ ]", without_strings)}
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_loads_and_names_only_metrics_c4_exposes():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    known = exposed_metrics() | set(PENDING_METRICS) | PROMETHEUS_OWN
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    named = set()
    for title, expr in exprs:
        metrics = promql_metrics(expr)
        assert metrics, f"panel {title!r}: no c4 metric in {expr!r}"
        assert metrics <= known, f"panel {title!r}: {sorted(metrics - known)} not in c4http/metrics.py nor PENDING_METRICS"
        assert 'instance=~"$instance"' in expr, f"panel {title!r} ignores the node selector"
        named |= metrics
    for needed in ("c4_node_decisions_total", "c4_node_refusals_total", "c4_node_decision_seconds_bucket", "c4_trunk_up",
                   "c4_tenant_calls_in_progress", "c4_trunk_calls_in_progress", "c4_kamailio_up", "c4_cdr_dropped_total",
                   "c4_table_failed_reloads_total", "c4_helper_restarts_total", "c4_store_up"):
        assert needed in named, f"the dashboard has no panel for {needed}"


def load_yaml(text: str):
    """PyYAML when installed (it is no dependency of c4), else yaml_subset."""
    try:
        import yaml
    except ImportError:
        return yaml_subset(text)
    return yaml.safe_load(text)


def yaml_subset(text: str):
    """A parser of the YAML subset the alerts file keeps to.

    That subset: block mappings and lists, comments on their own lines,
    scalars plain, 'single-' or "double-quoted". Anything else (flow style,
    anchors, block scalars, a key twice) raises, so the file stays in it.
    """
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if "\t" in raw:
            raise ValueError(f"line {number}: a tab")
        lines.append([len(raw) - len(raw.lstrip(" ")), raw.strip(), number])

    def scalar(value: str, number: int):
        if value.startswith("'"):
            if len(value) < 2 or not value.endswith("'") or "'" in value[1:-1].replace("''", ""):
                raise ValueError(f"line {number}: a single-quoted scalar must be the whole value")
            return value[1:-1].replace("''", "'")
        if value.startswith('"'):
            return json.loads(value)
        if value[0] in "{[&*|>!%@`" or " #" in value:
            raise ValueError(f"line {number}: {value!r} is outside the subset")
        return value

    def block(i: int, indent: int):
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                lines[i] = [indent + 2, lines[i][1][2:], lines[i][2]]
                value, i = block(i, indent + 2)
                items.append(value)
            return items, i
        mapping = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            key, sep, rest = lines[i][1].partition(":")
            if not sep or key in mapping:
                raise ValueError(f"line {lines[i][2]}: not a new key")
            rest = rest.strip()
            if rest:
                mapping[key], i = scalar(rest, lines[i][2]), i + 1
            elif i + 1 < len(lines) and lines[i + 1][0] > indent:
                mapping[key], i = block(i + 1, lines[i + 1][0])
            else:
                mapping[key], i = None, i + 1
        return mapping, i

    value, end = block(0, 0)
    if end != len(lines):
        raise ValueError(f"line {lines[end][2]}: unexpected indentation")
    return value


def test_the_alert_rules_load_and_cover_what_operators_need():
    rules = load_yaml(ALERTS.read_text())
    assert rules == yaml_subset(ALERTS.read_text())
    (group,) = rules["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    known = exposed_metrics() | set(PENDING_METRICS) | PROMETHEUS_OWN
    for name, rule in alerts.items():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        metrics = promql_metrics(rule["expr"])
        assert metrics and metrics <= known, f"{name}: {sorted(metrics - known)} not in c4http/metrics.py nor PENDING_METRICS"
    needs = {"trunk down": "c4_trunk_up", "shed calls": "c4_overload_refusals_total",
             "refused reloads": "c4_table_failed_reloads_total", "database unreachable": "c4_store_up",
             "Kamailio not answering": "c4_kamailio_up"}
    for what, metric in needs.items():
        assert any(metric in promql_metrics(rule["expr"]) for rule in alerts.values()), f"no alert for {what} ({metric})"
    assert alerts["C4TrunkDown"]["for"] == "2m"


def test_the_yaml_subset_parser_refuses_what_it_does_not_know():
    assert yaml_subset("a:\n  - b: 'x ''y'''\n    c: 2m\n  - d: \"q\"\n") == {"a": [{"b": "x 'y'", "c": "2m"}, {"d": "q"}]}
    for bad in ("a: {b: 1}\n", "a: |\n  x\n", "a: 1\na: 2\n", "a:\n  b: 1\n c: 2\n"):
        with pytest.raises(ValueError):
            yaml_subset(bad)


# -- Kamailio's start ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["kemi", "http"])
def test_kamailio_starts_the_configs_without_a_warning(mode, tmp_path):
    """``kamailio -c`` on exactly the command c4 kamailio runs (its --dry-run), secrets replaced by dummies."""
    if mode == "http" and not (ROOT / "build" / "modules" / "http_async_client.so").is_file():
        pytest.fail("build/modules/http_async_client.so is missing: make setup builds it")
    http = ["--serve-api", "--api", "http://127.0.0.1:18099"] if mode == "http" else []
    dry = subprocess.run([str(C4), "kamailio", "--mode", mode, "--table", str(EXAMPLE_TABLE), "--listen", "udp:127.0.0.1:5199",
                          *http, "--state-dir", str(tmp_path / "state"), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    env = dict(os.environ)
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z0-9_]+", name):
            env[name] = "0123456789abcdef" if value.startswith("(derived from") else value
    command = lines[-1].split(" ")  # one argument per word: the -A values keep their quotes, as Kamailio gets them
    assert Path(command[0]).name == "kamailio", lines[-1]
    result = subprocess.run([command[0], "-c", *command[1:]], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)
