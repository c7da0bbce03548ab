"""Vocab-parallel token embedding and LM head: each rank holds a contiguous vocab slice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serve_app.engine.layers.linear import PackableProjection, linear_contiguous
from serve_app.engine.parallel.context import ParallelContext


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, ctx: ParallelContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.vocab_per_rank = ctx.shard(vocab_size, "vocab_size")
        self.vocab_start = ctx.rank * self.vocab_per_rank
        self.weight = nn.Parameter(
            torch.empty(self.vocab_per_rank, hidden_size), requires_grad=False
        )
        self.weight.weight_loader = self.load_rows  # type: ignore[attr-defined]

    def load_rows(self, param: nn.Parameter, full: torch.Tensor) -> None:
        param.data.copy_(full.narrow(0, self.vocab_start, self.vocab_per_rank))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.ctx.world_size == 1:
            return F.embedding(token_ids, self.weight)
        local_ids = token_ids - self.vocab_start
        in_slice = (local_ids >= 0) & (local_ids < self.vocab_per_rank)
        embedded = F.embedding(local_ids.clamp(0, self.vocab_per_rank - 1), self.weight)
        embedded = embedded * in_slice.unsqueeze(-1).to(embedded.dtype)
        return self.ctx.all_reduce(embedded)


class ParallelLMHead(VocabParallelEmbedding, PackableProjection):
    """Projects hidden states to logits; rank 0 receives the full vocabulary, others None."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:  # type: ignore[override]
        # Contiguous rows for the sampler, whose row-wise reductions are several times slower
        # on the transposed view `linear` returns (bench/README.md).
        if self.packed_weight is not None:
            local_logits = self.project(hidden)  # (tokens, vocab_per_rank), contiguous
        else:
            local_logits = linear_contiguous(hidden, self.weight)
        return self.ctx.gather_last_dim_to_first_rank(local_logits)
