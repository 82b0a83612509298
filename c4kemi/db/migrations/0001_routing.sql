-- The routing document, one table per collection. Names are the keys and
-- are how entities refer to each other, as in the document; they never
-- change (the API creates and deletes, it does not rename), so foreign keys
-- need no ON UPDATE rule. ON DELETE RESTRICT everywhere something is in
-- use: deleting a trunk a route uses, or a tenant that owns anything, fails.
-- The bounds repeat c4kemi/core/document.py's checks, so rows written with plain
-- SQL cannot hold what `c4 check` refuses either.

CREATE DOMAIN c4_name AS text
    CHECK (VALUE <> '' AND length(VALUE) <= 200 AND VALUE !~ '[[:cntrl:]]');
CREATE DOMAIN c4_digits AS text CHECK (VALUE ~ '^[0-9]{0,32}$');
CREATE DOMAIN c4_timer AS integer CHECK (VALUE BETWEEN 1 AND 3600000);
CREATE DOMAIN c4_branch_flags AS bigint CHECK (VALUE BETWEEN 0 AND 4294967295);

CREATE TABLE tenants (
    name c4_name PRIMARY KEY
);

CREATE TABLE normalization_profiles (
    name c4_name PRIMARY KEY,
    country_code c4_digits NOT NULL DEFAULT '',
    intl_prefix c4_digits NOT NULL DEFAULT '',
    ld_prefix c4_digits NOT NULL DEFAULT '',
    always_plus boolean NOT NULL DEFAULT false,
    -- ordered lists of {"match", "replace"}: the order is the rule order
    to_e164 jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(to_e164) = 'array'),
    from_e164 jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(from_e164) = 'array')
);

CREATE TABLE carriers (
    name c4_name PRIMARY KEY,
    tenant c4_name REFERENCES tenants ON DELETE RESTRICT  -- NULL: shared by every tenant
);
CREATE INDEX carriers_tenant ON carriers (tenant);

CREATE TABLE ipbxs (
    name c4_name PRIMARY KEY,
    tenant c4_name NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    targets text[] NOT NULL CHECK (cardinality(targets) > 0),
    normalization c4_name REFERENCES normalization_profiles ON DELETE RESTRICT,
    fr_timer c4_timer NOT NULL DEFAULT 5000,
    fr_inv_timer c4_timer NOT NULL DEFAULT 30000,
    branch_flags c4_branch_flags NOT NULL DEFAULT 0,
    UNIQUE (name, tenant)  -- the target of dids' (ipbx, tenant) key
);
CREATE INDEX ipbxs_tenant ON ipbxs (tenant);

CREATE TABLE trunks (
    name c4_name PRIMARY KEY,
    carrier c4_name NOT NULL REFERENCES carriers ON DELETE RESTRICT,
    target text NOT NULL,
    normalization c4_name REFERENCES normalization_profiles ON DELETE RESTRICT,
    fr_timer c4_timer NOT NULL DEFAULT 5000,
    fr_inv_timer c4_timer NOT NULL DEFAULT 30000,
    branch_flags c4_branch_flags NOT NULL DEFAULT 0,
    auth_username text,
    auth_password text,
    auth_realm text,
    CHECK ((auth_username IS NULL) = (auth_password IS NULL) AND (auth_password IS NULL) = (auth_realm IS NULL))
);
CREATE INDEX trunks_carrier ON trunks (carrier);

-- Source CIDRs of trunks and IPBXs. The key makes a CIDR belong to one
-- entity only; cidr refuses host bits (10.0.0.1/24) as the checker does.
CREATE TABLE sources (
    cidr cidr PRIMARY KEY,
    ipbx c4_name REFERENCES ipbxs ON DELETE CASCADE,
    trunk c4_name REFERENCES trunks ON DELETE CASCADE,
    position integer NOT NULL,
    CHECK ((ipbx IS NULL) <> (trunk IS NULL))
);
CREATE INDEX sources_ipbx ON sources (ipbx);
CREATE INDEX sources_trunk ON sources (trunk);

