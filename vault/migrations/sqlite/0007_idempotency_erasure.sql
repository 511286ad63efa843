-- Erasure reaches idempotency keys. A row made for a request that named a customer
-- carries that customer's blind index (the same keyed index records carry), so erasing
-- the customer deletes the row, and with it the row's own wrapped data key and every
-- sealed answer (crypto-shredding by deletion; secure_delete and the checkpoint after
-- an erasure clear the pages and the WAL). Rows older than this migration have none
-- and expire with their TTL.
ALTER TABLE idempotency_keys ADD COLUMN customer_idx TEXT;
CREATE INDEX idempotency_keys_customer ON idempotency_keys (customer_idx)
    WHERE customer_idx IS NOT NULL;

-- What stays of an erased key until its TTL ends: the key's blind index and expiry,
-- nothing of the request or the customer. A retry with the key is refused instead of
-- running again (the partner would replay the detached payment method).
CREATE TABLE idempotency_erased (
    key_idx    TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_erased_expires ON idempotency_erased (expires_at);

-- Customers erased, by blind index (as the audit trail names them): a repeated erasure
-- answers "already erased", a customer the vault never held answers "not found".
CREATE TABLE erased_customers (
    customer_idx TEXT PRIMARY KEY,
    erased_at    TEXT NOT NULL
) WITHOUT ROWID;
