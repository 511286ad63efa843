"""Request ids: the server's own, random, of one fixed shape."""

from __future__ import annotations

import re

from proxy.web.authguard import source_key
from proxy.web.middleware import new_request_id


def test_request_ids_are_prefixed_random_and_url_safe() -> None:
    """Each id is req_ and 16 URL-safe characters (96 random bits), none repeating."""
    ids = [new_request_id() for _ in range(2000)]
    assert all(re.fullmatch(r"req_[A-Za-z0-9_-]{16}", rid) for rid in ids)
    assert len(set(ids)) == len(ids)


def test_source_key_keeps_its_answer_for_a_repeated_address() -> None:
    """The cached source key is the one computed afresh: IPv6 by /64, IPv4-mapped as IPv4."""
    for _ in range(2):
        assert source_key("2001:db8::1") == "2001:db8::/64"
        assert source_key("::ffff:10.0.0.1") == "10.0.0.1"
        assert source_key("10.0.0.1") == "10.0.0.1"
        assert source_key("not an address") == "not an address"
