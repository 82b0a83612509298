"""The incremental path gives exactly the table a full compile gives.

Random sequences of changes (DIDs and routes added, changed, removed; now
and then a change to a trunk or an IPBX, which forces a full compile) are
applied to a document; after each one the table made by ``update_table``
from the previous table, or taken in by a store (the file store's
``refresh``, PostgreSQL's ``PostgresTableSource``), is compared with
``compile_validated`` of the same document, field by field, down to the
endpoints, profiles and the version.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c4kemi.core import indexes, steps
from c4kemi.core.decision import route_json
from c4kemi.core.document import DocumentError, validate_document
from c4kemi.core.table import RoutingTable, apply_changes, compile_validated, document_version, update_table
from c4kemi.db.source import PostgresTableSource
from c4kemi.sources import feed_writer as feed_module
from c4kemi.sources.feed_reader import FeedTableSource
from c4kemi.sources.feed_writer import FeedWriter
from c4kemi.sources.store import FileTableSource
from tables import document, request


def endpoint_view(endpoint) -> tuple:
    profile = endpoint.profile
    profile_view = None if profile is None else (
        profile.name, profile.country_code, profile.intl_prefix, profile.ld_prefix, profile.always_plus,
        [(r.pattern.pattern, r.replace) for r in profile.to_rules], [(r.pattern.pattern, r.replace) for r in profile.from_rules],
    )
    return (endpoint.kind, endpoint.name, endpoint.tenant, [t.uri for t in endpoint.targets], profile_view,
            endpoint.fr_timer, endpoint.fr_inv_timer, endpoint.branch_flags,
            dict(endpoint.auth) if endpoint.auth is not None else None, endpoint.hash_key, endpoint.carrier)


def route_view(route) -> tuple:
    return (route.tenant, route.prefix, route.priorities,
            [[(endpoint_view(e), w, type(w).__name__) for e, w in group] for group in route.groups], route.when_all_down)


def index_view(index, view) -> tuple:
    assert sorted({len(p) for p in index.entries}, reverse=True) == list(index.lengths)
    assert dict(index.sizes) == {n: sum(1 for p in index.entries if len(p) == n) for n in index.lengths}
    # The head filter: the big dict's flags are exactly its long prefixes' buckets, sized after them;
    # the layer's long prefixes are flagged beside it: never "no" for a prefix that is there.
    heads = [p[:indexes.HEAD] for p in index.base if len(p) >= indexes.HEAD]
    buckets = indexes.head_buckets(len(heads))
    assert len(index.heads) == buckets and set(index.heads) <= {0, 1}
    assert {b for b in range(buckets) if index.heads[b]} == {hash(h) & (buckets - 1) for h in heads}
    assert not any(index.heads[b] for b in index.layer_heads)
    assert all(index.may_have(p) for p in index.entries if len(p) >= indexes.HEAD)
    assert index.short_lengths == tuple(n for n in index.lengths if n < indexes.HEAD)
    assert all(index.get(p) is entry for p, entry in index.entries.items()) and index.get("x") is None
    return {prefix: view(entry) for prefix, entry in index.entries.items()}, index.lengths


def table_view(table: RoutingTable) -> dict:
    """Everything a decision or an explanation can read from a table, as plain values."""
    for levels, probes in ((table.sources.v4, table.sources.v4_probes), (table.sources.v6, table.sources.v6_probes)):
        assert [mask for _, mask, _ in levels] == [mask for mask, _ in probes]  # lookup's probes are the levels
        assert all(get(net) is e for (_, _, nets), (_, get) in zip(levels, probes) for net, e in nets.items())
    return {
        "sources": [[(length, mask, {net: endpoint_view(e) for net, e in nets.items()}) for length, mask, nets in levels]
                    for levels in (table.sources.v4, table.sources.v6)],
        "dids": index_view(table.dids, lambda d: (d.tenant, endpoint_view(d.ipbx), d.match.pattern if d.match is not None else None)),
        "routes": {tenant: index_view(index, route_view) for tenant, index in table.routes.items()},
        "version": table.version,
        "counts": dict(table.counts),
    }


# -- random changes ----------------------------------------------------------------

PREFIXES = st.text(alphabet="3946", min_size=1, max_size=5)
# DIDs long enough for the head filter, several under the head of the document's 39612345 and 396123459.
LONG_PREFIXES = st.text(alphabet="3946", max_size=4).map(lambda tail: "612345" + tail)
ACME_TRUNKS = ["carrier-a-1", "carrier-b-1", "carrier-b-2"]
WEIGHTS = st.sampled_from([0, 1, 2, 1.0, 2.5])


def route_trunks(tenant: str):
    names = ACME_TRUNKS if tenant == "acme" else ["carrier-a-1"]
    return st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True).flatmap(
        lambda picked: st.tuples(*[st.tuples(st.integers(0, 2), WEIGHTS) for _ in picked]).map(
            lambda settings_: [{"trunk": name, "priority": p, "weight": w} for name, (p, w) in zip(picked, settings_)]
        )
    )


def did_values():
    return st.sampled_from([("acme", "acme-pbx"), ("acme", "acme-branch"), ("globex", "globex-pbx")]).flatmap(
        lambda owner: st.builds(
            lambda prefix, match: {"tenant": owner[0], "prefix": "39" + prefix, "ipbx": owner[1],
                                   **({"match": match} if match is not None else {})},
            st.one_of(PREFIXES, LONG_PREFIXES), st.sampled_from([None, None, "39[0-9]*", "3[0-9]{3,}", ""]),
        )
    )


def route_values():
    return st.sampled_from(["acme", "globex"]).flatmap(
        lambda tenant: st.builds(lambda prefix, trunks, when_all_down: {"tenant": tenant, "prefix": prefix, "trunks": trunks,
                                                                        **({"when_all_down": when_all_down} if when_all_down else {})},
                                 st.one_of(st.just(""), PREFIXES), route_trunks(tenant), st.sampled_from([None, None, "try", "refuse"]))
    )


CHANGES = st.one_of(
    st.tuples(st.just("did+"), did_values()),
    st.tuples(st.just("did-"), st.integers(0, 50)),
    st.tuples(st.just("did~"), st.integers(0, 50), did_values()),
    st.tuples(st.just("route+"), route_values()),
    st.tuples(st.just("route-"), st.integers(0, 50)),
    st.tuples(st.just("route~"), st.integers(0, 50), route_values()),
    st.tuples(st.just("trunk"), st.integers(1000, 5000)),
    # Equal in Python, not as written: the feed's writer compares in place with ==, then strictly.
    st.tuples(st.just("route="), st.integers(0, 50)),
    # The same entities in another order: nothing changed.
    st.tuples(st.sampled_from(["did^", "route^"]), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("ipbx"), st.sampled_from(["sip:10.0.0.12", "sip:10.0.0.10:5060"])),
)


# Mistakes a provisioning tool could write: the feed's writer must refuse exactly what the whole-document check refuses.
MISTAKES = st.one_of(
    st.tuples(st.just("raw-dids"), st.sampled_from([
        {"tenant": "acme", "prefix": "3970", "ipbx": "acme-pbx"},  # a duplicate prefix (the document has 3970)
        {"tenant": "acme", "prefix": "3971", "ipbx": "no-such-pbx"},
        {"tenant": "acme", "prefix": "3972", "ipbx": "globex-pbx"},  # another tenant's IPBX
        {"tenant": "acme", "prefix": "3973", "ipbx": "acme-pbx", "match": "("},
        {"tenant": "acme", "prefix": "39x", "ipbx": "acme-pbx"},
        {"tenant": "acme", "prefix": 3974, "ipbx": "acme-pbx"},
        {"tenant": "acme", "prefix": ["39"], "ipbx": "acme-pbx"},
        {"tenant": "acme", "prefix": "3975", "ipbx": "acme-pbx", "extra": 1},
        "3976",
    ])),
    st.tuples(st.just("raw-routes"), st.sampled_from([
        {"tenant": "acme", "prefix": "44", "trunks": ["no-such-trunk"]},
        {"tenant": "acme", "prefix": "45", "trunks": [{"trunk": "carrier-a-1", "priority": True, "weight": 1}]},
        {"tenant": "acme", "prefix": "46", "trunks": [{"trunk": "carrier-a-1", "priority": 0, "weight": -1}]},
        {"tenant": "nobody", "prefix": "47", "trunks": ["carrier-a-1"]},
        {"tenant": "acme", "prefix": "48", "trunks": []},
        {"tenant": ["acme"], "prefix": "49", "trunks": ["carrier-a-1"]},
        {"tenant": "acme", "prefix": "50", "trunks": ["carrier-a-1"], "when_all_down": "never"},
    ])),
)


def apply(doc: dict, change: tuple) -> None:
    """One change to a raw document; keys stay unique (a clash replaces the entity) but for raw-* mistakes."""
    kind = change[0]
    if kind in ("raw-dids", "raw-routes"):
        doc[kind[4:]].append(change[1])
    elif kind in ("did+", "route+"):
        collection = "dids" if kind == "did+" else "routes"
        new = change[1]
        key = (lambda e: e["prefix"]) if collection == "dids" else (lambda e: (e["tenant"], e["prefix"]))
        doc[collection] = [e for e in doc[collection] if key(e) != key(new)] + [new]
    elif kind in ("did-", "route-"):
        items = doc["dids" if kind == "did-" else "routes"]
        if items:
            items.pop(change[1] % len(items))
    elif kind in ("did~", "route~"):
        collection = "dids" if kind == "did~" else "routes"
        items = doc[collection]
        if items:
            index = change[1] % len(items)
            old, new = items[index], dict(change[2])
            new["prefix"] = old["prefix"]  # same key, new content
            if collection == "routes" and new["tenant"] != old["tenant"]:
                new["tenant"] = old["tenant"]
                new["trunks"] = [{"trunk": "carrier-a-1", "priority": 0, "weight": 1}]
            items[index] = new
    elif kind == "route=":
        if doc["routes"]:
            route = doc["routes"][change[1] % len(doc["routes"])]
            route["trunks"] = [retyped(t) for t in route["trunks"]]
    elif kind in ("did^", "route^"):
        items = doc["dids" if kind == "did^" else "routes"]
        if items:
            items.insert(change[2] % len(items), items.pop(change[1] % len(items)))
    elif kind == "trunk":
        doc["trunks"][0]["fr_timer"] = change[1]
    else:
        doc["ipbxs"][0]["targets"] = [change[1]]


def retyped(trunk):
    """A route's trunk with an equal weight of the other type: 1 <-> 1.0."""
    if isinstance(trunk, str):
        return trunk
    weight = trunk["weight"]
    return {**trunk, "weight": float(weight) if isinstance(weight, int) else int(weight) if weight == int(weight) else weight}


