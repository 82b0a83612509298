"""A trunk's or IPBX's target: the SIP URIs Kamailio can send to, and the ones ``c4 check`` warns about."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

__all__ = ["target_problem", "target_warnings"]

# A target: sip:/sips: host[:port][;params], the host an IPv4 address, an
# [IPv6] reference or a host name; no user part (the decision adds the
# called number) and no URI headers.
_TARGET = re.compile(
    r"sips?:(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<params>(?:;[A-Za-z0-9_.!~*'()%-]+(?:=[A-Za-z0-9_.!~*'()%\[\]:-]+)?)*)"
)


def target_problem(value: Any) -> str | None:
    """Why a trunk or IPBX target is not a URI Kamailio can send to, or None."""
    found = _TARGET.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        return "not of the form sip:host[:port][;params]"
    host, port = found["host"], found["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        return f"port {port} out of range"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"bad IPv6 address {host}"
    elif host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"bad IPv4 address {host}"
    return None


def target_warnings(document: dict[str, Any]) -> list[str]:
    """What ``c4 check`` warns about in a valid document: targets that may not be reachable.

    A host name is resolved by DNS in the SIP worker at every relay, and a
    name that does not resolve fails that branch (the next route is tried).
    """
    warnings = []
    for collection, field_name in (("ipbxs", "targets"), ("trunks", "target")):
        for entity in document.get(collection, []):
            values = entity[field_name] if isinstance(entity[field_name], list) else [entity[field_name]]
            for index, target in enumerate(values):
                found = _TARGET.fullmatch(target)
                host = found["host"] if found else ""
                if host and not host.startswith("[") and not host.replace(".", "").isdigit():
                    where = f"{collection}[{entity['name']}].{field_name}" + (f"[{index}]" if field_name == "targets" else "")
                    warnings.append(
                        f"{where}: host name {host!r} is looked up by DNS on every call it is tried for; "
                        "use an IP address unless the name is in /etc/hosts or a local resolver"
                    )
    return warnings

