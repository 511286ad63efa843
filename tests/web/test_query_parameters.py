"""Unknown query parameters are refused and named in ``param`` only when the name is plain."""

from __future__ import annotations

import pytest

from tests.cards import VISA
from tests.conftest import RunningProxy

TOKENS = "/v1/customers/cust_1/tokens"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limt=5", "limt"),
        ("limit=5&zz_top=1&expand=x", "expand"),
        ("a" * 100 + "=1", "a" * 40),
    ],
)
async def test_unknown_parameter_is_named(proxy: RunningProxy, query: str, param: str) -> None:
    """A plain unknown parameter name comes back in ``param`` (the first, sorted, cut to 40)."""
    status, body, _ = await proxy.request("GET", f"{TOKENS}?{query}", client="orders")
    assert status == 400
    assert body is not None
    assert body["error"]["code"] == "unknown_parameter"  # type: ignore[index]
    assert body["error"]["param"] == param  # type: ignore[index]


@pytest.mark.parametrize(
    "name",
    [
        VISA.number,
        f"card{VISA.number}",
        f"{VISA.number[:4]}-{VISA.number[4:8]}-{VISA.number[8:12]}-{VISA.number[12:]}",
        "%34%32%34%32" + VISA.number[4:],
        "bad name!",
        "cl%C3%A9",
        "%FF%FE",
    ],
)
async def test_unknown_parameter_name_that_is_not_plain_is_not_echoed(
    proxy: RunningProxy, name: str
) -> None:
    """A parameter name that could carry data is refused without being named or echoed."""
    status, body, _ = await proxy.request("GET", f"{TOKENS}?{name}=1", client="orders")
    assert status == 400
    assert body is not None
    assert body["error"]["code"] == "unknown_parameter"  # type: ignore[index]
    assert body["error"]["param"] is None  # type: ignore[index]
    assert VISA.middle.encode() not in proxy.responses[-1]


async def test_unsafe_name_does_not_hide_a_plain_one(proxy: RunningProxy) -> None:
    """With a card-number name and a plain one, the plain one is named."""
    status, body, _ = await proxy.request(
        "GET", f"{TOKENS}?{VISA.number}=1&limt=2", client="orders"
    )
    assert status == 400
    assert body is not None
    assert body["error"]["param"] == "limt"  # type: ignore[index]
    assert VISA.middle.encode() not in proxy.responses[-1]


async def test_route_without_query_parameters_names_the_unknown_one(proxy: RunningProxy) -> None:
    """A route that takes no query parameters names the one it was sent."""
    status, body, _ = await proxy.request(
        "POST", "/v1/cards?expand=customer", client="checkout", json={}
    )
    assert status == 400
    assert body is not None
    assert body["error"]["param"] == "expand"  # type: ignore[index]


async def test_repeated_parameter_is_refused_and_named(proxy: RunningProxy) -> None:
    """A query parameter given twice is refused (which one counts is ambiguous) and named."""
    status, body, _ = await proxy.request("GET", f"{TOKENS}?limit=1&limit=50", client="orders")
    assert status == 400
    assert body is not None
    assert body["error"]["code"] == "duplicate_parameter"  # type: ignore[index]
    assert body["error"]["param"] == "limit"  # type: ignore[index]
