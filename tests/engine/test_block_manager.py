"""BlockManager: ref counts, prefix hits on chained hashes, LRU reuse of freed blocks."""

from __future__ import annotations

from serve_app.engine.block_manager import BlockManager
from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.sequence import Sequence

BLOCK = 4


def make_seq(tokens: list[int], index: int = 0) -> Sequence:
    return Sequence(f"r{index}", tokens, SamplingParams(), index)


def admit_and_compute(manager: BlockManager, seq: Sequence) -> None:
    hits = manager.find_prefix_hits(seq)
    assert manager.can_admit(hits, seq.num_tokens)
    manager.admit(seq, hits, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    manager.register_full_blocks(seq)


def test_shared_prefix_is_reused_and_ref_counted() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    first = make_seq(list(range(10)), 0)  # 2 full blocks + 2 tokens
    admit_and_compute(manager, first)
    assert manager.num_used_blocks == 3

    second = make_seq([*range(8), 99, 98, 97], 1)
    hits = manager.find_prefix_hits(second)
    assert [hit.block_id for hit in hits] == first.block_table[:2]
    manager.admit(second, hits, second.num_tokens)
    assert second.num_computed_tokens == 8
    assert manager.blocks[first.block_table[0]].ref_count == 2
    assert manager.num_used_blocks == 4  # 3 + one new block for the differing tail
    assert manager.prefix_hit_tokens == 8


def test_last_token_is_never_served_from_cache() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    admit_and_compute(manager, make_seq(list(range(8)), 0))
    same = make_seq(list(range(8)), 1)
    assert len(manager.find_prefix_hits(same)) == 1  # block 2 holds the last token


def test_divergent_parent_breaks_the_chain() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    admit_and_compute(manager, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], 0))
    # Same second block, different first block: chained hashes must not match.
    other = make_seq([0, 0, 0, 0, 5, 6, 7, 8, 9], 1)
    assert manager.find_prefix_hits(other) == []


def test_freed_blocks_stay_cached_until_reused_oldest_first() -> None:
    manager = BlockManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=True)
    seq = make_seq(list(range(9)), 0)
    admit_and_compute(manager, seq)
    table = list(seq.block_table)
    manager.free(seq)
    assert manager.num_free_blocks == 4 and manager.num_used_blocks == 0
    again = make_seq(list(range(9)), 1)
    assert [hit.block_id for hit in manager.find_prefix_hits(again)] == table[:2]

    # Taking 3 fresh blocks takes the never-used block first, then the tail of `seq`
    # (freed before its prefix): its partial block, then its second full block. The first
    # prefix block survives.
    filler = make_seq([50] * 11, 2)
    manager.admit(filler, [], filler.num_tokens)
    assert [hit.block_id for hit in manager.find_prefix_hits(again)] == table[:1]


def test_without_prefix_caching_nothing_is_shared() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False)
    admit_and_compute(manager, make_seq(list(range(10)), 0))
    assert manager.find_prefix_hits(make_seq(list(range(10)), 1)) == []
    assert manager.prefix_cache_hit_rate == 0.0
