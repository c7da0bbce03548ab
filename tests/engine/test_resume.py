"""A request resumed with the tokens it already generated (a failover) continues exactly as
it would have: the same greedy and seeded tokens, penalties and min_tokens counted over
the whole output, running counts that continue, and logprobs for the new tokens only."""

from __future__ import annotations

import pytest

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.sampling_params import SamplingParams

PROMPT = [7, 21, 3, 99, 14, 2]


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return LLMEngine(EngineConfig(model="tiny", kv_cache_memory_bytes=2**20, max_num_seqs=4))


def run(engine: LLMEngine, params: SamplingParams, resumed: list[int] | None = None):
    engine.add_request(PROMPT, params, "r", output_token_ids=resumed)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    return outputs


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, logprobs=1),
        SamplingParams(
            max_tokens=20,
            temperature=1.0,
            top_p=0.9,
            seed=5,
            frequency_penalty=1.5,
            repetition_penalty=1.3,
            ignore_eos=True,
        ),
    ],
    ids=["greedy", "seeded-with-penalties"],
)
def test_a_resumed_request_continues_with_the_same_tokens(engine, params):
    whole = [t for output in run(engine, params) for t in output.new_token_ids]
    assert len(whole) == 20
    resumed_outputs = run(engine, params, whole[:7])
    assert [t for output in resumed_outputs for t in output.new_token_ids] == whole[7:]
    assert [output.num_output_tokens for output in resumed_outputs] == list(range(8, 21))
    assert resumed_outputs[-1].finish_reason == "length"
    assert all(output.num_prompt_tokens == len(PROMPT) for output in resumed_outputs)
    if params.logprobs is not None:
        logprobs = [lp for output in resumed_outputs for lp in output.new_logprobs]
        assert [lp.token_id for lp in logprobs] == whole[7:]


def test_a_resume_with_nothing_left_to_generate_is_refused(engine):
    with pytest.raises(RequestError, match="leaves none to generate"):
        engine.add_request(PROMPT, SamplingParams(max_tokens=3), "r", output_token_ids=[1, 2, 3])
