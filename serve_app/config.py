"""AppConfig: every knob of the Serve application, validated at start-up.

One pydantic model (extra fields forbidden everywhere) built from the `args` of a Serve
config file or from `serve run serve_app.app:build_app key=value ...`. Dotted keys reach
nested sections (`replica.num_cpus=0.5`, `engine.max_num_seqs=8`). An unknown or invalid
field raises `AppConfigError` whose message names the field. HTTP host and port belong to
Serve's `http_options` (see deployments/dev.yaml), not to the application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from serve_app.batcher.policy import BatchPolicyConfig
from serve_app.engine.config import EngineConfig


class AppConfigError(ValueError):
    """The application config is invalid; the message names each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingSettings(_Section):
    """Serve autoscaling of model replicas (replaces a fixed `num_replicas`)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        return self


class ReplicaSettings(_Section):
    """The model replica deployment: how many, how big, how much each admits."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingSettings | None = None
    # Per tensor-parallel rank: with engine.tensor_parallel_size N > 1 the replica gets a
    # placement group of N such bundles (num_gpus 1 on a GPU node, 0 on CPU).
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(16, ge=1)  # concurrent streams per replica
    max_queued_requests: int = Field(16, ge=-1)  # waiting for a replica; -1 = unbounded
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    # An engine loop silent this long is unhealthy; its idle loop wakes every second, so >= 2.
    stall_timeout_s: float = Field(60.0, ge=2.0)
    # Tokens per streamed message after the first (serve_app/replica/chunk_coalescer.py): 1 streams
    # every token at once; N holds a request's tokens until N are ready or it finishes.
    stream_interval_tokens: int = Field(1, ge=1, le=4096)


class BatcherSettings(_Section):
    """The adaptive micro-batcher between the ingress and the model replicas.

    `policy` holds the knobs of serve_app/batcher/policy.py (target_ttft_ms, max_batch_size,
    max_wait_ms, smoothing); they become the Batcher deployment's `user_config`, so a Serve
    config's `deployments: [{name: Batcher, user_config: {...}}]` changes them live.
    """

    enabled: bool = True  # false: the ingress calls the model replicas directly
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)  # requests held (queued or forwarded)
    max_queued_requests: int = Field(64, ge=-1)  # waiting for a batcher; -1 = unbounded
    policy: dict[str, int | float] = Field(default_factory=dict)

    @field_validator("policy")
    @classmethod
    def _valid_policy(cls, policy: dict[str, int | float]) -> dict[str, int | float]:
        BatchPolicyConfig.from_user_config(policy)  # its error names the knob
        return policy


class IngressSettings(_Section):
    """The HTTP ingress deployment (CPU only: tokenization, detokenization, SSE)."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    max_queued_requests: int = Field(256, ge=-1)


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
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be <= "
                f"max_tokens ({self.max_tokens})"
            )
        return self


class AuthSettings(_Section):
    """Optional Bearer-token auth: keys from an environment variable and/or a file.

    The variable holds comma-separated keys; the file holds one key per line. With no key
    found anywhere, auth is off.
    """

    api_keys_env: str | None = "SERVE_APP_API_KEYS"
    api_keys_file: Path | None = None


class RequestLogSettings(_Section):
    """One JSON line per finished request (serve_app/request_log.py); no prompt or output
    text unless `include_text`, and then redacted (serve_app/redaction.py)."""

    enabled: bool = True
    include_text: bool = False
    max_text_chars: int = Field(1000, ge=0)  # of each logged prompt and output
    file: Path | None = None  # append lines here; default: the ingress process's stderr


class AppConfig(_Section):
    """The whole application. `model` is a HuggingFace directory or a preset (`tiny`)."""

    model: str = "tiny"
    served_model_name: str | None = None  # the id in /v1/models; default: from `model`
    engine: EngineConfig = Field(default_factory=EngineConfig)
    replica: ReplicaSettings = Field(default_factory=ReplicaSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    batcher: BatcherSettings = Field(default_factory=BatcherSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    request_log: RequestLogSettings = Field(default_factory=RequestLogSettings)

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
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model).name if Path(self.model).is_dir() else self.model


def load_app_config(args: dict[str, Any] | None) -> AppConfig:
    """Validate builder args (nested dicts or dotted `key=value` strings) into an AppConfig."""
    try:
        return AppConfig.model_validate(_nest_dotted_keys(dict(args or {})))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"]) or "(top level)"
            problems.append(f"{field}: {item['msg']}")
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
