-- Mirrors sqlite/0004_customers.sql (there is no 0003 on either dialect).

-- Partner customers: one row per customer_ref (by blind index). The partner's customer
-- id is sealed under the customer's data key, so erasing that key shreds it with the
-- customer's records; the primary key serialises first-use creation across processes.
CREATE TABLE customers (
    customer_idx TEXT PRIMARY KEY,
    dek_id       TEXT NOT NULL REFERENCES deks (dek_id),
    ciphertext   BYTEA NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX customers_dek ON customers (dek_id);

-- Customer listing pages by (created_at, token) in byte order, as SQLite does: the
-- "C" collation makes order and cursor comparisons independent of the database locale.
-- The index carries token too, so a page is one index range scan with no sort (SQLite's
-- index gets token for free from its WITHOUT ROWID primary key).
DROP INDEX records_customer;
ALTER TABLE records ALTER COLUMN token TYPE TEXT COLLATE "C";
ALTER TABLE records ALTER COLUMN created_at TYPE TEXT COLLATE "C";
ALTER TABLE records ALTER COLUMN last_used_at TYPE TEXT COLLATE "C";
CREATE INDEX records_customer ON records (customer_idx, created_at, token)
    WHERE customer_idx IS NOT NULL;

-- Retention sweeps and read-time expiry: card and bank tokens expire by last use
-- (creation when never used), invoices by creation; both served by one index each.
CREATE INDEX records_kind_activity ON records (kind, COALESCE(last_used_at, created_at));
CREATE INDEX records_kind_created ON records (kind, created_at);
