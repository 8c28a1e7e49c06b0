"""Abuse controls: failed exchanges per client address, exchanges per publisher.

Token buckets in process memory, so the limits are per replica: with N exchange
replicas behind a load balancer a client gets at most N times the budget. That
is deliberate (docs/operations.md): the limits exist to blunt floods and
credential-stuffing, not to meter fairly, and a shared store on the hot path
would cost every honest exchange a round trip. Memory is bounded: the least
recently used buckets are dropped beyond `max_keys`.

The client address is the TCP peer, unless that peer is a configured trusted
proxy; then it is the right-most X-Forwarded-For entry that is not one, read
across every X-Forwarded-For header line in order (a proxy may add a line of its
own after the client's). IPv6 clients are limited by their /64: one host gets a
whole /64 to pick addresses from.

A publisher is charged only for exchanges that minted: refusals (a replayed ID
token, a denial) cost its budget nothing, so nobody can lock a publisher out
by replaying a captured token.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from typing import Iterable, Sequence

from tpx.core.errors import Problem
from tpx.core.metrics import RATE_LIMITED
from tpx.core.providers.base import Publisher


class TokenBuckets:
    """One bucket per key, refilled continuously at `per_minute`; `now` (monotonic seconds) is the clock."""

    def __init__(self, per_minute: int, *, burst: int | None = None, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else per_minute)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, key: str, now: float) -> float:
        level, updated = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, level + (now - updated) * self.rate)

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Seconds until one unit is available, or None if one is available now."""
        if not self.enabled:
            return None
        level = self._level(key, time.monotonic() if now is None else now)
        if level >= 1:
            return None
        return max(1, int((1 - level) / self.rate + 0.999))

    def spend(self, key: str, now: float | None = None) -> None:
        """Take one unit whatever the level (down to one bucket's worth of debt): for work already done."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        self._buckets[key] = (max(self._level(key, now) - 1, -self.capacity), now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def take(self, key: str, now: float | None = None) -> int | None:
        """Take one unit; return None on success or the Retry-After seconds when empty."""
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        level = self._level(key, now)
        if level < 1:
            return max(1, int((1 - level) / self.rate + 0.999))
        self._buckets[key] = (level - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None


def parse_networks(values: Iterable[str]) -> tuple[ipaddress._BaseNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: tuple) -> str:
    """The client behind trusted proxies; `forwarded_for` holds every X-Forwarded-For header line, in order."""
    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if peer is None:
        return "unknown"
    if not trusted or not is_trusted(peer) or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in ",".join(forwarded_for).split(",")[-20:]]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a malformed hop: fall back to the proxy itself
    return peer


@functools.lru_cache(maxsize=4096)
def client_key(address: str) -> str:
    """What one client's failures are counted under: its IPv4 address, or its IPv6 /64. Cached: every
    exchange asks, parsing an address costs ~2.5 us, and clients come back."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RateLimits:
    def __init__(self, failed_per_minute: int, publisher_per_minute: int, trusted_proxies: tuple) -> None:
        self.failures = TokenBuckets(failed_per_minute)
        self.publishers = TokenBuckets(publisher_per_minute)
        self.trusted_proxies = trusted_proxies

    def check_client(self, address: str) -> None:
        retry = self.failures.retry_after(client_key(address))
        if retry is not None:
            RATE_LIMITED.labels("failed_exchanges_per_client").inc()
            raise Problem("rate_limited", "too many failed exchanges from this address; fix the cause of the earlier "
                                          f"failures (see their detail and hints) and retry after {retry} s",
                          retry_after=retry)

    def record_failure(self, address: str) -> None:
        self.failures.take(client_key(address))

    def admit_publishers(self, publishers: Iterable[Publisher]) -> None:
        """Refuse an exchange if a publisher it matched has no budget left; charges nothing."""
        for publisher in publishers:
            retry = self.publishers.retry_after(publisher.id)
            if retry is not None:
                RATE_LIMITED.labels("exchanges_per_publisher").inc()
                raise Problem("rate_limited", f"too many exchanges for the publisher of package {publisher.package!r}; "
                                              f"retry after {retry} s", retry_after=retry)

    def charge_publishers(self, publisher_ids: Iterable[str]) -> None:
        """An exchange minted: one unit from each publisher it matched."""
        for publisher_id in publisher_ids:
            self.publishers.spend(publisher_id)
