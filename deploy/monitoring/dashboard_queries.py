"""The PromQL of every panel of quiver-dashboard.json, with Grafana's variables given values Prometheus
accepts, written as recording rules so that `promtool check rules` parses each query (deploy/check.sh).

    python deploy/monitoring/dashboard_queries.py quiver-dashboard.json > queries.rules.yml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every target, variables substituted."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def as_rules(dashboard: dict[str, Any]) -> dict[str, Any]:
    return {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries(dashboard))]}]}


if __name__ == "__main__":
    json.dump(as_rules(json.loads(Path(sys.argv[1]).read_text())), sys.stdout, indent=1)  # JSON is YAML