def checked_or_none(doc: dict):
    try:
        return validate_document(doc)
    except DocumentError:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CHANGES, min_size=1, max_size=12))
def test_update_table_gives_the_full_compile_for_any_change_sequence(changes):
    doc = document()
    table = compile_validated(validate_document(doc))
    for change in changes:
        before = json.loads(json.dumps(doc))
        apply(doc, change)
        checked = checked_or_none(doc)
        if checked is None:  # refused (as it would be anywhere): undone
            doc = before
            continue
        table = update_table(table, checked)
        assert table_view(table) == table_view(compile_validated(checked))
        assert document_version(checked) == table.version
    full = compile_validated(validate_document(doc))
    for source in ("192.0.2.1", "10.0.0.10"):  # a trunk, and an IPBX (its DIDs through the head filter)
        for called in ("+39612345678", "+3961234", "+39466", "+4420123", "+396123453", "+3961234593", "+39612345"):
            query = request(source, called)
            assert route_json(table, query) == route_json(full, query)
    # The head filter rules out only what the probes would not find.
    numbers = {n for d in doc["dids"] for n in (d["prefix"], d["prefix"] + "3", d["prefix"] + "0000", d["prefix"][:-1])}
    for number in numbers:
        for tenant in ("acme", "globex"):
            assert table.find_did(number, tenant, True) is table.find_did(number, tenant)


