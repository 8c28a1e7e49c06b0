"""deploy/k8s/monitoring: what the Prometheus Operator scrapes and alerts on matches what tpx exposes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_manifests import BASE, build

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "monitoring"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def documents() -> dict[str, dict]:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        doc = yaml.safe_load((MONITORING / name).read_text())
        found[doc["kind"]] = doc
    return found


def test_the_kustomization_lists_every_monitoring_object():
    assert set(documents()) == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert {p.name for p in MONITORING.glob("*.yaml")} - {"kustomization.yaml"} == set(
        yaml.safe_load((MONITORING / "kustomization.yaml").read_text())["resources"])


def test_the_service_monitor_scrapes_the_exchange_service_by_its_port_name():
    monitor = documents()["ServiceMonitor"]
    service = build(BASE).objects["Service", "tpx-exchange"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_the_pod_monitor_scrapes_both_workers_on_their_ops_port():
    monitor = documents()["PodMonitor"]
    objects = build(BASE).objects
    wanted = {e["key"]: set(e["values"]) for e in monitor["spec"]["selector"]["matchExpressions"]}
    for worker in ("tpx-jwks-refresher", "tpx-revoker"):
        template = objects["Deployment", worker]["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert all(labels.get(key) in values for key, values in wanted.items()), worker
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports, worker


def exported_metric_names() -> set[str]:
    from prometheus_client import REGISTRY

    import tpx.core.metrics  # noqa: F401 - registers every tpx metric
    names = set()
    for metric in REGISTRY.collect():
        for suffix in ("", "_total", "_count", "_sum", "_bucket", "_created"):
            names.add(metric.name + suffix)
    return names


def test_every_rule_is_complete_and_names_only_metrics_tpx_exports():
    rule = documents()["PrometheusRule"]
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules) >= 10
    exported = exported_metric_names()
    for r in rules:
        assert r["labels"]["severity"] in ("page", "ticket"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        used = set(re.findall(r"\btpx_[a-z_]+", r["expr"]))
        assert used and used <= exported, f"{r['alert']} uses {sorted(used - exported)}, which tpx does not export"


def test_promtool_accepts_the_rules(tmp_path):
    """`promtool check rules` on the spec (Debian's prometheus package ships promtool; PROMTOOL points at one)."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    spec = documents()["PrometheusRule"]["spec"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(spec))
    if promtool is None:   # `make test` unpacks one where Debian's package is reachable
        assert yaml.safe_load(rules.read_text()) == spec   # then at least the file round-trips as a rule file
        return
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in spec['groups'])} rules found" in result.stdout
