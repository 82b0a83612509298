"""A non-editable install works away from the checkout.

The wheel is built from the repository and installed (``--no-deps``) into a
fresh venv whose dependencies come from the test venv through a ``.pth``
line; every command then runs from a directory outside the checkout, so
nothing can be found relative to it by accident.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from ports import free_tcp_port

from tables import request

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "c4kemi" / "examples" / "example.json"


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, timeout=180, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stderr.decode()[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin dir, site-packages) of a venv holding c4 installed from a wheel."""
    root = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools leaves build/ behind in the tree it builds.
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "wheel", source)
    wheels = list((root / "wheel").glob("c4-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    site = Path(run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.decode().strip())
    (site / "c4-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheels[0])
    return venv / "bin", site


@pytest.fixture
def outside(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "table.json")
    return tmp_path


def test_the_installed_package_is_not_the_checkout(installed, outside):
    bin_dir, site = installed
    where = run(bin_dir / "python", "-c", "import c4kemi; print(c4kemi.__file__)", cwd=outside).stdout.decode().strip()
    assert Path(where).resolve().is_relative_to(site.resolve())


def test_check_and_route(installed, outside):
    bin_dir, _ = installed
    assert b"ok, version" in run(bin_dir / "c4", "check", "table.json", cwd=outside).stdout
    query = request("127.0.0.20", "0612345678")
    reply = json.loads(run(bin_dir / "c4", "route", "--table", "table.json", json.dumps(query), cwd=outside).stdout)
    assert "rtjson" in reply


@pytest.mark.parametrize("mode", ["kemi", "http"])
def test_kamailio_dry_run_uses_files_shipped_in_the_package(installed, outside, mode):
    bin_dir, site = installed
    argv = [bin_dir / "c4", "kamailio", "--mode", mode, "--dry-run", "--kamailio", "/bin/true"]
    if mode == "kemi":
        argv += ["--table", "table.json"]
    else:
        module = outside / "http_async_client.so"  # the launcher only checks it exists
        module.write_bytes(b"")
        argv += ["--http-async-client", module, "--serve-api", "--table", "table.json"]
    out = run(*argv, cwd=outside).stdout.decode()
    config = re.search(r" -f (\S+)", out).group(1)
    assert Path(config).is_file() and Path(config).resolve().is_relative_to(site.resolve())
    if mode == "kemi":
        script = re.search(r'C4_KEMI_SCRIPT="([^"]+)"', out).group(1)
        assert Path(script).is_file() and Path(script).resolve().is_relative_to(site.resolve())


def test_serve_answers_health(installed, outside):
    bin_dir, _ = installed
    port = free_tcp_port()
    proc = subprocess.Popen([bin_dir / "c4", "serve", "--table", "table.json", "--port", str(port)], cwd=outside,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    assert json.loads(response.read())["status"] == "ok"
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
