"""The bench's own plumbing, where a mistake would make its figures compare the wrong code."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from bench.run import _stop, baseline_proxy

_FAKE_MAIN = """
import http.server, os
host, port = os.environ["TOKENPROXY_LISTEN"].rsplit(":", 1)

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = __file__.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer((host, int(port)), Answer).serve_forever()
"""


def test_baseline_proxy_runs_the_other_trees_code(tmp_path: Path) -> None:
    # Started from this checkout (as `make bench` is), `python -m proxy` would find this
    # checkout's package first: the "before" figures would be of the "after" code.
    tree = tmp_path / "other"
    (tree / "proxy").mkdir(parents=True)
    (tree / "proxy" / "__init__.py").write_text("")
    (tree / "proxy" / "__main__.py").write_text(_FAKE_MAIN)
    assert Path.cwd() != tree
    server = baseline_proxy(tree, dict(os.environ))
    try:
        with urllib.request.urlopen(server.base + "/", timeout=10) as answer:  # noqa: S310
            ran = Path(answer.read().decode())
    finally:
        _stop(server)
    assert ran.resolve() == (tree / "proxy" / "__main__.py").resolve()
