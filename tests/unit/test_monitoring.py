"""deploy/monitoring/ against the metrics the server exports: every metric the dashboard and the alert
rules query is one service/metrics.py registers, and every exported metric is on the dashboard.
(deploy/check.sh has promtool parse the same queries and run the rules' unit tests.)"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import quiver.service.metrics  # noqa: F401  (registers the server's metrics)

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\b(quiver_[a-z0-9_]+)")


def exported() -> dict[str, set[str]]:
    """family -> the series names Prometheus scrapes for it."""
    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("quiver_"):
            continue
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}[family.type]
        out[family.name] = {family.name + s for s in suffixes}
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("dashboard_queries", MONITORING / "dashboard_queries.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.queries(json.loads((MONITORING / "quiver-dashboard.json").read_text())))


def test_the_dashboard_queries_only_exported_metrics_and_shows_every_one() -> None:
    families = exported()
    series = set().union(*families.values())
    assert "quiver_snapshot_fallback" in series and "quiver_rpc_latency_seconds_bucket" in series
    used: set[str] = set()
    for title, expr in dashboard_queries():
        names = set(METRIC.findall(expr))
        assert names, f"panel {title!r} queries no quiver metric: {expr}"
        assert names <= series, f"panel {title!r} queries {sorted(names - series)}, which the server does not export"
        used |= names
    shown = {f for f, names in families.items() if names & used}
    assert shown == set(families), f"not on the dashboard: {sorted(set(families) - shown)}"


def test_the_dashboard_is_a_grafana_model_with_a_datasource_variable() -> None:
    d = json.loads((MONITORING / "quiver-dashboard.json").read_text())
    assert d["uid"] and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24 and not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_the_alert_rules_query_only_exported_metrics() -> None:
    series = set().union(*exported().values())
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"QuiverNoReplicaServing", "QuiverSnapshotStale", "QuiverSnapshotRefused",
                                           "QuiverServingFallback", "QuiverErrorRateHigh",
                                           "QuiverGetFeaturesP99OverOneMs"}
    for r in rules:
        names = set(METRIC.findall(r["expr"]))
        assert names and names <= series, (r["alert"], sorted(names - series))
