"""AttentionMetadata: where each token of a flattened mixed batch lives in the paged cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    """Sequences are laid out decodes first (one new token each), then prefill chunks."""

    slot_mapping: torch.Tensor  # (num_tokens,) int64: block_id * block_size + offset
    block_tables: torch.Tensor  # (num_seqs, max_blocks_per_seq) int32
    context_lens: torch.Tensor  # (num_seqs,) int32: cached + new tokens
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32
    num_decode_seqs: int
    max_query_len: int
    max_context_len: int
    # Host copies, so the torch path never syncs with the device to read a length.
    context_lens_host: list[int]
    query_start_loc_host: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_host)
