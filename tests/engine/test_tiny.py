"""The embedded presets build offline, deterministically, into a loadable HF directory."""

from __future__ import annotations

import json

from serve_app.engine.tiny import BOS_ID, EOS_ID, build_preset


def test_tiny_preset_is_deterministic_and_complete(tmp_path) -> None:
    from transformers import AutoTokenizer

    first = build_preset("tiny", root=tmp_path / "a")
    second = build_preset("tiny", root=tmp_path / "b")
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (first / name).is_file()
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert json.loads((first / "generation_config.json").read_text())["eos_token_id"] == EOS_ID

    tokenizer = AutoTokenizer.from_pretrained(first)
    text = "héllo, wörld 你好"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == list(text.encode("utf-8"))  # one token per UTF-8 byte
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<|begin_of_text|>") == BOS_ID
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|user|>hi<|end_of_text|><|assistant|>"
