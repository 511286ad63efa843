-- Mirrors sqlite/0007_idempotency_erasure.sql: idempotency rows carry the customer's
-- blind index so erasure deletes them; erased keys leave only a tombstone until their
-- TTL ends; erased customers are remembered by blind index.
ALTER TABLE idempotency_keys ADD COLUMN customer_idx TEXT;
CREATE INDEX idempotency_keys_customer ON idempotency_keys (customer_idx)
    WHERE customer_idx IS NOT NULL;

CREATE TABLE idempotency_erased (
    key_idx    TEXT PRIMARY KEY,
    expires_at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idempotency_erased_expires ON idempotency_erased (expires_at);

CREATE TABLE erased_customers (
    customer_idx TEXT PRIMARY KEY,
    erased_at    TEXT COLLATE "C" NOT NULL
);
