-- Mirrors sqlite/0003_idempotency.sql. Idempotency keys: one row per (client,
-- Idempotency-Key), found by a blind index of both; the request body is kept only as an
-- HMAC, the partner's answer and the final response are sealed under a per-row data key.
-- Timestamps compare as bytes (COLLATE "C"), as SQLite compares them, whatever the
-- database's default collation.
CREATE TABLE idempotency_keys (
    key_idx        TEXT PRIMARY KEY,
    request_mac    TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    owner          TEXT,
    kek_version    INTEGER NOT NULL,
    wrapped_dek    BYTEA NOT NULL,
    partner_result BYTEA,
    response       BYTEA,
    created_at     TEXT COLLATE "C" NOT NULL,
    updated_at     TEXT COLLATE "C" NOT NULL,
    expires_at     TEXT COLLATE "C" NOT NULL
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
