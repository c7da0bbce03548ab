"""Scheduler: token budget, decodes first, FCFS admission, newest-first preemption."""

from __future__ import annotations

from serve_app.engine.block_manager import BlockManager
from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.scheduler import Scheduler, SchedulerLimits
from serve_app.engine.sequence import Sequence, SequenceStatus


def make_scheduler(num_blocks: int, budget: int, max_seqs: int = 8) -> Scheduler:
    manager = BlockManager(num_blocks, block_size=4, enable_prefix_caching=False)
    return Scheduler(SchedulerLimits(max_seqs, budget, enable_chunked_prefill=True), manager)


def finish_step(chunks) -> None:
    """What the engine does after a forward: mark computed, append a token if sampled."""
    for chunk in chunks:
        samples = chunk.samples_token
        chunk.seq.num_computed_tokens += chunk.num_new_tokens
        if samples:
            chunk.seq.output_token_ids.append(7)


def test_budget_chunks_long_prompts_and_puts_decodes_first() -> None:
    scheduler = make_scheduler(num_blocks=64, budget=10)
    short = Sequence("short", [1] * 3, SamplingParams(), 0)
    long = Sequence("long", [1] * 30, SamplingParams(), 1)
    scheduler.add(short)
    scheduler.add(long)
    first = scheduler.schedule()
    assert [(c.seq.request_id, c.num_new_tokens) for c in first] == [("short", 3), ("long", 7)]
    assert first[0].samples_token and not first[1].samples_token
    finish_step(first)
    second = scheduler.schedule()
    # The decode of `short` comes first, then the next 9-token chunk of `long`.
    assert [(c.seq.request_id, c.num_new_tokens) for c in second] == [("short", 1), ("long", 9)]
    assert sum(c.num_new_tokens for c in second) <= 10


def test_max_num_seqs_limits_admission() -> None:
    scheduler = make_scheduler(num_blocks=64, budget=100, max_seqs=2)
    for index in range(3):
        scheduler.add(Sequence(f"r{index}", [1, 2], SamplingParams(), index))
    chunks = scheduler.schedule()
    assert [c.seq.request_id for c in chunks] == ["r0", "r1"]
    assert [s.request_id for s in scheduler.waiting] == ["r2"]


def test_out_of_blocks_preempts_the_newest_and_requeues_it_first() -> None:
    scheduler = make_scheduler(num_blocks=4, budget=100)
    old = Sequence("old", [1] * 4, SamplingParams(), 0)
    new = Sequence("new", [1] * 8, SamplingParams(), 1)
    scheduler.add(old)
    scheduler.add(new)
    finish_step(scheduler.schedule())  # old: 1 block, new: 2 blocks; 1 block left
    finish_step(scheduler.schedule())  # decodes need a block each: only one left
    assert new.status is SequenceStatus.WAITING and new.num_preemptions == 1
    assert new.num_computed_tokens == 0 and new.block_table == []
    assert scheduler.waiting[0] is new
    assert old.status is SequenceStatus.RUNNING and scheduler.num_preemptions == 1
