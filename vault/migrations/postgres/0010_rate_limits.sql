-- Rate limits every replica shares (vault.limits): a token bucket per publishable key and
-- address, a failure window per source address. One row per key, decided and written by
-- one statement on the database's own clock, swept once expired.
-- UNLOGGED: nothing here must outlive a crash (a lost row only forgets spending or failures),
-- and skipping the WAL keeps one write per browser tokenization cheap.
CREATE UNLOGGED TABLE rate_limits (
    key        TEXT PRIMARY KEY,
    -- bucket: the theoretical arrival time (GCRA); window: when the window began. Unix seconds.
    tat        DOUBLE PRECISION NOT NULL,
    -- window: failures counted in it (0 for buckets).
    hits       INTEGER NOT NULL DEFAULT 0,
    -- bucket: whether the last decision allowed the request.
    allowed    BOOLEAN NOT NULL DEFAULT TRUE,
    -- Unix seconds after which the row holds nothing a fresh row would not.
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX rate_limits_expires ON rate_limits (expires_at);
-- Every replica reads the throttled sources once a second: only failure rows are indexed,
-- so that read does not scan the buckets of every shopper.
CREATE INDEX rate_limits_failures ON rate_limits (key) WHERE hits > 0;
