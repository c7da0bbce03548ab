"""Incremental detokenization equals a full decode, token by token, for the byte-level `tiny`
tokenizer, including characters split across tokens and invalid byte sequences."""

from __future__ import annotations

import random

import pytest

from serve_app.engine.tiny import BOS_ID, EOS_ID
from serve_app.ingress.detokenizer import IncrementalDetokenizer


def stream_text(tokenizer, token_ids: list[int]) -> tuple[str, list[str]]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add([token_id]) for token_id in token_ids]
    deltas.append(detokenizer.flush())
    return "".join(deltas), deltas


def test_multibyte_characters_are_emitted_whole(tokenizer):
    token_ids = tokenizer.encode("aé€😀b", add_special_tokens=False)
    assert len(token_ids) == 1 + 2 + 3 + 4 + 1  # one token per UTF-8 byte
    text, deltas = stream_text(tokenizer, token_ids)
    assert text == "aé€😀b"
    assert "\ufffd" not in "".join(deltas)
    assert [d for d in deltas if d] == ["a", "é", "€", "😀", "b"]


def test_special_tokens_are_skipped(tokenizer):
    token_ids = [BOS_ID, *tokenizer.encode("hi", add_special_tokens=False), EOS_ID]
    assert stream_text(tokenizer, token_ids)[0] == "hi"


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_match_full_decode(tokenizer, seed):
    rng = random.Random(seed)
    token_ids = [rng.choice([*range(256), EOS_ID]) for _ in range(200)]
    text, _ = stream_text(tokenizer, token_ids)
    assert text == tokenizer.decode(token_ids, skip_special_tokens=True)


def test_truncated_character_is_flushed_at_the_end(tokenizer):
    token_ids = tokenizer.encode("ok€", add_special_tokens=False)[:-1]  # drop the last byte
    text, deltas = stream_text(tokenizer, token_ids)
    assert deltas[-1] == "\ufffd"
    assert text == tokenizer.decode(token_ids)
