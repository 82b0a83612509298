"""Where a node keeps its state, and how secrets reach it without the command line.

Every instance on a host has a state directory of its own (``--state-dir``,
``$C4_STATE_DIR``, else one per instance: ``/var/lib/c4/INSTANCE`` as root,
``$XDG_STATE_HOME/c4/INSTANCE`` otherwise), holding its deployment secret,
its copy of the PostgreSQL table and its call-record spool: two instances
never share a file by accident. INSTANCE is ``--instance``, else the first
listen address (``udp-127.0.0.1-5060``).

Secrets (the DSN with its password, the API's admin token) come from the
environment (``$C4_DSN``, ``$C4_API_TOKEN``: a systemd EnvironmentFile) or
from a file (``--dsn-file``, ``--api-token-file``), never from argv, which
every local user can read in ``ps``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = ["SecretFileError", "default_state_dir", "instance_name", "read_secret_file"]

LEGACY_STATE_DIR = Path("/var/lib/c4")  # before per-instance state (its secret is still used if found there)


class SecretFileError(Exception):
    """A secret file cannot be used; the message says why (never its content)."""


def instance_name(text: str) -> str:
    """A directory name for an instance (or a listen socket: udp:127.0.0.1:5060 -> udp-127.0.0.1-5060): one path part, never . or .."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
    return name if name.strip(".") else "c4"


def default_state_dir(instance: str) -> Path:
    """$C4_STATE_DIR, else the instance's directory under /var/lib/c4 (root) or $XDG_STATE_HOME/c4."""
    explicit = os.environ.get("C4_STATE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return LEGACY_STATE_DIR / instance
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "c4" / instance


def read_secret_file(path: str | Path, what: str) -> str:
    """The first line of a secret file, stripped; refused when others may read it or it is empty."""
    path = Path(path)
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretFileError(f"{what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} file {path}: not UTF-8 text") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"{what} file {path}: readable by others (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it")
    value = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise SecretFileError(f"{what} file {path}: empty")
    return value
