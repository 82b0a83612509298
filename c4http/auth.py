"""Who is calling the provisioning API: bearer tokens.

Every ``/api/v1/`` request but the OpenAPI description carries
``Authorization: Bearer TOKEN``. The admin token (``c4 serve --api-token``
or ``$C4_API_TOKEN``) is compared in constant time and may do everything. A
tenant token (``c4 db token create --tenant NAME``; only its SHA-256 is
stored) is looked up in PostgreSQL and acts for its tenant only. A missing,
malformed, unknown or revoked token is a 401 with ``WWW-Authenticate:
Bearer``; what each kind of token may do is in ``c4http.access.ACCESS``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from c4kemi.db.tokens import TOKEN_PREFIX, token_tenant

from .web import POOL, error_response, unavailable

__all__ = ["ADMIN_TOKEN", "PRINCIPAL", "PUBLIC_PATHS", "Principal", "authenticate", "unauthorized"]

# The admin token; absent from the app when none was configured (tenant tokens only).
ADMIN_TOKEN = web.AppKey("c4_api_admin_token", str)
# Paths of the API application that need no token (the OpenAPI description).
PUBLIC_PATHS = web.AppKey("c4_api_public_paths", frozenset)


@dataclass(frozen=True)
class Principal:
    """The caller: the admin (``tenant`` None) or one tenant."""

    tenant: str | None = None

    @property
    def admin(self) -> bool:
        return self.tenant is None


# The Principal of an authenticated request (typed request keys: aiohttp 3.12+).
PRINCIPAL = web.RequestKey("c4_principal", Principal) if hasattr(web, "RequestKey") else "c4_principal"


def unauthorized(message: str, invalid_token: bool = False) -> web.Response:
    challenge = 'Bearer realm="c4"' + (', error="invalid_token"' if invalid_token else "")
    return error_response(401, message, headers={"WWW-Authenticate": challenge})


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not token.isascii() or not token.isprintable():
        return None
    return token


async def principal_for(request: web.Request, token: str) -> Principal | None:
    admin = request.config_dict.get(ADMIN_TOKEN)
    if admin is not None and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal()
    if not token.startswith(TOKEN_PREFIX):  # no tenant token looks like that: spare the database
        return None
    tenant = await token_tenant(request.config_dict[POOL], token)
    return Principal(tenant) if tenant is not None else None


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    """The API application's middleware: a valid token, or 401."""
    if request.match_info.route.resource is None or request.path in request.config_dict.get(PUBLIC_PATHS, frozenset()):
        return await handler(request)  # unknown paths and methods: 404/405 for everyone; the description: public
    token = bearer_token(request)
    if token is None:
        return unauthorized("this API needs an 'Authorization: Bearer TOKEN' header")
    try:
        principal = await principal_for(request, token)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        return unavailable(exc)
    if principal is None:
        return unauthorized("unknown or revoked token", invalid_token=True)
    request[PRINCIPAL] = principal
    return await handler(request)
