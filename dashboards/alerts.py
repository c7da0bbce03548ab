"""Prometheus alerting rules with their knobs and runbooks, rendered to dashboards/alerts.yaml.

Each alert is `signal comparison threshold` held for `for_`: the signal (PromQL over
serve_app/metrics.py's specs) is what the rule measures, the threshold and the durations are
knobs (documented in dashboards/README.md with the runbook). `with_knobs(overrides)` is
how a test or an operator derives a copy with other knobs from the same definitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from dashboards.promql import quantile, rate, rate_or_zero, ratio, selector
from serve_app import metrics as m
from serve_app.app import REPLICA_NAME

RULE_GROUP = "serve_app"
WINDOW = "$window"  # in a signal: the alert's window knob
RUNBOOK = "dashboards/README.md#"  # + the alert's name in lower case (its heading's anchor)


@dataclass(frozen=True)
class Alert:
    name: str
    summary: str
    signal_template: str  # PromQL with WINDOW where the alert's window goes
    comparison: str  # ">" or "<"
    threshold: float
    window: str  # the range of the signal's rates
    for_: str  # how long the condition must hold before the alert fires
    severity: str  # "page" or "ticket"
    meaning: str  # runbook: what it means
    check: str  # runbook: what to check
    action: str  # runbook: what to do

    @property
    def signal(self) -> str:
        return self.signal_template.replace(WINDOW, self.window)

    @property
    def expr(self) -> str:
        return f"{self.signal} {self.comparison} {self.threshold:g}"

    def rule(self) -> dict:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": f"{self.meaning} Value: {{{{ $value }}}} "
                f"({self.comparison} {self.threshold:g} for {self.for_}).",
                "runbook": RUNBOOK + self.name.lower(),
            },
        }


def _share_of_requests(matchers: str) -> str:
    return ratio(rate_or_zero(m.REQUESTS, WINDOW, matchers), rate(m.REQUESTS, WINDOW))


ALERTS = (
    Alert(
        "ServeAppHighErrorRate",
        "More than the threshold share of requests fail with a 5xx",
        _share_of_requests('status=~"5.."'),
        ">",
        0.05,
        "5m",
        "5m",
        "page",
        "Requests fail on the server side (500 internal error, 503 replica unavailable).",
        "Overview > Requests by status and error code for the code; Cluster > Healthy"
        " replicas; replica logs (`ray logs`, logs/serve/) for engine errors and restarts.",
        "If replicas are restarting, look for the engine error (OOM, a dead TP worker) and"
        " roll back the last change; if one node is bad, drain it with `ray drain-node`.",
    ),
    Alert(
        "ServeAppRequestsShed",
        "More than the threshold share of requests are shed with 429",
        _share_of_requests('status="429"'),
        ">",
        0.10,
        "5m",
        "5m",
        "page",
        "The app admits fewer requests than arrive: replicas, batcher or ingress are full.",
        "Engine > Running and waiting requests and KV cache usage; Overview > Requests per"
        " second for a traffic jump; the autoscaler's max_replicas.",
        "Raise replica.autoscaling.max_replicas (or num_replicas) or the admission limits"
        " (max_ongoing_requests, max_queued_requests) if the replicas have headroom.",
    ),
    Alert(
        "ServeAppTimeToFirstTokenHigh",
        "p99 time to first token above the threshold (seconds)",
        quantile(0.99, m.TIME_TO_FIRST_TOKEN_S, WINDOW),
        ">",
        5.0,
        "5m",
        "10m",
        "page",
        "Users wait long for the first token: requests queue, or prefills are slow.",
        "Engine > Batcher queue wait, Running and waiting requests, Engine step time;"
        " Overview > Tokens per second (long prompts arriving).",
        "Add replicas; lower batcher.policy.target_ttft_ms or max_wait_ms if the batcher"
        " wait dominates; lower engine.max_num_batched_tokens if long prefills stall steps.",
    ),
    Alert(
        "ServeAppTimePerOutputTokenHigh",
        "p99 time per output token above the threshold (seconds)",
        quantile(0.99, m.TIME_PER_OUTPUT_TOKEN_S, WINDOW),
        ">",
        0.2,
        "5m",
        "10m",
        "ticket",
        "Decoding is slow: steps are large, preempted, or the node is overloaded.",
        "Engine > Engine step time, Engine batch per step, Preemptions; Cluster > Node CPU.",
        "Lower engine.max_num_seqs to cap batch size, or add replicas; on CPU nodes move"
        " ingress and batcher off the replica's node.",
    ),
    Alert(
        "ServeAppKVCacheSaturated",
        "A replica's KV cache usage above the threshold (fraction of blocks)",
        f"max({selector(m.KV_CACHE_USAGE)})",
        ">",
        0.95,
        "5m",
        "10m",
        "ticket",
        "A replica has (almost) no free KV blocks: new requests wait, running ones get"
        " preempted and recomputed.",
        "Engine > KV cache usage by replica and Preemptions per second; prompt and output"
        " lengths in the request logs.",
        "Give the KV cache more memory (engine.kv_cache_memory_fraction or _bytes), lower"
        " engine.max_num_seqs or limits.max_tokens, or add replicas.",
    ),
    Alert(
        "ServeAppQueueBacklog",
        "Requests waiting in batchers and engines above the threshold",
        f"sum({selector(m.WAITING_REQUESTS)}) + sum({selector(m.BATCHER_QUEUED_REQUESTS)})",
        ">",
        32,
        "5m",
        "5m",
        "ticket",
        "Queues grow faster than replicas drain them; TTFT follows.",
        "Engine > Running and waiting requests, Batcher queue; Overview > Requests per second.",
        "Add replicas (or raise autoscaling max_replicas); check that no replica is stuck"
        " (Cluster > Healthy replicas).",
    ),
    Alert(
        "ServeAppReplicasUnhealthy",
        "Fewer healthy model replicas than the threshold",
        # `or vector(0)`: with no healthy-replica series at all (every replica gone, Serve
        # down) a bare sum() is empty and the alert would stay silent.
        f'(sum({m.SERVE_REPLICA_HEALTHY}{{deployment="{REPLICA_NAME}"}}) or vector(0))',
        "<",
        1,
        "5m",
        "2m",
        "page",
        "Serve's health checks fail for model replicas (engine loop dead or stalled, TP"
        " worker gone) and none or too few serve.",
        "Cluster > Healthy replicas and Ray nodes; `serve status`; replica logs for"
        " EngineDeadError or TensorParallelError.",
        "Serve replaces failed replicas by itself; if they keep failing, look for the cause"
        " in the logs (OOM, GPU error) and roll back or reduce engine memory settings.",
    ),
    Alert(
        "ServeAppFailoverStorm",
        "Failovers per minute above the threshold",
        f"60 * {rate(m.FAILOVERS, WINDOW)}",
        ">",
        10,
        "5m",
        "5m",
        "page",
        "Many live requests are moved between replicas: replicas die or nodes are drained"
        " repeatedly (spot interruptions).",
        "Cluster > Failovers, Spot drains and Ray nodes; the cloud's spot interruption rate.",
        "Shift capacity to on-demand nodes (raise the on-demand floor) or another spot"
        " pool; if replicas crash without drains, treat it as ServeAppReplicasUnhealthy.",
    ),
)


def with_knobs(overrides: dict[str, dict]) -> list[Alert]:
    """The alerts with some knobs changed: alert name -> {threshold, window, for_: value}."""
    unknown = set(overrides) - {alert.name for alert in ALERTS}
    if unknown:
        raise ValueError(f"unknown alerts {sorted(unknown)}; known: {[a.name for a in ALERTS]}")
    return [replace(alert, **overrides.get(alert.name, {})) for alert in ALERTS]


def rule_file(rules: Iterable[Alert] = ALERTS) -> dict:
    """Prometheus' rule file format, as data."""
    return {"groups": [{"name": RULE_GROUP, "rules": [alert.rule() for alert in rules]}]}
