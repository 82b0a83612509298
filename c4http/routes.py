"""The URL table: which handler answers which path, on the routing application and on the API's.

(HTTP routes, not the routing document's ``routes``.) The handlers are
c4http.views' (the routing service), c4http.provisioning's and
c4http.cdrs' (the provisioning API) and c4http.openapi's (its description).
"""

from __future__ import annotations

from aiohttp import web

from .cdrs import list_cdrs
from .openapi import openapi_description
from .provisioning import create_item, delete_item, get_item, list_items, patch_item
from .queries import COLLECTIONS
from .views import ROUTING, channels, explain, health, prometheus, trunk_health
from .web import EXPLAIN_PATH, HEALTH_TARGETS_PATH, OPENAPI_PATH, RTJSON_PATH

__all__ = ["setup_api_routes", "setup_routes"]


def setup_routes(app: web.Application) -> None:
    """The routing service's paths; ``app[ROUTING]`` answers the routing queries."""
    app.router.add_post(RTJSON_PATH, app[ROUTING].rtjson)
    app.router.add_get(HEALTH_TARGETS_PATH, app[ROUTING].health_targets)
    app.router.add_post(EXPLAIN_PATH, explain)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/channels", channels)
    app.router.add_get("/trunks/health", trunk_health)


def setup_api_routes(api: web.Application) -> None:
    """The provisioning API's paths, relative to where ``api`` is mounted (/api/v1)."""
    for name in COLLECTIONS:
        collection = api.router.add_resource(f"/{name}", name=name)
        collection.add_route("GET", list_items)
        collection.add_route("POST", create_item)
        if name == "routes":
            # [0-9]* also matches nothing: /routes/acme/ is acme's default route.
            item_path = "/routes/{tenant}/{prefix:[0-9]*}"
        elif name == "dids":
            item_path = "/dids/{prefix}"
        else:
            item_path = f"/{name}/{{name}}"
        item = api.router.add_resource(item_path, name=f"{name}-item")
        item.add_route("GET", get_item)
        item.add_route("PATCH", patch_item)
        item.add_route("DELETE", delete_item)
    api.router.add_get("/cdrs", list_cdrs, name="cdrs")
    api.router.add_get(OPENAPI_PATH, openapi_description, name="openapi")
