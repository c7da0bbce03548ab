"""RMSNorm, computed in float32 like the HuggingFace reference, with an optional fused
residual add."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.cpu_elementwise import CpuElementwise


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        # The fused native kernel (kernels/cpu_elementwise.py), set by the model runner when
        # the `cpu` backend runs; None: torch ops.
        self.native: CpuElementwise | None = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # torch's fused kernel: the same float32 arithmetic
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (normalized, new residual) where new residual = x + residual, added into
        `residual` in place (the caller's residual is consumed; it is always a temporary)."""
        native = self.native
        if native is not None and x.dim() == 2:
            tensors = (x, self.weight) if residual is None else (x, residual, self.weight)
            if native.supports(*tensors):
                if residual is None:  # the first layer: x itself becomes the residual
                    return native.add_rms_norm(None, x, self.weight, self.eps), x
                return native.add_rms_norm(x, residual, self.weight, self.eps), residual
        if residual is not None:
            x = residual.add_(x)
        return self.normalize(x), x
