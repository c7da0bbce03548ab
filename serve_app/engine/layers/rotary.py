"""Rotary position embedding (GPT-NeoX half-rotation layout, as HF Llama/Qwen use), with
`linear` and `llama3` frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_inverse_frequencies(head_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}"
        )
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Long wavelengths are slowed by `factor`, short ones kept, the band between blended."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    in_band = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(in_band, blended, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float, scaling: dict | None) -> None:
        super().__init__()
        inv_freq = rope_inverse_frequencies(head_dim, base, scaling)
        angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        cos, sin = angles.cos(), angles.sin()  # (max_position, head_dim / 2)
        # (max_position, 2, head_dim): [cos | cos] and [-sin | sin], so that
        # x * cos + rotate_half(x) * sin = x * row[0] + swap_halves(x) * row[1]
        self.register_buffer(
            "cos_sin",
            torch.stack([torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)], 1),
            persistent=False,
        )

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (tokens, heads, head_dim), key (tokens, kv_heads, head_dim)."""
        return self.rotate(positions, query), self.rotate(positions, key)

    def rotate(self, positions: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Rotates every head of `heads` (tokens, heads, head_dim) at its token's position;
        q and k side by side (adjacent in the fused qkv projection) go in one call.

        The same float operations as HF's `q * cos + rotate_half(q) * sin` (negating is
        exact), so results match it bit for bit; a new contiguous tensor.
        """
        table = self.cos_sin[positions].to(heads.dtype)  # (tokens, 2, head_dim)
        cos, sin = table[:, None, 0], table[:, None, 1]  # (tokens, 1, head_dim) each
        first, second = heads.chunk(2, dim=-1)
        swapped = torch.cat([second, first], dim=-1)
        return (heads * cos).add_(swapped * sin)
