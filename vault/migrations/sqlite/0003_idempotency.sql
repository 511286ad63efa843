-- Idempotency keys. One row per (client, Idempotency-Key), found by a blind
-- index of both: the key a client chose is never stored in clear. The request body is
-- kept only as an HMAC (it holds card data); the partner's answer and the final
-- response are sealed under a per-row data key wrapped by the key ring, like records.
CREATE TABLE idempotency_keys (
    key_idx        TEXT PRIMARY KEY,
    request_mac    TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    owner          TEXT,
    kek_version    INTEGER NOT NULL,
    wrapped_dek    BLOB NOT NULL,
    partner_result BLOB,
    response       BLOB,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
