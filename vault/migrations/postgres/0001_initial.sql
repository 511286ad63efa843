-- Mirrors sqlite/0001_initial.sql. Timestamps stay TEXT (ISO 8601, UTC, written by the
-- vault) so both backends hold byte-identical rows and sort them the same way.

-- Data keys: one per customer (customer_idx set) or per record (customer_idx NULL),
-- stored wrapped by a key-encryption key version from the key ring.
CREATE TABLE deks (
    dek_id       TEXT PRIMARY KEY,
    customer_idx TEXT UNIQUE,
    kek_version  INTEGER NOT NULL,
    wrapped      BYTEA NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX deks_kek_version ON deks (kek_version);

-- Records: only the token, kind, key id, timestamps and blind indexes are in clear.
CREATE TABLE records (
    token           TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    dek_id          TEXT NOT NULL REFERENCES deks (dek_id),
    ciphertext      BYTEA NOT NULL,
    customer_idx    TEXT,
    fingerprint_idx TEXT,
    created_at      TEXT NOT NULL,
    last_used_at    TEXT
);
CREATE INDEX records_customer ON records (customer_idx, created_at) WHERE customer_idx IS NOT NULL;
CREATE INDEX records_fingerprint ON records (fingerprint_idx) WHERE fingerprint_idx IS NOT NULL;
CREATE INDEX records_dek ON records (dek_id);
