"""WatcherConfig: every knob of the preemption watcher, validated when it starts.

Built from the command line (`python -m serve_app.preemption --provider aws ...`); an
unknown or invalid field raises `WatcherConfigError` whose message names the field and
what it accepts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Provider = Literal["aws", "gcp", "file"]

# Where each cloud serves instance metadata (the link-local address AWS and GCP both use).
DEFAULT_METADATA_URLS: dict[str, str] = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
}
# Seconds between a notice and the machine going away when the notice carries no time:
# GCP gives ~30 s; a file trigger mimics AWS's two minutes unless it holds a number.
DEFAULT_NOTICE_S: dict[str, float] = {"aws": 120.0, "gcp": 30.0, "file": 120.0}
NODE_ID_PATTERN = re.compile(r"^[0-9a-f]{56}$")  # a Ray NodeID in hex (28 bytes)


class WatcherConfigError(ValueError):
    """The watcher's config is invalid; the message names each bad field."""


class WatcherConfig(BaseModel):
    """How to detect a preemption notice, and which Ray node to drain when one comes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider = Field(description="aws, gcp or file")
    metadata_url: str | None = Field(None, description="metadata base URL (default: the cloud's)")
    trigger_file: Path | None = Field(None, description="provider file: a notice once it exists")
    poll_interval_s: float = Field(2.0, gt=0, le=60, description="seconds between polls")
    safety_margin_s: float = Field(
        10.0, ge=0, description="the drain deadline is this many seconds before the notice's end"
    )
    notice_s: float | None = Field(
        None, gt=0, description="notice length when the notice has no time (gcp 30, file 120)"
    )
    aws_token_ttl_s: int = Field(21600, ge=1, le=21600, description="IMDSv2 session token TTL")
    request_timeout_s: float = Field(2.0, gt=0, description="timeout of each metadata/GCS call")
    ray_address: str = Field("auto", description="GCS address; auto: this node's cluster")
    node_id: str | None = Field(None, description="Ray node id (hex); default: this host's node")
    metrics_host: str = Field("0.0.0.0", description="address of the metrics server")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus port; 0: none")

    @model_validator(mode="after")
    def _consistent(self) -> WatcherConfig:
        if self.provider == "file" and self.trigger_file is None:
            raise ValueError("trigger_file: required when provider is 'file'")
        if self.provider != "file" and self.trigger_file is not None:
            raise ValueError(f"trigger_file: only for provider 'file', not {self.provider!r}")
        if self.node_id is not None and not NODE_ID_PATTERN.match(self.node_id):
            raise ValueError(f"node_id: expected 56 lowercase hex digits, got {self.node_id!r}")
        if self.safety_margin_s >= self.effective_notice_s:
            raise ValueError(
                f"safety_margin_s: must be below the notice of {self.effective_notice_s:g} s "
                f"(notice_s), got {self.safety_margin_s:g}"
            )
        return self

    @property
    def effective_metadata_url(self) -> str:
        return (self.metadata_url or DEFAULT_METADATA_URLS.get(self.provider, "")).rstrip("/")

    @property
    def effective_notice_s(self) -> float:
        return self.notice_s if self.notice_s is not None else DEFAULT_NOTICE_S[self.provider]


def load_watcher_config(values: dict[str, Any]) -> WatcherConfig:
    """Validate `values` (None means "use the default") into a WatcherConfig."""
    try:
        return WatcherConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message}" if field else message)
        message = "invalid preemption watcher config: " + "; ".join(problems)
        raise WatcherConfigError(message) from None
