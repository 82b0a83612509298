"""A throwaway PostgreSQL cluster for the test run: real server, unix socket only.

``initdb`` and ``pg_ctl`` (Debian's /usr/lib/postgresql/N/bin, installed by
``make setup``) build a cluster in a temporary directory; as root they run
as the ``postgres`` user, as PostgreSQL refuses to run as root. The server
listens on a socket in that directory, on no TCP port. Tests get a fresh
database each (``create_database``), and the adversity tests stop and
start the whole server (``stop``/``start``) while the code under test runs.

``Replica(primary)`` is a streaming standby of a running ``Cluster``
(``pg_basebackup -R``: its own directory, socket and port), for the
failover tests: ``promote()`` makes it the primary; ``multi_dsn`` names
both servers in one DSN, as a node does that must find the primary.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (make setup installs them)")
    return Path(found[-1]).parent


class Cluster:
    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="c4-pg-"))
        self.data = self.dir / "data"
        with socket.socket() as sock:  # the port only names the socket file; nothing listens on TCP
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bin / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd=self.dir)

    def start(self) -> None:
        options = f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}&port={self.port}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir),
             "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return result.stdout.strip()

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return name

    def is_in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Replica(Cluster):
    """A hot standby streaming from ``primary`` (which must be running), started at once."""

    def __init__(self, primary: Cluster) -> None:  # no initdb: the data is the primary's base backup
        self.bin = primary.bin
        self.dir = Path(tempfile.mkdtemp(prefix="c4-pg-replica-"))
        self.data = self.dir / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.as_root = primary.as_root
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        # -R: standby.signal and primary_conninfo (the primary's socket); initdb's trust covers replication too.
        self._run("pg_basebackup", "-h", str(primary.dir), "-p", str(primary.port), "-U", "postgres", "-D", str(self.data),
                  "-R", "-X", "stream", "-c", "fast", "--no-sync")
        self.start()

    def promote(self) -> None:
        """pg_ctl promote, waiting until it takes writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def wait_replayed(self, primary: Cluster, timeout: float = 10.0) -> None:
        """Until everything the primary has written so far is replayed here."""
        lsn = primary.psql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while self.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") != "t":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica did not replay up to {lsn} in {timeout} s")
            time.sleep(0.02)


def multi_dsn(database: str, *servers: Cluster, attrs: str | None = None) -> str:
    """One DSN naming every server, in order (the sockets form of libpq: host and port lists)."""
    hosts = ",".join(str(server.dir) for server in servers)
    ports = ",".join(str(server.port) for server in servers)
    return f"postgresql://postgres@/{database}?host={hosts}&port={ports}" + (f"&target_session_attrs={attrs}" if attrs else "")
