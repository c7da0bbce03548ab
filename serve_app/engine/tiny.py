"""The embedded default models, built offline from a fixed seed on first use.

`tiny` (a few hundred thousand parameters) is what the dev box serves; `bench` (about 56M
parameters) is for benchmarks. Both are Llama-architecture HuggingFace directories with
random weights and a byte-level tokenizer (every UTF-8 byte is a token), so the engine
loads them exactly as it loads a real checkpoint. Output text is noise: they exist to
exercise the serving path, not to be read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
    },
    "bench": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
}
PRESET_VERSION = 1
SEED = 1234
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|system|>", "<|user|>", "<|assistant|>"]
BOS_ID, EOS_ID = 256, 257
# Each message is `<|role|>content<|end_of_text|>`; generation starts after `<|assistant|>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "<|end_of_text|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_preset(name: str, root: Path) -> Path:
    """Builds preset `name` under `root` once (model_path.py passes the cache root)."""
    target = root / "models" / f"{name}-v{PRESET_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _write_model(staging, PRESETS[name])
        _write_tokenizer(staging)
        try:
            staging.rename(target)  # atomic: concurrent builders never see a half directory
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_model(directory: Path, dims: dict[str, int]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **dims,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}, indent=2)
    )


def _write_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: index for index, ch in enumerate(byte_chars)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": SPECIAL_TOKENS[0],
                "eos_token": SPECIAL_TOKENS[1],
                "add_bos_token": False,
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": 2048,
            },
            indent=2,
        )
    )


def _byte_of(char: str) -> int:
    """Inverse of the GPT-2 byte-to-unicode map: which byte a ByteLevel character stands for."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    code = ord(char)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]
