"""What every part of the service shares: JSON replies, errors, the app keys, paging.

A leaf of c4http: it imports no other c4http module, so the views, the
middlewares, the authentication and the application factory can all use
it without importing one another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import asyncpg
import orjson
from aiohttp import web

__all__ = [
    "API_PREFIX", "DEFAULT_LIMIT", "DEFAULT_MAX_BODY", "EXPLAIN_PATH", "HEALTH_TARGETS_PATH", "JSON", "MAX_BODY", "MAX_LIMIT", "OPENAPI_PATH", "POOL",
    "RTJSON_PATH", "UTF8",
    "ApiError", "background", "error_response", "page_limit", "reply", "unavailable",
]

JSON = "application/json"
UTF8 = ("utf-8", "utf8")
DEFAULT_MAX_BODY = 64 * 1024

# Where the service answers what (c4http.routes wires them).
RTJSON_PATH = "/kamailio/rtjson"
EXPLAIN_PATH = "/kamailio/explain"
HEALTH_TARGETS_PATH = "/kamailio/health-targets"
API_PREFIX = "/api/v1"  # the provisioning API
OPENAPI_PATH = "/openapi.json"  # under API_PREFIX
# The page sizes of its lists.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

# The largest request body, on the application that reads it.
MAX_BODY = web.AppKey("max_body", int)
# The provisioning API's connection pool, on its application while it runs.
POOL = web.AppKey("c4_api_pool", asyncpg.Pool)


def error_response(status: int, message: str, headers: Any = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type=JSON, headers=headers)


def reply(body: Any, status: int = 200, headers: Any = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)


def unavailable(exc: BaseException) -> web.Response:
    return error_response(503, f"database unavailable: {type(exc).__name__}", headers={"Retry-After": "1"})


class ApiError(Exception):
    """An API request refused: the status, ``{"error": message}`` and, when given, ``"errors"`` (c4http.middlewares.api_errors)."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


def page_limit(query, parameters: tuple[str, ...]) -> int:
    """A list's ``limit``, once the query is known to hold only ``parameters``."""
    unknown = sorted(set(query) - set(parameters))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(unknown)}: use {', '.join(parameters)}")
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}, got {query.get('limit')!r}")
    return limit


@contextlib.asynccontextmanager
async def background(coroutine: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """COROUTINE as a task for the body of the ``async with`` (an app's cleanup context: its lifetime), then cancelled."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
