"""ParallelContext: which tensor-parallel rank this process is, and its collectives.

Passed explicitly to every parallel layer (no module-global state). With one rank every
collective is a no-op and no process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from serve_app.engine.config import ConfigError

if TYPE_CHECKING:
    from serve_app.engine.parallel.group import TensorParallelGroup


@dataclass(frozen=True, slots=True)
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    group: TensorParallelGroup | None = None  # required when world_size > 1

    def __post_init__(self) -> None:
        assert 0 <= self.rank < self.world_size, (self.rank, self.world_size)
        assert self.world_size == 1 or self.group is not None, "world_size > 1 needs a group"

    def shard(self, total: int, what: str) -> int:
        """Size of this rank's share of `total`; a clear error when it does not divide."""
        if total % self.world_size:
            raise ConfigError(
                f"{what} ({total}) is not divisible by "
                f"EngineConfig.tensor_parallel_size ({self.world_size})"
            )
        return total // self.world_size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            self.group.all_reduce(tensor)
        return tensor

    def gather_last_dim_to_first_rank(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's tensor along the last dim on rank 0; None elsewhere."""
        if self.world_size == 1:
            return tensor
        parts = self.group.gather_to_first_rank(tensor)
        return torch.cat(parts, dim=-1) if parts is not None else None


SINGLE_DEVICE = ParallelContext()
