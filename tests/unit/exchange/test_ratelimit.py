"""Rate limits as pure functions: the client address behind proxies, token buckets on an explicit clock."""

from __future__ import annotations

import pytest

from tpx.core.errors import Problem
from tpx.core.providers.base import Publisher
from tpx.exchange.ratelimit import RateLimits, TokenBuckets, client_address, client_key, parse_networks


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "expected"), [
    ("10.0.0.5", ["1.2.3.4"], (), "10.0.0.5"),                            # no trusted proxies: the peer
    ("10.0.0.5", ["1.2.3.4"], ("10.0.0.0/8",), "1.2.3.4"),                # trusted proxy: its client
    ("10.0.0.5", ["6.6.6.6, 1.2.3.4"], ("10.0.0.0/8",), "1.2.3.4"),       # spoofed left-most entry ignored
    ("10.0.0.5", ["1.2.3.4, 10.0.0.9"], ("10.0.0.0/8",), "1.2.3.4"),      # chained trusted proxies skipped
    ("10.0.0.5", ["6.6.6.6", "1.2.3.4"], ("10.0.0.0/8",), "1.2.3.4"),     # the proxy's own line comes last
    ("10.0.0.5", ["6.6.6.6", "1.2.3.4, 10.0.0.9"], ("10.0.0.0/8",), "1.2.3.4"),
    ("192.0.2.1", ["1.2.3.4"], ("10.0.0.0/8",), "192.0.2.1"),             # untrusted peer cannot forward
    ("10.0.0.5", ["not-an-ip"], ("10.0.0.0/8",), "10.0.0.5"),
    ("10.0.0.5", [], ("10.0.0.0/8",), "10.0.0.5"),
    (None, ["1.2.3.4"], ("10.0.0.0/8",), "unknown"),
])
def test_client_address(peer, forwarded, trusted, expected):
    assert client_address(peer, forwarded, parse_networks(trusted)) == expected


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),   # an IPv4 client seen through a dual-stack socket
    ("unknown", "unknown"),
])
def test_client_key_groups_ipv6_by_64(address, key):
    assert client_key(address) == key


def test_token_bucket_refuses_when_empty_and_disabled_at_zero():
    buckets = TokenBuckets(2)
    assert buckets.take("a", now=0) is None and buckets.take("a", now=0) is None
    assert buckets.take("a", now=0) == 30  # one unit comes back every 30 s at 2 per minute
    assert buckets.take("b", now=0) is None
    assert TokenBuckets(0).take("a", now=0) is None


def test_token_bucket_refills_with_time_and_never_beyond_its_capacity():
    buckets = TokenBuckets(60)  # one per second, 60 at most
    for _ in range(60):
        assert buckets.take("a", now=100.0) is None
    assert buckets.take("a", now=100.0) == 1
    assert buckets.retry_after("a", now=100.5) == 1
    assert buckets.retry_after("a", now=101.0) is None
    assert buckets.take("a", now=101.0) is None and buckets.take("a", now=101.0) == 1
    for _ in range(60):  # an hour later the bucket is full again, not fuller
        assert buckets.take("a", now=3700.0) is None
    assert buckets.take("a", now=3700.0) == 1


def test_token_buckets_memory_is_bounded():
    buckets = TokenBuckets(10, max_keys=100)
    for i in range(1000):
        buckets.take(f"k{i}", now=0)
    assert len(buckets._buckets) == 100


def publisher(package: str) -> Publisher:
    return Publisher(id=f"id-{package}", package=package, provider="github", issuer="https://issuer", owner="o",
                     name="n", workflow="release.yml")


def test_failures_are_counted_per_address_and_refused_with_retry_after():
    limits = RateLimits(failed_per_minute=2, publisher_per_minute=0, trusted_proxies=())
    for _ in range(2):
        limits.check_client("203.0.113.7")
        limits.record_failure("203.0.113.7")
    with pytest.raises(Problem) as refused:
        limits.check_client("203.0.113.7")
    assert refused.value.code == "rate_limited" and refused.value.retry_after >= 1
    limits.check_client("203.0.113.8")  # another address has its own budget


def test_an_exchange_is_admitted_without_charge_and_charged_once_minted():
    limits = RateLimits(failed_per_minute=0, publisher_per_minute=1, trusted_proxies=())
    for _ in range(5):  # refused exchanges (replays, denials) are admitted but never charged
        limits.admit_publishers([publisher("a"), publisher("b")])
    limits.charge_publishers(["id-a", "id-b"])
    with pytest.raises(Problem) as refused:
        limits.admit_publishers([publisher("c"), publisher("b")])
    assert refused.value.code == "rate_limited" and "'b'" in refused.value.detail
    limits.admit_publishers([publisher("c")])


def test_ipv6_failures_share_their_64():
    limits = RateLimits(failed_per_minute=2, publisher_per_minute=0, trusted_proxies=())
    limits.record_failure("2001:db8::1")
    limits.record_failure("2001:db8::2")
    with pytest.raises(Problem):
        limits.check_client("2001:db8::ffff")
    limits.check_client("2001:db8:0:1::1")


def test_spending_may_go_into_debt_but_not_beyond_one_bucket():
    buckets = TokenBuckets(60)
    for _ in range(500):
        buckets.spend("a", now=0)
    assert buckets.retry_after("a", now=0) == 61  # 60 units of debt plus the one wanted, at one a second
