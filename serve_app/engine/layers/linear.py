"""Megatron-style tensor-parallel linear layers; each parameter carries its weight loader.

Column-parallel layers split output features across ranks (no communication); row-parallel
layers split input features and all-reduce their output once. With one rank they are
plain linear layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serve_app.engine.config import ConfigError
from serve_app.engine.layers.packed_linear import pack_weight, packed_linear
from serve_app.engine.parallel.context import ParallelContext

# Below this many tokens CPU projections compute (W x^T)^T; from here on F.linear, which is
# as fast there and returns a contiguous result.
TRANSPOSED_PROJECTION_MAX_TOKENS = 256


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b for x (tokens, in) and W (out, in): (tokens, out).

    On CPU, below TRANSPOSED_PROJECTION_MAX_TOKENS tokens, this computes (W x^T)^T, which
    MKL runs faster for decode-sized batches; the result is then a transposed view (strides
    (1, tokens)), so every caller must accept a non-contiguous result. Prefill-sized batches
    stay contiguous, where elementwise work is much faster (bench/README.md, "Numbers behind
    the engine's code comments").
    """
    if not _transposed_form_pays(x):
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(weight, x.t()).t()  # (out, tokens) -> (tokens, out)
    return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()


def _transposed_form_pays(x: torch.Tensor) -> bool:
    """A CPU batch of tokens below TRANSPOSED_PROJECTION_MAX_TOKENS: (W x^T) beats x W^T."""
    return x.device.type == "cpu" and x.dim() == 2 and x.shape[0] < TRANSPOSED_PROJECTION_MAX_TOKENS


# Output rows per slice in `linear_contiguous`: 2048 x 128 float32 results (1 MiB) stay in
# cache for their transposing copy.
CONTIGUOUS_SLICE_ROWS = 2048


