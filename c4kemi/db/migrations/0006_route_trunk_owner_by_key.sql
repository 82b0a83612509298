-- The route_trunk_owner check of 0001, one query per table it fires on.
--
-- 0001 chose the changed row's key with a CASE inside the WHERE clause:
-- the planner could then use no index and joined the whole route_trunks
-- table for every changed row, at commit. Importing 100,000 routes (about
-- 200,000 route_trunks rows) kept one COMMIT busy for more than ten minutes
-- of CPU. Each branch below looks up only the rows of the changed key
-- (route_trunks' unique key, its trunk index, trunks by carrier).
CREATE INDEX IF NOT EXISTS trunks_carrier ON trunks (carrier);

CREATE OR REPLACE FUNCTION c4_check_route_trunk_owner() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb := to_jsonb(NEW);  -- one function for three tables: fields by name
    bad record;
BEGIN
    IF TG_TABLE_NAME = 'route_trunks' THEN
        SELECT rt.tenant, rt.prefix, rt.trunk, c.name AS carrier, c.tenant AS owner INTO bad
          FROM route_trunks rt
          JOIN trunks t ON t.name = rt.trunk
          JOIN carriers c ON c.name = t.carrier
         WHERE rt.tenant = changed->>'tenant' AND rt.prefix = changed->>'prefix' AND rt.trunk = changed->>'trunk'
           AND c.tenant IS NOT NULL AND c.tenant <> rt.tenant
         LIMIT 1;
    ELSIF TG_TABLE_NAME = 'trunks' THEN
        SELECT rt.tenant, rt.prefix, rt.trunk, c.name AS carrier, c.tenant AS owner INTO bad
          FROM route_trunks rt
          JOIN trunks t ON t.name = rt.trunk
          JOIN carriers c ON c.name = t.carrier
         WHERE rt.trunk = changed->>'name'
           AND c.tenant IS NOT NULL AND c.tenant <> rt.tenant
         LIMIT 1;
    ELSE
        SELECT rt.tenant, rt.prefix, rt.trunk, c.name AS carrier, c.tenant AS owner INTO bad
          FROM carriers c
          JOIN trunks t ON t.carrier = c.name
          JOIN route_trunks rt ON rt.trunk = t.name
         WHERE c.name = changed->>'name'
           AND c.tenant IS NOT NULL AND c.tenant <> rt.tenant
         LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'trunk % belongs to carrier % of tenant %, not %', bad.trunk, bad.carrier, bad.owner, bad.tenant
            USING ERRCODE = 'check_violation', CONSTRAINT = 'route_trunk_owner';
    END IF;
    RETURN NULL;
END $$;
