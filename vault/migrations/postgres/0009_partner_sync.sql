-- Mirrors sqlite/0009_partner_sync.sql: blind indexes of a record's payment method and
-- partner customer, the newest partner event applied, the partner events seen, the
-- outbox written before a partner call, and reconciliation's state.
ALTER TABLE records ADD COLUMN reference_idx TEXT;
ALTER TABLE records ADD COLUMN partner_customer_idx TEXT;
ALTER TABLE records ADD COLUMN partner_event_at BIGINT;
CREATE INDEX records_reference ON records (reference_idx) WHERE reference_idx IS NOT NULL;
CREATE INDEX records_partner_customer ON records (partner_customer_idx)
    WHERE partner_customer_idx IS NOT NULL;

CREATE TABLE partner_events (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    created     BIGINT NOT NULL,
    received_at TEXT COLLATE "C" NOT NULL,
    outcome     TEXT NOT NULL
);
CREATE INDEX partner_events_received ON partner_events (received_at);

CREATE TABLE partner_outbox (
    partner_key TEXT PRIMARY KEY,
    partner     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    token       TEXT NOT NULL,
    reference   TEXT,
    created_at  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX partner_outbox_created ON partner_outbox (created_at);

CREATE TABLE partner_sync_state (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
