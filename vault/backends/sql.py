"""The SQL both backends run, written once where SQLite and PostgreSQL agree.

Statements are written with ``?`` placeholders and built per dialect by
:class:`Statements`: SQLite takes them as they are, PostgreSQL with ``$1, $2, …``
(:func:`numbered`). What only one dialect can say (SQLite's multi-statement
transactions run from Python, PostgreSQL's data-modifying CTEs, ``unnest`` batches and
row locks) stays in its backend. Every fragment interpolated here is a constant of ours:
column lists and retention bases, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vault.backends.base import (
    AUDIT_COLUMNS,
    CUSTOMER_COLUMNS,
    DEK_COLUMNS,
    IDEMPOTENCY_COLUMNS,
    RECORD_COLUMNS,
    IdempotencyRow,
)
from vault.retention import BASIS_SQL, Basis, Cutoff


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …``, in order.

    No statement of ours holds a ``?`` anywhere but as a placeholder.
    """
    head, *rest = sql.split("?")
    return head + "".join(f"${n}{part}" for n, part in enumerate(rest, start=1))


def _marks(count: int) -> str:
    return ", ".join("?" for _ in range(count))


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{name.strip()}" for name in columns.split(","))


class Statements:
    """Every shared statement, with one dialect's placeholders (``SQLITE``, ``POSTGRES``)."""

    def __init__(self, placeholders: Callable[[str], str]) -> None:
        p = placeholders
        self.placeholders = placeholders
        # -- records and data keys
        self.insert_record = p(f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({_marks(8)})")  # noqa: S608
        self.insert_linked_record = p(
            f"INSERT INTO records ({RECORD_COLUMNS}, reference_idx, partner_customer_idx)"  # noqa: S608
            f" VALUES ({_marks(10)})"
        )
        self.insert_dek = p(f"INSERT INTO deks ({DEK_COLUMNS}) VALUES ({_marks(5)})")  # noqa: S608
        self.get_record = p(f"SELECT {RECORD_COLUMNS} FROM records WHERE token = ?")  # noqa: S608
        self.get_dek = p(f"SELECT {DEK_COLUMNS} FROM deks WHERE dek_id = ?")  # noqa: S608
        # A record with its wrapped data key in one read, where reads are round trips: a
        # resolve whose data key is not cached (a billing run walks every token once)
        # would otherwise make two.
        self.get_record_and_dek = p(
            f"SELECT {_prefixed('r', RECORD_COLUMNS)}, {_prefixed('d', DEK_COLUMNS)}"  # noqa: S608
            " FROM records r LEFT JOIN deks d ON d.dek_id = r.dek_id WHERE r.token = ?"
        )
        self.get_customer_dek = p(f"SELECT {DEK_COLUMNS} FROM deks WHERE customer_idx = ?")  # noqa: S608
        self.dek_on_version = p(f"SELECT {DEK_COLUMNS} FROM deks WHERE kek_version = ? LIMIT 1")  # noqa: S608
        # Two index probes, no scan (start-up check): one aggregate per subquery, as SQLite
        # reads a lone min() or max() off the index but scans for both in one SELECT.
        self.dek_version_range = (
            "SELECT (SELECT min(kek_version) FROM deks), (SELECT max(kek_version) FROM deks)"
        )
        self.customer_record_sample = p(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE customer_idx IS NOT NULL LIMIT 1"  # noqa: S608
        )
        # -- key rotation
        self.count_deks_by_version = "SELECT kek_version, count(*) FROM deks GROUP BY kek_version"
        self.count_idempotency_by_version = p(
            "SELECT kek_version, count(*) FROM idempotency_keys WHERE expires_at > ?"
            " GROUP BY kek_version"
        )
        self.deks_not_on_version = p(
            f"SELECT {DEK_COLUMNS} FROM deks WHERE kek_version <> ? AND dek_id > ?"  # noqa: S608
            " ORDER BY dek_id LIMIT ?"
        )
        self.idempotency_keys_not_on_version = p(
            "SELECT key_idx, kek_version, wrapped_dek FROM idempotency_keys"
            " WHERE kek_version <> ? AND expires_at > ? AND key_idx > ?"
            " ORDER BY key_idx LIMIT ?"
        )
        # -- key ring check values
        self.key_checks = "SELECT kek_version, check_value FROM key_checks"
        self.add_key_check = p(
            "INSERT INTO key_checks VALUES (?, ?, ?) ON CONFLICT (kek_version) DO NOTHING"
        )
        self.key_check = p("SELECT check_value FROM key_checks WHERE kek_version = ?")
        self.delete_key_check = p("DELETE FROM key_checks WHERE kek_version = ?")
        # -- the audit trail
        self.audit_head = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        self.insert_audit = p(f"INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ({_marks(10)})")  # noqa: S608
        self.read_audit = p(
            f"SELECT {AUDIT_COLUMNS} FROM audit_events"  # noqa: S608
            " WHERE seq > ? AND occurred_at >= ? ORDER BY seq LIMIT ?"
        )
        self.audit_before = p(
            f"SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq < ?"  # noqa: S608
            " ORDER BY seq DESC LIMIT 1"
        )
        self.prune_audit = p(
            "DELETE FROM audit_events WHERE seq IN"
            " (SELECT seq FROM audit_events WHERE seq <= ? ORDER BY seq LIMIT ?)"
        )
        # -- customers and erasure
        self.insert_customer = p(
            f"INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES ({_marks(4)})"  # noqa: S608
        )
        self.get_customer = p(
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_idx = ?"  # noqa: S608
        )
        self.delete_customer = p("DELETE FROM customers WHERE customer_idx = ?")
        # A customer's data key goes once no record and no mapping uses it. Rows deleted
        # earlier in the same transaction are already invisible to these sub-selects.
        self.delete_customer_dek = p(
            "DELETE FROM deks WHERE customer_idx = ?"
            " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.dek_id = deks.dek_id)"
            " AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.dek_id = deks.dek_id)"
        )
        # An erased idempotency key keeps only its blind index and expiry (vault.idempotency).
        self.tombstone_idempotency = p(
            "INSERT INTO idempotency_erased (key_idx, expires_at)"
            " SELECT key_idx, expires_at FROM idempotency_keys WHERE customer_idx = ?"
            " ON CONFLICT (key_idx) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        )
        self.delete_customer_idempotency = p("DELETE FROM idempotency_keys WHERE customer_idx = ?")
        self.mark_erased = p(
            "INSERT INTO erased_customers (customer_idx, erased_at) VALUES (?, ?)"
            " ON CONFLICT (customer_idx) DO UPDATE SET erased_at = EXCLUDED.erased_at"
        )
        self.was_erased = p("SELECT 1 FROM erased_customers WHERE customer_idx = ?")
        # -- idempotency keys
        self.idempotency_get = p(
            f"SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys WHERE key_idx = ?"  # noqa: S608
        )
        self.insert_idempotency = p(
            f"INSERT INTO idempotency_keys ({IDEMPOTENCY_COLUMNS})"  # noqa: S608
            f" VALUES ({_marks(len(IdempotencyRow.__slots__))})"
        )
        self.idempotency_tombstone = p(
            "SELECT expires_at FROM idempotency_erased WHERE key_idx = ? AND expires_at > ?"
        )
        self.purge_idempotency = p("DELETE FROM idempotency_keys WHERE expires_at <= ?")
        self.purge_idempotency_tombstones = p(
            "DELETE FROM idempotency_erased WHERE expires_at <= ?"
        )

    # -- statements built per call (their shape depends on the arguments) --------------

    def customer_page(
        self,
        customer_idx: str,
        after: tuple[str, str] | None,
        limit: int,
        exclude: Sequence[Cutoff],
    ) -> tuple[str, list[object]]:
        """One page of a customer's records after the (created_at, token) cursor, leaving
        out records past a cutoff in ``exclude``: SQL and its arguments.

        A range scan of the records_customer index in index order, so no sort.
        """
        position = " AND (created_at, token) > (?, ?)" if after is not None else ""
        where: list[str] = []
        args: list[object] = [customer_idx, *(after or ())]
        for cutoff in exclude:
            where.append(f" AND NOT (kind = ? AND {BASIS_SQL[cutoff.basis]} < ?)")
            args += [str(cutoff.kind), cutoff.before]
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM records"  # noqa: S608 - fixed fragments only
            f" WHERE customer_idx = ?{position}{''.join(where)}"
            " ORDER BY created_at, token LIMIT ?"
        )
        return self.placeholders(sql), [*args, limit]

    def count_expired(self, basis: Basis) -> str:
        """Count the records of one kind past a cutoff, and those saved on a customer
        (arguments: kind, before)."""
        return self.placeholders(
            "SELECT COUNT(*), COUNT(customer_idx) FROM records"  # noqa: S608
            f" WHERE kind = ? AND {BASIS_SQL[basis]} < ?"
        )

    def idempotency_update(
        self,
        key_idx: str,
        *,
        owner: str,
        now: str,
        partner_result: bytes | None,
        response: bytes | None,
        release: bool,
    ) -> tuple[str, list[object]]:
        """The owner-only update of an in-flight idempotency row: SQL and its arguments.

        Storing the response ends the row's flight; a release hands the row back.
        """
        sets: list[str] = ["updated_at = ?"]
        args: list[object] = [now]
        if partner_result is not None:
            sets.append("partner_result = ?")
            args.append(partner_result)
        if response is not None:
            sets.append("response = ?, state = 'done', owner = NULL")
            args.append(response)
        elif release:
            sets.append("owner = NULL")
        sql = (
            f"UPDATE idempotency_keys SET {', '.join(sets)}"  # noqa: S608 - fixed fragments
            " WHERE key_idx = ? AND state = 'in_flight' AND owner = ?"
        )
        return self.placeholders(sql), [*args, key_idx, owner]


SQLITE = Statements(lambda sql: sql)
POSTGRES = Statements(numbered)
