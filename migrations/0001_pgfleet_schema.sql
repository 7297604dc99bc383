-- pgfleet's own objects live in one schema of the history database, so a
-- DBA can tell them apart from application tables and grant on them at once.
CREATE SCHEMA IF NOT EXISTS pgfleet;

COMMENT ON SCHEMA pgfleet IS 'pgfleet control plane: users, sessions metadata, audit trail, replication jobs';
