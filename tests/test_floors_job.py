"""`make floors` names test files that exist, so moving a test cannot break CI's last step.

The floors job runs only in CI (after `make test`), where a missing path would fail the
whole run with pytest's "file or directory not found"; this catches it in the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def smoke_paths() -> list[str]:
    """The FLOORS_SMOKE list of the Makefile, continuation lines joined."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^FLOORS_SMOKE\s*:=\s*(.+)$", makefile, flags=re.M)
    assert match is not None, "the Makefile defines FLOORS_SMOKE"
    return match.group(1).split()


def test_every_smoke_path_is_a_test_file() -> None:
    """Each path the floors job hands pytest is a test module of the suite."""
    paths = smoke_paths()
    assert paths
    for path in paths:
        assert (ROOT / path).is_file(), path
        assert re.fullmatch(r"tests/(\w+/)*test_\w+\.py", path), path
