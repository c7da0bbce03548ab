"""Redaction of text before it reaches a request log: what looks like a secret or personal
data is replaced by a bracketed tag, so a logged prompt stays readable but carries none.

Rules, in order: the app's own API keys (exact strings), bearer tokens, API-key shaped
strings (`sk-...`, `key-...`, long mixed letter-and-digit tokens), e-mail addresses, and
runs of 8 or more digits, also inside a word (card, phone and account numbers, IBANs),
spaces or dashes between them allowed. A prompt given as token ids is logged as their count
only (`without_token_ids`): ids decode straight back to the text these rules would mask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

API_KEY_TAG = "[API_KEY]"
EMAIL_TAG = "[EMAIL]"
DIGITS_TAG = "[DIGITS]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bbearer\s+\S+"), "Bearer " + API_KEY_TAG),
    (re.compile(r"\b(?:sk|pk|rk|key|api|token)[-_][A-Za-z0-9_-]{12,}"), API_KEY_TAG),
    # 24+ characters mixing letters and digits: how generated keys and tokens look.
    (re.compile(r"\b(?=[A-Za-z_-]*\d)(?=[\d_-]*[A-Za-z])[A-Za-z0-9_-]{24,}\b"), API_KEY_TAG),
    (re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"), EMAIL_TAG),
    (re.compile(r"(?<!\d)\d(?:[ -]?\d){7,}(?!\d)"), DIGITS_TAG),
)


@dataclass(frozen=True)
class Redactor:
    """Replaces secrets in text; `known_secrets` (the configured API keys) always go."""

    known_secrets: tuple[str, ...] = ()

    @classmethod
    def with_secrets(cls, secrets: Iterable[str]) -> Redactor:
        # Longest first, so a key that contains another is replaced whole.
        return cls(tuple(sorted({s for s in secrets if s}, key=len, reverse=True)))

    def redact(self, text: str) -> str:
        for secret in self.known_secrets:
            text = text.replace(secret, API_KEY_TAG)
        for pattern, tag in _PATTERNS:
            text = pattern.sub(tag, text)
        return text


def token_ids_tag(count: int) -> str:
    return f"[{count} TOKEN IDS]"


def without_token_ids(prompt: Any) -> Any:
    """`prompt` (OpenAI's four forms, or chat messages) with each list of token ids replaced
    by the tag of its count; text and messages stay, for `Redactor.redact`."""
    if isinstance(prompt, list):
        if prompt and all(isinstance(item, int) for item in prompt):
            return token_ids_tag(len(prompt))
        return [without_token_ids(item) for item in prompt]
    return prompt
