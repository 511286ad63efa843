-- Partner sync: webhooks and reconciliation keep records true to the partner.
-- A card or bank record is found by the partner's payment method and by the partner
-- customer it is saved on through keyed blind indexes (the references themselves stay
-- inside the ciphertext). partner_event_at is the `created` time (Unix seconds) of the
-- newest partner event applied to the record: an older event delivered late is skipped.
ALTER TABLE records ADD COLUMN reference_idx TEXT;
ALTER TABLE records ADD COLUMN partner_customer_idx TEXT;
ALTER TABLE records ADD COLUMN partner_event_at INTEGER;
CREATE INDEX records_reference ON records (reference_idx) WHERE reference_idx IS NOT NULL;
CREATE INDEX records_partner_customer ON records (partner_customer_idx)
    WHERE partner_customer_idx IS NOT NULL;

-- Partner events applied (or ignored), by the partner's event id: a redelivery is
-- recognised and answered without applying it twice.
CREATE TABLE partner_events (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    created     INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    outcome     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX partner_events_received ON partner_events (received_at);

-- Written before a payment method is created at the partner: the partner idempotency
-- key and the token the record will have (never card data). A row whose token never
-- arrived names a payment method the partner holds and the vault does not (an orphan).
CREATE TABLE partner_outbox (
    partner_key TEXT PRIMARY KEY,
    partner     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    token       TEXT NOT NULL,
    reference   TEXT,
    created_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX partner_outbox_created ON partner_outbox (created_at);

-- Reconciliation's resumable cursor and its last summary, by name.
CREATE TABLE partner_sync_state (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
