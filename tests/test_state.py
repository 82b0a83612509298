"""Per-instance state and secrets kept off the command line (c4kemi/node/state.py; issue 21, item 4)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import orjson
import pytest

from c4kemi.node.launch_options import add_arguments
from c4kemi.node.launch_plan import LaunchError, check_options, plan
from c4kemi.node.state import SecretFileError, instance_name, read_secret_file
from tables import document


def launch_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--dry-run", *argv])
    check_options(args)
    return args


@pytest.fixture
def no_state_env(monkeypatch, tmp_path):
    for name in ("C4_STATE_DIR", "C4_SECRET_FILE", "C4_DSN", "C4_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_two_instances_on_a_host_never_share_a_state_file(no_state_env, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as root the base is /var/lib/c4: same rule, other base
    one = launch_args("--listen", "udp:127.0.0.1:5060")
    two = launch_args("--listen", "udp:127.0.0.1:5070")
    named = launch_args("--listen", "udp:127.0.0.1:5080", "--instance", "edge1")
    files = [(a.state_dir, a.table_cache, a.cdr_spool, a.secret_file) for a in (one, two, named)]
    assert len({f for group in files for f in group}) == 12, files
    assert one.state_dir.endswith("/c4/udp-127.0.0.1-5060") and named.state_dir.endswith("/c4/edge1")
    assert one.table_cache == f"{one.state_dir}/routing-table.json"
    assert one.secret_file == f"{one.state_dir}/secret"


def test_an_explicit_state_dir_and_files_win(no_state_env, tmp_path, monkeypatch):
    monkeypatch.setenv("C4_STATE_DIR", str(tmp_path / "env"))
    assert launch_args().state_dir == str(tmp_path / "env")
    args = launch_args("--state-dir", str(tmp_path / "s"), "--table-cache", str(tmp_path / "cache.json"))
    assert args.state_dir == str(tmp_path / "s") and args.table_cache == str(tmp_path / "cache.json")
    assert args.cdr_spool == str(tmp_path / "s" / "cdr-spool.jsonl")


@pytest.mark.parametrize("given", ["udp:[::1]:5060", "udp:../../etc:5060", "..", ".", "/", "a/../b", ""])
def test_instance_names_are_one_safe_directory_name(given):
    name = instance_name(given)
    assert name and "/" not in name and name not in (".", "..")


def secret(tmp_path, name: str, text: str, mode: int = 0o600):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_secret_file_others_can_read_is_refused_without_showing_it(tmp_path):
    path = secret(tmp_path, "dsn", "postgresql://c4:hunter2@db/c4\n", 0o644)
    with pytest.raises(SecretFileError) as caught:
        read_secret_file(path, "--dsn-file")
    assert "chmod 600" in str(caught.value) and "hunter2" not in str(caught.value)
    with pytest.raises(SecretFileError, match="empty"):
        read_secret_file(secret(tmp_path, "empty", "\n\n"), "--dsn-file")
    assert read_secret_file(secret(tmp_path, "ok", "  postgresql://c4:pw@db/c4  \nignored\n"), "x") == "postgresql://c4:pw@db/c4"


def test_the_dsn_comes_from_a_file_or_the_environment_and_never_reaches_argv(no_state_env, tmp_path, monkeypatch):
    dsn = "postgresql://c4:hunter2@127.0.0.1/c4"
    args = launch_args("--mode", "kemi", "--dsn-file", str(secret(tmp_path, "dsn", dsn)), "--state-dir", str(tmp_path / "s"))
    assert args.dsn == dsn
    launch, command = plan(args, tmp_path / "run")
    assert all("hunter2" not in " ".join(h.argv) for h in launch.helpers) and "hunter2" not in " ".join(command)
    assert any(h.env.get("C4_DSN") == dsn for h in launch.helpers)  # c4 db follow gets it in its environment

    monkeypatch.setenv("C4_DSN", dsn)
    assert launch_args("--mode", "kemi").dsn == dsn  # no --table: the table comes from PostgreSQL
    table = tmp_path / "t.json"
    table.write_bytes(orjson.dumps(document()))
    assert launch_args("--mode", "kemi", "--table", str(table)).dsn is None  # --table wins; $C4_DSN stays for --cdr-db
    with pytest.raises(LaunchError, match="not both"):
        launch_args("--dsn", dsn, "--dsn-file", str(tmp_path / "dsn"))


def test_kemi_mode_serves_the_api_with_the_admin_token_from_a_file(no_state_env, tmp_path):
    token = secret(tmp_path, "token", "admin-token-1234567890")
    args = launch_args("--mode", "kemi", "--dsn-file", str(secret(tmp_path, "dsn", "postgresql://c4@127.0.0.1/c4")),
                       "--serve-api", "--api", "http://127.0.0.1:18080", "--api-token-file", str(token),
                       "--state-dir", str(tmp_path / "s"))
    launch, _ = plan(args, tmp_path / "run")
    (serve,) = [h for h in launch.helpers if "serve" in h.argv]
    assert serve.env["C4_API_TOKEN"] == "admin-token-1234567890" and "--feed" in serve.argv
    assert "admin-token-1234567890" not in " ".join(serve.argv)
    assert not any("no admin token" in line for line in launch.banner)

    args = launch_args("--mode", "kemi", "--dsn-file", str(tmp_path / "dsn"), "--serve-api", "--state-dir", str(tmp_path / "s"))
    launch, _ = plan(args, tmp_path / "run2")
    assert any("no admin token" in line for line in launch.banner)


def test_c4_serve_refuses_a_dsn_file_others_can_read(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("C4_API_TOKEN", "C4_DSN")}
    run = subprocess.run([sys.executable, "-m", "c4kemi.cli", "serve", "--dsn-file", str(secret(tmp_path, "dsn", "x", 0o644))],
                         capture_output=True, text=True, timeout=30, env=env)
    assert run.returncode == 2 and "readable by others" in run.stderr
