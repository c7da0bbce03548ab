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
