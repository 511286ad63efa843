"""The documents stay true to the code: every setting is in the settings table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def settings_read() -> set[str]:
    """Every environment variable proxy/infra/settings.py reads by a literal name."""
    source = (ROOT / "proxy" / "infra" / "settings.py").read_text()
    names = set(re.findall(r'"(TOKENPROXY_[A-Z_]+)"', source))
    names.update(f"{n}_FILE" for n in re.findall(r'_secret\(env, "([A-Z_]+)"\)', source))
    names.update(re.findall(r'_secret\(env, "([A-Z_]+)"\)', source))
    return names


def table_rows() -> set[str]:
    """The variables named in the first column of docs/operations.md's settings table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_settings_table_names_every_setting() -> None:
    """Each variable settings.py reads has a row in the settings table of docs/operations.md."""
    missing = settings_read() - table_rows()
    assert not missing, f"not in docs/operations.md's settings table: {sorted(missing)}"


def test_settings_table_names_only_real_settings() -> None:
    """Each row of the settings table is a variable deploy/env.example documents too."""
    example = (ROOT / "deploy" / "env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    unknown = table_rows() - documented
    assert not unknown, f"settings table rows unknown to deploy/env.example: {sorted(unknown)}"
