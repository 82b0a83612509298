"""README's "PostgreSQL, step by step" works as written (issue 21, item 6).

The ```sh block under that heading runs line for line, in order, as root,
against a throwaway PostgreSQL cluster set up as Debian's is (socket:
``peer``; TCP from loopback: ``scram-sha-256``). What differs from a fresh
Debian 12, and only this:

- ``pg_ctlcluster`` is a stand-in on PATH that starts (or reports on) the
  throwaway cluster instead of Debian's 15/main;
- ``PGHOST`` (the cluster's socket directory) and ``PGPORT`` (its port) are
  in the environment, which psql, createdb and c4 (asyncpg) all honour: the
  README's DSN names no port;
- the lines run in a scratch directory holding links to the checkout's
  ``.venv`` and ``c4kemi``, so ``backup.json`` lands there;
- the node (the last line) gets free ports instead of 5060 and 8080, and
  ``C4_STATE_DIR`` in the scratch directory instead of /var/lib/c4.

Then the provisioning API answers the admin token made in step 3 (and 401
without it), and ``c4 db export`` gives the imported table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from c4kemi.core.document import load_document
from postgres import postgres_bin

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## PostgreSQL, step by step"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the README's steps run as root (runuser -u postgres)")


def readme_steps() -> list[str]:
    """The command lines of the sh block under HEADING (comments and blank lines left out)."""
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```$", section, re.M | re.S)
    assert block, f"no ```sh block under {HEADING!r}"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Debian's default pg_hba.conf (postgresql-common), without its replication lines.
DEBIAN_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""


class DebianLikeCluster:
    """A cluster in a temporary directory, owned by postgres, authenticating as Debian's does."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="c4-pg-readme-"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self.as_postgres("initdb", "-D", str(self.data), "-U", "postgres", "--no-sync", "-E", "UTF8",
                         "--auth-local=peer", "--auth-host=scram-sha-256")
        (self.data / "pg_hba.conf").write_text(DEBIAN_HBA)
        self.options = (f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c full_page_writes=off -c password_encryption=scram-sha-256")

    def as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True, capture_output=True,
                       timeout=120, cwd=self.dir)

    def pg_ctlcluster_stand_in(self, bin_dir: Path) -> None:
        """``pg_ctlcluster VERSION CLUSTER status|start`` for this cluster."""
        ctl = f"runuser -u postgres -- {self.bin / 'pg_ctl'} -D {self.data}"
        script = bin_dir / "pg_ctlcluster"
        script.write_text(
            "#!/bin/sh\n# tests/test_readme_postgres.py: Debian's pg_ctlcluster, for the throwaway cluster\n"
            'case "$3" in\n'
            f"  status) exec {ctl} status ;;\n"
            f"  start) exec {ctl} -o \"{self.options}\" -l {self.dir}/server.log -w start ;;\n"
            "esac\nexit 2\n"
        )
        script.chmod(0o755)

    def destroy(self) -> None:
        try:
            self.as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster():
    made = DebianLikeCluster()
    yield made
    made.destroy()


def http(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_readme_postgresql_steps_run_as_written(cluster, tmp_path):
    steps = readme_steps()
    node = steps[-1]
    assert node.startswith(".venv/bin/c4 kamailio "), f"the last step is no longer the node: {node}"
    work = tmp_path / "work"
    bin_dir = tmp_path / "bin"
    for made in (work, bin_dir):
        made.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "c4kemi").symlink_to(ROOT / "c4kemi")
    cluster.pg_ctlcluster_stand_in(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PGHOST": str(cluster.dir), "PGPORT": str(cluster.port)}
    for name in ("C4_DSN", "C4_API_TOKEN", "C4_STATE_DIR", "PGUSER", "PGDATABASE", "PGPASSWORD"):
        env.pop(name, None)

    # Steps 1 to 4, then the environment they leave for the node.
    script = "set -euo pipefail\n" + "\n".join(steps[:-1]) + f"\nenv -0 > {tmp_path / 'env'}\n"
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the README's steps failed:\n{result.stdout}\n{result.stderr}"
    after = dict(item.split("=", 1) for item in (tmp_path / "env").read_text().split("\0") if "=" in item)
    dsn, token = after["C4_DSN"], after["C4_API_TOKEN"]
    assert re.fullmatch(r"postgresql://c4:[0-9a-f]{32}@127\.0\.0\.1/c4", dsn), dsn
    assert re.search(r"^c4t_\S+$", result.stdout, re.M), "c4 db token create printed no token"
    backup = json.loads((work / "backup.json").read_text())
    assert {tenant["name"] for tenant in backup["tenants"]} == {"acme", "globex"}

    # Step 5, the node, on free ports; stopped as systemd would, with SIGTERM.
    api_port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
    line = node.replace("127.0.0.1:8080", f"127.0.0.1:{api_port}").replace("127.0.0.1:5060", f"127.0.0.1:{sip_port}")
    assert line != node and str(api_port) in line and str(sip_port) in line
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=work, env={**after, "C4_STATE_DIR": str(tmp_path / "state")},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = http(f"http://127.0.0.1:{api_port}/api/v1/tenants", token)
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, f"the node's API never answered the admin token (last: {status}):\n{log.read_text()[-3000:]}"
        assert {item["name"] for item in json.loads(body)["items"]} == {"acme", "globex"}, body
        assert http(f"http://127.0.0.1:{api_port}/api/v1/tenants")[0] == 401  # no token, no answer
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]

    exported = subprocess.run([str(ROOT / ".venv" / "bin" / "c4"), "db", "export"], cwd=work, env=after,
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    imported = load_document(ROOT / "c4kemi" / "examples" / "example.json")
    document = json.loads(exported.stdout)
    for name, items in imported.items():
        assert sorted(json.dumps(i, sort_keys=True) for i in document[name]) == sorted(json.dumps(i, sort_keys=True) for i in items), name
