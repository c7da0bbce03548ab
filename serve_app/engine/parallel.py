"""ParallelContext: which tensor-parallel rank this process is, and its collectives.

Passed explicitly to every parallel layer (no module-global state). With one rank every
collective is a no-op and no process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    group: Any = None  # torch.distributed ProcessGroup when world_size > 1

    @property
    def is_first_rank(self) -> bool:
        return self.rank == 0

    def shard(self, total: int, what: str) -> int:
        """Size of this rank's share of `total`; a clear error when it does not divide."""
        if total % self.world_size:
            raise ValueError(
                f"{what} ({total}) is not divisible by tensor_parallel_size ({self.world_size})"
            )
        return total // self.world_size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather_last_dim_to_first_rank(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's tensor along the last dim on rank 0; None elsewhere."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.contiguous()
        parts = (
            [torch.empty_like(tensor) for _ in range(self.world_size)] if self.rank == 0 else None
        )
        dist.gather(tensor, parts, dst=dist.get_global_rank(self.group, 0), group=self.group)
        return torch.cat(parts, dim=-1) if parts is not None else None


SINGLE_DEVICE = ParallelContext()
