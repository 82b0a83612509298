-- Address and number space (docs/security.md). A tenant's number blocks
-- (DID prefixes) and address blocks (CIDRs), assigned by the admin: the
-- space its token provisions in, held for it before it provisions anything.
-- Empty: the tenant token provisions in any space nobody else holds.

ALTER TABLE tenants
    ADD COLUMN number_blocks text[] NOT NULL DEFAULT '{}',
    ADD COLUMN address_blocks cidr[] NOT NULL DEFAULT '{}';

-- A source wider than /8
-- (IPv4) or /32 (IPv6) needs allow_wide_sources on its IPBX or trunk, as
-- c4kemi/core/document.py checks; and the API looks for source CIDRs that
-- overlap another owner's (inet's && operator) through a GiST index, so the
-- check stays an index probe however many sources there are.

ALTER TABLE ipbxs ADD COLUMN allow_wide_sources boolean NOT NULL DEFAULT false;
ALTER TABLE trunks ADD COLUMN allow_wide_sources boolean NOT NULL DEFAULT false;

CREATE INDEX sources_cidr_overlap ON sources USING gist (cidr inet_ops);
