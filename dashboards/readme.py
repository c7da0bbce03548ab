"""The generated part of dashboards/README.md: every panel with what it tells an operator,
every alert with its knobs, and a runbook entry per alert (from panels.py and alerts.py)."""

from __future__ import annotations

from dashboards import alerts, panels

BEGIN = "<!-- BEGIN GENERATED: python -m dashboards.generate -->"
END = "<!-- END GENERATED -->"


def generated_part() -> str:
    lines = ["## Panels", ""]
    for dashboard in panels.DASHBOARDS:
        lines += [f"### {dashboard.title} (`json/{dashboard.uid}.json`)", ""]
        lines += [dashboard.description, "", "| panel | what it tells an operator |", "|---|---|"]
        lines += [f"| {panel.title} | {panel.tells} |" for panel in dashboard.panels]
        lines.append("")
    lines += [
        "## Alerts (`alerts.yaml`)",
        "",
        "Knobs: `threshold`, `window` (range of the rates) and `for` (how long the condition"
        " holds before firing), set per alert in `dashboards/alerts.py`.",
        "",
        "| alert | fires when | threshold | window | for | severity |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| [{a.name}](#{a.name.lower()}) | {a.summary} | {a.comparison} {a.threshold:g} "
        f"| {a.window} | {a.for_} | {a.severity} |"
        for a in alerts.ALERTS
    ]
    lines += ["", "## Runbooks", ""]
    for alert in alerts.ALERTS:
        lines += [f"### {alert.name}", "", f"`{alert.expr}`", ""]
        lines += [f"- **Means:** {alert.meaning}", f"- **Check:** {alert.check}"]
        lines += [f"- **Do:** {alert.action}", ""]
    return "\n".join(lines).rstrip() + "\n"


def with_generated_part(readme: str) -> str:
    """`readme` with the text between the markers replaced (appended if they are missing)."""
    head, found, rest = readme.partition(BEGIN)
    tail = rest.partition(END)[2] if found else "\n"
    return f"{head.rstrip()}\n\n{BEGIN}\n{generated_part()}{END}\n{tail.lstrip()}"
