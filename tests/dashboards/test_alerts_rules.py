"""alerts.yaml passes `promtool check rules`, its knobs are overridable by name, and every
alert has its runbook entry in dashboards/README.md."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from dashboards import alerts, generate
from tests.dashboards.prometheus_server import require


def promtool_check(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )


def test_promtool_accepts_the_committed_rules():
    result = promtool_check(generate.ALERTS_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.ALERTS)} rules found" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path):
    rules = alerts.rule_file()
    rules["groups"][0]["rules"][0]["expr"] += " >"  # a syntax error
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(rules))
    assert promtool_check(broken).returncode != 0


def test_knobs_change_the_rule_and_unknown_alerts_are_named():
    [shed] = [
        a
        for a in alerts.with_knobs({"ServeAppRequestsShed": {"threshold": 0.5}})
        if a.name == "ServeAppRequestsShed"
    ]
    assert shed.expr.endswith("> 0.5") and shed.rule()["for"] == "5m"
    with pytest.raises(ValueError, match=r"ServeAppNoSuchAlert.*ServeAppHighErrorRate"):
        alerts.with_knobs({"ServeAppNoSuchAlert": {"threshold": 1}})


def test_every_alert_has_a_runbook_entry():
    readme = generate.README_FILE.read_text()
    for alert in alerts.ALERTS:
        assert f"### {alert.name}\n" in readme
        assert (
            alert.rule()["annotations"]["runbook"] == f"dashboards/README.md#{alert.name.lower()}"
        )
        for part in (alert.meaning, alert.check, alert.action):
            assert part in readme


def test_replicas_unhealthy_fires_when_no_replica_reports_at_all(tmp_path):
    """promtool's rule unit test: one healthy replica, then none, then no series at all (every
    replica and its exporter gone). Before: `sum(...) < 1` was empty without series, silent."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump(alerts.rule_file()))
    series = f'{alerts.m.SERVE_REPLICA_HEALTHY}{{deployment="{alerts.REPLICA_NAME}"}}'
    [rule] = [a.rule() for a in alerts.ALERTS if a.name == "ServeAppReplicasUnhealthy"]
    annotations = rule["annotations"] | {
        "description": rule["annotations"]["description"].replace("{{ $value }}", "0")
    }
    firing = [{"exp_labels": {"severity": "page"}, "exp_annotations": annotations}]
    case = {
        "interval": "1m",
        "input_series": [{"series": series, "values": "1 1 1 1 1 0 0 0 0 0"}],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "ServeAppReplicasUnhealthy", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "ServeAppReplicasUnhealthy", "exp_alerts": firing},
            # Past the last sample, plus Prometheus' 5 min staleness: no series at all.
            {"eval_time": "20m", "alertname": "ServeAppReplicasUnhealthy", "exp_alerts": firing},
        ],
    }
    unit = tmp_path / "unhealthy_test.yaml"
    unit.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": [case]}))
    result = subprocess.run(
        [require("promtool"), "test", "rules", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
