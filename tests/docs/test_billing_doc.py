"""docs/billing.md stays true: its Python blocks run, in order, against a real stack."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from tests.conftest import RunningProxy

DOC = Path(__file__).resolve().parents[2] / "docs" / "billing.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The fenced Python blocks of a Markdown text, in order."""
    return _BLOCK.findall(text)


def test_the_page_has_the_whole_path() -> None:
    """The page's code resolves, charges a card and debits a SEPA account."""
    code = "\n".join(python_blocks(DOC.read_text()))
    for step in ("proxy.resolve(", '"off_session": True', '"sepa_debit"', '"mandate":'):
        assert step in code


async def test_billing_doc_runs_as_pasted(
    proxy: RunningProxy, localstripe: Localstripe, tmp_path: Path
) -> None:
    """Every Python block of docs/billing.md runs without error against proxy and sandbox."""
    script = "\n".join(python_blocks(DOC.read_text()))
    env = {
        **os.environ,
        "TOKENPROXY_URL": proxy.base,
        "TOKENPROXY_BILLING_KEY": proxy.keys["billing"],
        "TOKENPROXY_CHECKOUT_KEY": proxy.keys["checkout"],
        "STRIPE_API_BASE": localstripe.base_url,
        "STRIPE_API_KEY": SANDBOX_API_KEY,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, output.decode(errors="replace")
    printed = output.decode()
    assert "succeeded" in printed
    assert "402 card_declined" in printed
