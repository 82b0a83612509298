"""The routing document as rows: import (replace everything) and export.

The document is the unit the rest of c4 understands, so the database
speaks it both ways: ``import_document`` writes a checked document in one
transaction, ``export_document`` reads one back from a consistent snapshot,
with the routing version it corresponds to. Import then export gives the
document ``c4kemi.core.document`` normalises (defaults filled in, sources as
CIDRs, route trunks as ``{trunk, priority, weight}``), order aside.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import asyncpg
import orjson

from ..core.health import DEFAULTS as HEALTH_DEFAULTS
from .dsn import connect_raw

__all__ = ["connect", "did_entity", "endpoint_health", "route_extras", "tenant_blocks", "export_document", "read_document", "read_routes", "import_document", "routing_version", "setup_connection"]

# Routing tables, the ones referring to others first (TRUNCATE takes them together).
ROUTING_TABLES = ("route_trunks", "routes", "dids", "sources", "trunks", "ipbxs", "carriers", "normalization_profiles")


async def setup_connection(conn: asyncpg.Connection) -> None:
    """jsonb as Python values (through orjson) on every connection.

    Binary format, which COPY needs: a version byte (1), then the JSON text.
    """
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary",
        encoder=lambda value: b"\x01" + orjson.dumps(value), decoder=lambda data: orjson.loads(data[1:]),
    )


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """A connection with c4's codecs, through any DSN form c4 takes (several hosts: the one that is read-write; dsn.py)."""
    conn = await connect_raw(dsn, **kwargs)
    await setup_connection(conn)
    return conn


