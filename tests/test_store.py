"""The file store: a document that fails to load is a refused reload, never a failed call."""

from __future__ import annotations

import json
import os

import pytest

from c4kemi.sources.store import FileTableSource
from tables import document


def rewrite(path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.mark.parametrize(
    "text",
    [
        '{"tenants": [{"name": "a"}], "tenants": []}',  # a duplicate key would drop the first list
        json.dumps(dict(document(), trunks=[dict(t, fr_timer=10**20) for t in document()["trunks"]])),
        json.dumps(dict(document(), routes=[{"tenant": "acme", "prefix": "", "trunks": [{"trunk": "carrier-a-1", "priority": 2**70}]}])),
        "[" * 100000,
        "\xff\xfe",
    ],
)
def test_a_bad_document_is_refused_and_the_last_good_table_serves(tmp_path, text):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(document()))
    source = FileTableSource(path, check_interval=0)
    good = source.current()
    rewrite(path, text)
    errors = []
    source.on_error = errors.append
    assert source.refresh() is False
    assert source.current() is good
    assert source.counters.failed_reloads == 1 and len(errors) == 1
    assert errors[0].errors  # names what is wrong
