"""The provisioning API's SQL: how each collection lives in PostgreSQL, read and written.

Items come out in the checked form of the routing document (as ``c4 db
export`` prints them), limited to what the caller may read
(``visible``); writes go in as ``c4 db import`` would store them. The
queries the tenant space checks need (c4http.space) are here too, and
what a constraint says when the checks could not foresee it
(``database_refusal``). Nothing here decides who may do what: that is
c4http.access and c4http.space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from c4kemi.db.documents import endpoint_health, route_extras, tenant_blocks

from .access import ACCESS
from .auth import Principal
from .web import ApiError

__all__ = [
    "COLLECTIONS", "LIMITS", "SPECS", "Spec",
    "assigned_blocks", "carrier_tenant", "database_refusal", "delete", "fetch", "fetch_one", "fetch_page", "number_overlaps",
    "references", "source_overlaps", "visible", "write",
]


@dataclass(frozen=True)
class Spec:
    """How one collection lives in the database."""

    name: str
    table: str
    keys: tuple[str, ...]  # the item fields that address it; never change
    select: str  # SELECT ... FROM ... (alias), no WHERE
    key_columns: tuple[str, ...]  # the keys as SQL
    tenant_column: str | None  # the owning tenant as SQL (None: the collection has no tenant)
    lock: str  # FOR UPDATE OF this alias


SPECS = {
    spec.name: spec
    for spec in (
        Spec(
            "tenants", "tenants", ("name",), "SELECT x.name, x.max_channels, x.number_blocks, x.address_blocks FROM tenants x",
            ("x.name",), None, "x",
        ),
        Spec(
            "normalization_profiles", "normalization_profiles", ("name",),
            "SELECT x.name, x.country_code, x.intl_prefix, x.ld_prefix, x.always_plus, x.to_e164, x.from_e164"
            " FROM normalization_profiles x",
            ("x.name",), None, "x",
        ),
        Spec("carriers", "carriers", ("name",), "SELECT x.name, x.tenant FROM carriers x", ("x.name",), "x.tenant", "x"),
        Spec(
            "ipbxs", "ipbxs", ("name",),
            "SELECT x.name, x.tenant, x.targets, x.normalization, x.fr_timer, x.fr_inv_timer, x.branch_flags,"
            " x.allow_wide_sources, x.health FROM ipbxs x",
            ("x.name",), "x.tenant", "x",
        ),
        Spec(
            "trunks", "trunks", ("name",),
            "SELECT x.name, x.carrier, x.target, x.normalization, x.fr_timer, x.fr_inv_timer, x.branch_flags,"
            " x.allow_wide_sources, x.auth_username, x.auth_password, x.auth_realm, x.max_channels, x.max_cps, x.health"
            " FROM trunks x JOIN carriers c ON c.name = x.carrier",
            ("x.name",), "c.tenant", "x",
        ),
        Spec("dids", "dids", ("prefix",), "SELECT x.tenant, x.prefix, x.ipbx, x.match FROM dids x", ("x.prefix",), "x.tenant", "x"),
        Spec(
            "routes", "routes", ("tenant", "prefix"), "SELECT x.tenant, x.prefix, x.when_all_down FROM routes x",
            ("x.tenant", "x.prefix"), "x.tenant", "x",
        ),
    )
}
COLLECTIONS = tuple(SPECS)

# Channel limits (tenants: max_channels; trunks: both): NULL in the
# database, absent from items, when not set.
LIMITS = ("max_channels", "max_cps")

# Tables whose rows belong to another's: "in use by route_trunks" is "in use by routes".
CHILD_TABLES = {"route_trunks": "routes", "sources": None, "api_tokens": None}
# The field of each collection the deferred route_trunk_owner trigger is about.
OWNER_FIELDS = {"routes": "trunks", "trunks": "carrier", "carriers": "tenant"}


# -- reading --------------------------------------------------------------------


def visible(spec: Spec, principal: Principal, params: list) -> list[str]:
    """SQL conditions limiting ``spec``'s rows to what ``principal`` may read."""
    if principal.admin:
        return []
    scope = ACCESS[spec.name][0]
    if scope == "all":
        return []
    if scope == "none":
        return ["false"]
    params.append(principal.tenant)
    own = f"{spec.tenant_column} = ${len(params)}"
    return [f"({spec.tenant_column} IS NULL OR {own})"] if scope == "own+shared" else [own]


