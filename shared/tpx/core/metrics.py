"""Prometheus metrics shared by the three services.

Every label takes a bounded value: result codes from the contract's table,
route templates (not paths), issuer URLs that an operator registered, queue
names we declare. Nothing from a request or a token becomes a label.
Values that need a query (outbox backlog, queue depth) are sampled by the
service's own background loop and only read here, so a scrape never touches
the database.

With several exchange processes (TPX_WORKERS > 1) one scrape reaches one of
them, so the counts are kept in prometheus-client's multiprocess mode (files
in PROMETHEUS_MULTIPROC_DIR, which `tpx exchange` sets up for its processes)
and every scrape answers for all of them: counters and histograms summed, each
gauge combined as its `multiprocess_mode` says. The pool and key collectors
report the answering process (its pool; keys are the same in every process).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"   # read by prometheus-client when it is first imported

class Children(dict):
    """A labelled metric's children by their label values, for the hot path: prometheus-client's
    labels() (a lock, validation, a string per value) cost 1-6 us per call under load, about as much as
    the observation itself. Only for label values bounded by design (route templates, status codes,
    result codes), as every label here is."""

    def __init__(self, metric) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, labels: tuple):
        child = self[labels] = self.metric.labels(*(str(value) for value in labels))
        return child


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

EXCHANGES = Counter("tpx_exchanges_total", "Exchange attempts by result code ('issued' or the error code).", ["code"])
EXCHANGE_LATENCY = Histogram("tpx_exchange_duration_seconds", "Time to answer POST /v1/exchange.",
                             buckets=LATENCY_BUCKETS)
# Group commit (tpx.exchange.group_commit): how long the database takes to write a group, and how many
# mints share one; an exchange's own latency adds its wait for a free writer and the event loop.
MINT_WRITE_LATENCY = Histogram("tpx_mint_write_duration_seconds",
                               "Time to write one group of mints: a pooled connection, the statements, the commit.",
                               buckets=LATENCY_BUCKETS)
MINT_GROUP_SIZE = Histogram("tpx_mint_group_size", "Mints written together by one group commit.",
                            buckets=(1, 2, 4, 8, 16, 32, 64))
INTROSPECTIONS = Counter("tpx_introspections_total", "Introspections by result.", ["result"])
HTTP_LATENCY = Histogram("tpx_http_request_duration_seconds", "HTTP request latency by route template and status.",
                         ["route", "method", "status"], buckets=LATENCY_BUCKETS)
RATE_LIMITED = Counter("tpx_rate_limited_total", "Requests refused by a rate limit.", ["limit"])
JWKS_FETCHES = Counter("tpx_jwks_fetches_total", "JWKS fetches by issuer and result.", ["issuer", "result"])
KEYS_ROTATED = Counter("tpx_issuer_keys_rotated_total", "Key set changes stored by the refresher.", ["issuer"])
EVENTS_PUBLISHED = Counter("tpx_events_published_total", "Events relayed to RabbitMQ and confirmed.")
RELAY_FAILURES = Counter("tpx_relay_failures_total", "Relay batches that failed (broker or database).", ["dependency"])
REVOCATION_LATENCY = Histogram("tpx_revocation_duration_seconds",
                               "From a revocation request to its completion on every token.",
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
TOKENS_REVOKED = Counter("tpx_tokens_revoked_total", "Tokens revoked, by reason.", ["reason"])
TOKENS_EXPIRED = Counter("tpx_tokens_expired_total", "Tokens marked expired by the revoker.")
PURGED = Counter("tpx_purged_rows_total", "Rows purged by the revoker.", ["table"])
OUTBOX_BACKLOG = Gauge("tpx_outbox_backlog", "Events committed but not yet confirmed by RabbitMQ.",
                       multiprocess_mode="livemax")
RELAY_LAG = Gauge("tpx_relay_lag_seconds", "Age of the oldest event not yet relayed (0 when none).",
                  multiprocess_mode="livemax")
QUEUE_DEPTH = Gauge("tpx_queue_depth", "Messages waiting in a queue tpx consumes.", ["queue"],
                    multiprocess_mode="livemax")
DRAINING = Gauge("tpx_draining", "1 while the service is shutting down.", multiprocess_mode="livemax")
TOKENS_TIME_STAMPED = Gauge(
    "tpx_tokens_time_stamped", "1 while this exchange mints time-stamped tokens; 0 while it mints the first format "
    "(an exchange of an earlier release is connected, or it has just started).", multiprocess_mode="livemin")
DEPENDENCY_UP = Gauge("tpx_dependency_up", "0 while this process finds the dependency unreachable.", ["dependency"],
                      multiprocess_mode="livemin")
DEPENDENCY_FAILURES = Counter("tpx_dependency_failures_total", "Operations that found a dependency unreachable.",
                              ["dependency"])
BUILD = Gauge("tpx_build_info", "Always 1; labels say what runs.", ["service", "version"], multiprocess_mode="livemax")


class _PoolCollector(Collector):
    """Database pool use of every pool registered in this process, read at scrape time."""

    def __init__(self) -> None:
        self._pools: dict[str, object] = {}

    def add(self, name: str, pool: object) -> None:
        self._pools[name] = pool

    def remove(self, name: str, pool: object) -> None:
        if self._pools.get(name) is pool:
            del self._pools[name]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("tpx_db_pool_connections", "Database pool connections by state.",
                                   labels=["pool", "state"])
        for name, pool in list(self._pools.items()):
            if pool.is_closing():  # type: ignore[attr-defined]
                continue
            size = pool.get_size()  # type: ignore[attr-defined]
            idle = pool.get_idle_size()  # type: ignore[attr-defined]
            family.add_metric([name, "in_use"], size - idle)
            family.add_metric([name, "idle"], idle)
            family.add_metric([name, "max"], pool.get_max_size())  # type: ignore[attr-defined]
        yield family


class _KeyCollector(Collector):
    """Key age and last refresh per issuer, from a callable returning the current key cache snapshot."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], object]] = []

    def add(self, source: Callable[[], object]) -> None:
        self._sources.append(source)

    def remove(self, source: Callable[[], object]) -> None:
        if source in self._sources:
            self._sources.remove(source)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        age = GaugeMetricFamily("tpx_issuer_key_age_seconds", "Seconds since the issuer's keys were last fetched.",
                                labels=["issuer"])
        refreshed = GaugeMetricFamily("tpx_issuer_last_refresh_timestamp_seconds",
                                      "When the issuer's keys were last fetched (Unix time).", labels=["issuer"])
        count = GaugeMetricFamily("tpx_issuer_keys", "Usable keys per issuer.", labels=["issuer"])
        now = time.time()
        seen: set[str] = set()
        for source in list(self._sources):  # every key cache of this process (one, outside tests)
            snapshot = source()
            for entry in getattr(snapshot, "issuers", {}).values():
                if entry.url in seen or not entry.enabled:
                    continue
                seen.add(entry.url)
                count.add_metric([entry.url], len(entry.keys))
                if entry.keys_fetched_at is not None:
                    fetched = entry.keys_fetched_at.timestamp()
                    age.add_metric([entry.url], max(0.0, now - fetched))
                    refreshed.add_metric([entry.url], fetched)
        yield age
        yield refreshed
        yield count


POOLS = _PoolCollector()
KEYS = _KeyCollector()
REGISTRY.register(POOLS)
REGISTRY.register(KEYS)


def exposition() -> tuple[bytes, str]:
    if not os.environ.get(MULTIPROCESS_DIRECTORY):
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(POOLS)
    registry.register(KEYS)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def process_exiting() -> None:
    """Drop this process's live gauges from the shared files (counts it made stay counted)."""
    if os.environ.get(MULTIPROCESS_DIRECTORY):
        multiprocess.mark_process_dead(os.getpid())
