"""The client as its own distribution: installed alone into empty venvs, as a service would.

`pip install ./clients/python` must bring aiohttp (and what aiohttp needs) and the client,
nothing of the proxy's own dependencies; and the client must work, against the real proxy,
with the lowest aiohttp its pyproject allows.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.cards import VISA
from tests.conftest import RunningProxy

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
SMOKE = Path(__file__).resolve().parent / "client_smoke.py"
# What a billing service must not get with the client: the proxy's own dependencies.
PROXY_ONLY = {"stripe", "asyncpg", "cryptography", "prometheus-client", "structlog", "msgspec"}
# Prints {distribution: [its requirement strings]} for everything installed in a venv.
INVENTORY = (
    "import importlib.metadata as m, json;"
    "print(json.dumps({d.metadata['Name']: d.requires or [] for d in m.distributions()}))"
)


def outside_env() -> dict[str, str]:
    """This environment without what would put the repository or our venv on the path."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


def run(*args: str | Path, cwd: Path) -> str:
    """Run a command in ``cwd``, outside the repository; its standard output."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=outside_env(),
        cwd=cwd,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout[-4000:], result.stderr[-4000:])
    return result.stdout


def inventory(python: Path) -> dict[str, list[str]]:
    """Each installed distribution (canonical name) with its requirement strings."""
    listed = json.loads(run(python, "-c", INVENTORY, cwd=python.parent))
    return {canonicalize_name(name): requires for name, requires in listed.items()}


def closure(installed: dict[str, list[str]], roots: list[str]) -> set[str]:
    """The distributions ``roots`` need, following each one's metadata (markers evaluated)."""
    environment = default_environment()
    needed: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {**environment, "extra": ""}
        ):
            continue
        if name in needed:
            continue
        needed.add(name)
        assert name in installed, f"{name} is required but was not installed"
        todo.extend(Requirement(r) for r in installed[name])
    return needed


def aiohttp_floor() -> str:
    """The lowest aiohttp the client's pyproject allows (its ``>=`` bound)."""
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    (requirement,) = [Requirement(r) for r in project["dependencies"]]
    assert requirement.name == "aiohttp"
    (floor,) = [s.version for s in requirement.specifier if s.operator == ">="]
    return floor


@dataclass(frozen=True)
class Venv:
    """A venv of its own under ``root``, with the client installed from a copy."""

    root: Path
    python: Path
    # What `python -m venv` put there before the client came (pip, and setuptools on 3.11).
    before: frozenset[str]


def venv_with_client(root: Path, *extra: str) -> Venv:
    """A new, empty venv under ``root``, then `pip install <copy of clients/python> *extra`."""
    # A copy, so the build writes nothing into the source tree.
    shutil.copytree(
        CLIENT, root / "client", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    before = frozenset(inventory(python))
    run(python, "-m", "pip", "install", "-q", "./client", *extra, cwd=root)
    return Venv(root, python, before)


@pytest.fixture(scope="module")
def installed_client(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """An empty venv after `pip install ./clients/python`."""
    return venv_with_client(tmp_path_factory.mktemp("client-latest"))


@pytest.fixture(scope="module")
def floor_client(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """An empty venv with the client and the lowest aiohttp it allows."""
    return venv_with_client(tmp_path_factory.mktemp("client-floor"), f"aiohttp=={aiohttp_floor()}")


def test_installs_aiohttp_and_the_client_only(installed_client: Venv) -> None:
    """The venv gains the client and aiohttp's dependency closure, nothing more."""
    installed = inventory(installed_client.python)
    before = installed_client.before
    client_requires = installed["tokenproxy-client"]
    assert [Requirement(r).name for r in client_requires] == ["aiohttp"]
    expected = {"tokenproxy-client"} | closure(installed, client_requires)
    added = set(installed) - before
    assert added == expected, f"extra: {sorted(added - expected)}"
    assert not added & PROXY_ONLY


def test_imports_from_its_venv_with_types(installed_client: Venv) -> None:
    """`import tokenproxy_client` works there, from the installed copy, py.typed shipped."""
    probe = (
        "import importlib.resources as r, tokenproxy_client as c;"
        "print(c.__file__);"
        "print(r.files(c).joinpath('py.typed').is_file())"
    )
    where, typed = run(installed_client.python, "-c", probe, cwd=installed_client.root).split()
    assert Path(where).is_relative_to(installed_client.root / "venv")
    assert typed == "True"


async def test_works_on_its_lowest_aiohttp(floor_client: Venv, proxy: RunningProxy) -> None:
    """With the lowest aiohttp allowed, every kind of call and error works against the proxy."""
    # A copy of the script, so nothing of the repository is on its path.
    script = shutil.copy(SMOKE, floor_client.root / SMOKE.name)
    given = {
        "base": proxy.base,
        "keys": proxy.keys,
        "card": {"number": VISA.number, "cvc": VISA.cvc},
    }
    # The proxy serves from this event loop: wait for the script without blocking it.
    process = await asyncio.create_subprocess_exec(
        floor_client.python,
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=outside_env(),
        cwd=floor_client.root,
    )
    out, err = await asyncio.wait_for(process.communicate(json.dumps(given).encode()), 120)
    assert process.returncode == 0, err.decode(errors="replace")[-4000:]
    seen = json.loads(out)
    assert Version(seen["aiohttp"]) == Version(aiohttp_floor())
    assert seen["card"] == ["vtok_card_", VISA.number[-4:], True]
    assert seen["view"] == [True, {"o": "1"}]
    assert seen["listed"] == [True]
    assert seen["resolve_as_orders"] == "missing_scope"
    assert seen["missing"] == [404, "resource_missing", "req_"]
    assert seen["resolved"] == ["stripe", "pm_"]
    assert seen["unreachable"] == "APIConnectionError"
    assert seen["timeout"] == "APITimeoutError"
