"""Request logs: one structured JSON line per finished request, and the RequestTrace the
ingress fills in as the request runs (its metrics are recorded from the same trace).

A line holds ids, route, model, status, error code, token counts, timings and, when the
client sent an idempotency key, a short salted digest of it (serve_app/log_digest.py: the
attempts of one call share it; the key itself is never logged); never a header or an API
key. Prompt and output text are left out unless `request_log.include_text` is on, and then
pass through the Redactor (serve_app/redaction.py) first; a prompt given as token ids is
logged as their count only (ids decode straight back to the text redaction would mask).
Lines go to the ingress's stderr, or to `request_log.file` (a relative path: in Ray's log
directory; `make run`'s configs put them there, so a terminal shows warnings and errors,
not a line per request).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve_app.config import RequestLogSettings
from serve_app.log_digest import digest
from serve_app.redaction import Redactor, without_token_ids

if TYPE_CHECKING:
    from serve_app.ingress.text_stream import TextDelta

LOGGER_NAME = "serve_app.requests"
IDEMPOTENCY_KEY_HEADER = "idempotency-key"  # HTTP header, or gRPC metadata key
DISCONNECTED_STATUS = 499  # nginx's "client closed request": the caller left mid-request
DISCONNECTED_CODE = "client_disconnected"


@dataclass
class RequestTrace:
    """What the ingress knows of one request, from arrival to its last byte."""

    route: str
    model: str
    request_id: str = ""  # Serve's X-Request-ID (also on the response)
    idempotency_key_digest: str | None = None  # never the key (serve_app/log_digest.py)
    keep_text: bool = False  # collect prompt and output text (only when they are logged)
    started_s: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    response_id: str | None = None
    prompt_tokens: int = 0
    prompt_text: str | None = None
    status: int = 200
    error_code: str | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    ended_s: float | None = None
    token_gaps_s: list[float] = field(default_factory=list)
    finish_reasons: dict[int, str] = field(default_factory=dict)  # by choice index
    _output_tokens: dict[int, int] = field(default_factory=dict)
    _last_output_s: dict[int, float] = field(default_factory=dict)
    _output_text: dict[int, list[str]] = field(default_factory=dict)

    def set_prompt(self, prompt: Any) -> None:
        """The request's prompt (text, token ids, or chat messages), kept if text is logged;
        token ids as their count only."""
        if self.keep_text:
            prompt = without_token_ids(prompt)
            as_text = json.dumps(prompt, default=lambda model: model.model_dump(exclude_none=True))
            self.prompt_text = prompt if isinstance(prompt, str) else as_text

    def on_delta(self, delta: TextDelta) -> None:
        now = time.perf_counter()
        if delta.token_ids:
            if self.first_token_s is None:
                self.first_token_s = now
            previous = self._last_output_s.get(delta.index)
            if previous is not None:
                self.token_gaps_s.append(now - previous)
            self._last_output_s[delta.index] = self.last_token_s = now
        self._output_tokens[delta.index] = delta.num_output_tokens
        if delta.finish_reason:
            self.finish_reasons[delta.index] = delta.finish_reason
        if self.keep_text:
            self._output_text.setdefault(delta.index, []).append(delta.text)

    async def watch(self, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[TextDelta]:
        """`deltas`, each one noted on its way through (closing this closes `deltas`)."""
        try:
            async for delta in deltas:
                self.on_delta(delta)
                yield delta
        finally:
            await deltas.aclose()

    def finish(self, status: int, error_code: str | None = None) -> None:
        self.status, self.error_code = status, error_code
        self.ended_s = time.perf_counter()

    def disconnected(self) -> None:
        self.finish(DISCONNECTED_STATUS, DISCONNECTED_CODE)

    @property
    def output_tokens(self) -> int:
        return sum(self._output_tokens.values())

    @property
    def output_text(self) -> list[str]:
        return ["".join(self._output_text[index]) for index in sorted(self._output_text)]

    @property
    def e2e_s(self) -> float:
        return (self.ended_s or time.perf_counter()) - self.started_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.started_s

    @property
    def tpot_s(self) -> float | None:
        """Seconds per token after the first: (last - first token time) / (tokens - 1).
        None when all tokens arrived at once: there is no decode interval to divide."""
        if self.first_token_s is None or self.last_token_s is None or self.output_tokens < 2:
            return None
        if self.last_token_s == self.first_token_s:
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)


class RequestLog:
    """Writes one JSON line per finished request to the `serve_app.requests` logger."""

    def __init__(
        self,
        settings: RequestLogSettings,
        secrets: Iterable[str] = (),
        *,
        salt: bytes,  # of the idempotency keys' digests (an ingress: `cluster_salt()`)
    ) -> None:
        self.settings = settings
        self.redactor = Redactor.with_secrets(secrets)
        self._salt = salt
        # Its own logger (not from logging's registry): its handler is this log's alone,
        # and lines do not pass through the root logger's handlers a second time.
        self.logger = logging.Logger(LOGGER_NAME, logging.INFO)
        if settings.enabled:
            handler = (
                logging.FileHandler(log_file(settings.file), encoding="utf-8")
                if settings.file is not None
                else logging.StreamHandler(sys.stderr)
            )
            self.logger.addHandler(handler)

    def trace(self, route: str, model: str, metadata: Mapping[str, str]) -> RequestTrace:
        """A trace starting now; `metadata`: the HTTP headers or gRPC invocation metadata."""
        idempotency_key = metadata.get(IDEMPOTENCY_KEY_HEADER)
        return RequestTrace(
            route,
            model,
            request_id=serve_request_id(),
            idempotency_key_digest=(
                None if idempotency_key is None else digest(idempotency_key, self._salt)
            ),
            keep_text=self.settings.enabled and self.settings.include_text,
        )

    def emit(self, trace: RequestTrace) -> None:
        if self.settings.enabled:
            self.logger.info(self.line(trace))

    def line(self, trace: RequestTrace) -> str:
        record = {
            "time": datetime.fromtimestamp(trace.started_at, UTC).isoformat(),
            "request_id": trace.request_id,
            "response_id": trace.response_id,
            "idempotency_key_digest": trace.idempotency_key_digest,
            "route": trace.route,
            "model": trace.model,
            "status": trace.status,
            "error_code": trace.error_code,
            "prompt_tokens": trace.prompt_tokens,
            "output_tokens": trace.output_tokens,
            "finish_reasons": [trace.finish_reasons[i] for i in sorted(trace.finish_reasons)],
            "ttft_s": _rounded(trace.ttft_s),
            "tpot_s": _rounded(trace.tpot_s),
            "e2e_s": _rounded(trace.e2e_s),
        }
        if trace.keep_text:
            record["prompt"] = None if trace.prompt_text is None else self._text(trace.prompt_text)
            record["output"] = [self._text(text) for text in trace.output_text]
        return json.dumps(record, ensure_ascii=False)

    def _text(self, text: str) -> str:
        # Redact before cutting, so a secret across the cut cannot leave a readable half.
        return self.redactor.redact(text)[: self.settings.max_text_chars]


def log_file(file: Path) -> Path:
    """Where `request_log.file` is: a relative path lies in the Ray session's log directory
    of this node (`<Ray temp dir>/session_<...>/logs`, beside Serve's `serve/` logs), so a
    Serve config can send lines to Ray's log directory without knowing where that is;
    outside Ray, relative to the working directory."""
    import ray

    if not file.is_absolute() and ray.is_initialized():
        context = ray.get_runtime_context()
        file = Path(context.get_temp_dir()) / context.get_session_name() / "logs" / file
    file.parent.mkdir(parents=True, exist_ok=True)
    return file


def serve_request_id() -> str:
    """The id Serve's proxy gave this request (its X-Request-ID); "" outside a request."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)
