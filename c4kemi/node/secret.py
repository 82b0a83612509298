"""The deployment secret: created once, kept across restarts, never shipped.

Kamailio needs keys that must not be constants in the repository:

- ``uac``'s ``restore_passwd``, which encodes the caller's original From/To
  URIs into the Record-Route parameters (``c4f``/``c4t``) so in-dialog
  requests can be restored; with a public password anyone on the path could
  decode them;
- the dialog key, with which the router signs the Record-Route it adds to
  each call it routes (``c4d``) and checks in-dialog requests against: only
  requests within a dialog this router record-routed are relayed;
- the routing key (HTTP mode), which Kamailio sends with every routing
  query and c4 serve requires (``C4_ROUTING_KEY`` in both environments):
  the reply holds trunk passwords, so no other local process may get one;
- the call record key (``C4_CDR_KEY``, in Kamailio's and ``c4 cdr``'s
  environments), with which ``c4 cdr`` authenticates on Kamailio's evapi
  socket: only then does it get call events (docs/cdr.md).

All are derived (HMAC-SHA256 with distinct labels) from one random secret
kept in a file, so one key leaking does not give the other: uac's encoding
is a XOR with its password, which a caller who knows its own URI could partly
recover. The file is created on first start with mode 0600 (32 random bytes,
hex) and reused afterwards, so dialogs that outlive a restart still restore
and still pass the check. Every node that can receive in-dialog requests of
another node's dialogs must share the file.

Where: ``--secret-file`` of ``c4 kamailio``, else ``$C4_SECRET_FILE``, else
``$C4_STATE_DIR/secret``, else ``/var/lib/c4/secret`` (root) or
``$XDG_STATE_HOME/c4/secret`` (``~/.local/state/c4/secret``). A file that
group or others can read is refused. The keys reach Kamailio in its
environment (``C4_UAC_PASSWD``, ``C4_DIALOG_KEY``, ``C4_ROUTING_KEY``; readable
only by its own user), never on its command line; the configs refuse to start
without them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

__all__ = ["SecretError", "default_path", "load_or_create", "kamailio_env", "dialog_mac", "ROUTING_ENV", "CDR_KEY_ENV", "SECRET_ENV"]

UAC_ENV = "C4_UAC_PASSWD"
DIALOG_ENV = "C4_DIALOG_KEY"
# HTTP mode: Kamailio proves to c4 serve that it is this node's Kamailio
# (the routing reply carries trunk passwords), in a header of every query.
ROUTING_ENV = "C4_ROUTING_KEY"
# Call records: c4 cdr authenticates with it on evapi (kamailio-cdr.cfg).
CDR_KEY_ENV = "C4_CDR_KEY"
SECRET_ENV = (UAC_ENV, DIALOG_ENV, ROUTING_ENV, CDR_KEY_ENV)
MAC_LENGTH = 32  # hex digits of the Record-Route signature kept (128 bits)


class SecretError(Exception):
    """The secret file cannot be used; the message says why."""


def default_path() -> Path:
    explicit = os.environ.get("C4_SECRET_FILE")
    if explicit:
        return Path(explicit)
    state = os.environ.get("C4_STATE_DIR")
    if state:
        return Path(state) / "secret"
    if os.geteuid() == 0:
        return Path("/var/lib/c4/secret")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "c4" / "secret"


def load_or_create(path: str | Path | None = None) -> bytes:
    """The secret in PATH, created (0600, in a 0700 directory) if missing."""
    path = Path(path) if path else default_path()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another launcher just made it: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"{path}: readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
        text = path.read_text().strip()
    except OSError as exc:
        raise SecretError(f"{path}: {exc.strerror or exc}") from None
    if len(text) < 32:
        raise SecretError(f"{path}: too short to be a secret (want at least 32 characters, e.g. 64 hex digits)")
    return text.encode()


def _derive(secret: bytes, label: str) -> str:
    return hmac.new(secret, b"c4 " + label.encode(), hashlib.sha256).hexdigest()


def kamailio_env(secret: bytes) -> dict[str, str]:
    """The keys Kamailio's configs read from the environment (#!defenvs)."""
    return {UAC_ENV: _derive(secret, "uac restore"), DIALOG_ENV: _derive(secret, "dialog"), ROUTING_ENV: _derive(secret, "routing"),
            CDR_KEY_ENV: _derive(secret, "call records")}


def dialog_mac(dialog_key: str, call_id: bytes) -> str:
    """The Record-Route signature of a dialog, as route[DIALOG_MAC] computes it.

    sha256(key ":" sha256(key ":" Call-ID)), hex, first MAC_LENGTH digits:
    written with Kamailio's {s.sha256} transformation in kamailio-base.cfg
    (no HMAC there), nested so that no length extension applies. KEMI mode
    signs its INVITEs' Record-Route with this; both modes check it natively.
    """
    inner = hashlib.sha256(dialog_key.encode() + b":" + call_id).hexdigest()
    return hashlib.sha256(f"{dialog_key}:{inner}".encode()).hexdigest()[:MAC_LENGTH]
