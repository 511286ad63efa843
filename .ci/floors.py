"""Run by `make floors` inside the floors venv: were the floors installed, and do they import?

First every direct runtime requirement of the distributions (tokenproxy with its postgres
and kms extras, the client, the sandbox) must be installed at exactly its declared floor:
a floor that cannot be installed (no release, no wheel for this Python) would otherwise
be lifted silently by the resolver and never tested. Then every module of the packages is
imported, which catches a floor missing an API used at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import pkgutil
import re
import sys

DISTRIBUTIONS = {
    "tokenproxy": {"postgres", "kms"},
    "tokenproxy-client": set(),
    "tokenproxy-sandbox": set(),
}
PACKAGES = ("proxy", "vault", "pandetect", "tokenproxy_client", "tokenproxy_sandbox")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*\(?([^;)]*)\)?\s*(?:;\s*(.*))?$")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", text.split("+", maxsplit=1)[0])[:4]]
    return tuple(parts + [0] * (4 - len(parts)))


def floor_errors() -> list[str]:
    """Each direct requirement whose installed version is not its declared floor.

    Where two distributions name the same package (aiohttp), the higher floor is the one
    that can be installed; the client's own lower aiohttp floor is tested on its own
    (tests/client/test_distribution.py).
    """
    errors: list[str] = []
    floors: dict[str, str] = {}
    for dist, extras in DISTRIBUTIONS.items():
        for line in md.requires(dist) or []:
            match = _REQUIREMENT.match(line.strip())
            if match is None:
                errors.append(f"{dist}: cannot read requirement {line!r}")
                continue
            name, spec, marker = match.groups()
            extra = _EXTRA.search(marker or "")
            if (extra and extra.group(1) not in extras) or name.lower() == "tokenproxy":
                continue
            floor = re.search(r"(>=|==)\s*([0-9][^,\s]*)", spec)
            if floor is None:
                errors.append(f"{dist}: {name} declares no floor")
                continue
            key = name.lower().replace("_", "-")
            if key not in floors or _version(floor.group(2)) > _version(floors[key]):
                floors[key] = floor.group(2)
    for name, floor in sorted(floors.items()):
        installed = md.version(name)
        if _version(installed) != _version(floor):
            errors.append(f"{name}: declared floor {floor}, installed {installed}")
        else:
            print(f"  {name}=={installed}")
    return errors


def import_errors() -> list[str]:
    """Each module of the packages that fails to import."""
    errors: list[str] = []
    count = 0
    for top in PACKAGES:
        package = importlib.import_module(top)
        for module in pkgutil.walk_packages(package.__path__, top + "."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                errors.append(f"{module.name}: {type(exc).__name__}: {exc}")
            count += 1
    print(f"  imported {count} modules")
    return errors


def main() -> int:
    """Print the floors installed and fail on a lifted floor or a module that will not import."""
    print("floors installed:")
    errors = floor_errors() + import_errors()
    for error in errors:
        print(f"FLOOR FAILURE {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
