"""The README's quickstart and `make run`'s banner, run as pasted against a real `make run`.

The commands are taken from the README text itself (and from what the dev server
prints), so the documents cannot drift from what works. The only change made to them
is the port: the test's dev server listens on a free one instead of 8080.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.devserver import DevServer, running_dev

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_API = "http://127.0.0.1:8080"
DOCUMENTED_DEMO = "http://127.0.0.1:8081"
TOKEN_RE = re.compile(r"^vtok_card_[A-Za-z0-9_-]{20,}$")
CARD = "4242424242424242"


def section(markdown: str, title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert match is not None, f"no '## {title}' section"
    return match.group(1)


def shell_blocks(text: str) -> list[str]:
    """The ```sh code blocks of ``text``, in order."""
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """One entry per shell command: continuation lines joined, comments and blanks dropped."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append(pending + line)
        pending = ""
    assert not pending, "a command ends in a line continuation"
    return out


@dataclass
class Step:
    """One pasted command and what it printed."""

    command: str
    output: str


def run_pasted(dev: DevServer, cmds: list[str]) -> list[Step]:
    """Run ``cmds`` in one bash session in the clone, as typed; stop at the first failure."""
    marker = "@@step-done@@"
    script = "set -eo pipefail\n" + "".join(f"{c}\necho\necho {marker}\n" for c in cmds)
    result = subprocess.run(
        ["/bin/bash", "-c", script],
        cwd=dev.cwd,
        env=dev.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    outputs = result.stdout.split(marker + "\n")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert len(outputs) == len(cmds) + 1
    return [Step(c, o.strip()) for c, o in zip(cmds, outputs, strict=False)]


def one(steps: list[Step], needle: str) -> Step:
    """The single step whose command contains ``needle``."""
    found = [s for s in steps if needle in s.command]
    assert len(found) == 1, f"expected one command with {needle!r}, got {found}"
    return found[0]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One `make run` (as `python -m proxy dev`) in a directory standing in for a clone."""
    with running_dev(tmp_path_factory.mktemp("clone")) as server:
        yield server


def test_make_run_is_the_dev_command() -> None:
    """`make run` runs `python -m proxy dev`, which is what the quickstart tests start."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n\t(.*)$", makefile, flags=re.M)
    assert recipe is not None
    assert recipe.group(1).endswith("python -m proxy dev")


def test_readme_quickstart_works_as_pasted(dev: DevServer) -> None:
    """Tokenize, read the masked view, resolve to pm_… and the CLI, as the README writes them."""
    readme = (ROOT / "README.md").read_text()
    blocks = shell_blocks(section(readme, "Quickstart"))
    assert [b.strip() for b in blocks[:1]] == ["make run"]
    assert len(blocks) == 2
    pasted = blocks[1]
    assert pasted.count(DOCUMENTED_API) == 1, "the quickstart names the API address once"
    cmds = commands(pasted.replace(DOCUMENTED_API, dev.api))
    assert len(cmds) <= 15
    steps = run_pasted(dev, cmds)

    token = one(steps, "/v1/cards").output
    assert TOKEN_RE.match(token), token

    resolved = json.loads(one(steps, "/v1/tokens/$TOKEN").output)
    assert resolved["token"] == token
    # The masked view a read client gets, and the partner reference resolve adds.
    assert (resolved["brand"], resolved["last4"], resolved["masked"]) == (
        "visa",
        "4242",
        "424242******4242",
    )
    assert resolved["partner_reference"].startswith("pm_")

    event = json.loads(one(steps, ".venv/bin/tokenproxy").output)
    assert (event["event_type"], event["resource"], event["outcome"]) == (
        "token.resolve",
        token,
        "success",
    )

    everything = "\n".join(s.output for s in steps)
    assert CARD not in everything.replace(" ", "")
    # The state the README points at is where the dev server keeps it.
    assert (dev.cwd / "var" / "dev-client.key").exists()
    assert (dev.cwd / "var" / "vault.db").exists()


def test_readme_demo_url_is_what_make_run_prints(dev: DevServer) -> None:
    """The demo page address in the README is the default the banner prints."""
    readme = (ROOT / "README.md").read_text()
    assert f"`{DOCUMENTED_DEMO}/`" in section(readme, "Quickstart")
    assert f"card fields demo: {dev.demo}/" in dev.output()


def test_banner_commands_work_as_pasted(dev: DevServer) -> None:
    """What `make run` prints under "try" tokenizes and then resolves to a pm_ reference."""
    cmds = dev.banner_commands()
    assert cmds, dev.output()
    assert all(dev.key("dev-client.key") not in c for c in cmds), "the banner prints no key"
    steps = run_pasted(dev, cmds)
    token = one(steps, "/v1/cards").output
    assert TOKEN_RE.match(token), token
    resolved = json.loads(one(steps, "/v1/tokens/$TOKEN").output)
    assert resolved["token"] == token
    assert resolved["partner_reference"].startswith("pm_")
