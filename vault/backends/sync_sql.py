"""The statements of partner sync (migration 0009), with ``?`` placeholders for both dialects."""

from __future__ import annotations

from typing import Final

from vault.backends.base import CUSTOMER_COLUMNS, RECORD_COLUMNS

_RECORDS: Final = f"SELECT {RECORD_COLUMNS}, partner_event_at FROM records"  # noqa: S608
BY_REFERENCE: Final = f"{_RECORDS} WHERE reference_idx = ? ORDER BY token"
BY_PARTNER_CUSTOMER: Final = f"{_RECORDS} WHERE partner_customer_idx = ? ORDER BY token"
UNLINKED: Final = (
    f"SELECT {RECORD_COLUMNS} FROM records"  # noqa: S608
    " WHERE reference_idx IS NULL AND kind IN ('card', 'bank') AND token > ?"
    " ORDER BY token LIMIT ?"
)
LINK: Final = "UPDATE records SET reference_idx = ?, partner_customer_idx = ? WHERE token = ?"
EVENT_OUTCOME: Final = "SELECT outcome FROM partner_events WHERE event_id = ?"
INSERT_EVENT: Final = (
    "INSERT INTO partner_events (event_id, event_type, created, received_at, outcome)"
    " VALUES (?, ?, ?, ?, ?)"
)
UPDATE_RECORD: Final = (
    "UPDATE records SET ciphertext = ?, partner_event_at = ? WHERE token = ? AND ciphertext = ?"
)
OUTBOX_COLUMNS: Final = "partner_key, partner, kind, token, reference, created_at"
OUTBOX_ADD: Final = f"INSERT INTO partner_outbox ({OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608
OUTBOX_SET_REFERENCE: Final = "UPDATE partner_outbox SET reference = ? WHERE partner_key = ?"
OUTBOX_PAGE: Final = (
    f"SELECT {OUTBOX_COLUMNS} FROM partner_outbox"  # noqa: S608
    " WHERE created_at < ? AND partner_key > ? ORDER BY partner_key LIMIT ?"
)
OUTBOX_DELETE: Final = "DELETE FROM partner_outbox WHERE partner_key = ?"
RECORD_PRESENT: Final = "SELECT token FROM records WHERE token = ?"
CUSTOMERS_PAGE: Final = (
    f"SELECT {CUSTOMER_COLUMNS} FROM customers"  # noqa: S608
    " WHERE customer_idx > ? ORDER BY customer_idx LIMIT ?"
)
EVENTS_PURGE: Final = "DELETE FROM partner_events WHERE received_at < ?"
STATE_GET: Final = "SELECT value FROM partner_sync_state WHERE name = ?"
STATE_DELETE: Final = "DELETE FROM partner_sync_state WHERE name = ?"
STATE_PUT: Final = (
    "INSERT INTO partner_sync_state (name, value, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
