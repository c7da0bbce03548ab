"""SiLU-gated MLP activation over a merged [gate | up] projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.cpu_elementwise import CpuElementwise


class SiluAndMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # The fused native kernel (kernels/cpu_elementwise.py), set by the model runner when
        # the `cpu` backend runs; None: torch ops.
        self.native: CpuElementwise | None = None

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.native is not None and gate_up.dim() == 2 and self.native.supports(gate_up):
            return self.native.silu_and_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)  # (tokens, 2 * inter) -> 2 x (tokens, inter)
        return F.silu(gate) * up