async def routing_version(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT version FROM routing_version")


def _endpoint(row: asyncpg.Record, sources: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "normalization": row["normalization"],
        "fr_timer": row["fr_timer"],
        "fr_inv_timer": row["fr_inv_timer"],
        "branch_flags": row["branch_flags"],
        "sources": sources.get(row["name"], []),
        **({"allow_wide_sources": True} if row["allow_wide_sources"] else {}),
        **endpoint_health(row),
    }


def endpoint_health(row: asyncpg.Record) -> dict[str, Any]:
    """A trunk's or an IPBX's health as the document has it: only when set (NULL: absent).

    jsonb keeps an object's members in its own order; they read back in the
    document's (``health.DEFAULTS``), anything else after them (for the checks to name).
    """
    health = row["health"]
    if health is None:
        return {}
    if isinstance(health, dict):
        health = {**{key: health[key] for key in HEALTH_DEFAULTS if key in health}, **health}
    return {"health": health}


def route_extras(row: asyncpg.Record) -> dict[str, Any]:
    """A route's optional fields as the document has them: when_all_down only when set (NULL: absent)."""
    return {"when_all_down": row["when_all_down"]} if row["when_all_down"] is not None else {}


def _limits(row: asyncpg.Record, *columns: str) -> dict[str, int]:
    """Channel limits as the document has them: only those set (NULL: no limit)."""
    return {column: row[column] for column in columns if row[column] is not None}


def tenant_blocks(row: asyncpg.Record) -> dict[str, list[str]]:
    """A tenant's number and address blocks as the document has them: only those assigned."""
    return {column: [str(block) for block in row[column]] for column in ("number_blocks", "address_blocks") if row[column]}


def _number(value: float) -> int | float:
    """Weights are double precision in the database; 1.0 reads back as 1."""
    return int(value) if value.is_integer() else value


async def export_document(conn: asyncpg.Connection) -> tuple[dict[str, Any], int]:
    """The whole routing document and its routing version, from one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await read_document(conn), await routing_version(conn)


def did_entity(row: asyncpg.Record) -> dict[str, Any]:
    return {"tenant": row["tenant"], "prefix": row["prefix"], "ipbx": row["ipbx"], "match": row["match"]}


async def read_routes(conn: asyncpg.Connection, where: str = "", *args: Any) -> list[dict[str, Any]]:
    """Routes as the document has them (``where``: a condition on tenant and prefix, for a few keys)."""
    choices: dict[tuple[str, str], list[dict]] = {}
    for row in await conn.fetch(f"SELECT * FROM route_trunks {where} ORDER BY tenant, prefix, position", *args):
        choices.setdefault((row["tenant"], row["prefix"]), []).append(
            {"trunk": row["trunk"], "priority": row["priority"], "weight": _number(row["weight"])}
        )
    return [
        {"tenant": row["tenant"], "prefix": row["prefix"], "trunks": choices.get((row["tenant"], row["prefix"]), []), **route_extras(row)}
        for row in await conn.fetch(f"SELECT tenant, prefix, when_all_down FROM routes {where} ORDER BY tenant, prefix", *args)
    ]


async def read_document(conn: asyncpg.Connection) -> dict[str, Any]:
    """The whole routing document, in the caller's transaction (one snapshot)."""
    ipbx_sources: dict[str, list[str]] = {}
    trunk_sources: dict[str, list[str]] = {}
    for row in await conn.fetch("SELECT cidr, ipbx, trunk FROM sources ORDER BY ipbx, trunk, position"):
        owner = ipbx_sources.setdefault(row["ipbx"], []) if row["ipbx"] else trunk_sources.setdefault(row["trunk"], [])
        owner.append(str(row["cidr"]))
    doc: dict[str, Any] = {
        "tenants": [
            {"name": row["name"], **_limits(row, "max_channels"), **tenant_blocks(row)}
            for row in await conn.fetch("SELECT name, max_channels, number_blocks, address_blocks FROM tenants ORDER BY name")
        ],
        "normalization_profiles": [
            dict(row) for row in await conn.fetch(
                "SELECT name, country_code, intl_prefix, ld_prefix, always_plus, to_e164, from_e164"
                " FROM normalization_profiles ORDER BY name"
            )
        ],
        "ipbxs": [
            {"name": row["name"], "tenant": row["tenant"], "targets": list(row["targets"]), **_endpoint(row, ipbx_sources)}
            for row in await conn.fetch("SELECT * FROM ipbxs ORDER BY name")
        ],
        "carriers": [dict(row) for row in await conn.fetch("SELECT name, tenant FROM carriers ORDER BY name")],
        "trunks": [
            {
                "name": row["name"], "carrier": row["carrier"], "target": row["target"], **_endpoint(row, trunk_sources),
                "auth": {"username": row["auth_username"], "password": row["auth_password"], "realm": row["auth_realm"]}
                if row["auth_username"] is not None else None,
                **_limits(row, "max_channels", "max_cps"),
            }
            for row in await conn.fetch("SELECT * FROM trunks ORDER BY name")
        ],
        "dids": [did_entity(row) for row in await conn.fetch("SELECT tenant, prefix, ipbx, match FROM dids ORDER BY prefix")],
        "routes": await read_routes(conn),
    }
    return doc


async def import_document(conn: asyncpg.Connection, doc: dict[str, Any]) -> int:
    """Replace all routing data with a document already checked by c4kemi.core.document.

    One transaction: readers see the old table or the new one, never a mix.
    Tenants that stay keep their API tokens. Returns the new routing version.
    """
    async with conn.transaction():
        await conn.execute("TRUNCATE " + ", ".join(ROUTING_TABLES))
        tenants = [t["name"] for t in doc["tenants"]]
        await conn.execute("DELETE FROM tenants WHERE NOT (name = ANY($1::text[]))", tenants)
        await conn.executemany(
            "INSERT INTO tenants (name, max_channels, number_blocks, address_blocks) VALUES ($1, $2, $3, $4::text[]::cidr[])"
            " ON CONFLICT (name) DO UPDATE SET max_channels = EXCLUDED.max_channels,"
            " number_blocks = EXCLUDED.number_blocks, address_blocks = EXCLUDED.address_blocks",
            [(t["name"], t.get("max_channels"), t.get("number_blocks", []), t.get("address_blocks", [])) for t in doc["tenants"]],
        )
        await _copy(conn, "normalization_profiles", [
            (p["name"], p["country_code"], p["intl_prefix"], p["ld_prefix"], p["always_plus"], p["to_e164"], p["from_e164"])
            for p in doc["normalization_profiles"]
        ], ["name", "country_code", "intl_prefix", "ld_prefix", "always_plus", "to_e164", "from_e164"])
        await _copy(conn, "carriers", [(c["name"], c["tenant"]) for c in doc["carriers"]], ["name", "tenant"])
        endpoint_columns = ["normalization", "fr_timer", "fr_inv_timer", "branch_flags"]
        await _copy(conn, "ipbxs", [
            (i["name"], i["tenant"], i["targets"], *(i[c] for c in endpoint_columns), i.get("allow_wide_sources", False),
             i.get("health"))
            for i in doc["ipbxs"]
        ], ["name", "tenant", "targets", *endpoint_columns, "allow_wide_sources", "health"])
        await _copy(conn, "trunks", [
            (t["name"], t["carrier"], t["target"], *(t[c] for c in endpoint_columns), t.get("allow_wide_sources", False),
             *((t["auth"]["username"], t["auth"]["password"], t["auth"]["realm"]) if t.get("auth") else (None, None, None)),
             t.get("max_channels"), t.get("max_cps"), t.get("health"))
            for t in doc["trunks"]
        ], ["name", "carrier", "target", *endpoint_columns, "allow_wide_sources", "auth_username", "auth_password", "auth_realm",
            "max_channels", "max_cps", "health"])
        await _copy(conn, "sources", [
            (ipaddress.ip_network(cidr), entity["name"] if kind == "ipbxs" else None, entity["name"] if kind == "trunks" else None, position)
            for kind in ("ipbxs", "trunks") for entity in doc[kind] for position, cidr in enumerate(entity["sources"])
        ], ["cidr", "ipbx", "trunk", "position"])
        await _copy(conn, "dids", [(d["tenant"], d["prefix"], d["ipbx"], d.get("match")) for d in doc["dids"]],
                    ["tenant", "prefix", "ipbx", "match"])
        await _copy(conn, "routes", [(r["tenant"], r["prefix"], r.get("when_all_down")) for r in doc["routes"]],
                    ["tenant", "prefix", "when_all_down"])
        await _copy(conn, "route_trunks", [
            (r["tenant"], r["prefix"], position, c["trunk"], c["priority"], float(c["weight"]))
            for r in doc["routes"] for position, c in enumerate(r["trunks"])
        ], ["tenant", "prefix", "position", "trunk", "priority", "weight"])
        # The TRUNCATE's statement triggers bumped the version and queued the NOTIFY.
        return await routing_version(conn)


async def _copy(conn: asyncpg.Connection, table: str, records: list[tuple], columns: list[str]) -> None:
    if records:
        await conn.copy_records_to_table(table, records=records, columns=columns)
