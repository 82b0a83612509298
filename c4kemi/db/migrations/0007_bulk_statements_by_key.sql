-- A bulk statement on dids, routes or route_trunks logs its keys, not 'all'.
--
-- 0005 logged a statement touching more than c4_bulk_rows() = 10,000 rows
-- as one 'all' row: the follower then read the whole table and compared it
-- with the last one to find the change the log could have named (at 1M
-- DIDs: seconds of PostgreSQL's and the follower's CPU, on the cores the
-- Kamailio workers route with; in the run measured at 1M DIDs with 8
-- workers, routing stalled 7.5 s around one 100,000-DID UPDATE). Logged by
-- key, the follower reads just those rows: two queries, one change set.
--
-- 'all' is now written only for:
-- - a change to the small collections, and TRUNCATE (c4_log_all, as before);
-- - a statement of more than c4_bulk_rows() = 200,000 rows: the
--   follower reads a whole document once more than that many keys changed
--   (c4kemi/db/changes.py, MAX_KEYS), so their rows would never be read.
-- And no keys at all in a transaction that already logged 'all' (c4 db
-- import: TRUNCATE, then COPY of every row): 'all' already says "read
-- everything" for that commit. A transaction-local setting says so; a
-- rolled-back savepoint undoes it together with its 'all' row.
CREATE OR REPLACE FUNCTION c4_bulk_rows() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 200000';

-- 'all' once per transaction.
CREATE FUNCTION c4_log_everything() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('c4.logged_all', true) IS DISTINCT FROM 'on' THEN
        INSERT INTO routing_changes (collection) VALUES ('all');
        PERFORM set_config('c4.logged_all', 'on', true);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION c4_log_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM routing_version FOR UPDATE;
    PERFORM c4_log_everything();
    RETURN NULL;
END $$;

-- The statement's rows counted first (one pass over a transition table):
-- past the bound, no key is deduplicated or written. DISTINCT: a route's
-- several route_trunks rows are one key.
CREATE OR REPLACE FUNCTION c4_log_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    collection text := CASE TG_TABLE_NAME WHEN 'dids' THEN 'dids' ELSE 'routes' END;
    rows_of text := CASE TG_OP WHEN 'INSERT' THEN 'new_rows' ELSE 'old_rows' END;
    changed text := CASE TG_OP
        WHEN 'UPDATE' THEN 'SELECT tenant, prefix FROM old_rows UNION SELECT tenant, prefix FROM new_rows'
        ELSE format('SELECT DISTINCT tenant, prefix FROM %I', rows_of) END;
    n bigint;
BEGIN
    PERFORM 1 FROM routing_version FOR UPDATE;
    IF current_setting('c4.logged_all', true) = 'on' THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I', rows_of) INTO n;
    IF n > c4_bulk_rows() THEN
        PERFORM c4_log_everything();
    ELSE
        EXECUTE format('INSERT INTO routing_changes (collection, tenant, prefix)'
                       ' SELECT $1, CASE WHEN $1 = ''routes'' THEN tenant END, prefix FROM (%s) changed', changed)
            USING collection;
    END IF;
    RETURN NULL;
END $$;
