"""The Llama family (Llama, Mistral, Qwen2 with qkv bias, Qwen3 with q/k RMSNorm) over a
flattened batch of tokens and a paged KV cache. Reads as a single-device model; tensor
parallelism lives inside the layers."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from serve_app.engine.attention_metadata import AttentionMetadata
from serve_app.engine.layers.activation import SiluAndMul
from serve_app.engine.layers.attention import Attention, AttentionBackend
from serve_app.engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from serve_app.engine.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from serve_app.engine.layers.norm import RMSNorm
from serve_app.engine.layers.rotary import RotaryEmbedding
from serve_app.engine.models.architecture import ModelArchitecture
from serve_app.engine.parallel.context import ParallelContext

KVCache = tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(
        self,
        arch: ModelArchitecture,
        ctx: ParallelContext,
        backend: AttentionBackend,
        max_position: int,
    ) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(
            arch.hidden_size, arch.head_dim, arch.num_heads, arch.num_kv_heads, arch.qkv_bias, ctx
        )
        self.o_proj = RowParallelLinear(
            arch.num_heads * arch.head_dim, arch.hidden_size, arch.o_bias, ctx, "attention output"
        )
        self.head_dim = arch.head_dim
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.num_heads = self.qkv_proj.num_heads_per_rank
        if arch.qk_norm:
            self.q_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps)
            self.k_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps)
        self.qk_norm = arch.qk_norm
        self.rotary = RotaryEmbedding(
            arch.head_dim, max_position, arch.rope_theta, arch.rope_scaling
        )
        self.attn = Attention(
            self.qkv_proj.num_heads_per_rank,
            self.qkv_proj.num_kv_heads_per_rank,
            arch.head_dim,
            backend,
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)  # (tokens, q_size + 2 * kv_size)
        out = self.attend(positions, qkv, kv_cache, metadata)  # (tokens, heads, head_dim)
        return self.o_proj(out.reshape(hidden.shape[0], -1))

    def attend(
        self,
        positions: torch.Tensor,
        qkv: torch.Tensor,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Rotates q and k, writes this step's K/V into the cache and attends over it."""
        num_tokens = qkv.shape[0]
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        v = v.view(num_tokens, -1, self.head_dim)  # (tokens, kv_heads, head_dim)
        if self.qk_norm:
            q, k = qk.split([self.q_size, self.kv_size], dim=-1)
            q = self.q_norm.normalize(q.view(num_tokens, -1, self.head_dim))
            k = self.k_norm.normalize(k.view(num_tokens, -1, self.head_dim))
            q, k = self.rotary(positions, q, k)
        else:  # q and k heads rotated together: (tokens, heads + kv_heads, head_dim)
            qk = self.rotary.rotate(positions, qk.view(num_tokens, -1, self.head_dim))
            q, k = qk.split([self.num_heads, qk.shape[1] - self.num_heads], dim=1)
        return self.attn(q, k, v, kv_cache, metadata)


class LlamaMLP(nn.Module):
    def __init__(self, arch: ModelArchitecture, ctx: ParallelContext) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            arch.hidden_size,
            [arch.intermediate_size] * 2,
            arch.mlp_bias,
            ctx,
            "intermediate_size",
        )
        self.down_proj = RowParallelLinear(
            arch.intermediate_size, arch.hidden_size, arch.mlp_bias, ctx, "intermediate_size"
        )
        self.act = SiluAndMul()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(hidden)))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        arch: ModelArchitecture,
        ctx: ParallelContext,
        backend: AttentionBackend,
        max_position: int,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(arch, ctx, backend, max_position)
        self.mlp = LlamaMLP(arch, ctx)
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self,
        arch: ModelArchitecture,
        ctx: ParallelContext,
        backend: AttentionBackend,
        max_position: int,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(arch.vocab_size, arch.hidden_size, ctx)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(arch, ctx, backend, max_position) for _ in range(arch.num_layers)
        )
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(token_ids)  # (tokens, hidden)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    # HF checkpoint name -> (our fused parameter, which part of it)
    packed_modules: ClassVar[dict[str, tuple[str, str | int]]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self,
        arch: ModelArchitecture,
        ctx: ParallelContext,
        backend: AttentionBackend,
        max_position: int,
    ) -> None:
        super().__init__()
        self.model = LlamaModel(arch, ctx, backend, max_position)
        self.lm_head = ParallelLMHead(arch.vocab_size, arch.hidden_size, ctx)
        if arch.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        return self.model(token_ids, positions, kv_caches, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Full-vocabulary logits on rank 0 (None on other ranks)."""
        return self.lm_head(hidden)
