"""The middlewares: errors as JSON, never a traceback or an HTML page.

``json_errors`` wraps every application of the service: a control
character or a lone surrogate in the decoded path, a query parameter or a
header is a 400 before any handler sees it; unknown paths, wrong methods
and anything unforeseen are ``{"error": ...}`` replies, the unforeseen
logged as one escaped line. ``api_errors`` wraps the provisioning API: an
ApiError is its reply, a database that does not answer a 503.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

import asyncpg
from aiohttp import web

from .logfmt import log_event
from .web import ApiError, error_response, reply, unavailable

__all__ = ["api_errors", "bad_text", "json_errors"]

log = logging.getLogger("c4.http")

# Control characters (C0, DEL, C1) and lone surrogates: no name, number or
# parameter of this service holds one, PostgreSQL text cannot hold a NUL,
# orjson cannot encode a surrogate, and in a log line a new line forges the next.
BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Header values may hold tabs (RFC 9110); aiohttp's parser already refuses the
# other C0 characters there, but bytes that are not UTF-8 arrive as surrogates.
BAD_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def bad_text(request: web.Request) -> str | None:
    """Which part of the request holds a control character or a lone surrogate, as an error message."""
    for part, pattern, text in _request_texts(request):
        found = pattern.search(text)
        if found is not None:
            return f"{part} holds U+{ord(found.group()):04X}: control characters and lone surrogates are not allowed"
    return None


def _request_texts(request: web.Request):
    yield "the path", BAD_TEXT, request.path
    for name, value in request.query.items():
        # ascii(): the name itself may be what is bad.
        yield f"query parameter name {ascii(name)}", BAD_TEXT, name
        yield f"query parameter {ascii(name)}", BAD_TEXT, value
    for name, value in request.headers.items():
        yield f"header {ascii(name)}", BAD_HEADER, value


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Text no handler should see as a 400; unknown paths, wrong methods and anything unforeseen as JSON errors."""
    problem = bad_text(request)
    if problem is not None:
        log_event(log, logging.WARNING, "bad_request", status=400, reason="bad_text", remote=request.remote,
                  path=request.path, error=problem)  # fmt: skip
        return error_response(400, problem)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such resource: {request.path}"
        elif exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            message = f"method {request.method} not allowed on {request.path}" + (f"; use {allowed}" if allowed else "")
        else:
            message = exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, headers)
    except Exception as exc:
        # One escaped line, the traceback a value of it: an exception's message may quote the request.
        log_event(log, logging.ERROR, "internal_error", method=request.method, path=request.path,
                  error=f"{type(exc).__name__}: {exc}", traceback="".join(traceback.format_exception(exc)))  # fmt: skip
        return error_response(500, "internal error")


@web.middleware
async def api_errors(request: web.Request, handler) -> web.StreamResponse:
    """The provisioning API's middleware: an ApiError as its reply, a database that does not answer as a 503."""
    try:
        return await handler(request)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.message}
        if exc.errors:
            body["errors"] = exc.errors
        return reply(body, exc.status)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,
            # A connection the server cut mid-statement (a failover), used again before the pool dropped it:
            # "cannot switch to state N; another operation is in progress". The database, not the request.
            asyncpg.exceptions.InternalClientError) as exc:  # fmt: skip
        return unavailable(exc)
    except asyncpg.exceptions.TransactionRollbackError:  # a deadlock or serialization failure
        return error_response(409, "conflicting concurrent change; try again")
