-- Partner customers: one row per customer_ref (by blind index). The partner's customer
-- id is sealed under the customer's data key, so erasing that key shreds it with the
-- customer's records; the primary key serialises first-use creation across processes.
CREATE TABLE customers (
    customer_idx TEXT PRIMARY KEY,
    dek_id       TEXT NOT NULL REFERENCES deks (dek_id),
    ciphertext   BLOB NOT NULL,
    created_at   TEXT NOT NULL
) WITHOUT ROWID;

-- Retention sweeps and read-time expiry: card and bank tokens expire by last use
-- (creation when never used), invoices by creation; both served by one index.
CREATE INDEX records_kind_activity ON records (kind, COALESCE(last_used_at, created_at));
CREATE INDEX records_kind_created ON records (kind, created_at);
