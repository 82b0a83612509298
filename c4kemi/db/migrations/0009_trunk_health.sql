-- Trunk health (docs/routing.md, "trunks" and "routes"): a trunk's or an
-- IPBX's optional health settings, and what a route's call does when every
-- target is down. NULL: absent from the document (the defaults apply).
-- The members and bounds of health are checked by c4kemi/core/health.py
-- (every write goes through it: the API, `c4 db import`); here only that it
-- is an object, and when_all_down's values as c4kemi/core/entity_checks.py
-- takes them.
--
-- The change log triggers of 0005 and 0007 fire for any column: a changed
-- health is an 'all' row (trunks and ipbxs are small collections), a
-- changed when_all_down the route's key.

ALTER TABLE trunks ADD COLUMN health jsonb CHECK (health IS NULL OR jsonb_typeof(health) = 'object');
ALTER TABLE ipbxs ADD COLUMN health jsonb CHECK (health IS NULL OR jsonb_typeof(health) = 'object');
ALTER TABLE routes ADD COLUMN when_all_down text CHECK (when_all_down IN ('try', 'refuse'));
