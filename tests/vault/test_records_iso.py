"""The one timestamp format the vault and the API speak."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vault.records import iso


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (datetime(2026, 12, 3, 10, 15, 7, 123456, tzinfo=UTC), "2026-12-03T10:15:07.123456Z"),
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00.000000Z"),
        (
            datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            "2025-12-31T23:30:00.000000Z",
        ),
    ],
)
def test_iso_is_utc_to_the_microsecond_with_a_z(ts: datetime, expected: str) -> None:
    """Any aware time becomes UTC with six fraction digits and a Z, whole seconds included."""
    assert iso(ts) == expected
