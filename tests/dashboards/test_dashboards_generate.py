"""The committed dashboards are what the generator writes, they round-trip through the
Grafana SDK's dashboard model, and they query exactly the metrics serve_app defines."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel
from grafana_foundation_sdk.models.prometheus import Dataquery

from dashboards import alerts, generate, panels
from serve_app import metrics

COMMITTED = sorted(generate.JSON_DIR.glob("*.json"))
PROVIDED_BY_RAY = {
    metrics.SERVE_REPLICA_HEALTHY,
    metrics.RAY_ACTIVE_NODES,
    metrics.RAY_NODE_CPU_UTILIZATION,
}


def test_committed_files_are_fresh():
    assert generate.stale_files() == [], "run: python -m dashboards.generate"
    assert [path.stem for path in COMMITTED] == sorted(d.uid for d in panels.DASHBOARDS)


def test_a_stale_dashboard_is_detected(tmp_path, monkeypatch):
    copy = tmp_path / "json"
    shutil.copytree(generate.JSON_DIR, copy)
    edited = copy / f"{panels.ENGINE.uid}.json"
    edited.write_text(edited.read_text().replace("KV cache usage", "KV usage"))
    monkeypatch.setattr(generate, "JSON_DIR", copy)
    assert generate.stale_files() == [edited]
    assert generate.main(["--check"]) == 1


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.stem)
def test_dashboard_round_trips_through_the_sdk_model(path):
    register_default_plugins()  # so panels and Prometheus queries decode to their types
    text = path.read_text()
    model = DashboardModel.from_json(json.loads(text))
    assert JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n" == text
    spec = next(d for d in panels.DASHBOARDS if d.uid == path.stem)
    assert [panel.title for panel in model.panels] == [panel.title for panel in spec.panels]
    for panel in model.panels:
        assert panel.datasource.uid == "${datasource}"
        assert all(isinstance(target, Dataquery) for target in panel.targets)
        assert all(target.datasource.uid == "${datasource}" for target in panel.targets)
    [variable] = model.templating.list_val
    assert (variable.name, variable.type_val, variable.query) == (
        "datasource",
        "datasource",
        "prometheus",
    )


def queried_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (ours and Ray's), without histogram suffixes."""
    names = set(re.findall(r"\b((?:ray_)?serve_app_\w+|ray_\w+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_queries_use_only_defined_metrics_and_cover_every_one():
    defined = {spec.series(): spec for spec in metrics.METRICS}
    exprs = [q.expr for _, panel in panels.all_panels() for q in panel.queries]
    exprs += [alert.expr for alert in alerts.ALERTS]
    used = set().union(*(queried_metric_names(expr) for expr in exprs))
    assert used - PROVIDED_BY_RAY <= set(defined), used - PROVIDED_BY_RAY - set(defined)
    assert set(defined) <= used, f"metrics on no dashboard: {set(defined) - used}"


def test_readme_lists_every_panel_with_what_it_tells():
    readme = generate.README_FILE.read_text()
    for _, panel in panels.all_panels():
        assert f"| {panel.title} | {panel.tells} |" in readme
