"""Bad engine config, sampling values and requests fail with messages that name the field."""

from __future__ import annotations

import pytest

from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.models.architecture import ModelArchitecture, UnsupportedModelError
from serve_app.engine.sampling_params import SamplingParams, SamplingParamsError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", 1.5),
        ("max_tokens", 0),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -3.0),
        ("logprobs", 21),
        ("seed", -1),
    ],
)
def test_sampling_params_name_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(SamplingParamsError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", "float64"),
        ("device", "tpu"),
        ("block_size", 12),
        ("max_num_seqs", 0),
        ("attention_backend", "flash"),
        ("kv_cache_memory_fraction", 1.5),
        ("tensor_parallel_size", 0),
        ("max_model_len", 1),
    ],
)
def test_engine_config_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        EngineConfig(**{field: value})


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        EngineConfig.from_dict({"max_batch": 3})


def test_unsupported_architecture_is_named() -> None:
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        ModelArchitecture.from_hf_config({"architectures": ["GPT2LMHeadModel"]})


def test_missing_model_directory_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        LLMEngine(EngineConfig(model=str(tmp_path)))


def test_kv_budget_too_small_for_one_sequence() -> None:
    with pytest.raises(ConfigError, match="kv_cache_memory_bytes"):
        LLMEngine(EngineConfig(model="tiny", kv_cache_memory_bytes=1024, max_model_len=512))


@pytest.fixture(scope="module")
def tiny_engine() -> LLMEngine:
    return LLMEngine(EngineConfig(model="tiny", kv_cache_memory_bytes=16 << 20, max_model_len=64))


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "empty prompt"), ([1] * 64, "max_model_len"), ([1, 100_000], r"\[0, 512\)")],
)
def test_bad_requests_are_rejected_and_the_engine_keeps_working(tiny_engine, prompt, message):
    with pytest.raises(RequestError, match=message):
        tiny_engine.add_request(prompt, SamplingParams())
    [tokens] = tiny_engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(tokens) == 4


def test_max_model_len_ends_generation_with_length(tiny_engine) -> None:
    tiny_engine.add_request([1] * 60, SamplingParams(max_tokens=50, ignore_eos=True), "edge")
    outputs = []
    while tiny_engine.has_unfinished_requests():
        outputs += [o for o in tiny_engine.step() if o.request_id == "edge"]
    assert outputs[-1].finish_reason == "length" and outputs[-1].num_output_tokens == 4
