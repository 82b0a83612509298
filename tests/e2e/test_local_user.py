"""A local user who is not the node gets no trunk password, from any port or file of the node.

Run as a real unprivileged user (``useradd``), against a node started the
way operators start it (``c4 kamailio``; in HTTP mode ``--serve-api``, so
the launcher's own c4 serve). The user POSTs the routing query to every
TCP port the node listens on, reads every command line and environment
under /proc, and every file it can reach in the node's runtime
directories and the KEMI mode's rtjson dump. The password must appear
nowhere; the controls show that the node itself still gets it (a real
call answered with digest credentials needs it) and that a query with the
routing key does get it, so the refusal is the key's doing.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from c4kemi.node.secret import ROUTING_ENV, default_path, kamailio_env, load_or_create

from .documents import CALLER_E164, OUT_CALLED_E164, PBX, TRUNK_A, routing_document
from .flood import group_pids, listening_ports

USER = "c4-stranger"
PASSWORD = "Zq-trunk-pass-7731"  # found nowhere but where the node needs it
AUTH = {"username": "c4user", "password": PASSWORD, "realm": "carrier-a.example"}

# What the stranger runs: stdlib only, everything it gets printed as JSON.
PROBE = r"""
import glob, json, os, socket, sys
ports, paths = json.loads(sys.argv[1]), sys.argv[2:]
query = json.dumps({"source_ip": "127.0.0.10", "ruri": "sip:0298765432@x", "from_uri": "sip:0611111111@x",
                    "to_uri": "sip:0298765432@x", "call_id": "stranger"}).encode()
request = (b"POST /kamailio/rtjson HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(query)) + query
got = {"ports": {}, "files": {}, "proc": []}
for port in ports:
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(request)
            while len(data) < 1 << 20:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        data += repr(exc).encode()
    got["ports"][port] = data.decode("utf-8", "replace")
for pattern in paths:
    for path in glob.glob(pattern, recursive=True):
        try:
            with open(path, "rb") as f:
                got["files"][path] = f.read(1 << 20).decode("utf-8", "replace")
        except OSError as exc:
            got["files"][path] = repr(exc)
for pid in os.listdir("/proc"):
    for name in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                got["proc"].append(f.read().decode("utf-8", "replace"))
        except OSError:
            pass
print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def stranger() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to add a local user (CI runs as root)")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    return USER


@pytest.fixture
def dump_dir():
    """A directory any local user may list (unlike pytest's tmp_path): only the files' own modes protect them."""
    path = Path(tempfile.mkdtemp(prefix="c4-test-dump-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_local_user_gets_no_trunk_password(router, sipp, stranger, dump_dir, tmp_path):
    dump = dump_dir
    carrier = sipp.uas("uas_auth.xml", TRUNK_A, code=401, reason="Unauthorized", challenge="WWW-Authenticate", realm=AUTH["realm"])
    document = routing_document(trunk_a_port=carrier.port, trunk_a_auth=AUTH)
    extra = ["--cdr-file", str(tmp_path / "cdr.jsonl")]
    if router.mode == "http":  # the launcher's own c4 serve, with the routing key
        extra += ["--serve-api", "--table", str(router.workdir / "table.json")]
        node = router.start(document, api=None, extra_args=extra)
    else:
        node = router.start(document, extra_args=extra, env={"C4_RTJSON_DUMP": str(dump)})
    # The node itself: a call the carrier challenges is answered with the password.
    caller = sipp.uac("uac_call.xml", node.target, PBX, called=OUT_CALLED_E164, caller=CALLER_E164)
    assert caller.wait() == 0 and carrier.wait() == 0, sipp.describe_all()
    assert len(carrier.received("INVITE")) == 2  # challenged, then answered with the credentials

    ports = listening_ports(group_pids(node.proc.pid))  # the launcher leads the node's process group
    paths = [f"{dump}/**", "/tmp/c4-kamailio-*/**", f"{default_path().parent}/**", "/var/lib/c4/**"]
    probe = subprocess.run(["runuser", "-u", stranger, "--", sys.executable, "-I", "-c", PROBE, json.dumps(ports), *paths],
                           capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert PASSWORD not in probe.stdout, {k: v for k, v in got.items() if PASSWORD in json.dumps(v)}

    if router.mode == "http":
        api_port = int(node.api_url.rsplit(":", 1)[1])
        assert api_port in ports
        assert got["ports"][str(api_port)].startswith("HTTP/1.1 401"), got["ports"][str(api_port)][:300]
        # Control: with the node's routing key the same query gets the password.
        key = kamailio_env(load_or_create(default_path()))[ROUTING_ENV]
        query = {"source_ip": PBX, "ruri": f"sip:{OUT_CALLED_E164}@x", "from_uri": f"sip:{CALLER_E164}@x",
                 "to_uri": f"sip:{OUT_CALLED_E164}@x", "call_id": "root"}  # fmt: skip
        request = urllib.request.Request(f"{node.api_url}/kamailio/rtjson", data=json.dumps(query).encode(),
                                         headers={"Content-Type": "application/json", "X-C4-Routing-Key": key})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            assert PASSWORD in response.read().decode()
    else:
        dumps = list(dump.iterdir())
        assert dumps and all(path.stat().st_mode & 0o777 == 0o600 for path in dumps), dumps
        assert PASSWORD in dumps[0].read_text()  # control: it is there, for root
        assert all("PermissionError" in got["files"][str(path)] for path in dumps), got["files"]
