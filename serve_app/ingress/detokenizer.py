"""Incremental detokenization: turn a growing list of token ids into text deltas.

A token can end in the middle of a UTF-8 character (byte-level tokenizers split them), so
a delta whose text ends in U+FFFD is held back until the next token completes it. The
concatenated deltas equal `tokenizer.decode(all_ids, skip_special_tokens=True)`.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        # token_ids[prefix_offset:read_offset] is already emitted text that ends on a
        # character boundary; decoding from prefix_offset gives the next delta context.
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, new_token_ids: list[int]) -> str:
        """Append tokens; return the newly complete text (possibly empty)."""
        self.token_ids.extend(new_token_ids)
        return self._delta(final=False)

    def flush(self) -> str:
        """At the end of the stream: return whatever is held back, complete or not."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        decode = self.tokenizer.decode
        emitted = decode(
            self.token_ids[self.prefix_offset : self.read_offset], skip_special_tokens=True
        )
        full = decode(self.token_ids[self.prefix_offset :], skip_special_tokens=True)
        if not final and full.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete character: wait for the token that completes it
        delta = full[len(emitted) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return delta
