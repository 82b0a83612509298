"""The OpenAPI 3.1 description of the c4http service, served at /api/v1/openapi.json.

It describes every route of the service: the provisioning API and the
routing endpoints beside it (``tests/test_api.py`` fails when a route of
the application is missing here, or a path here has no route). The entity
schemas follow docs/routing.md; the service itself checks with
``c4kemi.core.document``, which is the authority where the two could differ
(a regular expression's safety, a replacement template, ...).
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from c4kemi.core.entity_checks import (
    MAX_BRANCH_FLAGS,
    MAX_CHANNELS,
    MAX_CPS,
    MAX_NAME_LENGTH,
    MAX_TIMER_MS,
    MAX_WEIGHT,
    PRIORITY_RANGE,
)
from c4kemi.core.health import DEFAULTS as HEALTH_DEFAULTS
from c4kemi.core.health import DOWN_PROBE_INTERVAL, MAX_ALIVE_CODES, WHEN_ALL_DOWN
from c4kemi.core.health import LIMITS as HEALTH_LIMITS

from .provisioning import MASK
from .queries import COLLECTIONS
from .web import API_PREFIX, DEFAULT_LIMIT, MAX_LIMIT, OPENAPI_PATH, reply

__all__ = ["description", "openapi_description"]

REF = "#/components/schemas/"

NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "description": "printable, unique in its collection"}
NULLABLE_NAME = {**NAME, "type": ["string", "null"]}
DIGITS = {"type": "string", "pattern": "^[0-9]{0,32}$"}
TIMER = {"type": "integer", "minimum": 1, "maximum": MAX_TIMER_MS}
SIP_URI = {"type": "string", "description": "sip: or sips: URI, host[:port][;params], no user part", "pattern": "^sips?:"}
CIDR = {"type": "string", "description": "IPv4/IPv6 address or CIDR without host bits; read back as a CIDR"}
REGEX = {"type": "string", "description": "Python re syntax, no nested repetition, at most 4 variable quantifiers"}
HEALTH_MEANINGS = {
    "probe_interval": "seconds between SIP OPTIONS while the target is up; 0: none while up"
                      f" (a down target is probed every {DOWN_PROBE_INTERVAL} s anyway)",
    "down_after": "failures in a row (an OPTIONS or INVITE timing out, an INVITE not sent) that mark the target down; 0: never",
    "up_after": "answered probes in a row that bring a down target back",
    "failure_percent": "share of INVITEs failing (503, timeout, not sent) within failure_window that marks the target down; 0: off",
    "failure_window": "seconds of the failure_percent window",
    "failure_min_calls": "INVITEs within the window before failure_percent counts",
}
HEALTH = {
    "type": ["object", "null"], "additionalProperties": False,
    "description": "how Kamailio watches the targets (docs/routing.md); every member optional, absent: its default; "
                   "absent or null: every default; read back as given",
    "properties": {
        key: {
            "type": "array", "minItems": 1, "maxItems": MAX_ALIVE_CODES, "items": {"type": "string", "pattern": "^[1-6]([0-9][0-9]|xx)$"},
            "description": "OPTIONS replies that count as alive, codes (\"200\") or classes (\"2xx\"); absent: any reply",
        } if key == "alive_codes" else {
            "type": "integer", "minimum": HEALTH_LIMITS[key][0], "maximum": HEALTH_LIMITS[key][1], "default": HEALTH_DEFAULTS[key],
            "description": HEALTH_MEANINGS[key],
        }
        for key in HEALTH_DEFAULTS
    },
}  # fmt: skip
ENDPOINT = {
    "sources": {"type": "array", "items": CIDR, "default": []},
    "allow_wide_sources": {
        "type": "boolean", "default": False,
        "description": "sources wider than /8 (IPv4) or /32 (IPv6) are refused unless true; admin token only; read back only when true",
    },
    "normalization": {**NULLABLE_NAME, "description": "a normalization profile", "default": None},
    "fr_timer": {**TIMER, "default": 5000},
    "fr_inv_timer": {**TIMER, "default": 30000},
    "branch_flags": {"type": "integer", "minimum": 0, "maximum": MAX_BRANCH_FLAGS, "default": 0},
    "health": HEALTH,
}
MAX_CHANNELS_FIELD = {
    "type": ["integer", "null"], "minimum": 0, "maximum": MAX_CHANNELS,
    "description": "simultaneous calls at most (0: none); absent or null: no limit",
}
MAX_CPS_FIELD = {
    "type": ["integer", "null"], "minimum": 1, "maximum": MAX_CPS,
    "description": "new calls per second at most, both directions; absent or null: no limit",
}
RULE = {
    "type": "object", "additionalProperties": False, "required": ["match", "replace"],
    "properties": {"match": REGEX, "replace": {"type": "string", "description": "re.sub template; digits, + and * besides group references"}},
}  # fmt: skip

# name -> (schema name, properties, required on create)
ENTITIES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "tenants": ("Tenant", {
        "name": NAME,
        "max_channels": MAX_CHANNELS_FIELD,
        "number_blocks": {"type": "array", "items": {"type": "string", "pattern": "^[0-9]{1,32}$"}, "default": [],
                          "description": "DID prefixes the tenant's token may provision under, held for it; absent: none assigned"},
        "address_blocks": {"type": "array", "items": CIDR, "default": [],
                           "description": "networks the tenant's IPBX sources may lie in, held for it; absent: none assigned"},
    }, ["name"]),
    "normalization_profiles": ("NormalizationProfile", {
        "name": NAME,
        "country_code": {**DIGITS, "default": ""},
        "intl_prefix": {**DIGITS, "default": ""},
        "ld_prefix": {**DIGITS, "default": ""},
        "always_plus": {"type": "boolean", "default": False},
        "to_e164": {"type": "array", "items": RULE, "default": []},
        "from_e164": {"type": "array", "items": RULE, "default": []},
    }, ["name"]),
    "ipbxs": ("Ipbx", {
        "name": NAME,
        "tenant": {**NAME, "description": "a tenant; a tenant token's own by default"},
        "targets": {"type": "array", "items": SIP_URI, "minItems": 1},
        **ENDPOINT,
    }, ["name", "tenant", "targets"]),
    "carriers": ("Carrier", {"name": NAME, "tenant": {**NULLABLE_NAME, "description": "null: shared by every tenant"}}, ["name"]),
    "trunks": ("Trunk", {
        "name": NAME,
        "carrier": NAME,
        "target": SIP_URI,
        **ENDPOINT,
        "auth": {
            "type": ["object", "null"], "additionalProperties": False, "required": ["username", "password", "realm"],
            "properties": {
                "username": {"type": "string"},
                "password": {"type": "string", "description": f"write-only: reads show {MASK!r}; sending {MASK!r} back in a PATCH keeps the stored password"},
                "realm": {"type": "string"},
            },
        },
        "max_channels": {**MAX_CHANNELS_FIELD, "description": "simultaneous calls at most, both directions (0: none); absent or null: no limit"},
        "max_cps": MAX_CPS_FIELD,
    }, ["name", "carrier", "target"]),  # fmt: skip
    "dids": ("Did", {
        "tenant": NAME,
        "prefix": {"type": "string", "pattern": "^[0-9]{1,32}$", "description": "unique over all tenants"},
        "ipbx": {**NAME, "description": "an IPBX of the DID's tenant"},
        "match": {**REGEX, "type": ["string", "null"], "default": None},
    }, ["tenant", "prefix", "ipbx"]),
    "routes": ("Route", {
        "tenant": NAME,
        "prefix": {**DIGITS, "description": "'' is the tenant's default route"},
        "trunks": {"type": "array", "minItems": 1, "items": {"oneOf": [
            {"type": "string", "description": "a trunk name: priority = position, weight 1"},
            {"type": "object", "additionalProperties": False, "required": ["trunk"], "properties": {
                "trunk": NAME,
                "priority": {"type": "integer", "minimum": PRIORITY_RANGE[0], "maximum": PRIORITY_RANGE[1]},
                "weight": {"type": "number", "minimum": 0, "maximum": MAX_WEIGHT, "default": 1},
            }},
        ]}},
        "when_all_down": {
            "enum": [*WHEN_ALL_DOWN, None], "default": "try",
            "description": "when every target of the route is down: try them in their usual order anyway (try), or answer "
                           "503 at once (refuse); absent or null: try; read back as given",
        },
    }, ["tenant", "prefix", "trunks"]),
}  # fmt: skip

ITEM_PATHS = {"dids": "/dids/{prefix}", "routes": "/routes/{tenant}/{prefix}"}
PATH_PARAMETERS = {
    "name": "the item's name",
    "prefix": "the DID prefix; for routes, the route prefix, empty for the default route (/routes/{tenant}/)",
    "tenant": "the route's tenant",
}
ACCESS_NOTES = {
    "tenants": "Admin token only.",
    "normalization_profiles": "Tenant tokens read all; writing takes the admin token.",
    "carriers": "Tenant tokens read shared carriers and their own tenant's; writing takes the admin token.",
    "trunks": "Tenant tokens read the trunks of shared carriers and of their own tenant's; writing takes the admin token.",
    "ipbxs": "Tenant tokens read and write their own tenant's only.",
    "dids": "Tenant tokens read and write their own tenant's only.",
    "routes": "Tenant tokens read and write their own tenant's only.",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF + "Error"}}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _error("malformed JSON, a body that is not an object, a bad query parameter"),
    "401": _error("no token, or an unknown or revoked one (WWW-Authenticate: Bearer)"),
    "403": _error("the token may not do this"),
    "415": _error("a Content-Type other than application/json"),
    "503": _error("the database is unavailable"),
}


def _collection_paths(name: str) -> dict[str, Any]:
    schema_name, properties, required = ENTITIES[name]
    ref = {"$ref": REF + schema_name}
    patch_schema = {"type": "object", "additionalProperties": False, "properties": properties}
    item_path = API_PREFIX + ITEM_PATHS.get(name, f"/{name}/{{name}}")
    parameters = [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}, "description": PATH_PARAMETERS[part[1:-1]]}
        for part in item_path.split("/") if part.startswith("{")
    ]  # fmt: skip
    note = ACCESS_NOTES[name]
    list_parameters = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "the previous page's next"},
    ]
    if name not in ("tenants", "normalization_profiles"):
        list_parameters.append({"name": "tenant", "in": "query", "schema": {"type": "string"}, "description": "only this tenant's items"})
    return {
        f"{API_PREFIX}/{name}": {
            "get": {
                "summary": f"list {name}, in key order", "description": note, "operationId": f"list_{name}",
                "parameters": list_parameters,
                "responses": {
                    "200": _json({"type": "object", "required": ["items", "next"], "properties": {
                        "items": {"type": "array", "items": ref},
                        "next": {"type": ["string", "null"], "description": "cursor of the next page; null on the last"},
                    }}, "one page"),
                    **ERRORS,
                },
            },
            "post": {
                "summary": f"create one of {name}", "description": note, "operationId": f"create_{name}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {**ref, "required": required}}}},
                "responses": {
                    "201": _json(ref, "created (Location: the item's URL); the item in checked form"),
                    "409": _error("an item with this key exists, or a source CIDR belongs to another IPBX or trunk"),
                    "422": _error("refused by the checks of c4 check, each error naming the field"),
                    **ERRORS,
                },
            },
        },  # fmt: skip
        item_path: {
            "parameters": parameters,
            "get": {
                "summary": f"one of {name}", "description": note, "operationId": f"get_{name}",
                "responses": {"200": _json(ref, "the item"), "404": _error("no such item (or not the token's to see)"), **ERRORS},
            },
            "patch": {
                "summary": f"change one of {name}: the given fields merged in, the result checked",
                "description": note + " Keys (names, a DID's prefix, a route's tenant and prefix) cannot change.",
                "operationId": f"patch_{name}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": patch_schema}}},
                "responses": {
                    "200": _json(ref, "the changed item"),
                    "404": _error("no such item"),
                    "409": _error("in use in a way the change would break, or a source CIDR of another IPBX or trunk"),
                    "422": _error("refused by the checks of c4 check, or a key changed"),
                    **ERRORS,
                },
            },
            "delete": {
                "summary": f"delete one of {name}", "description": note, "operationId": f"delete_{name}",
                "responses": {"204": {"description": "deleted"}, "404": _error("no such item"), "409": _error("still in use"), **ERRORS},
            },
        },
    }


NULLABLE_TEXT = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time", "description": "UTC, milliseconds"}
CDR = {"type": "object", "description": "one call (docs/cdr.md, \"The record\")", "properties": {
    "id": {"type": "string", "description": "the record's own id (32 hex digits)"},
    "call_id": {"type": "string"},
    "tenant": {**NULLABLE_TEXT, "description": "null: refused before a tenant was known (403), or a shared carrier's 404"},
    "direction": {"enum": ["inbound", "outbound", "on-net", None]},
    "source": {**NULLABLE_TEXT, "description": "the trunk or IPBX that sent the call"},
    "source_kind": {"enum": ["trunk", "ipbx", None]},
    "calling": {**NULLABLE_TEXT, "description": "E.164 without +, or the caller's user part when not a number"},
    "called": {**NULLABLE_TEXT, "description": "E.164 without +"},
    "attempts": {"type": "array", "description": "every destination tried, in order", "items": {"type": "object", "properties": {
        "destination": NULLABLE_TEXT, "kind": {"enum": ["trunk", "ipbx", None]}, "uri": NULLABLE_TEXT, "code": {"type": "integer"}}}},
    "answered_by": {**NULLABLE_TEXT, "description": "the destination that answered; null: not answered"},
    "invite_at": TIME, "answer_at": {**TIME, "type": ["string", "null"]}, "end_at": TIME,
    "duration_ms": {"type": "integer", "description": "answer to end; 0 when not answered"},
    "code": {"type": "integer", "description": "the final answer to the caller (200 when answered)"},
    "reason": {"type": "string"},
    "ended_by": {"enum": ["caller", "callee", "timeout", "router", None]},
}}  # fmt: skip
CDRS_PATH = {"get": {
    "summary": "call records, oldest first (c4 kamailio --cdr-db)",
    "description": "Tenant tokens see their own tenant's records only.", "operationId": "list_cdrs",
    "parameters": [
        {"name": "tenant", "in": "query", "schema": {"type": "string"}},
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"},
         "description": "INVITE at or after (ISO 8601 with a time zone)"},
        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "INVITE before"},
        {"name": "number", "in": "query", "schema": {"type": "string"}, "description": "calling or called number, E.164"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "the previous page's next"},
    ],
    "responses": {"200": _json({"type": "object", "required": ["items", "next"], "properties": {
        "items": {"type": "array", "items": {"$ref": REF + "Cdr"}},
        "next": {"type": ["string", "null"], "description": "cursor of the next page; null on the last"},
    }}, "one page"), **ERRORS},
}}  # fmt: skip

SERVICE_PATHS = {
    API_PREFIX + "/cdrs": CDRS_PATH,
    "/kamailio/rtjson": {"post": {
        "summary": "route a call: the routing request in, {\"rtjson\": ...} out (docs/routing.md)",
        "description": "Only for source addresses in --routing-from (loopback by default); the reply carries trunk credentials.",
        "operationId": "route", "security": [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": _json({"type": "object"}, "the rtjson reply"), "400": _error("malformed request"),
                      "403": _error("source address not allowed"), "413": _error("body too large"), "415": ERRORS["415"]},
    }},
    "/kamailio/explain": {"post": {
        "summary": "why a routing request routes as it does (a support tool; passwords masked)", "operationId": "explain",
        "security": [],
        "parameters": [{"name": "format", "in": "query", "schema": {"enum": ["json", "text"], "default": "json"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "the explanation"}, "400": _error("malformed request")},
    }},
    "/health": {"get": {"summary": "table version, counts, uptime, reloads", "operationId": "health", "security": [],
                        "responses": {"200": _json({"type": "object"}, "health")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "security": [],
                         "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}}},
    "/channels": {"get": {
        "summary": "calls in progress now, per tenant and per trunk, with their limits (c4 serve --kamailio-rpc)",
        "operationId": "channels", "security": [],
        "responses": {"200": _json({"type": "object", "properties": {
            "tenants": {"type": "array", "items": {"type": "object", "properties": {
                "name": NAME, "calls": {"type": "integer"}, "max_channels": {"type": "integer"}}}},
            "trunks": {"type": "array", "items": {"type": "object", "properties": {
                "name": NAME, "calls": {"type": "integer"}, "max_channels": {"type": "integer"}, "max_cps": {"type": "integer"}}}},
        }}, "the counts"), "503": _error("Kamailio did not answer, or c4 serve runs without --kamailio-rpc")},
    }},
    "/trunks/health": {"get": {
        "summary": "trunk health: every target Kamailio watches, up or down since when, last probe and failure (docs/health.md)",
        "operationId": "trunkHealth", "security": [],
        "responses": {"200": _json({"type": "object", "properties": {
            "down": {"type": "integer", "description": "targets down now"},
            "targets": {"type": "array", "items": {"type": "object", "properties": {
                "target": {"type": "string"}, "trunks": {"type": "array", "items": NAME},
                "ipbxs": {"type": "array", "items": NAME}, "state": {"enum": ["up", "down"]},
                "since": {"type": ["string", "null"], "format": "date-time"},
                "invite_failures_in_a_row": {"type": "integer"}, "probe_failures_in_a_row": {"type": "integer"},
                "last_probe": {"type": ["string", "null"], "format": "date-time"},
                "last_probe_rtt_ms": {"type": ["integer", "null"]},
                "last_failure": {"type": ["string", "null"], "format": "date-time"},
                "last_failure_reason": {"type": ["string", "null"]},
                "went_down": {"type": "integer"}, "came_up": {"type": "integer"},
                "probe_interval": {"type": ["integer", "null"]}}}},
        }}, "the health of each target"), "503": _error("Kamailio did not answer, or c4 serve runs without --kamailio-rpc")},
    }},
    "/kamailio/health-targets": {"get": {
        "summary": "the targets a node's c4 health-sync hands its Kamailio to watch (ETag: the table version)",
        "description": "Only for source addresses in --routing-from, with the node's routing key.",
        "operationId": "healthTargets", "security": [],
        "responses": {"200": _json({"type": "object", "properties": {
            "version": {"type": "string"},
            "targets": {"type": "array", "items": {"type": "array", "description": "[uri, settings line, users]"}},
        }}, "the targets"), "304": {"description": "unchanged since If-None-Match"},
            "401": _error("missing or wrong routing key"), "403": _error("source address not allowed")},
    }},
    API_PREFIX + OPENAPI_PATH: {"get": {"summary": "this description", "operationId": "openapi", "security": [],
                                        "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
}  # fmt: skip


@functools.cache
def description() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name in COLLECTIONS:
        paths.update(_collection_paths(name))
    paths.update(SERVICE_PATHS)
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}, "description": "every problem, on 409 and 422"},
        }},
    }  # fmt: skip
    schemas["Cdr"] = CDR
    for schema_name, properties, required in ENTITIES.values():
        schemas[schema_name] = {"type": "object", "additionalProperties": False, "required": required, "properties": properties}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "c4 provisioning API",
            "version": "1",
            "description": (
                "The routing document's entities (docs/routing.md), stored in PostgreSQL. Every /api/v1 request but "
                "this description needs Authorization: Bearer TOKEN: the admin token, or a tenant token from "
                "`c4 db token create`. With `c4 serve --api-listen`, /api/v1 is served on that address only and the "
                "other paths on the routing listener. See docs/api.md."
            ),
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


async def openapi_description(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json: the description, to anyone (no token needed)."""
    return reply(description())
