-- Tenant tokens for the provisioning API. Only a SHA-256 of each token is
-- kept: the token itself is printed once, when it is created. A token dies
-- with its tenant.
CREATE TABLE api_tokens (
    id bigserial PRIMARY KEY,
    tenant c4_name NOT NULL REFERENCES tenants ON DELETE CASCADE,
    sha256 bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
