-- Channel limits (docs/routing.md, "Channel limits"): simultaneous calls of
-- a tenant or a trunk, and new calls per second of a trunk. NULL: no limit.
-- The bounds repeat c4kemi/core/document.py's (MAX_CHANNELS, MAX_CPS).

ALTER TABLE tenants ADD COLUMN max_channels integer CHECK (max_channels BETWEEN 0 AND 1000000);
ALTER TABLE trunks
    ADD COLUMN max_channels integer CHECK (max_channels BETWEEN 0 AND 1000000),
    ADD COLUMN max_cps integer CHECK (max_cps BETWEEN 1 AND 100000);
