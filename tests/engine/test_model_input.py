"""build_model_input: the flattened batch the model runs, checked by hand on a small case
(block size 4, shuffled block tables, a chunk that starts and ends mid-block)."""

from __future__ import annotations

import torch

from serve_app.engine.model_input import build_model_input
from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.scheduler import ScheduledChunk
from serve_app.engine.sequence import Sequence


def sequence(prompt: list[int], output: list[int], blocks: list[int], computed: int) -> Sequence:
    seq = Sequence(f"r{prompt[0]}", prompt, SamplingParams(max_tokens=100), 0)
    seq.output_token_ids = output
    seq.block_table = blocks
    seq.num_computed_tokens = computed
    return seq


def test_decodes_then_chunks_flattened():
    decode = sequence([10, 11, 12, 13, 14], [15, 16], [7, 2], computed=6)  # position 6
    prompt = sequence(list(range(100, 110)), [], [5, 9, 1], computed=0)  # first chunk of 10
    tail = sequence(list(range(200, 211)), [], [3, 8, 4], computed=6)  # positions 6..10
    batch = build_model_input(
        [ScheduledChunk(decode, 1), ScheduledChunk(prompt, 6), ScheduledChunk(tail, 5)], 4
    )
    assert batch.token_ids.tolist() == [16, *range(100, 106), *range(206, 211)]
    assert batch.positions.tolist() == [6, *range(6), *range(6, 11)]
    # slot = block_table[position // 4] * 4 + position % 4
    assert batch.slot_mapping.tolist() == [
        *[2 * 4 + 2],  # the decode
        *[20, 21, 22, 23, 36, 37],  # blocks 5 and 9
        *[8 * 4 + 2, 8 * 4 + 3, 16, 17, 18],  # the end of block 8, then block 4
    ]
    assert batch.block_tables.dtype == torch.int32
    assert batch.block_tables.tolist() == [[7, 2, 0], [5, 9, 1], [3, 8, 4]]
    assert batch.context_lens == [7, 6, 11]
    assert batch.query_start_loc == [0, 1, 7, 12]
    assert batch.num_decode_seqs == 1
    # the decode and the chunk that reaches its prompt's end sample; the partial chunk not
    assert batch.logits_indices.tolist() == [0, 11]


def test_one_token_chunk_after_a_prefill_is_not_a_decode():
    """Only the leading one-token chunks count as decodes (the attention backends take
    them first)."""
    prompt = sequence(list(range(8)), [], [0, 1], computed=0)
    last = sequence(list(range(20, 25)), [], [2, 3], computed=4)
    batch = build_model_input([ScheduledChunk(prompt, 8), ScheduledChunk(last, 1)], 4)
    assert batch.num_decode_seqs == 0
    assert batch.slot_mapping.tolist() == [*range(8), 3 * 4 + 0]
