"""The engine against transformers: greedy tokens and logits on every supported architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampler import Sampler
from serve_app.engine.sampling_params import SamplingParams
from tests.engine.checkpoints import VARIANTS, build_checkpoint

NEW_TOKENS = 32
PROMPT_LENGTHS = [1, 7, 16, 33, 70]


class RecordingSampler(Sampler):
    """Keeps every logits row it sees, keyed by (prompt, tokens generated so far)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        super().__init__(seed, device)
        self.seen: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def sample(self, logits, rows):
        for row_logits, row in zip(logits, rows, strict=True):
            key = (tuple(row.prompt_token_ids), len(row.output_token_ids))
            self.seen[key] = row_logits.clone()
        return super().sample(logits, rows)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)).item()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    directory = tmp_path_factory.mktemp(request.param)
    return request.param, build_checkpoint(request.param, directory)


def test_greedy_tokens_and_logits_match_transformers(checkpoint) -> None:
    from transformers import AutoModelForCausalLM

    name, directory = checkpoint
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 256, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]

    engine = LLMEngine(
        EngineConfig(model=str(directory), kv_cache_memory_bytes=8 << 20, max_model_len=256)
    )
    recorder = RecordingSampler(0, torch.device("cpu"))
    engine.sampler = recorder
    ours = engine.generate(
        prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    )

    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    reference.generation_config.eos_token_id = None
    for prompt, our_tokens in zip(prompts, ours, strict=True):
        with torch.no_grad():
            generated = reference.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            )[0, len(prompt) :].tolist()
        assert our_tokens == generated, f"{name}: prompt of {len(prompt)} tokens diverged"
        full = torch.tensor([prompt + our_tokens])
        with torch.no_grad():
            reference_logits = reference(full).logits[0]  # (tokens, vocab)
        for step in (0, 1, NEW_TOKENS // 2, NEW_TOKENS - 1):  # prefill, then decode steps
            ours_row = recorder.seen[(tuple(prompt), step)]
            expected = reference_logits[len(prompt) + step - 1]
            assert relative_error(ours_row, expected) < 1e-4, (name, len(prompt), step)
