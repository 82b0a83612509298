"""GET /api/v1/cdrs on a real PostgreSQL and a real aiohttp server: filters, paging, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_api import ADMIN, Api, db, seeded, table_file  # noqa: F401  (fixtures)

from c4http.app import make_app
from c4kemi.call.cdr import make_record
from c4kemi.db.cdrs import insert_records
from c4kemi.sources.store import FileTableSource

START = datetime(2026, 11, 26, 17, 0, tzinfo=UTC).timestamp()


def record(i: int, tenant: str | None, calling: str, called: str) -> dict:
    invite = START + 60 * i
    call = {"tenant": tenant, "direction": "outbound", "source": f"{tenant}-pbx", "source_kind": "ipbx",
            "calling": calling, "called": called, "routes": []}  # fmt: skip
    return make_record({"call_id": f"call-{i}", "call": call, "invite": f"{invite:.6f}", "end": f"{invite + 1:.6f}",
                        "code": 404, "reason": "No Route", "by": "router"}, f"{i:032x}")  # fmt: skip


RECORDS = [record(i, "acme" if i % 2 == 0 else "globex", f"3961111{i:04d}", "39298765432") for i in range(10)]
RECORDS.append(record(10, None, "anonymous", "39612345678"))  # a 403: no tenant


@pytest.fixture
async def api(aiohttp_client, seeded, table_file):  # noqa: F811
    await db(seeded["dsn"], lambda conn: insert_records(conn, RECORDS))
    client = await aiohttp_client(make_app(FileTableSource(table_file), dsn=seeded["dsn"], api_token=ADMIN))
    return Api(client)


async def page(api, query: str = "", token=ADMIN):
    status, body, _ = await api.as_(token)("GET", "/api/v1/cdrs" + (f"?{query}" if query else ""))
    return status, body


async def every(api, query: str = "", token=ADMIN) -> list[str]:
    ids, cursor = [], None
    while True:
        status, body = await page(api, "&".join(filter(None, [query, f"cursor={cursor}" if cursor else ""])), token)
        assert status == 200, body
        ids += [item["call_id"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            return ids


async def test_the_admin_pages_through_every_record_in_invite_order(api):
    assert await every(api, "limit=3") == [f"call-{i}" for i in range(11)]
    status, body = await page(api, "limit=1")
    assert body["items"] == [RECORDS[0]] and body["next"]  # an item is the record as c4 cdr writes it


async def test_filters_tenant_time_and_number(api):
    assert await every(api, "tenant=globex") == ["call-1", "call-3", "call-5", "call-7", "call-9"]
    since = (datetime.fromtimestamp(START, UTC) + timedelta(minutes=2)).isoformat()
    until = (datetime.fromtimestamp(START, UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert await every(api, f"since={since.replace('+', '%2B')}&until={until}") == ["call-2", "call-3", "call-4"]
    assert await every(api, "number=%2B39611110007") == ["call-7"]
    assert await every(api, "number=39612345678") == ["call-10"]


async def test_a_tenant_token_sees_only_its_own_records(api, seeded):  # noqa: F811
    acme = seeded["tokens"]["acme"]
    assert await every(api, "limit=2", token=acme) == ["call-0", "call-2", "call-4", "call-6", "call-8"]
    assert await every(api, "tenant=globex", token=acme) == []
    assert await every(api, "number=39611110007", token=acme) == []  # globex's call
    assert await every(api, "number=39612345678", token=acme) == []  # no tenant: the admin's only


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "since=yesterday", "until=2026-11-26T17:00:00", "cursor=xyz",
                                   "tenants=acme", "number="])
async def test_bad_queries_are_400(api, query):
    status, body = await page(api, query)
    assert status == 400 and "error" in body


async def test_no_token_is_401(api):
    status, body = await page(api, token=None)
    assert status == 401 and "error" in body
