"""What each token may read and write in the provisioning API.

The admin token may do everything. A tenant token reads, by collection,
nothing, everything, its own tenant's items and the shared ones (a carrier
whose tenant is NULL), or its own items; and writes only its own items of
the collections that allow it. Items a token may not read do not exist for
it (404): ``c4http.queries.visible`` keeps them out of every query.
"""

from __future__ import annotations

from .auth import Principal
from .web import ApiError

__all__ = ["ACCESS", "may_read", "may_write"]

# By collection: what a tenant token may read (none / all / own+shared / own),
# and whether it may write its own items.
ACCESS = {
    "tenants": ("none", False),
    "normalization_profiles": ("all", False),
    "carriers": ("own+shared", False),
    "trunks": ("own+shared", False),
    "ipbxs": ("own", True),
    "dids": ("own", True),
    "routes": ("own", True),
}


def may_read(collection: str, principal: Principal) -> None:
    if not principal.admin and ACCESS[collection][0] == "none":
        raise ApiError(403, f"{collection}: only the admin token has access")


def may_write(collection: str, principal: Principal) -> None:
    may_read(collection, principal)
    if not principal.admin and not ACCESS[collection][1]:
        raise ApiError(403, f"{collection}: a tenant token may read them; changing them takes the admin token")
