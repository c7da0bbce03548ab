"""EngineStats' running totals (what the replica exports as counters): steps, step time,
tokens and sequences per step, prefix-cache lookups and hits."""

from __future__ import annotations

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampling_params import SamplingParams


def test_running_totals_count_every_step_and_prefix_lookup():
    engine = LLMEngine(EngineConfig(model="tiny", max_model_len=128, block_size=16))
    try:
        prompt = list(range(3, 3 + 40))  # two full blocks plus a partial one
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        assert engine.stats().steps.num_steps == 0
        engine.generate([prompt], params)
        first = engine.stats()
        # One prefill step then one decode step per further token.
        assert first.steps.num_steps == 4
        assert first.steps.num_scheduled_tokens == len(prompt) + 3
        assert first.steps.num_scheduled_seqs == 4
        assert first.steps.step_time_s > 0
        assert (first.prefix_cache_query_tokens, first.prefix_cache_hit_tokens) == (40, 0)

        engine.generate([prompt], params)  # the same prompt again: its full blocks hit
        second = engine.stats()
        assert second.prefix_cache_query_tokens == 80
        assert second.prefix_cache_hit_tokens == 32
        assert second.steps.num_steps > first.steps.num_steps
    finally:
        engine.shutdown()
