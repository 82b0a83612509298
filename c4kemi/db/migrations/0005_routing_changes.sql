-- The routing change log: which DIDs and routes each committed change
-- touched, so a follower (c4 db follow) fetches only those instead of
-- exporting the whole table. Written by triggers, so the provisioning
-- API, `c4 db import` and hand-written SQL all land here, in the same
-- transaction as the change itself. The NOTIFY of 0001 stays the wake-up.
--
-- One row per changed key: collection 'dids' (prefix) or 'routes'
-- (tenant, prefix; a change of its route_trunks counts as a change of the
-- route). 'all' means "read everything": a change to the small
-- collections (tenants, profiles, IPBXs, carriers, trunks, sources), a
-- TRUNCATE (c4 db import), or one statement touching more than
-- c4_bulk_rows() rows (a bulk load is logged as one row, not a million).
--
-- Order: every writer of routing data first locks the routing_version row
-- (the 0001 trigger updates it too) and holds it until commit, so seq
-- order is commit order: a reader that has seen seq N never sees a
-- smaller one commit later.
CREATE TABLE routing_changes (
    seq bigserial PRIMARY KEY,
    collection text NOT NULL CHECK (collection IN ('dids', 'routes', 'all')),
    tenant text,
    prefix text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- Followers prune rows older than their retention (c4kemi/db/changes.py);
-- a follower whose last seq is at or below up_to missed rows and reads
-- everything instead.
CREATE TABLE routing_changes_pruned (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    up_to bigint NOT NULL
);
INSERT INTO routing_changes_pruned VALUES (true, 0);

CREATE FUNCTION c4_bulk_rows() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 10000';

CREATE FUNCTION c4_log_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM routing_version FOR UPDATE;
    INSERT INTO routing_changes (collection) VALUES ('all');
    RETURN NULL;
END $$;

-- Statement level, with the statement's rows as transition tables: a bulk
-- statement costs one count and one row, not a trigger call per row.
CREATE FUNCTION c4_log_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    collection text := CASE TG_TABLE_NAME WHEN 'dids' THEN 'dids' ELSE 'routes' END;
    changed text := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT tenant, prefix FROM new_rows'
        WHEN 'DELETE' THEN 'SELECT tenant, prefix FROM old_rows'
        ELSE 'SELECT tenant, prefix FROM old_rows UNION SELECT tenant, prefix FROM new_rows' END;
BEGIN
    PERFORM 1 FROM routing_version FOR UPDATE;
    EXECUTE format(
        'WITH changed AS (%s), counted AS (SELECT count(*) AS n FROM changed)'
        ' INSERT INTO routing_changes (collection, tenant, prefix)'
        ' SELECT $1, CASE WHEN $1 = ''routes'' THEN tenant END, prefix FROM changed, counted WHERE n <= c4_bulk_rows()'
        ' UNION ALL SELECT ''all'', NULL, NULL FROM counted WHERE n > c4_bulk_rows()', changed)
        USING collection;
    RETURN NULL;
END $$;

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['tenants', 'normalization_profiles', 'carriers', 'ipbxs', 'trunks', 'sources'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION c4_log_all()', name || '_logged', name);
    END LOOP;
    FOREACH name IN ARRAY ARRAY['dids', 'routes', 'route_trunks'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION c4_log_keys()', name || '_logged_insert', name);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION c4_log_keys()', name || '_logged_update', name);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION c4_log_keys()', name || '_logged_delete', name);
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION c4_log_all()', name || '_logged_truncate', name);
    END LOOP;
END $$;
