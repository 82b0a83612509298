"""The routing core: pure, no I/O beyond reading a routing document.

- decision.py: the routing decision, a query and a compiled table in, an rtjson reply out;
- shapes.py: the shapes it takes and gives (routing query, rtjson reply, call);
- numbers.py: numbers and URIs (user parts, separators, E.164);
- patterns.py: the regular expressions a document holds, checked before use;
- explain.py: the decision step by step, for support (``c4 route --explain``);
- overlaps.py: address and number space held by more than one owner;
- document.py: loading (.json / .toml) and validating a routing document;
- entity_checks.py: one entity of a document checked (fields, values, references);
- targets.py: a trunk's or IPBX's target URIs;
- table.py: where callers get a compiled table (``compile_table``, ``load_table``), naming the modules below;
- compiled.py: the compiled table and what it holds;
- indexes.py: its lookup indexes (prefixes, source CIDRs);
- compiler.py: compiling a checked document;
- incremental.py: a new table from an old one and what changed;
- digests.py: the table's version and per-entity digests;
- steps.py: work done in steps, so a worker can spread a large change over calls.

Nothing is re-exported here: import from the modules (the public API is
re-exported by c4kemi itself).
"""
