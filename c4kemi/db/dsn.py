"""DSNs as a PostgreSQL user writes them, several servers included, and connecting through them.

c4 takes the two libpq forms (docs/postgresql.md, "Several servers and failover"):

- a URI, ``postgresql://c4:PW@10.0.0.1:5432,10.0.0.2:5432/c4?target_session_attrs=read-write``,
  the sockets form too: ``postgresql://postgres@/c4?host=/run/a,/run/b&port=5432,5433``;
- keyword/value, ``host=10.0.0.1,10.0.0.2 port=5432 dbname=c4 user=c4 password='a b'``,
  which asyncpg does not parse: ``normalize`` makes it a URI.

With several hosts and no ``target_session_attrs``, every c4 connection asks
for ``read-write`` (libpq's default is ``any``): the API, ``c4 cdr`` and
``c4 db import``/``migrate`` write, and the follower needs ``LISTEN``, which a
standby refuses, and must not keep reading a standby that stopped
replaying when its primary was lost. A ``target_session_attrs`` given is kept.

``connect_raw`` tries the hosts in order, each with its own timeout (libpq's
``connect_timeout``, per host): asyncpg's own multi-host connect spends one
timeout on all of them, so a first host that drops packets (a dead machine,
no reset) would use it up and the second never be tried. When no host is
what is asked for, it raises ``NoServerMatches`` (an ``OSError``, so the API
says 503 ``database unavailable`` as for any database that does not answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg

__all__ = ["NoPrimaryFound", "NoServerMatches", "Dsn", "connect_raw", "describe", "normalize", "parse"]

DEFAULT_ATTRS = "read-write"
# libpq keywords that are the connection's, not the server's (asyncpg sends unknown ones as server settings).
_URI_KEYS = {"host", "hostaddr", "port", "dbname", "user", "password"}


class NoServerMatches(ConnectionError):
    """No host of the DSN answered as ``target_session_attrs`` asks (an OSError: PostgreSQL unavailable)."""


class NoPrimaryFound(NoServerMatches):
    """No host of the DSN takes writes now: the primary is down, or a standby is not promoted yet."""


@dataclass
class Dsn:
    """A DSN made asyncpg's: ``uri``, its hosts in order ((host, port or None)), what a server must be."""

    uri: str
    hosts: list[tuple[str, int | None]] = field(default_factory=list)
    attrs: str | None = None  # target_session_attrs, after the several-hosts default
    timeout: float | None = None  # connect_timeout, per host


_KEYWORD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*")


def _keywords(text: str) -> dict[str, str]:
    """libpq's keyword/value form: ``key=value`` pairs, values bare or single-quoted (\\' and \\\\ inside)."""
    pairs: dict[str, str] = {}
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _KEYWORD.match(text, at)
        if match is None:
            raise ValueError(f"not a PostgreSQL DSN (URI or key=value): unreadable at character {at + 1} (not shown: it may hold a password)")
        key, at = match.group(1), match.end()
        if text[at:at + 1] == "'":
            value, at = [], at + 1
            while True:
                if at >= len(text):
                    raise ValueError(f"unterminated quoted value of {key} in the DSN")
                char = text[at]
                if char == "\\" and at + 1 < len(text):
                    value.append(text[at + 1])
                    at += 2
                elif char == "'":
                    at += 1
                    break
                else:
                    value.append(char)
                    at += 1
            pairs[key] = "".join(value)
        else:
            end = at
            while end < len(text) and not text[end].isspace():
                end += 1
            pairs[key] = text[at:end]
            at = end
    return pairs


def _keywords_to_uri(pairs: dict[str, str]) -> str:
    """A URI with everything in its query (no path: asyncpg then takes ``dbname`` from the query)."""
    query = dict(pairs)
    if "hostaddr" in query and "host" not in query:
        query["host"] = query.pop("hostaddr")
    else:
        query.pop("hostaddr", None)
    if "host" in query:  # asyncpg reads host:port in a query host list: an IPv6 address needs its brackets
        query["host"] = ",".join(f"[{h}]" if ":" in h and not h.startswith(("/", "[")) else h for h in query["host"].split(","))
    return "postgresql://?" + _query(list(query.items()))