def test_a_did_change_shares_everything_else():
    doc = document()
    old = compile_validated(validate_document(doc))
    doc["dids"][0]["ipbx"] = "acme-branch"
    doc["dids"].append({"tenant": "globex", "prefix": "4421", "ipbx": "globex-pbx"})
    new = update_table(old, validate_document(doc))
    assert new.sources is old.sources and new.routes is old.routes and new.ipbxs is old.ipbxs
    assert new.dids.entries["3970"] is old.dids.entries["3970"]  # unchanged DIDs are the same objects
    assert new.dids.entries["39612345"] is new.did_values["acme", "acme-branch", None]  # interned (see Did)
    assert new.dids.entries["39612345"].ipbx is old.ipbxs["acme-branch"]
    assert old.dids.entries["39612345"].ipbx.name == "acme-pbx"  # the old table is untouched
    assert new.version != old.version
    assert table_view(new) == table_view(compile_validated(validate_document(doc)))


def test_apply_changes_then_undo_gives_back_the_same_version():
    table = compile_validated(validate_document(document()))
    did = {"tenant": "acme", "prefix": "3988", "ipbx": "acme-pbx", "match": None}
    route = {"tenant": "globex", "prefix": "49", "trunks": [{"trunk": "carrier-a-1", "priority": 0, "weight": 1}]}
    changed = apply_changes(table, {"3988": did}, {("globex", "49"): route})
    assert changed.version != table.version and changed.counts["dids"] == 5 and changed.counts["routes"] == 5
    back = apply_changes(changed, {"3988": None}, {("globex", "49"): None})
    assert table_view(back) == table_view(table)


