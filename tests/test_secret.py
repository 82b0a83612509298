"""The deployment secret (c4kemi/node/secret.py) and the configs that use it."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from c4kemi.node import secret

KAMAILIO_DIR = Path(__file__).resolve().parents[1] / "kamailio"


def test_created_once_0600_and_reused(tmp_path):
    path = tmp_path / "state" / "secret"
    first = secret.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first) >= 64
    assert secret.load_or_create(path) == first  # a restart keeps the keys: old dialogs still restore


def test_each_deployment_gets_its_own(tmp_path):
    assert secret.load_or_create(tmp_path / "a") != secret.load_or_create(tmp_path / "b")


def test_a_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("x" * 64)
    path.chmod(0o644)
    with pytest.raises(secret.SecretError, match="chmod 600"):
        secret.load_or_create(path)


def test_location_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("C4_SECRET_FILE", raising=False)
    monkeypatch.setenv("C4_STATE_DIR", str(tmp_path))
    assert secret.default_path() == tmp_path / "secret"
    monkeypatch.setenv("C4_SECRET_FILE", str(tmp_path / "elsewhere"))
    assert secret.default_path() == tmp_path / "elsewhere"


def test_derived_keys_differ_and_are_stable():
    env = secret.kamailio_env(b"k" * 64)
    assert {"C4_UAC_PASSWD", "C4_DIALOG_KEY", "C4_CDR_KEY"} <= set(env)
    assert len(set(env.values())) == len(env)  # one key each
    assert secret.kamailio_env(b"k" * 64) == env


def test_no_config_ships_a_password():
    for cfg in KAMAILIO_DIR.glob("*.cfg"):
        for line in cfg.read_text().splitlines():
            if "restore_passwd" in line and not line.lstrip().startswith("#"):
                assert re.search(r'"restore_passwd",\s*C4_UAC_PASSWD\)', line), f"{cfg.name}: {line}"


def test_launcher_dry_run_names_the_secret_file_and_creates_nothing(tmp_path):
    import subprocess
    import sys

    from c4kemi.cli import EXAMPLE_TABLE

    secret_file = tmp_path / "state" / "secret"
    run = subprocess.run(
        [sys.executable, "-m", "c4kemi.cli", "kamailio", "--mode", "kemi", "--table", str(EXAMPLE_TABLE),
         "--secret-file", str(secret_file), "--dry-run", "--kamailio", "/bin/true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"C4_UAC_PASSWD=(derived from {secret_file})" in run.stdout
    assert f"C4_DIALOG_KEY=(derived from {secret_file})" in run.stdout
    assert not secret_file.exists(), "a dry run must not create the secret"
