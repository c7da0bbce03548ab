"""ModelInput: one step's flattened batch as host tensors, built from the scheduled chunks.

It is what every tensor-parallel rank receives per step, so it holds only plain tensors and
ints (cheap to pickle), never Sequence objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serve_app.engine.attention_metadata import AttentionMetadata
from serve_app.engine.scheduler import ScheduledChunk


@dataclass(slots=True)
class ModelInput:
    token_ids: torch.Tensor  # (num_tokens,) int64
    positions: torch.Tensor  # (num_tokens,) int64
    slot_mapping: torch.Tensor  # (num_tokens,) int64
    block_tables: torch.Tensor  # (num_seqs, max_blocks) int32
    context_lens: list[int]
    query_start_loc: list[int]  # num_seqs + 1 offsets
    num_decode_seqs: int
    logits_indices: torch.Tensor  # (num_sampled,) int64: last token of each sampling chunk

    def attention_metadata(self, device: torch.device) -> AttentionMetadata:
        query_lens = [
            b - a for a, b in zip(self.query_start_loc, self.query_start_loc[1:], strict=False)
        ]
        return AttentionMetadata(
            slot_mapping=self.slot_mapping.to(device, non_blocking=True),
            block_tables=self.block_tables.to(device, non_blocking=True),
            context_lens=torch.tensor(self.context_lens, dtype=torch.int32).to(device),
            query_start_loc=torch.tensor(self.query_start_loc, dtype=torch.int32).to(device),
            num_decode_seqs=self.num_decode_seqs,
            max_query_len=max(query_lens),
            max_context_len=max(self.context_lens),
            context_lens_host=self.context_lens,
            query_start_loc_host=self.query_start_loc,
        )


def build_model_input(chunks: list[ScheduledChunk], block_size: int) -> ModelInput:
    """Flatten the chunks (decodes first, as the scheduler orders them) into one batch.

    Runs on the host every step, so block tables go into one tensor and slots are written a
    block at a time (bench/README.md, "Numbers behind the engine's code comments")."""
    token_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    context_lens: list[int] = []
    query_start_loc = [0]
    logits_indices: list[int] = []
    tables: list[list[int]] = []
    num_decode_seqs = 0
    num_tokens = 0
    for chunk in chunks:
        seq = chunk.seq
        table = seq.block_table
        tables.append(table)
        start = seq.num_computed_tokens
        end = start + chunk.num_new_tokens
        if chunk.num_new_tokens == 1:
            token_ids.append(seq.token_at(start))
            positions.append(start)
            slots.append(table[start // block_size] * block_size + start % block_size)
            if num_decode_seqs == len(context_lens):
                num_decode_seqs += 1
        else:
            token_ids.extend(seq.tokens_in_range(start, end))
            positions.extend(range(start, end))
            for block_start in range(start - start % block_size, end, block_size):
                first_slot = table[block_start // block_size] * block_size
                slots.extend(
                    range(
                        first_slot + max(start - block_start, 0),
                        first_slot + min(end - block_start, block_size),
                    )
                )
        num_tokens += chunk.num_new_tokens
        context_lens.append(end)
        query_start_loc.append(num_tokens)
        if chunk.samples_token:
            logits_indices.append(num_tokens - 1)
    max_blocks = max(len(table) for table in tables)
    return ModelInput(
        token_ids=torch.tensor(token_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_tables=torch.tensor(
            [table + [0] * (max_blocks - len(table)) for table in tables], dtype=torch.int32
        ),
        context_lens=context_lens,
        query_start_loc=query_start_loc,
        num_decode_seqs=num_decode_seqs,
        logits_indices=torch.tensor(logits_indices, dtype=torch.int64),
    )
