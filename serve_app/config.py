"""AppConfig: every knob of the Serve application, validated at start-up.

One pydantic model (extra fields forbidden everywhere) built from the `args` of a Serve
config file or from `serve run serve_app.app:build_app key=value ...`. Dotted keys reach
nested sections (`replica.num_cpus=0.5`, `engine.max_num_seqs=8`). An unknown or invalid
field raises `AppConfigError` whose message names the field. HTTP host and port belong to
Serve's `http_options` (see deployments/dev.yaml), not to the application.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from serve_app.batcher.policy import BatchPolicyConfig
from serve_app.engine.config import EngineConfig
from serve_app.validation_errors import problem_lines


class AppConfigError(ValueError):
    """The application config is invalid; the message names each bad field."""


# Set (to anything but 0) for the traceback under a fail-fast error that our commands
# (preflight, `serve run serve_app.app:build_app`, the preemption watcher, dashboards.push)
# otherwise print as one line naming the field and the fix (serve_app/cli_errors.py).
DEBUG_ENV = "SERVE_APP_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def _check_order(section: BaseModel, low: str, high: str) -> None:
    """Raise if field `low` of the section exceeds field `high`, naming both."""
    low_value, high_value = getattr(section, low), getattr(section, high)
    if low_value > high_value:
        raise ValueError(f"{low} ({low_value}) must be <= {high} ({high_value})")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingSettings(_Section):
    """Serve autoscaling of model replicas (replaces a fixed `num_replicas`).

    `policy: engine_load` scales on what the replicas report (serve_app/autoscaling.py):
    waiting requests, KV-cache usage and recent TTFT against the targets below; up at once,
    down one replica per `downscale_after_s` of low load. `ongoing_requests` is Serve's own
    policy on `target_ongoing_requests`.
    """

    min_replicas: int = Field(1, ge=0)  # 0: scale to zero (docs/deploy.md: cold-start cost)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    policy: Literal["engine_load", "ongoing_requests"] = "engine_load"
    target_waiting_requests: float = Field(2.0, gt=0)  # per replica, waiting in the engine
    target_kv_cache_usage: float = Field(0.8, gt=0, le=1)
    target_ttft_s: float = Field(2.0, gt=0)  # recent mean time to first token on a replica
    downscale_after_s: float = Field(120.0, ge=0)  # low load this long removes one replica
    metrics_window_s: float = Field(15.0, gt=0)  # Serve's look-back over replica reports

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        _check_order(self, "min_replicas", "max_replicas")
        return self


class DeploymentSettings(_Section):
    """The Serve knobs every deployment of the graph has, declared once.

    `max_ongoing_requests` / `max_queued_requests` left unset are derived from the app's
    admission bound (`AppConfig.admission_bound`), so Serve never turns a request away
    before the ingress's own admission control does (serve_app/ingress/admission.py).
    """

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1)  # Serve calls at once per replica
    max_queued_requests: int | None = Field(None, ge=-1)  # calls waiting; -1 = unbounded

    def serve_options(self, name: str, derived_ongoing: int) -> dict[str, Any]:
        """Serve's deployment options for these knobs."""
        return {
            "name": name,
            "num_replicas": self.num_replicas,
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests or derived_ongoing,
            "max_queued_requests": (
                derived_ongoing if self.max_queued_requests is None else self.max_queued_requests
            ),
        }


class ReplicaSettings(DeploymentSettings):
    """The model replica deployment: how many, how big, how much each admits."""

    autoscaling: AutoscalingSettings | None = None
    # Per tensor-parallel rank: with engine.tensor_parallel_size N > 1 the replica gets a
    # placement group of N such bundles (num_gpus 1 on a GPU node, 0 on CPU).
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    # On a draining node (spot notice, `ray drain-node`), running requests are handed back
    # to the batcher this long before the node's deadline, to be resumed on another replica.
    drain_handback_s: float = Field(5.0, ge=0)
    # An engine loop silent this long is unhealthy; its idle loop wakes every second, so >= 2.
    stall_timeout_s: float = Field(60.0, ge=2.0)
    # Tokens per streamed message after the first (serve_app/replica/chunk_coalescer.py): 1
    # streams every token at once; N holds a request's tokens until N are ready or it ends.
    stream_interval_tokens: int = Field(1, ge=1, le=4096)
    # Under load, a replica sends a batch stream's messages at most once per this slice
    # (scaled by how full its engine is); first tokens and ends are never held. 0: per step.
    stream_interval_ms: float = Field(0.0, ge=0, le=1000)

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.num_replicas


