"""tpx.core.metrics.Children: the hot path's label lookup counts into the very child labels() returns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from tpx.core.metrics import Children


def test_children_are_the_labelled_children_with_values_as_strings():
    registry = CollectorRegistry()
    latency = Histogram("t_latency_seconds", "test", ["route", "method", "status"], registry=registry)
    children = Children(latency)
    children["/v1/exchange", "POST", 200].observe(0.002)
    children["/v1/exchange", "POST", 200].observe(0.004)
    assert children["/v1/exchange", "POST", 200] is latency.labels("/v1/exchange", "POST", "200")
    labels = {"route": "/v1/exchange", "method": "POST", "status": "200"}
    assert registry.get_sample_value("t_latency_seconds_count", labels) == 2
    assert registry.get_sample_value("t_latency_seconds_sum", labels) == 0.006


def test_a_single_label_is_a_one_element_key():
    registry = CollectorRegistry()
    results = Counter("t_results_total", "test", ["code"], registry=registry)
    children = Children(results)
    children["issued", ].inc()
    assert registry.get_sample_value("t_results_total", {"code": "issued"}) == 1
    assert len(children) == 1
