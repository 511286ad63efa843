-- Audit trail (PCI DSS 10.2): append-only and hash-chained. Each event carries the hash
-- of the one before it; vault/audit.py computes the hashes (HMAC under a key derived from
-- the key ring) and `tokenproxy audit verify` walks the chain.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY,
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
-- careless tools; a deliberate attacker with file access can drop them, which the hash
-- chain then exposes.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