class FailoverSettings(_Section):
    """Mid-stream failover in the batcher (serve_app/batcher/failover.py): a request whose
    replica fails is resumed on another with the tokens it already has. The two timeouts
    are the batch calls' watchdog (serve_app/batch_call.py); with `batcher.enabled=false`
    they guard the ingress's calls to the replicas too (a failure is then a 503)."""

    enabled: bool = True
    max_attempts: int = Field(5, ge=1)  # resumes of one request, at most
    backoff_s: float = Field(0.2, ge=0)  # the first retry waits up to this (full jitter)
    max_backoff_s: float = Field(5.0, ge=0)  # doubling per attempt, capped here
    # A replica's batch stream silent this long (it sends a heartbeat every 2 s) is a dead
    # replica: a node gone without a trace leaves a gRPC stream open, with no error. Counted
    # from the moment a replica accepts the call (Serve's router says so), then per message.
    silence_timeout_s: float = Field(15.0, ge=5)
    # A call with no message this long after it was sent fails too, accepted or not (a node
    # that vanished before a replica confirmed it): above a replica's cold start, since a
    # call waits in Serve's router while no replica runs (scale to zero).
    first_message_timeout_s: float = Field(300.0, ge=5)


class BatcherSettings(DeploymentSettings):
    """The adaptive micro-batcher between the ingress and the model replicas.

    `policy` holds the knobs of serve_app/batcher/policy.py (target_ttft_ms, max_batch_size,
    max_wait_ms, smoothing); they become the Batcher deployment's `user_config`, so a Serve
    config's `deployments: [{name: Batcher, user_config: {...}}]` changes them live.
    """

    enabled: bool = True  # false: the ingress calls the model replicas directly
    policy: BatchPolicyConfig = Field(default_factory=BatchPolicyConfig)
    failover: FailoverSettings = Field(default_factory=FailoverSettings)


class IngressSettings(DeploymentSettings):
    """The HTTP/gRPC ingress deployment (CPU only: tokenization, detokenization, SSE).

    Each ingress replica probes every model replica's health check in the background
    (serve_app/ingress/replica_health.py); its /health and admission read the result.
    """

    replica_health_period_s: float = Field(2.0, gt=0)  # between probes of every replica
    # A model replica whose health check has not answered in this long counts as unhealthy.
    replica_health_timeout_s: float = Field(5.0, gt=0)


class AdmissionSettings(_Section):
    """How many requests the app holds before it answers 429 + Retry-After.

    The bound is what the model replicas serving now can run at once
    (engine.max_num_seqs x those replicas) plus a queue: the requests the replicas are
    measured to finish within `max_queue_wait_s` (requests finished per second x that
    wait), kept between `min_queued_requests` and `max_queued_requests`, both given for the
    app at its `max_replicas` and scaled by the share of them serving
    (serve_app/ingress/admission.py). `max_requests` replaces the derived bound outright
    (no measurement).
    """

    max_queue_wait_s: float = Field(30.0, ge=0)
    min_queued_requests: int = Field(128, ge=0)
    max_queued_requests: int = Field(1024, ge=0)
    max_requests: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionSettings:
        _check_order(self, "min_queued_requests", "max_queued_requests")
        return self


