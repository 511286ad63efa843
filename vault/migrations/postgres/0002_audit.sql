-- Mirrors sqlite/0002_audit.sql. Audit trail (PCI DSS 10.2): append-only and hash-chained.
-- Each event carries the hash of the one before it; vault/audit.py computes the hashes
-- and `tokenproxy audit verify` walks the chain. Appenders in every process serialise on
-- an advisory lock (vault/backends/postgres.py), so the chain stays linear.
CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
    occurred_at TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    actor       TEXT,
    origin      TEXT,
    resource    TEXT,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (occurred_at);

-- The application never changes or removes an event. These triggers stop accidents and
-- careless tools; a deliberate attacker with owner rights can drop them, which the hash
-- chain then exposes.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END
$$;
CREATE TRIGGER audit_events_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
