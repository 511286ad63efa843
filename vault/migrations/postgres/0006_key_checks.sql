-- Mirrors sqlite/0006_key_checks.sql.
-- Check values of the key ring this vault belongs to. Row 0 holds an HMAC under the
-- index key; row N a check value of KEK version N (an HMAC under a key derived from it,
-- or for AWS KMS a KMS ciphertext of a known value that must decrypt). Written at
-- `keys init` / `keys rotate` (or at the first start of a vault made before this table,
-- once the ring has proven it opens the vault's data), removed at `keys retire`; every
-- start, CLI command and /readyz refuses a ring that does not match them.
CREATE TABLE key_checks (
    kek_version INTEGER PRIMARY KEY,
    check_value BYTEA NOT NULL,
    created_at  TEXT NOT NULL
);
