"""TensorParallelWorker: one tensor-parallel rank, independent of how it is driven.

It joins its engine's group, builds the rank's ModelRunner, reports its KV memory, and
runs each step's ModelInput. Its methods take and return plain picklable values, so any
transport can drive it: the engine's own process for rank 0, a pipe loop in a local process
(worker_process.py), or a Ray actor (serve_app/replica/ray_executor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from serve_app.engine.config import EngineConfig
from serve_app.engine.model_input import ModelInput
from serve_app.engine.model_runner import ModelRunner, resolve_device
from serve_app.engine.parallel.context import ParallelContext
from serve_app.engine.parallel.group import Rendezvous, TensorParallelGroup


@dataclass(frozen=True, slots=True)
class KVMemoryReport:
    """What one rank can hold; the driver takes the minimum budget over ranks."""

    budget_bytes: int
    bytes_per_block: int


class TensorParallelWorker:
    def __init__(
        self,
        config: EngineConfig,
        model_dir: Path,
        rank: int,
        rendezvous: Rendezvous,
        store: dist.Store | None = None,  # rank 0's own store; other ranks connect to it
        local_address: str = "127.0.0.1",  # this rank's address, seen by its peers
        cuda_device_index: int | None = None,  # None: the rank (all ranks on one host)
    ) -> None:
        self.rank = rank
        device = resolve_device(config)
        if device.type == "cuda":
            torch.cuda.set_device(rank if cuda_device_index is None else cuda_device_index)
        self.group = TensorParallelGroup(rendezvous, rank, store, local_address)
        ctx = ParallelContext(rank, rendezvous.world_size, self.group)
        try:
            self.runner = ModelRunner(config, model_dir, ctx)
        except BaseException:
            self.group.close()
            raise

    def kv_memory(self) -> KVMemoryReport:
        return KVMemoryReport(
            self.runner.kv_cache_budget_bytes(), self.runner.kv_cache_bytes_per_block()
        )

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.runner.allocate_kv_cache(num_blocks)

    def execute(self, model_input: ModelInput) -> torch.Tensor | None:
        """Run one step; float32 logits on rank 0, None on the other ranks."""
        return self.runner.execute(model_input)

    def abort(self) -> None:
        self.group.abort()

    def shutdown(self) -> None:
        self.runner.kv_caches = []
        self.group.close()
