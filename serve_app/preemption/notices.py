"""Where a preemption notice comes from: AWS IMDSv2, GCP metadata, or a local file.

Each source's `poll()` answers None (no notice) or a `PreemptionNotice` with the time the
machine goes away; it raises `NoticeSourceError` when it cannot tell (the endpoint is down or
answers nonsense), so the watcher counts that apart from "no notice".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import httpx

from serve_app.preemption.config import WatcherConfig

AWS_TOKEN_PATH = "/latest/api/token"
AWS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
AWS_NOTICE_PATH = "/latest/meta-data/spot/instance-action"
AWS_TOKEN_REFRESH_MARGIN_S = 60.0  # renew a token this long before IMDS expires it
GCP_NOTICE_PATH = "/computeMetadata/v1/instance/preempted"
GCP_HEADERS = {"Metadata-Flavor": "Google"}

Clock = Callable[[], float]  # seconds since the epoch (time.time)


class NoticeSourceError(RuntimeError):
    """The notice source could not be read; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PreemptionNotice:
    terminates_at: float  # seconds since the epoch
    action: str  # what the provider will do: terminate, stop, hibernate, preempt
    source: str  # provider name, for logs


class NoticeSource(Protocol):
    name: str

    def poll(self) -> PreemptionNotice | None: ...


class AwsSpotNotices:
    """IMDSv2: a session token from PUT /latest/api/token, then GET spot/instance-action.

    404 means no notice; 200 carries `{"action": ..., "time": "2026-12-01T22:00:00Z"}`.
    The token is reused until shortly before its TTL ends, and renewed at once when IMDS
    answers 401 (a token it no longer accepts).
    """

    name = "aws"

    def __init__(self, config: WatcherConfig, http: httpx.Client, clock: Clock = time.time):
        self._base_url = config.effective_metadata_url
        self._ttl_s = config.aws_token_ttl_s
        self._http = http
        self._clock = clock
        self._token: str | None = None
        self._token_expires_at = 0.0

    def poll(self) -> PreemptionNotice | None:
        response = self._get_notice(self._session_token())
        if response.status_code == 401:  # IMDS restarted or the token expired early
            self._token = None
            response = self._get_notice(self._session_token())
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise NoticeSourceError(f"aws: {AWS_NOTICE_PATH} answered {response.status_code}")
        try:
            body = response.json()
            terminates_at = datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
            return PreemptionNotice(terminates_at.timestamp(), str(body["action"]), self.name)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise NoticeSourceError(f"aws: unreadable notice {response.text!r}: {error}") from None

    def _session_token(self) -> str:
        now = self._clock()
        if self._token is None or now >= self._token_expires_at - AWS_TOKEN_REFRESH_MARGIN_S:
            response = self._request(
                "PUT", AWS_TOKEN_PATH, headers={AWS_TOKEN_TTL_HEADER: str(self._ttl_s)}
            )
            if response.status_code != 200 or not response.text:
                raise NoticeSourceError(
                    f"aws: {AWS_TOKEN_PATH} answered {response.status_code}, not a token"
                )
            self._token, self._token_expires_at = response.text.strip(), now + self._ttl_s
        return self._token

    def _get_notice(self, token: str) -> httpx.Response:
        return self._request("GET", AWS_NOTICE_PATH, headers={AWS_TOKEN_HEADER: token})

    def _request(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        return _request(self._http, self.name, method, self._base_url + path, headers)


class GcpPreemptionNotices:
    """GCE metadata `instance/preempted`: TRUE once the VM is being preempted (~30 s left)."""

    name = "gcp"

    def __init__(self, config: WatcherConfig, http: httpx.Client, clock: Clock = time.time):
        self._url = config.effective_metadata_url + GCP_NOTICE_PATH
        self._notice_s = config.effective_notice_s
        self._http = http
        self._clock = clock

    def poll(self) -> PreemptionNotice | None:
        response = _request(self._http, self.name, "GET", self._url, GCP_HEADERS)
        answer = response.text.strip().upper()
        if response.status_code != 200 or answer not in ("TRUE", "FALSE"):
            raise NoticeSourceError(
                f"gcp: {GCP_NOTICE_PATH} answered {response.status_code} {response.text!r}"
            )
        if answer == "FALSE":
            return None
        return PreemptionNotice(self._clock() + self._notice_s, "preempt", self.name)


class FileTrigger:
    """A notice once `trigger_file` exists: for tests, bare metal and operators' scripts.

    An empty file means `notice_s` seconds from now; a file holding a number means that many.
    """

    name = "file"

    def __init__(self, config: WatcherConfig, clock: Clock = time.time):
        assert config.trigger_file is not None, "the config validator requires it"
        self._path: Path = config.trigger_file
        self._notice_s = config.effective_notice_s
        self._clock = clock

    def poll(self) -> PreemptionNotice | None:
        try:
            content = self._path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise NoticeSourceError(f"file: cannot read {self._path}: {error}") from None
        try:
            notice_s = float(content) if content else self._notice_s
        except ValueError:
            raise NoticeSourceError(
                f"file: {self._path} must be empty or hold seconds of notice, got {content!r}"
            ) from None
        return PreemptionNotice(self._clock() + notice_s, "terminate", self.name)


def notice_source(
    config: WatcherConfig, http: httpx.Client, clock: Clock = time.time
) -> NoticeSource:
    """The NoticeSource for `config.provider`."""
    if config.provider == "aws":
        return AwsSpotNotices(config, http, clock)
    if config.provider == "gcp":
        return GcpPreemptionNotices(config, http, clock)
    return FileTrigger(config, clock)


def _request(
    http: httpx.Client, source: str, method: str, url: str, headers: dict[str, str]
) -> httpx.Response:
    try:
        return http.request(method, url, headers=headers)
    except httpx.HTTPError as error:
        raise NoticeSourceError(f"{source}: {method} {url} failed: {error!r}") from None
