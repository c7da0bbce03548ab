"""Paged attention over a mixed batch: decodes first (one new token each), then prefill chunks.

Reference: `kernels.reference.paged_attention`. Two ways to run a batch:
- split (default): the decode kernel (with split-KV for long contexts) on the decodes, then
  the prefill kernel on the chunks: two launches, each kernel on the work it is shaped for;
- unified: the prefill kernel on the whole batch in one launch (a decode is a one-token
  chunk), which saves a launch when the batch is short and the contexts are too.
"""

from __future__ import annotations

import torch

from serve_kernels.decode_attention import paged_decode_attention
from serve_kernels.prefill_attention import paged_prefill_attention
from serve_kernels.validation import check_out, require


def paged_attention(
    query: torch.Tensor,  # (num_tokens, num_heads, head_dim)
    k_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (num_seqs, max_blocks_per_seq)
    query_start_loc: torch.Tensor,  # (num_seqs + 1,) on the device
    context_lens: torch.Tensor,  # (num_seqs,) on the device
    context_lens_host: list[int],
    num_decode_seqs: int,
    max_query_len: int,
    scale: float,
    *,
    unified: bool = False,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    num_seqs = len(context_lens_host)
    require(
        0 <= num_decode_seqs <= num_seqs,
        f"num_decode_seqs must be in [0, {num_seqs}], got {num_decode_seqs}",
    )
    require(
        num_decode_seqs <= query.shape[0],
        f"query has {query.shape[0]} tokens, fewer than num_decode_seqs ({num_decode_seqs})",
    )
    out = check_out(out, tuple(query.shape), query)
    first_chunk = 0  # the prefill kernel takes the sequences from here on
    if not unified and num_decode_seqs > 0:
        paged_decode_attention(
            query[:num_decode_seqs],
            k_cache,
            v_cache,
            block_tables[:num_decode_seqs],
            context_lens[:num_decode_seqs],
            max(context_lens_host[:num_decode_seqs]),
            scale,
            num_splits=num_splits,
            out=out[:num_decode_seqs],
        )
        first_chunk = num_decode_seqs
    if first_chunk < num_seqs:
        # query_start_loc holds absolute offsets, so the chunks' slice indexes the full query.
        paged_prefill_attention(
            query,
            k_cache,
            v_cache,
            block_tables[first_chunk:],
            query_start_loc[first_chunk:],
            context_lens[first_chunk:],
            max_query_len,
            scale,
            out=out,
        )
    return out