async def fetch(conn, spec: Spec, principal: Principal, conditions: list[str], params: list,
                limit: int | None = None, lock: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    conditions = conditions + visible(spec, principal, params)
    sql = spec.select
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY " + ", ".join(spec.key_columns)
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    if lock:
        sql += f" FOR UPDATE OF {spec.lock}"
    return await _items(conn, spec, await conn.fetch(sql, *params))


async def fetch_page(conn, spec: Spec, principal: Principal, *, tenant: str | None, after: list[str] | None,
                     limit: int) -> list[dict[str, Any]]:  # fmt: skip
    """Up to ``limit`` items in key order: only ``tenant``'s if given, only after the key ``after`` if given."""
    conditions: list[str] = []
    params: list[Any] = []
    if tenant is not None:
        params.append(tenant)
        conditions.append(f"{spec.tenant_column} = ${len(params)}")
    if after is not None:
        # Keyset paging: the next page starts after the last key of the
        # previous one, through the key's index; no OFFSET to walk.
        params.extend(after)
        placeholders = ", ".join(f"${len(params) - len(after) + i}" for i in range(1, len(after) + 1))
        conditions.append(f"({', '.join(spec.key_columns)}) > ({placeholders})")
    return await fetch(conn, spec, principal, conditions, params, limit=limit)


def _wide(row) -> dict[str, bool]:
    """allow_wide_sources as the document has it: present only when true."""
    return {"allow_wide_sources": True} if row["allow_wide_sources"] else {}


async def _items(conn, spec: Spec, rows: list) -> list[dict[str, Any]]:
    """Rows in the checked form of the document (as c4 db export prints them)."""
    if spec.name in ("ipbxs", "trunks"):
        column = spec.name[:-1]
        sources: dict[str, list[str]] = {}
        for row in await conn.fetch(
            f"SELECT cidr, {column} AS owner FROM sources WHERE {column} = ANY($1::text[]) ORDER BY {column}, position",
            [row["name"] for row in rows],
        ):
            sources.setdefault(row["owner"], []).append(str(row["cidr"]))
        endpoint = ("normalization", "fr_timer", "fr_inv_timer", "branch_flags")
        if spec.name == "ipbxs":
            return [
                {"name": r["name"], "tenant": r["tenant"], "targets": list(r["targets"]),
                 **{k: r[k] for k in endpoint}, "sources": sources.get(r["name"], []), **_wide(r), **endpoint_health(r)}
                for r in rows
            ]  # fmt: skip
        return [
            {"name": r["name"], "carrier": r["carrier"], "target": r["target"], **{k: r[k] for k in endpoint},
             "sources": sources.get(r["name"], []), **_wide(r),
             "auth": {"username": r["auth_username"], "password": r["auth_password"], "realm": r["auth_realm"]}
             if r["auth_username"] is not None else None,
             **{k: r[k] for k in LIMITS if r[k] is not None}, **endpoint_health(r)}
            for r in rows
        ]  # fmt: skip
    if spec.name == "routes":
        choices: dict[tuple[str, str], list[dict]] = {}
        for row in await conn.fetch(
            "SELECT rt.tenant, rt.prefix, rt.trunk, rt.priority, rt.weight FROM route_trunks rt"
            " JOIN unnest($1::text[], $2::text[]) AS k(tenant, prefix) ON rt.tenant = k.tenant AND rt.prefix = k.prefix"
            " ORDER BY rt.tenant, rt.prefix, rt.position",
            [r["tenant"] for r in rows], [r["prefix"] for r in rows],
        ):
            weight = row["weight"]
            choices.setdefault((row["tenant"], row["prefix"]), []).append(
                {"trunk": row["trunk"], "priority": row["priority"], "weight": int(weight) if weight.is_integer() else weight}
            )
        return [
            {"tenant": r["tenant"], "prefix": r["prefix"], "trunks": choices.get((r["tenant"], r["prefix"]), []), **route_extras(r)}
            for r in rows
        ]
    if spec.name == "tenants":  # a limit not set, or no block, is absent, as in the document
        return [{"name": row["name"], **{k: row[k] for k in LIMITS if row.get(k) is not None}, **tenant_blocks(row)} for row in rows]
    return [dict(row) for row in rows]


async def fetch_one(conn, spec: Spec, principal: Principal, key: tuple, lock: bool = False) -> dict[str, Any] | None:
    params = list(key)
    conditions = [f"{column} = ${index}" for index, column in enumerate(spec.key_columns, 1)]
    found = await fetch(conn, spec, principal, conditions, params, lock=lock)
    return found[0] if found else None


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else []


async def references(conn, item: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """What ``item`` refers to, among what ``principal`` may see: validate_entity's refs."""
    refs: dict[str, Any] = {"tenants": set(), "normalization_profiles": set(), "carriers": {}, "ipbxs": {}, "trunks": {}}
    tenants = _names(item.get("tenant"))
    if tenants:
        if principal.admin:
            refs["tenants"] = {r["name"] for r in await conn.fetch("SELECT name FROM tenants WHERE name = $1", tenants[0])}
        else:
            refs["tenants"] = {principal.tenant} & set(tenants)
    profiles = _names(item.get("normalization"))
    if profiles:
        found = await conn.fetch("SELECT name FROM normalization_profiles WHERE name = $1", profiles[0])
        refs["normalization_profiles"] = {r["name"] for r in found}
    for collection, names in (("carriers", _names(item.get("carrier"))), ("ipbxs", _names(item.get("ipbx")))):
        if names:
            params: list[Any] = [names]
            rows = await fetch(conn, SPECS[collection], principal, ["x.name = ANY($1::text[])"], params)
            refs[collection] = {row["name"]: row for row in rows}
    entries = item.get("trunks")
    if isinstance(entries, list):
        names = [e if isinstance(e, str) else e.get("trunk") for e in entries if isinstance(e, (str, dict))]
        params = [[name for name in names if isinstance(name, str)]]
        conditions = ["x.name = ANY($1::text[])", *visible(SPECS["trunks"], principal, params)]
        for row in await conn.fetch(
            "SELECT x.name, x.carrier, c.tenant FROM trunks x JOIN carriers c ON c.name = x.carrier WHERE " + " AND ".join(conditions),
            *params,
        ):
            refs["trunks"][row["name"]] = {"carrier": row["carrier"]}
            refs["carriers"][row["carrier"]] = {"tenant": row["tenant"]}
    return refs


# -- the space others hold (c4http.space) ----------------------------------------------


async def carrier_tenant(conn, carrier: str) -> str | None:
    return await conn.fetchval("SELECT tenant FROM carriers WHERE name = $1", carrier)


async def source_overlaps(conn, sources: list[str], ipbx: str | None, trunk: str | None) -> list:
    """Other entities' sources, and tenants' address blocks, that hold or lie in one of ``sources``.

    Rows of ``mine`` (one of ``sources``), ``theirs`` (the other CIDR),
    ``other`` (``ipbxs[name]``, ``trunks[name]`` or ``tenants[name].address_blocks``)
    and ``owner`` (its tenant; NULL: the platform's), in CIDR order. The
    sources of the IPBX ``ipbx`` or the trunk ``trunk`` itself are left out.
    """
    return await conn.fetch(
        "SELECT n.cidr AS mine, s.cidr AS theirs, COALESCE('ipbxs[' || s.ipbx || ']', 'trunks[' || s.trunk || ']') AS other,"
        " COALESCE(i.tenant, c.tenant) AS owner"
        " FROM unnest($1::text[]::cidr[]) AS n(cidr) JOIN sources s ON s.cidr && n.cidr"
        " LEFT JOIN ipbxs i ON i.name = s.ipbx LEFT JOIN trunks t ON t.name = s.trunk"
        " LEFT JOIN carriers c ON c.name = t.carrier"
        " WHERE s.ipbx IS DISTINCT FROM $2 OR s.trunk IS DISTINCT FROM $3"
        " UNION ALL SELECT n.cidr, b.block, 'tenants[' || t.name || '].address_blocks', t.name"
        " FROM unnest($1::text[]::cidr[]) AS n(cidr) CROSS JOIN tenants t CROSS JOIN unnest(t.address_blocks) AS b(block)"
        " WHERE b.block && n.cidr ORDER BY 1, 2",
        sources, ipbx, trunk,
    )


async def assigned_blocks(conn, column: str, tenant: str) -> list:
    """A tenant's ``number_blocks`` or ``address_blocks``."""
    return await conn.fetchval(f"SELECT {column} FROM tenants WHERE name = $1", tenant)


async def number_overlaps(conn, prefix: str, tenant: str) -> list:
    """Other tenants' DIDs and number blocks that hold or lie in the DID prefix ``prefix`` (at most 10, in prefix order).

    Rows of ``prefix``, ``tenant`` and ``kind`` (``DID`` or ``number block``).
    """
    return await conn.fetch(
        # The shorter prefixes by key, the longer ones by a range on the key's
        # index (digits sort before letters in every collation), then exactly.
        "SELECT prefix, tenant, 'DID' AS kind FROM dids WHERE tenant <> $2 AND (prefix = ANY($3::text[])"
        " OR (prefix > $1 AND prefix < $1 || 'a' AND starts_with(prefix, $1)))"
        " UNION ALL SELECT b.prefix, t.name, 'number block' FROM tenants t CROSS JOIN unnest(t.number_blocks) AS b(prefix)"
        " WHERE t.name <> $2 AND (starts_with($1, b.prefix) OR starts_with(b.prefix, $1))"
        " ORDER BY 1 LIMIT 10",
        prefix, tenant, [prefix[:length] for length in range(1, len(prefix))],
    )


# -- writing --------------------------------------------------------------------


async def write(conn, spec: Spec, item: dict[str, Any], new: bool) -> None:
    name = spec.name
    if name == "tenants":
        row = {"max_channels": None, "number_blocks": [], "address_blocks": [], **item}
        await _upsert(conn, "tenants", "name", row, ("max_channels", "number_blocks", "address_blocks"), new)
    elif name == "normalization_profiles":
        columns = ("country_code", "intl_prefix", "ld_prefix", "always_plus", "to_e164", "from_e164")
        await _upsert(conn, "normalization_profiles", "name", item, columns, new)
    elif name == "carriers":
        await _upsert(conn, "carriers", "name", item, ("tenant",), new)
    elif name in ("ipbxs", "trunks"):
        columns = ("targets", "tenant") if name == "ipbxs" else ("carrier", "target")
        columns += ("normalization", "fr_timer", "fr_inv_timer", "branch_flags", "allow_wide_sources", "health")
        row = {key: item.get(key, False) if key == "allow_wide_sources" else item.get(key) if key == "health" else item[key]
               for key in ("name", *columns)}
        if name == "trunks":
            auth = item["auth"] or {}
            row.update(auth_username=auth.get("username"), auth_password=auth.get("password"), auth_realm=auth.get("realm"))
            columns += ("auth_username", "auth_password", "auth_realm", *LIMITS)
            row.update({key: item.get(key) for key in LIMITS})
        await _upsert(conn, name, "name", row, columns, new)
        owner = name[:-1]
        await conn.execute(f"DELETE FROM sources WHERE {owner} = $1", item["name"])
        await conn.execute(
            f"INSERT INTO sources (cidr, {owner}, position) SELECT s.cidr::cidr, $2, s.n - 1"
            " FROM unnest($1::text[]) WITH ORDINALITY AS s(cidr, n)",
            item["sources"], item["name"],
        )
    elif name == "dids":
        await _upsert(conn, "dids", "prefix", item, ("tenant", "ipbx", "match"), new)
    else:
        key = (item["tenant"], item["prefix"])
        when_all_down = item.get("when_all_down")  # None: absent
        if new:
            await conn.execute("INSERT INTO routes (tenant, prefix, when_all_down) VALUES ($1, $2, $3)", *key, when_all_down)
        else:
            await conn.execute("UPDATE routes SET when_all_down = $3 WHERE tenant = $1 AND prefix = $2", *key, when_all_down)
            await conn.execute("DELETE FROM route_trunks WHERE tenant = $1 AND prefix = $2", *key)
        await conn.executemany(
            "INSERT INTO route_trunks (tenant, prefix, position, trunk, priority, weight) VALUES ($1, $2, $3, $4, $5, $6)",
            [(*key, position, c["trunk"], c["priority"], float(c["weight"])) for position, c in enumerate(item["trunks"])],
        )


async def _upsert(conn, table: str, key: str, item: dict[str, Any], columns: tuple[str, ...], new: bool) -> None:
    values = [item[key], *(item[column] for column in columns)]
    if new:
        names = ", ".join((key, *columns))
        placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await conn.execute(f"INSERT INTO {table} ({names}) VALUES ({placeholders})", *values)
    else:
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, 2))
        await conn.execute(f"UPDATE {table} SET {assignments} WHERE {key} = $1", *values)


