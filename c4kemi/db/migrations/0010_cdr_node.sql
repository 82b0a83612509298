-- Several nodes on one database (docs/cluster.md): each call record names
-- the node that routed the call. NULL: a record from before this column.
ALTER TABLE cdrs ADD COLUMN node text;
