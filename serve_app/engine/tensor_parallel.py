"""What every tensor-parallel executor shares, whatever carries its steps to the ranks.

The multiprocess executor (pipes to local processes) and the Ray executor (actors in a
placement group, serve_app/replica/ray_executor.py) raise the same error and plan the KV cache the
same way (every rank allocates what the tightest rank can hold), and keep their failure and
shutdown state alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

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


class ExecutorLifecycle:
    """A TP executor's first failure, its closed flag and its watcher thread, under one lock:
    health checks (any thread), the watcher and the engine thread all read and write them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failure: str | None = None  # the first failure seen; never overwritten
        self.closed = False
        self.stop_watching = threading.Event()
        self.watcher: threading.Thread | None = None

    def start_watcher(self, target: Callable[[], None], name: str) -> None:
        self.watcher = threading.Thread(target=target, name=name, daemon=True)
        self.watcher.start()

    def raise_if_unusable(self) -> None:
        """Raise TensorParallelError after a failure or shutdown; the caller holds `lock`."""
        if self.failure is not None:
            raise TensorParallelError(self.failure)
        if self.closed:
            raise TensorParallelError("the tensor-parallel executor has been shut down")

    def close(self) -> bool:
        """Mark closed and stop the watcher; False when already closed (shutdown runs once)."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
        self.stop_watching.set()
        if self.watcher is not None and self.watcher is not threading.current_thread():
            self.watcher.join()
        return True