def _query(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, safe="/,:[]", quote_via=quote)


def _split_hostspec(spec: str) -> list[tuple[str, int | None]]:
    hosts = []
    for item in spec.split(","):
        if item.startswith("["):
            address, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif item.startswith("/"):
            address, port = item, ""
        else:
            address, _, port = item.partition(":")
        hosts.append((unquote(address), int(port) if port else None))
    return hosts


def parse(dsn: str) -> Dsn:
    """The DSN in asyncpg's form, its hosts, and the target_session_attrs c4 uses (read-write with several hosts)."""
    dsn = dsn.strip()
    if "://" not in dsn:
        dsn = _keywords_to_uri(_keywords(dsn))
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL DSN: the scheme is {parts.scheme!r}, not postgresql://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    timeout = None
    changed = False
    if "connect_timeout" in params:  # libpq's, per host; asyncpg would send it to the server as a setting
        try:
            timeout = float(params["connect_timeout"])
        except ValueError:
            raise ValueError(f"connect_timeout={params['connect_timeout']!r} in the DSN is not a number of seconds") from None
        timeout = timeout if timeout > 0 else None  # libpq: 0 is no timeout
        query = [(key, value) for key, value in query if key != "connect_timeout"]
        changed = True
    spec = parts.netloc.rpartition("@")[2]
    hosts = _split_hostspec(spec) if spec else []
    if not hosts and params.get("host"):
        hosts = _split_hostspec(params["host"])
    if "port" in params and params["port"]:
        ports = [int(p) for p in params["port"].split(",")]
        if len(ports) not in (1, len(hosts) or 1):
            raise ValueError(f"the DSN has {len(hosts)} hosts and {len(ports)} ports: give one port, or one per host")
        if hosts:
            hosts = [(host, port or ports[0 if len(ports) == 1 else i]) for i, (host, port) in enumerate(hosts)]
    attrs = params.get("target_session_attrs")
    if attrs is None and len(hosts) > 1:
        attrs = DEFAULT_ATTRS
        query.append(("target_session_attrs", attrs))
        changed = True
    uri = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{_query(query)}" if query else "") if changed else dsn
    return Dsn(uri, hosts, attrs, timeout)


def normalize(dsn: str) -> str:
    """The DSN as asyncpg takes it (see ``parse``)."""
    return parse(dsn).uri


def describe(dsn: str) -> str:
    """Where a DSN points, without user or password: ``host:port,host:port`` (and what a server must be)."""
    try:
        found = parse(dsn)
    except ValueError:
        return "an unreadable DSN"
    where = ",".join(_where(host, port) for host, port in found.hosts) or "the local socket"
    return f"{where} ({found.attrs})" if found.attrs and found.attrs != "any" else where


def _where(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


async def connect_raw(dsn: str, *, timeout: float = 60.0, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect on the DSN, hosts tried in order, each given the whole ``timeout`` (or the DSN's connect_timeout).

    The pool's ``connect`` too (it passes ``loop``, ``connection_class``, ``record_class``).
    """
    found = parse(dsn)
    per_host = found.timeout or timeout
    if len(found.hosts) < 2:
        return await asyncpg.connect(found.uri, timeout=per_host, **kwargs)
    passes = ["standby", "any"] if found.attrs == "prefer-standby" else [found.attrs or "any"]
    problems: list[str] = []
    for attrs in passes:
        for host, port in found.hosts:
            where = _where(host, port)
            try:
                return await asyncpg.connect(found.uri, host=host, port=port, timeout=per_host, target_session_attrs=attrs,
                                             **kwargs)
            except asyncpg.TargetServerAttributeNotMatched:
                problems.append(f"{where}: not {attrs}")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Down, restarting, starting up, refusing: the next host may answer. A wrong password is the
                # same on every host and is said for each; the last error is raised below with all of them.
                problems.append(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
    error = NoPrimaryFound if found.attrs in ("read-write", "primary") else NoServerMatches
    raise error(f"no server of the DSN is {found.attrs} now ({'; '.join(problems)})")
