-- Call records (docs/cdr.md): one row per initial INVITE the router handled,
-- written by `c4 cdr --db`. The columns are the record's members; `id` is
-- the record's own (made by c4 cdr), so a batch shipped twice is stored once.
-- No foreign keys: a record outlives the tenant, trunk or IPBX it names.

CREATE TABLE cdrs (
    id          uuid PRIMARY KEY,
    call_id     text NOT NULL,
    tenant      text,            -- NULL: refused before a tenant was known (403), or a shared carrier's 404
    direction   text CHECK (direction IN ('inbound', 'outbound', 'on-net')),
    source      text,
    source_kind text CHECK (source_kind IN ('trunk', 'ipbx')),
    calling     text,
    called      text,
    attempts    jsonb NOT NULL DEFAULT '[]',
    answered_by text,
    invite_at   timestamptz NOT NULL,
    answer_at   timestamptz,
    end_at      timestamptz NOT NULL,
    duration_ms bigint NOT NULL CHECK (duration_ms >= 0),
    code        integer NOT NULL CHECK (code BETWEEN 100 AND 699),
    reason      text NOT NULL,
    ended_by    text CHECK (ended_by IN ('caller', 'callee', 'timeout', 'router'))
);

-- GET /api/v1/cdrs pages by (invite_at, id), within a tenant or across all;
-- `number` finds a calling or called number.
CREATE INDEX cdrs_tenant_time ON cdrs (tenant, invite_at, id);
CREATE INDEX cdrs_time ON cdrs (invite_at, id);
CREATE INDEX cdrs_calling ON cdrs (calling, invite_at);
CREATE INDEX cdrs_called ON cdrs (called, invite_at);
