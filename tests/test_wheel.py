"""The production wheel: the service's three packages and their data, nothing of dev or test.

Built from a copy of the source tree (an in-tree build would reuse a stale build/ folder),
then read as a zip: its files and its METADATA's requirements.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel `pip wheel . --no-deps` builds from a fresh copy of the tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (built,) = out.glob("tokenproxy-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_the_service_and_its_data(wheel: zipfile.ZipFile) -> None:
    """proxy, vault and pandetect are in, with the web's static files and the SQL migrations."""
    names = wheel.namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("tokenproxy-")}
    assert tops == {"proxy", "vault", "pandetect"}
    assert "proxy/web/app.py" in names
    assert "vault/store.py" in names
    assert "pandetect/__init__.py" in names
    assert any(n.startswith("proxy/web/static/") and not n.endswith(".py") for n in names)
    assert any(n.startswith("vault/migrations/sqlite/") and n.endswith(".sql") for n in names)
    assert any(n.startswith("vault/migrations/postgres/") and n.endswith(".sql") for n in names)


def test_wheel_leaves_out_dev_and_test_code(wheel: zipfile.ZipFile) -> None:
    """No sandbox partner, no client, no tests and no benchmarks ship in the service's wheel."""
    for name in wheel.namelist():
        first = name.split("/")[0]
        assert first not in {"tokenproxy_sandbox", "tokenproxy_client", "tests", "bench"}, name
        assert "/tests/" not in name, name


def test_wheel_requirements_keep_localstripe_out_and_asyncpg_optional(
    wheel: zipfile.ZipFile,
) -> None:
    """METADATA names no localstripe, and asyncpg only under the postgres extra."""
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(meta).decode()).get_all("Requires-Dist") or []
    assert requires
    assert not [r for r in requires if r.lower().startswith("localstripe")]
    asyncpg = [r for r in requires if r.lower().startswith("asyncpg")]
    assert asyncpg
    assert all('extra == "postgres"' in r for r in asyncpg), asyncpg
