"""What every tensor-parallel executor shares, whatever carries its steps to the ranks.

The multiprocess executor (pipes to local processes) and the Ray executor (actors in a
placement group, serve_app/ray_executor.py) raise the same error and plan the KV cache the
same way: every rank allocates what the tightest rank can hold.
"""

from __future__ import annotations

from serve_app.engine.config import EngineConfig
from serve_app.engine.executor import plan_num_kv_blocks
from serve_app.engine.worker import KVMemoryReport


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or failed; the executor has shut down and cannot serve."""


def plan_kv_blocks_over_ranks(
    reports: list[KVMemoryReport], config: EngineConfig, max_model_len: int
) -> int:
    """Every rank allocates the same number of blocks: what the tightest rank can hold."""
    bytes_per_block = {report.bytes_per_block for report in reports}
    assert len(bytes_per_block) == 1, f"ranks disagree on KV block size: {bytes_per_block}"
    return plan_num_kv_blocks(
        min(report.budget_bytes for report in reports),
        bytes_per_block.pop(),
        config.block_size,
        max_model_len,
        config.max_num_seqs,
    )