async def delete(conn, spec: Spec, key: tuple, principal: Principal) -> bool:
    """Delete the item ``key`` if ``principal`` may write it; whether there was one."""
    params: list[Any] = list(key)
    conditions = [f"{column.removeprefix('x.')} = ${i}" for i, column in enumerate(spec.key_columns, 1)]
    if not principal.admin:  # tenant tokens write only collections with a tenant column of their own
        params.append(principal.tenant)
        conditions.append(f"tenant = ${len(params)}")
    return bool(await conn.fetchval(f"DELETE FROM {spec.table} WHERE {' AND '.join(conditions)} RETURNING true", *params))


def database_refusal(exc: asyncpg.PostgresError, spec: Spec, where: str, deleting: bool = False) -> ApiError:
    """What a constraint the checks above could not foresee says, as an API error.

    Never the database's own detail text: it would quote the row.
    """
    table = getattr(exc, "table_name", None)
    constraint = getattr(exc, "constraint_name", None) or ""
    if isinstance(exc, asyncpg.UniqueViolationError):
        if table == "sources":
            return ApiError(409, f"{where}.sources: a source is also a source of another IPBX or trunk")
        return ApiError(409, f"{where}: already exists")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        if deleting or table not in (spec.table, "sources", "route_trunks"):
            user = CHILD_TABLES.get(table, table) or table
            return ApiError(409, f"{where}: in use by {user}; change or delete those first")
        return ApiError(409, f"{where}: refers to something deleted meanwhile; try again")
    if isinstance(exc, asyncpg.CheckViolationError) and constraint == "route_trunk_owner":
        field = OWNER_FIELDS.get(spec.name)
        return ApiError(422, f"{where}.{field}: {exc.args[0] if exc.args else exc}" if field else f"{where}: {exc}")
    # e.g. a NUL character in a regular expression: Python takes it, PostgreSQL text cannot hold it
    return ApiError(422, f"{where}: refused by the database ({type(exc).__name__}{f', {constraint}' if constraint else ''})")
