"""A FastAPI + uvicorn routing service: the reference c4 serve is measured against.

    pip install -e '.[reference]'
    .venv/bin/python benchmarks/fastapi_ref.py --table TABLE [--host 127.0.0.1] [--port 8081]

Not part of the product: ``benchmarks/http_reference.py`` runs it beside
``c4 serve`` to compare the two stacks on the same decision core. It serves
``POST /kamailio/rtjson`` with the contract of c4http's routing endpoint
(docs/routing.md): the same query in, the same reply bytes and ``C4-Call``
header out, 400 with ``{"error": ...}`` for a body that is not a JSON object
or not a valid query. The table is loaded as ``c4 serve --table`` loads it.

Written as a FastAPI user who cares about speed would write it:

- the raw body parsed with orjson, no pydantic model: the decision core
  already checks every member it reads (and ignores the others, as the
  contract says), so a model would check the query twice;
- the reply is the core's orjson bytes in a plain ``Response``, which is
  what ``ORJSONResponse`` renders (deprecated in recent FastAPI releases)
  without a second encoding of the dict;
- uvicorn with uvloop and httptools (``uvicorn[standard]``), one process,
  no access log (c4 serve logs no access either by default).

It does less than c4 serve per request (no metrics, no source address
check, no refusal log, no Content-Type check), so the ratio measured
against it is not flattered in c4 serve's favour.
"""

from __future__ import annotations

import argparse
import math

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from c4kemi.core.decision import RequestError, call_json, decide_call, encode
from c4kemi.sources.store import FileTableSource

RTJSON_PATH = "/kamailio/rtjson"
CALL_HEADER = "C4-Call"
JSON = "application/json"


def make_app(source: FileTableSource) -> FastAPI:
    app = FastAPI(title="c4 routing (FastAPI reference)", docs_url=None, redoc_url=None, openapi_url=None)

    def error(message: str) -> Response:
        return Response(orjson.dumps({"error": message}), status_code=400, media_type=JSON)

    @app.post(RTJSON_PATH)
    async def rtjson(request: Request) -> Response:
        try:
            query = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error(f"malformed JSON: {exc}")
        if not isinstance(query, dict):
            return error(f"request must be a JSON object, not {type(query).__name__}")
        try:
            reply, call = decide_call(source.current(), query)
        except RequestError as exc:
            return error(str(exc))
        headers = {CALL_HEADER: call_json(call)} if call else None
        return Response(encode(reply), media_type=JSON, headers=headers)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="routing document (.json or .toml)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    # As c4 serve: the first load must succeed; reloads are not what is measured.
    source = FileTableSource(args.table, check_interval=math.inf)
    uvicorn.run(
        make_app(source), host=args.host, port=args.port,
        loop="uvloop", http="httptools", access_log=False, log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    main()