class LimitSettings(_Section):
    """Per-request limits enforced by the ingress before anything reaches a replica."""

    max_prompt_tokens: int = Field(1024, ge=1)
    max_tokens: int = Field(1024, ge=1)  # the largest `max_tokens` a request may ask for
    default_max_tokens: int = Field(16, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_choices: int = Field(8, ge=1)  # prompts x n in one request
    max_stop_strings: int = Field(4, ge=0)
    retry_after_s: int = Field(1, ge=0)  # the Retry-After of a 429

    @model_validator(mode="after")
    def _default_within_max(self) -> LimitSettings:
        _check_order(self, "default_max_tokens", "max_tokens")
        return self


class AuthSettings(_Section):
    """Optional Bearer-token auth: keys from an environment variable and/or a file.

    The variable holds comma-separated keys; the file holds one key per line. With no key
    found anywhere, auth is off.
    """

    api_keys_env: str | None = "SERVE_APP_API_KEYS"
    api_keys_file: Path | None = None


class PlacementSettings(_Section):
    """Spot-aware placement on a Ray cluster (serve_app/placement.py; cluster/*.yaml).

    Off on a dev box: everything runs wherever Ray finds room. On: model replicas fill the
    on-demand floor nodes first, then spot, then on-demand burst nodes, told apart by the
    node label `capacity_label`; the ingress and batcher need `frontend_resource`, which
    only the on-demand CPU nodes (the head) carry.
    """

    enabled: bool = False
    on_demand_floor: int = Field(1, ge=0)  # model replicas always kept on on-demand nodes
    capacity_label: str = Field("serve-app/capacity", min_length=1)
    frontend_resource: str = Field("on_demand_cpu", min_length=1)


class RequestLogSettings(_Section):
    """One JSON line per finished request (serve_app/request_log.py); no prompt or output
    text unless `include_text`, and then redacted (serve_app/redaction.py)."""

    enabled: bool = True
    include_text: bool = False
    max_text_chars: int = Field(1000, ge=0)  # of each logged prompt and output
    # Append lines here (a relative path: in the node's Ray session log directory, beside
    # Serve's logs; serve_app/request_log.py); default: the ingress process's stderr.
    file: Path | None = None


class AppConfig(_Section):
    """The whole application. `model` is a HuggingFace directory or a preset (`tiny`)."""

    model: str = "tiny"
    served_model_name: str | None = None  # the id in /v1/models; default: from `model`
    engine: EngineConfig = Field(default_factory=EngineConfig)
    replica: ReplicaSettings = Field(default_factory=ReplicaSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    batcher: BatcherSettings = Field(default_factory=BatcherSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    request_log: RequestLogSettings = Field(default_factory=RequestLogSettings)
    # `throughput`: Serve's throughput preset in the app's replicas (serve_app/app.py);
    # `default`: Serve's defaults (user code on a thread of its own, Ray actor calls).
    serve_preset: Literal["throughput", "default"] = "throughput"

    @model_validator(mode="before")
    @classmethod
    def _model_into_engine(cls, values: Any) -> Any:
        """`model` is given once at the top; the engine section inherits it."""
        if not isinstance(values, dict):
            return values
        engine = values.get("engine") or {}
        if isinstance(engine, dict):
            model = values.get("model", engine.get("model", "tiny"))
            if "model" in engine and engine["model"] != model:
                raise ValueError("give the model once, as `model`, not also as `engine.model`")
            values = {**values, "model": model, "engine": {**engine, "model": model}}
        return values

    @model_validator(mode="after")
    def _tensor_parallel_bundles(self) -> AppConfig:
        """With TP > 1 each rank is a placement-group bundle of replica.num_cpus/num_gpus."""
        if self.engine.tensor_parallel_size == 1:
            return self
        if self.replica.num_gpus not in (0, 1):
            raise ValueError(
                "replica.num_gpus must be 0 (CPU ranks, gloo) or 1 (one GPU per rank, NCCL) "
                f"when engine.tensor_parallel_size > 1, got {self.replica.num_gpus}"
            )
        if self.replica.num_gpus == 0 and self.replica.num_cpus == 0:
            raise ValueError(
                "replica.num_cpus must be > 0 on CPU when engine.tensor_parallel_size > 1 "
                "(each rank's placement-group bundle needs a resource)"
            )
        if self.engine.device == "cuda" and self.replica.num_gpus == 0:
            raise ValueError("engine.device is 'cuda': set replica.num_gpus to 1 (per rank)")
        return self

    @property
    def running_capacity(self) -> int:
        """Requests the model replicas run at once with all `max_replicas` up: the ceiling
        (admission counts the replicas serving now: serve_app/ingress/admission.py)."""
        return self.engine.max_num_seqs * self.replica.max_replicas

    @property
    def admission_bound(self) -> int:
        """The most requests the app ever holds, running and queued (whatever it measures
        and however many replicas serve): Serve's own limits are derived from it."""
        settings = self.admission
        if settings.max_requests is not None:
            return settings.max_requests
        return self.running_capacity + settings.max_queued_requests

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model).name if Path(self.model).is_dir() else self.model


def load_app_config(args: dict[str, Any] | None) -> AppConfig:
    """Validate builder args (nested dicts or dotted `key=value` strings) into an AppConfig."""
    try:
        return AppConfig.model_validate(_nest_dotted_keys(dict(args or {})))
    except ValidationError as error:
        problems = problem_lines(error, AppConfig)
        raise AppConfigError("invalid app config: " + "; ".join(problems)) from None


def _nest_dotted_keys(values: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        target = nested
        for part in parts[:-1]:
            existing = target.setdefault(part, {})
            if not isinstance(existing, dict):
                raise AppConfigError(f"invalid app config: {key}: {part} is not a section")
            target = existing
        if isinstance(value, dict) and isinstance(target.get(parts[-1]), dict):
            target[parts[-1]].update(value)
        else:
            target[parts[-1]] = value
    return nested
