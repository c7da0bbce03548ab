"""Sampler: truncation never leaks, seeded draws ignore neighbours, penalties as specified."""

from __future__ import annotations

import math

import pytest
import torch

from serve_app.engine.sampler import Sampler, SamplingRow, apply_penalties
from serve_app.engine.sampling_params import SamplingParams

VOCAB = 50
DRAWS = 400


def row(params: SamplingParams, prompt=(1,), output=(), stop=()) -> SamplingRow:
    return SamplingRow(params, list(prompt), list(output), list(stop))


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)) * 0.7


def draw_many(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    sampler = Sampler(seed=1, device=torch.device("cpu"))
    batch = logits.expand(DRAWS, VOCAB)
    tokens, _ = sampler.sample(batch, [row(params) for _ in range(DRAWS)])
    return set(tokens)


def test_top_k_never_leaves_the_k_best(logits) -> None:
    allowed = set(logits.topk(5).indices.tolist())
    seen = draw_many(logits, SamplingParams(temperature=1.5, top_k=5))
    assert seen <= allowed and len(seen) > 1


def test_top_p_never_leaves_the_nucleus(logits) -> None:
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(descending=True)
    mass_before = sorted_probs.cumsum(0) - sorted_probs
    allowed = set(order[mass_before < 0.6].tolist())
    seen = draw_many(logits, SamplingParams(temperature=1.0, top_p=0.6))
    assert seen <= allowed and len(seen) > 1


def test_min_p_never_goes_below_the_floor(logits) -> None:
    probs = torch.softmax(logits, -1)
    allowed = set(torch.nonzero(probs >= 0.2 * probs.max()).flatten().tolist())
    seen = draw_many(logits, SamplingParams(temperature=1.0, min_p=0.2))
    assert seen <= allowed and len(seen) > 1


def test_greedy_is_exact_argmax(logits) -> None:
    assert draw_many(logits, SamplingParams(temperature=0.0)) == {int(logits.argmax())}


def test_seeded_draws_do_not_depend_on_neighbours(logits) -> None:
    seeded = SamplingParams(temperature=1.0, seed=42)
    alone, _ = Sampler(0, torch.device("cpu")).sample(logits[None], [row(seeded)])
    neighbours = torch.randn(6, VOCAB)
    batch = torch.cat([neighbours[:3], logits[None], neighbours[3:]])
    rows = (
        [row(SamplingParams(temperature=1.0))] * 3
        + [row(seeded)]
        + [row(SamplingParams(temperature=0.7, seed=s)) for s in range(3)]
    )
    mixed, _ = Sampler(99, torch.device("cpu")).sample(batch, rows)
    assert mixed[3] == alone[0]


def test_seeded_draws_differ_across_positions(logits) -> None:
    flat = torch.zeros(VOCAB)  # uniform: only the noise decides
    params = SamplingParams(temperature=1.0, seed=5)
    tokens = [
        Sampler(0, torch.device("cpu")).sample(flat[None], [row(params, output=[3] * n)])[0][0]
        for n in range(8)
    ]
    assert len(set(tokens)) > 1


def test_repetition_penalty_follows_hf_semantics() -> None:
    values = torch.tensor([2.0, -2.0, 2.0, -2.0])
    apply_penalties(values, row(SamplingParams(repetition_penalty=2.0), prompt=[0], output=[1]))
    assert values.tolist() == [1.0, -4.0, 2.0, -2.0]


def test_presence_and_frequency_penalties_follow_openai_semantics() -> None:
    values = torch.zeros(4)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    apply_penalties(values, row(params, prompt=[3], output=[1, 1, 2]))
    # token 1 twice: 0.5 + 2 * 0.25; token 2 once: 0.5 + 0.25; prompt-only token 3 untouched
    assert values.tolist() == [0.0, -1.0, -0.75, 0.0]


def test_min_tokens_masks_stop_tokens_until_reached() -> None:
    logits = torch.full((1, VOCAB), -5.0)
    logits[0, 2] = 10.0  # eos is the clear argmax
    params = SamplingParams(temperature=0.0, min_tokens=2)
    sampler = Sampler(0, torch.device("cpu"))
    early, _ = sampler.sample(logits, [row(params, output=[7], stop=[2])])
    late, _ = sampler.sample(logits, [row(params, output=[7, 7], stop=[2])])
    assert early[0] != 2 and late[0] == 2


def test_logprobs_are_the_model_log_probabilities(logits) -> None:
    params = SamplingParams(temperature=0.0, logprobs=3)
    tokens, logprobs = Sampler(0, torch.device("cpu")).sample(logits[None], [row(params)])
    expected = torch.log_softmax(logits, -1)
    assert logprobs[0].token_id == tokens[0]
    assert math.isclose(logprobs[0].logprob, float(expected[tokens[0]]), rel_tol=1e-6)
    assert list(logprobs[0].top) == expected.topk(3).indices.tolist()
