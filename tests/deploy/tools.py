"""Finding the operators' tools the deploy tests run (promtool, prometheus)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ci

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def require(tool: str) -> str:
    """The tool's path; in CI a missing tool fails the test, elsewhere it skips it."""
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (Debian package 'prometheus'; .ci/run installs it)"
        if ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return path
