"""SiLU-gated MLP activation over a merged [gate | up] projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)  # (tokens, 2 * inter) -> 2 x (tokens, inter)
        return F.silu(gate) * up
