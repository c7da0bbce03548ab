"""The three dashboards as data: every panel's title, what it tells an operator, its unit
and its PromQL, built from serve_app/metrics.py's specs. generate.py renders them with
Grafana's SDK; dashboards/README.md's panel list and the live Prometheus test read them too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboards.promql import RATE_INTERVAL as W
from dashboards.promql import mean, quantile, rate, rate_or_zero, ratio, selector
from serve_app import metrics as m

QUANTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))


@dataclass(frozen=True)
class Query:
    legend: str  # Grafana legend format, e.g. "{{route}}"
    expr: str


@dataclass(frozen=True)
class Panel:
    title: str
    tells: str  # what the panel tells an operator (its description in Grafana too)
    unit: str  # Grafana unit id: "reqps", "s", "percentunit", "short", ...
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


def percentiles(spec: m.MetricSpec) -> tuple[Query, ...]:
    return tuple(Query(name, quantile(q, spec, W)) for q, name in QUANTILES)


ALL_REQUESTS = rate(m.REQUESTS, W)
ACCEPTED = 'result="accepted"'  # the drains the GCS took

OVERVIEW = Dashboard(
    "serve-app-overview",
    "serve-app / Overview",
    "Traffic, latency, errors and tokens of the LLM serving app.",
    (
        Panel(
            "Requests per second by route",
            "Finished requests per second on each HTTP route and gRPC method: the load.",
            "reqps",
            (Query("{{route}}", rate(m.REQUESTS, W, by="route")),),
        ),
        Panel(
            "Error and shed ratio",
            "Share of requests that failed on the server (5xx), were shed for overload (429)"
            " or were rejected as invalid (other 4xx). 5xx or 429 above a few percent page.",
            "percentunit",
            (
                Query("5xx", ratio(rate_or_zero(m.REQUESTS, W, 'status=~"5.."'), ALL_REQUESTS)),
                Query("429", ratio(rate_or_zero(m.REQUESTS, W, 'status="429"'), ALL_REQUESTS)),
                Query(
                    "other 4xx",
                    ratio(
                        rate_or_zero(m.REQUESTS, W, 'status=~"4..",status!~"429|499"'),
                        ALL_REQUESTS,
                    ),
                ),
            ),
        ),
        Panel(
            "Requests by status and error code",
            "Which failures happen: each status with its OpenAI error code (none = success,"
            " 499 client_disconnected = the caller left).",
            "reqps",
            (Query("{{status}} {{code}}", rate(m.REQUESTS, W, by="status, code")),),
        ),
        Panel(
            "Time to first token",
            "Seconds until the first token reaches the ingress (p50/p90/p99): queueing,"
            " batching and prefill. What an interactive user feels first.",
            "s",
            percentiles(m.TIME_TO_FIRST_TOKEN_S),
        ),
        Panel(
            "Time per output token",
            "Per-request decode speed after the first token (p50/p90/p99); rises with"
            " batch size and KV pressure.",
            "s",
            percentiles(m.TIME_PER_OUTPUT_TOKEN_S),
        ),
        Panel(
            "Inter-token latency",
            "Gaps between streamed outputs (p50/p90/p99): stutter a streaming user sees;"
            " spikes point at engine steps stalled by long prefills or preemption.",
            "s",
            percentiles(m.INTER_TOKEN_LATENCY_S),
        ),
        Panel(
            "End-to-end latency",
            "Seconds from arrival to the last byte (p50/p90/p99); grows with max_tokens.",
            "s",
            percentiles(m.REQUEST_LATENCY_S),
        ),
        Panel(
            "Tokens per second",
            "Prompt tokens read and completion tokens generated per second: the throughput.",
            "short",
            (Query("{{kind}}", rate(m.TOKENS, W, by="kind")),),
        ),
    ),
)

ENGINE = Dashboard(
    "serve-app-engine",
    "serve-app / Engine",
    "KV cache, batches, queues, preemption and step time of the model replicas.",
    (
        Panel(
            "KV cache usage by replica",
            "Fraction of KV blocks in use on each replica. Near 1 new requests wait and"
            " running ones get preempted: add replicas or KV memory.",
            "percentunit",
            (Query("{{replica}}", f"max by (replica) ({selector(m.KV_CACHE_USAGE)})"),),
        ),
        Panel(
            "Running and waiting requests",
            "Requests the engines run and those waiting inside them for KV blocks or a"
            " batch slot; waiting that keeps growing means too little capacity.",
            "short",
            (
                Query("running", f"sum({selector(m.RUNNING_REQUESTS)})"),
                Query("waiting", f"sum({selector(m.WAITING_REQUESTS)})"),
            ),
        ),
        Panel(
            "Batcher queue",
            "Requests held in the micro-batcher before forwarding. Persistently above the"
            " batch size: replicas do not keep up.",
            "short",
            (Query("queued", f"sum({selector(m.BATCHER_QUEUED_REQUESTS)})"),),
        ),
        Panel(
            "Batcher queue wait",
            "Time a request spends in the batcher's window (p50/p90/p99): the TTFT the"
            " batcher spends to form batches.",
            "s",
            percentiles(m.BATCH_QUEUE_WAIT_S),
        ),
        Panel(
            "Batch window and batch size",
            "The adaptive window (seconds) and the mean requests per forwarded call: how"
            " much batching the policy finds worth its wait.",
            "short",
            (
                Query("window (s)", f"max({selector(m.BATCH_WINDOW_S)})"),
                Query("requests per call", mean(m.BATCH_SIZE, W)),
            ),
        ),
        Panel(
            "Engine step time",
            "Mean seconds per engine step (one forward over the batch). Every running"
            " request waits this long per token.",
            "s",
            (Query("mean", ratio(rate(m.ENGINE_STEP_TIME_S, W), rate(m.ENGINE_STEPS, W))),),
        ),
        Panel(
            "Engine batch per step",
            "Mean sequences and tokens in one engine step: how full the token budget runs.",
            "short",
            (
                Query(
                    "sequences",
                    ratio(rate(m.ENGINE_SCHEDULED_SEQUENCES, W), rate(m.ENGINE_STEPS, W)),
                ),
                Query("tokens", ratio(rate(m.ENGINE_SCHEDULED_TOKENS, W), rate(m.ENGINE_STEPS, W))),
            ),
        ),
        Panel(
            "Prefix cache hit rate",
            "Share of prompt tokens served from cached KV blocks: prefill work saved by"
            " shared prefixes (system prompts, chat history).",
            "percentunit",
            (
                Query(
                    "hit rate",
                    ratio(rate(m.PREFIX_CACHE_HIT_TOKENS, W), rate(m.PREFIX_CACHE_QUERY_TOKENS, W)),
                ),
            ),
        ),
        Panel(
            "Preemptions per second",
            "Running sequences evicted for lack of KV blocks (recomputed later). Any"
            " steady rate means the KV cache is too small for the load.",
            "short",
            (Query("preemptions", rate(m.PREEMPTIONS, W)),),
        ),
    ),
)

CLUSTER = Dashboard(
    "serve-app-cluster",
    "serve-app / Cluster",
    "Replicas, nodes, spot drains and failovers.",
    (
        Panel(
            "Healthy replicas by deployment",
            "Replicas passing Serve's health checks per deployment (Ray Serve's own metric);"
            " a drop below the configured count means crashes or stalled engines.",
            "short",
            (Query("{{deployment}}", f"sum by (deployment) ({m.SERVE_REPLICA_HEALTHY})"),),
        ),
        Panel(
            "Ray nodes",
            "Alive Ray nodes by node type (the autoscaler's view): spot nodes leaving and"
            " joining show here.",
            "short",
            (Query("{{NodeType}}", f"sum by (NodeType) ({m.RAY_ACTIVE_NODES})"),),
        ),
        Panel(
            "Node CPU utilization",
            "CPU use per node in percent; ingress and batcher nodes near 100% limit token"
            " throughput before the GPUs do.",
            "percent",
            (Query("{{NodeAddress}}", f"avg by (NodeAddress) ({m.RAY_NODE_CPU_UTILIZATION})"),),
        ),
        Panel(
            "Failovers per second",
            "Live requests moved to another replica, by why their replica was left"
            " (died, node drained). Bursts follow spot interruptions.",
            "short",
            (Query("{{reason}}", rate(m.FAILOVERS, W, by="reason")),),
        ),
        Panel(
            "Batcher retries per second",
            "Replica calls the batcher retried, by cause: overload or an unavailable replica.",
            "short",
            (Query("{{reason}}", rate(m.RETRIES, W, by="reason")),),
        ),
        Panel(
            "Spot drains in the last hour",
            "Nodes the preemption watcher drained on a spot interruption notice.",
            "short",
            (Query("drains", f"sum(increase({selector(m.PREEMPTION_DRAINS, ACCEPTED)}[1h]))"),),
            kind="stat",
        ),
        Panel(
            "Preemption watchers: polls per second by outcome",
            "Whether the watchers reach their cloud's metadata server: `error` polls mean a "
            "notice could be missed; `notice` polls precede a drain.",
            "short",
            (
                Query("{{outcome}}", rate(m.PREEMPTION_POLLS, W, by="outcome")),
                Query("notices", rate(m.PREEMPTION_NOTICES, W)),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, ENGINE, CLUSTER)


def all_panels() -> list[tuple[Dashboard, Panel]]:
    return [(dashboard, panel) for dashboard in DASHBOARDS for panel in dashboard.panels]
