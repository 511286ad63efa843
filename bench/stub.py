"""An instant payment partner: answers Stripe's ``POST /v1/payment_methods`` at once.

Run as its own process: ``python -m bench.stub PORT``. It parses the form body (as
Stripe would) and answers the PaymentMethod shape the adapter reads, nothing more.
"""

from __future__ import annotations

import itertools
import sys

from aiohttp import web


def make_app() -> web.Application:
    """The stub's app; ids are sequential, which is all a benchmark needs."""
    counter = itertools.count(1)

    async def create_payment_method(request: web.Request) -> web.Response:
        form = await request.post()
        number = str(form.get("card[number]", "0000"))
        n = next(counter)
        return web.json_response(
            {
                "id": f"pm_bench{n:016d}",
                "object": "payment_method",
                "type": "card",
                "card": {
                    "brand": "visa",
                    "last4": number[-4:],
                    "fingerprint": f"fpbench{number[-4:]}",
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/payment_methods", create_payment_method)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
