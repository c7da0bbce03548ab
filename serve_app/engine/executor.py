"""Executors run the model on every tensor-parallel rank and hand rank 0's logits back.

The engine (scheduler, sampler) runs once, beside rank 0; other ranks only receive each
step's ModelInput. `InProcessExecutor` is the single-rank case: no process group at all;
`MultiprocessExecutor` (multiproc_executor.py) drives ranks 1..N-1 in local processes, and
any other transport (Ray actors) can drive the same TensorParallelWorker (worker.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.loader import read_architecture
from serve_app.engine.model_input import ModelInput
from serve_app.engine.model_runner import ModelRunner
from serve_app.engine.parallel import SINGLE_DEVICE, check_tensor_parallel_sizes


class Executor(Protocol):
    runner: ModelRunner  # rank 0's, in the engine's process: logits and sampling live there
    max_model_len: int
    num_kv_blocks: int
    vocab_size: int

    def execute(self, model_input: ModelInput) -> torch.Tensor | None: ...

    def check_health(self) -> None:
        """Raise if any rank is dead."""

    def shutdown(self) -> None: ...


def plan_num_kv_blocks(
    budget_bytes: int,
    bytes_per_block: int,
    block_size: int,
    max_model_len: int,
    max_num_seqs: int,
) -> int:
    """Blocks that fit the budget, capped at what `max_num_seqs` full sequences could use.
    Fails when not even one sequence of `max_model_len` tokens fits."""
    blocks_per_seq = -(-max_model_len // block_size)
    num_blocks = min(budget_bytes // bytes_per_block, blocks_per_seq * max_num_seqs)
    if num_blocks < blocks_per_seq:
        raise ConfigError(
            f"the KV cache budget ({budget_bytes} bytes, {bytes_per_block} bytes per block) "
            f"holds {budget_bytes // bytes_per_block} blocks of {block_size} tokens, fewer "
            f"than one max_model_len ({max_model_len}) sequence needs ({blocks_per_seq}); "
            "raise EngineConfig.kv_cache_memory_bytes / kv_cache_memory_fraction or lower "
            "EngineConfig.max_model_len"
        )
    return num_blocks


class InProcessExecutor:
    """tensor_parallel_size == 1: the model runs in the engine's own process."""

    def __init__(self, config: EngineConfig, model_dir: Path) -> None:
        self.runner = ModelRunner(config, model_dir, SINGLE_DEVICE)
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.arch.vocab_size
        self.num_kv_blocks = plan_num_kv_blocks(
            self.runner.kv_cache_budget_bytes(),
            self.runner.kv_cache_bytes_per_block(),
            config.block_size,
            self.max_model_len,
            config.max_num_seqs,
        )
        self.runner.allocate_kv_cache(self.num_kv_blocks)

    def execute(self, model_input: ModelInput) -> torch.Tensor | None:
        return self.runner.execute(model_input)

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        self.runner.kv_caches = []


def make_executor(config: EngineConfig, model_dir: Path) -> Executor:
    """TP=1: in-process, no process group. TP>1: one local process per extra rank, after
    checking (before anything starts) that the model splits over that many ranks."""
    if config.tensor_parallel_size == 1:
        return InProcessExecutor(config, model_dir)
    check_tensor_parallel_sizes(read_architecture(model_dir), config.tensor_parallel_size)
    # Imported here: the multiprocess machinery is not needed for TP=1.
    from serve_app.engine.multiproc_executor import MultiprocessExecutor

    return MultiprocessExecutor(config, model_dir)
