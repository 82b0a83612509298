"""Tenant tokens for the provisioning API.

A token is shown once, when created; the database keeps its SHA-256 only.
A token is looked up by that hash (a unique index): someone who reads the
table cannot use what is there, and the lookup reveals nothing about the
token through timing, since the attacker controls the hash of a guess, not
which stored hash it is close to.
"""

from __future__ import annotations

import hashlib
import secrets

import asyncpg

__all__ = ["TOKEN_PREFIX", "create_token", "list_tokens", "revoke_token", "token_hash", "token_tenant"]

TOKEN_PREFIX = "c4t_"  # recognisable in a leak scanner or a log


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(conn: asyncpg.Connection, tenant: str) -> tuple[int, str]:
    """(id, token) of a new token for TENANT; raises LookupError for an unknown tenant."""
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", tenant):
        raise LookupError(f"unknown tenant {tenant!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = await conn.fetchval("INSERT INTO api_tokens (tenant, sha256) VALUES ($1, $2) RETURNING id", tenant, token_hash(token))
    return token_id, token


async def revoke_token(conn: asyncpg.Connection, token_id: int) -> bool:
    """True if the token existed and was live."""
    status = await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id)
    return status.endswith(" 1")


async def list_tokens(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, tenant, created_at, revoked_at FROM api_tokens ORDER BY id")


async def token_tenant(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> str | None:
    """The tenant of a live token, or None."""
    return await conn.fetchval("SELECT tenant FROM api_tokens WHERE sha256 = $1 AND revoked_at IS NULL", token_hash(token))