def linear_contiguous(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T as a contiguous (tokens, out) tensor, for wide outputs read row by row (the LM
    head's logits, which the sampler reduces per row).

    On CPU, for decode-sized batches, each slice of CONTIGUOUS_SLICE_ROWS output features is
    computed in the fast (W x^T) form and copied into place while it is still in cache
    (bench/README.md, "Numbers behind the engine's code comments").
    """
    if not _transposed_form_pays(x):
        return F.linear(x, weight)
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
    x_t = x.t()
    for start in range(0, weight.shape[0], CONTIGUOUS_SLICE_ROWS):
        rows = weight[start : start + CONTIGUOUS_SLICE_ROWS]
        # (slice, tokens) result -> its rows of `out`, (tokens, slice)
        out[:, start : start + rows.shape[0]].t().copy_(torch.mm(rows, x_t))
    return out


class PackableProjection(nn.Module):
    """A layer whose `weight` (out, in) can be packed for oneDNN after loading
    (layers/packed_linear.py); `project` then runs the packed GEMM."""

    weight: nn.Parameter
    packed_weight: torch.Tensor | None = None

    def pack_weight(self, release: bool) -> None:
        """Pack the loaded weight; `release` frees the plain copy (False where another layer
        shares it, as a tied LM head shares the embedding's)."""
        self.packed_weight = pack_weight(self.weight)
        if release:
            self.weight = nn.Parameter(torch.empty(0, dtype=self.weight.dtype), requires_grad=False)

    def project(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed_weight is not None:
            return packed_linear(x, self.packed_weight, bias)
        return linear(x, self.weight, bias)


def _attach_loader(param: nn.Parameter, loader) -> nn.Parameter:
    param.weight_loader = loader  # type: ignore[attr-defined]
    return param


class ColumnParallelLinear(PackableProjection):
    """y = x W^T + b with W's rows (output features) split across ranks."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool, ctx: ParallelContext, what: str
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.output_size_per_rank = ctx.shard(output_size, what)
        self.weight = _attach_loader(
            nn.Parameter(torch.empty(self.output_size_per_rank, input_size), requires_grad=False),
            self.load_rows,
        )
        self.bias = (
            _attach_loader(
                nn.Parameter(torch.empty(self.output_size_per_rank), requires_grad=False),
                self.load_rows,
            )
            if bias
            else None
        )

    def load_rows(self, param: nn.Parameter, full: torch.Tensor) -> None:
        rows = param.shape[0]
        param.data.copy_(full.narrow(0, self.ctx.rank * rows, rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input in one matmul (gate + up).
    Each rank holds its slice of every part, parts side by side."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool,
        ctx: ParallelContext,
        what: str,
    ) -> None:
        self.part_sizes = [ctx.shard(size, what) for size in output_sizes]
        super().__init__(input_size, sum(output_sizes), bias, ctx, what)
        self.weight.weight_loader = self.load_part
        if self.bias is not None:
            self.bias.weight_loader = self.load_part

    def load_part(self, param: nn.Parameter, full: torch.Tensor, part: int) -> None:
        size = self.part_sizes[part]
        offset = sum(self.part_sizes[:part])
        param.data.narrow(0, offset, size).copy_(full.narrow(0, self.ctx.rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Fused Q, K, V projections. Query heads split across ranks; KV heads split too, or
    replicated when there are fewer KV heads than ranks (each rank keeps the one KV head its
    query heads use)."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        ctx: ParallelContext,
    ) -> None:
        self.head_dim = head_dim
        self.num_heads_per_rank = ctx.shard(num_heads, "num_attention_heads")
        if num_kv_heads >= ctx.world_size:
            self.num_kv_heads_per_rank = ctx.shard(num_kv_heads, "num_key_value_heads")
            self.kv_head_start = ctx.rank * self.num_kv_heads_per_rank
        else:
            if ctx.world_size % num_kv_heads:
                raise ConfigError(
                    f"EngineConfig.tensor_parallel_size ({ctx.world_size}) must be a multiple "
                    f"of num_key_value_heads ({num_kv_heads}) to replicate KV heads"
                )
            self.num_kv_heads_per_rank = 1
            self.kv_head_start = ctx.rank * num_kv_heads // ctx.world_size
        self.q_size = self.num_heads_per_rank * head_dim
        self.kv_size = self.num_kv_heads_per_rank * head_dim
        per_rank = self.q_size + 2 * self.kv_size
        super().__init__(hidden_size, per_rank * ctx.world_size, bias, ctx, "qkv output size")
        self.weight.weight_loader = self.load_qkv
        if self.bias is not None:
            self.bias.weight_loader = self.load_qkv

    def load_qkv(self, param: nn.Parameter, full: torch.Tensor, part: str) -> None:
        if part == "q":
            offset, size, start = 0, self.q_size, self.ctx.rank * self.q_size
        else:
            offset = self.q_size if part == "k" else self.q_size + self.kv_size
            size, start = self.kv_size, self.kv_head_start * self.head_dim
        param.data.narrow(0, offset, size).copy_(full.narrow(0, start, size))


class RowParallelLinear(PackableProjection):
    """y = x W^T + b with W's columns (input features) split across ranks; one all-reduce."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool, ctx: ParallelContext, what: str
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.input_size_per_rank = ctx.shard(input_size, what)
        self.weight = _attach_loader(
            nn.Parameter(torch.empty(output_size, self.input_size_per_rank), requires_grad=False),
            self.load_columns,
        )
        # The bias is added once, after the reduction.
        self.bias = (
            _attach_loader(
                nn.Parameter(torch.empty(output_size), requires_grad=False), self.load_whole
            )
            if bias
            else None
        )

    def load_columns(self, param: nn.Parameter, full: torch.Tensor) -> None:
        columns = param.shape[1]
        param.data.copy_(full.narrow(1, self.ctx.rank * columns, columns))

    @staticmethod
    def load_whole(param: nn.Parameter, full: torch.Tensor) -> None:
        param.data.copy_(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ctx.all_reduce(self.project(x))
        return out + self.bias if self.bias is not None else out