# -- the stores ------------------------------------------------------------------


def rewrite(path, doc) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(CHANGES, min_size=1, max_size=6))
def test_the_file_store_takes_changes_in_as_a_full_compile_would(tmp_path, changes):
    path = tmp_path / "table.json"
    doc = document()
    rewrite(path, doc)
    source = FileTableSource(path, check_interval=0)
    for change in changes:
        before = json.loads(json.dumps(doc))
        apply(doc, change)
        checked = checked_or_none(doc)
        rewrite(path, doc)
        os.utime(path, ns=(source._stamp[0] + 1, source._stamp[0] + 1))  # a new stamp even within one clock tick
        previous = source.current()
        source.refresh()
        if checked is None:
            doc = before  # refused: the last good table serves
            checked = validate_document(doc)
        elif change[0] not in ("trunk", "ipbx"):  # taken in without a full compile
            assert source.current().sources is previous.sources
        assert table_view(source.current()) == table_view(compile_validated(checked))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CHANGES, min_size=1, max_size=6))
def test_the_postgresql_store_takes_changes_in_as_a_full_compile_would(changes):
    source = PostgresTableSource("postgresql://unused.invalid/c4")  # documents handed in directly, as the Follower does
    doc = document()

    async def take_all() -> None:
        nonlocal doc
        await source._take(json.loads(json.dumps(doc)), 1)
        for version, change in enumerate(changes, 2):
            before = json.loads(json.dumps(doc))
            apply(doc, change)
            checked = checked_or_none(doc)
            previous = source.current()
            await source._take(json.loads(json.dumps(doc)), version)
            if checked is None:
                doc = before
                checked = validate_document(doc)
            elif change[0] not in ("trunk", "ipbx"):  # taken in without a full compile
                assert source.current().sources is previous.sources
            assert table_view(source.current()) == table_view(compile_validated(checked))

    asyncio.run(take_all())


# -- the table feed (c4 feed writes, every worker reads) -------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(CHANGES, MISTAKES), min_size=1, max_size=10), st.sampled_from([200_000, 2]))
def test_change_sets_through_the_feed_give_the_full_compile(tmp_path_factory, monkeypatch, changes, max_changes):
    monkeypatch.setattr(steps, "STEP", 1)  # the stepped reader takes one entity per call
    monkeypatch.setattr(feed_module, "LINE", 2)  # snapshots and change sets over several lines
    feed = tmp_path_factory.mktemp("feed")
    writer = FeedWriter(feed, max_changes=max_changes)
    doc = document()
    writer.publish(json.loads(json.dumps(doc)))
    reader = FeedTableSource(feed, check_interval=0)
    stepped = FeedTableSource(feed, check_interval=0, step_budget=0)  # a KEMI worker's: spread over calls
    for change in changes:
        before = json.loads(json.dumps(doc))
        apply(doc, change)
        checked = checked_or_none(doc)
        if checked is None:  # the writer refuses what the whole-document check refuses, and publishes nothing
            with pytest.raises(DocumentError):
                writer.publish(json.loads(json.dumps(doc)))
            doc = before
            continue
        previous = reader.current()
        taken = writer.publish(json.loads(json.dumps(doc)))
        reader.refresh()
        if taken == "changes":  # applied, not compiled again
            assert reader.current().sources is previous.sources and reader.generation == writer.generation
        assert taken != "changes" or change[0] not in ("trunk", "ipbx")
        assert taken == "unchanged" or change[0] not in ("did^", "route^")  # order alone is no change
        assert table_view(reader.current()) == table_view(compile_validated(checked))
        stepped.refresh()
        while stepped.pending:
            assert stepped.current().version in (previous.version, reader.current().version)  # old or new, never half
        assert table_view(stepped.current()) == table_view(reader.current())
    late = FeedTableSource(feed, check_interval=0)  # a reader that starts now: snapshot plus every change set
    assert table_view(late.current()) == table_view(reader.current())
    writer.close()


