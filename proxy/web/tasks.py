"""Stopping the background tasks a cleanup context or a listener started."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has stopped.

    Waiting matters: a task still running when the vault or the session it uses closes
    fails there, and a task never awaited is reported as destroyed while pending. The
    cancellation is swallowed; any other exception a task ended with is raised.
    """
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