CREATE TABLE dids (
    prefix c4_digits PRIMARY KEY CHECK (prefix <> ''),
    tenant c4_name NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    ipbx c4_name NOT NULL,
    match text,
    -- a DID's IPBX belongs to the DID's tenant
    FOREIGN KEY (ipbx, tenant) REFERENCES ipbxs (name, tenant) ON DELETE RESTRICT
);
CREATE INDEX dids_tenant_prefix ON dids (tenant, prefix);
CREATE INDEX dids_ipbx ON dids (ipbx);

CREATE TABLE routes (
    tenant c4_name NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    prefix c4_digits NOT NULL,  -- '' is the tenant's default route
    PRIMARY KEY (tenant, prefix)
);

CREATE TABLE route_trunks (
    tenant c4_name NOT NULL,
    prefix c4_digits NOT NULL,
    position integer NOT NULL,
    trunk c4_name NOT NULL REFERENCES trunks ON DELETE RESTRICT,
    priority integer NOT NULL,
    weight double precision NOT NULL DEFAULT 1 CHECK (weight >= 0 AND weight <= 1000000),
    PRIMARY KEY (tenant, prefix, position),
    UNIQUE (tenant, prefix, trunk),
    FOREIGN KEY (tenant, prefix) REFERENCES routes ON DELETE CASCADE
);
CREATE INDEX route_trunks_trunk ON route_trunks (trunk);

-- A route uses only shared carriers' trunks or its own tenant's. Deferred
-- to commit, so a whole document can be written in any order.
CREATE FUNCTION c4_check_route_trunk_owner() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb := to_jsonb(NEW);  -- one function for three tables: fields by name
    bad record;
BEGIN
    SELECT rt.tenant, rt.prefix, rt.trunk, c.name AS carrier, c.tenant AS owner INTO bad
      FROM route_trunks rt
      JOIN trunks t ON t.name = rt.trunk
      JOIN carriers c ON c.name = t.carrier
     WHERE c.tenant IS NOT NULL AND c.tenant <> rt.tenant
       AND CASE TG_TABLE_NAME
             WHEN 'route_trunks' THEN rt.tenant = changed->>'tenant' AND rt.prefix = changed->>'prefix' AND rt.trunk = changed->>'trunk'
             WHEN 'trunks' THEN t.name = changed->>'name'
             ELSE c.name = changed->>'name' 
           END
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'trunk % belongs to carrier % of tenant %, not %', bad.trunk, bad.carrier, bad.owner, bad.tenant
            USING ERRCODE = 'check_violation', CONSTRAINT = 'route_trunk_owner';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER route_trunk_owner AFTER INSERT OR UPDATE ON route_trunks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION c4_check_route_trunk_owner();
CREATE CONSTRAINT TRIGGER route_trunk_owner AFTER UPDATE OF carrier ON trunks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION c4_check_route_trunk_owner();
CREATE CONSTRAINT TRIGGER route_trunk_owner AFTER UPDATE OF tenant ON carriers
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION c4_check_route_trunk_owner();

-- The routing version: every statement that changes routing data bumps it,
-- and pg_notify tells the routers, after commit (PostgreSQL delivers
-- notifications only when the transaction commits).
CREATE TABLE routing_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL,
    changed_at timestamptz NOT NULL
);
INSERT INTO routing_version VALUES (true, 1, now());

CREATE FUNCTION c4_routing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current bigint;
BEGIN
    UPDATE routing_version SET version = version + 1, changed_at = now() RETURNING version INTO current;
    PERFORM pg_notify('c4_routing', current::text);
    RETURN NULL;
END $$;

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['tenants', 'normalization_profiles', 'carriers', 'ipbxs', 'trunks',
                                'sources', 'dids', 'routes', 'route_trunks'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION c4_routing_changed()', name || '_changed', name);
    END LOOP;
END $$;