def test_the_head_filter_is_shared_until_a_merge_makes_it_again(monkeypatch):
    """A change never writes the big dict's filter (forked workers share its pages): the layer's long
    prefixes are flagged beside it, removed ones stay flagged; a merge makes the filter of what is there."""
    prefixes = [f"3961234{i:03d}" for i in range(40)]
    first = index = indexes.PrefixIndex.build({p: p for p in prefixes})
    for change in ({prefixes[0]: None}, {"39999999": "new"}, {prefixes[1]: "changed"},
                   {p: None for p in prefixes[2:32]}, {"3961234": "short"}, {f"4420{i:05d}": i for i in range(100)}):
        index = index.updated(change)
        assert index.heads is first.heads
        assert all(index.may_have(p) for p in index.entries if len(p) >= indexes.HEAD)
        assert index.short_lengths == indexes.PrefixIndex.build(dict(index.entries)).short_lengths
    assert index.may_have(prefixes[5])  # removed, still flagged: a probe for nothing, never a miss
    monkeypatch.setattr(indexes, "LAYER_MAX", 0)
    index = index.updated({"39999999": None})
    fresh = indexes.PrefixIndex.build(dict(index.entries))
    assert not index.layer and index.heads == fresh.heads and not index.layer_heads


PREFIX_CHANGES = st.dictionaries(st.sampled_from([f"39{i}" for i in range(12)] + [f"396123450{i}" for i in range(12)]),
                                 st.one_of(st.none(), st.integers(0, 3)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(PREFIX_CHANGES, max_size=10), st.integers(0, 6))
def test_the_layered_index_equals_one_built_from_scratch(changes, layer_max):
    """Changes kept beside the shared dict, merged past LAYER_MAX (small here): every version is the index
    built from its entries, lookups included (index_view), and removed prefixes are gone."""
    original = {f"39{i}": -i for i in range(6)} | {f"396123450{i}": -i for i in range(6)}
    expected, index = dict(original), indexes.PrefixIndex.build(dict(original))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indexes, "LAYER_MAX", layer_max)
        patch.setattr(indexes, "MERGE_STEP", 2)
        for change in changes:
            index = indexes.PrefixIndex.updated(index, change)
            for prefix, entry in change.items():
                if entry is None:
                    expected.pop(prefix, None)
                else:
                    expected[prefix] = entry
            assert dict(index.entries) == expected and len(index.entries) == len(expected)
            assert index_view(index, repr) == index_view(indexes.PrefixIndex.build(dict(expected)), repr)
            assert len(index.layer) <= max(layer_max, 0) or not index.layer


def test_a_small_change_shares_the_big_dict_instead_of_copying_it():
    """Copying a forked KEMI worker's big dict writes every entry's reference count (copy on write of every page)."""
    index = indexes.PrefixIndex.build({f"3961234{i:04d}": i for i in range(1000)})
    changed = index.updated({"39612340000": None, "39999999999": "new", "39612340001": "changed"})
    assert changed.base is index.base and dict(changed.layer) == {"39612340000": None, "39999999999": "new", "39612340001": "changed"}
    assert changed.get("39612340000") is None and changed.get("39999999999") == "new" and changed.get("39612340002") == 2
    assert index.get("39612340000") == 0 and index.get("39999999999") is None  # the old version is untouched
    back = changed.updated({"39999999999": None})  # added since the big dict, then removed: no trace left in the layer
    assert "39999999999" not in back.layer and back.base is index.base
