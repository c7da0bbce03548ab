"""SamplingParams: how one request picks its tokens, validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range; the message names the field and the allowed range."""


MAX_LOGPROBS = 20


@dataclass(slots=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI names where one exists)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy: exact argmax
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF semantics: >1 discourages tokens seen in prompt or output
    presence_penalty: float = 0.0  # OpenAI semantics: on tokens seen in the output
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives to return per token (0..20)

    def __post_init__(self) -> None:
        _check(self.max_tokens >= 1, "max_tokens", ">= 1", self.max_tokens)
        _check(0.0 <= self.temperature <= 100.0, "temperature", "in [0, 100]", self.temperature)
        _check(0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]", self.top_p)
        if self.top_k == -1:
            self.top_k = 0
        _check(self.top_k >= 0, "top_k", ">= 0 (0 or -1 disables it)", self.top_k)
        _check(0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]", self.min_p)
        _check(
            0.0 < self.repetition_penalty <= 10.0,
            "repetition_penalty",
            "in (0, 10]",
            self.repetition_penalty,
        )
        _check(
            -2.0 <= self.presence_penalty <= 2.0,
            "presence_penalty",
            "in [-2, 2]",
            self.presence_penalty,
        )
        _check(
            -2.0 <= self.frequency_penalty <= 2.0,
            "frequency_penalty",
            "in [-2, 2]",
            self.frequency_penalty,
        )
        if self.seed is not None:
            _check(0 <= self.seed < 2**63, "seed", "in [0, 2**63)", self.seed)
        _check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "a list of non-negative ints",
            self.stop_token_ids,
        )
        _check(
            0 <= self.min_tokens <= self.max_tokens,
            "min_tokens",
            "in [0, max_tokens]",
            self.min_tokens,
        )
        if self.logprobs is not None:
            _check(
                0 <= self.logprobs <= MAX_LOGPROBS,
                "logprobs",
                f"in [0, {MAX_LOGPROBS}]",
                self.logprobs,
            )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


def _check(ok: bool, field_name: str, allowed: str, value: object) -> None:
    if not ok:
        raise SamplingParamsError(f"{field_name} must be {allowed}, got {value!r}")
