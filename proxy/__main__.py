"""``python -m proxy``: the `tokenproxy` command (see :mod:`proxy.cli.main`)."""

import contextlib
import sys

from proxy.cli.main import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
