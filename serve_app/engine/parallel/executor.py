"""Executors run the model on every tensor-parallel rank and hand rank 0's logits back.

The engine (scheduler, sampler) runs once, beside rank 0; other ranks only receive each
step's ModelInput. `InProcessExecutor` is the single-rank case, with no process group.
`TensorParallelExecutor` owns everything else that TP needs whatever carries the calls:
the start-up order, steps, failure handling and shutdown. A transport implements only how
to start ranks 1..N-1, call a method on all of them, watch them, and stop them: local
processes (multiproc_executor.py) or Ray actors (serve_app/replica/ray_executor.py).
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.errors import TensorParallelError
from serve_app.engine.model_files import read_architecture
from serve_app.engine.model_input import ModelInput
from serve_app.engine.model_runner import ModelRunner, resolve_device
from serve_app.engine.parallel.context import SINGLE_DEVICE
from serve_app.engine.parallel.group import Rendezvous, backend_for_device, open_rendezvous
from serve_app.engine.parallel.sizes import check_tensor_parallel_sizes
from serve_app.engine.parallel.worker import KVMemoryReport, TensorParallelWorker

STARTUP_TIMEOUT_S = 600.0  # loading a large checkpoint on every rank
REPLY_TIMEOUT_S = 120.0
FAILURE_GRACE_S = 5.0  # how long a failed step waits for the watcher to name the failed rank
WATCH_INTERVAL_S = 0.2


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


class TensorParallelExecutor(ABC):
    """Rank 0 (the driver) runs in the engine's process, so its logits never leave it; ranks
    1..N-1 run wherever the transport puts them. The model must split over the ranks (checked
    before any starts). Steps are one-way: the collectives inside the layers keep the ranks in
    lock-step. A watcher thread notices a failed rank; then the executor shuts everything
    down and raises TensorParallelError instead of hanging."""

    host = "127.0.0.1"  # where the group meets and rank 0 listens
    threads_per_rank = 0  # torch threads for rank 0's forward (0: leave the count alone)

    def __init__(self, config: EngineConfig, model_dir: Path) -> None:
        self.world_size = config.tensor_parallel_size
        assert self.world_size > 1, "TP=1 runs in-process (InProcessExecutor)"
        check_tensor_parallel_sizes(read_architecture(model_dir), self.world_size)
        self.driver: TensorParallelWorker | None = None
        self.lock = threading.Lock()  # for `failure`, `closed`: any thread may look at once
        self.failure: str | None = None  # the first failure seen; never overwritten
        self.closed = False
        self.stop_watching = threading.Event()
        self.rank_failed = threading.Event()  # set by the watcher with `failure`
        self.watcher: threading.Thread | None = None
        try:
            self._start(config, model_dir)
        except BaseException:
            self.shutdown()
            raise

    # ---- what a transport implements --------------------------------------------------
    @abstractmethod
    def _start_ranks(self, config: EngineConfig, model_dir: Path, rendezvous: Rendezvous) -> None:
        """Start ranks 1..N-1; each joins the group and builds its model as rank 0 does."""

    @abstractmethod
    def _call_ranks(self, method: str, *args, timeout_s: float | None) -> list:
        """Call a TensorParallelWorker method on ranks 1..N-1; their answers in rank order,
        or nothing when `timeout_s` is None (steps: nobody waits)."""

    @abstractmethod
    def _wait_for_rank_failure(self, timeout_s: float) -> str | None:
        """Wait up to `timeout_s` for a rank to die or fail; what happened to it, or None."""

    @abstractmethod
    def _stop_ranks(self) -> None:
        """Stop ranks 1..N-1, alive or not; called once."""

    # ---- start-up ---------------------------------------------------------------------
    def _start(self, config: EngineConfig, model_dir: Path) -> None:
        backend = backend_for_device(resolve_device(config).type)
        store, rendezvous = open_rendezvous(self.world_size, backend, self.host)
        self._start_ranks(config, model_dir, rendezvous)
        self.driver = TensorParallelWorker(config, model_dir, 0, rendezvous, store, self.host)
        self.runner = self.driver.runner  # the engine samples on rank 0's device
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.arch.vocab_size
        reports = self._call_ranks("kv_memory", timeout_s=STARTUP_TIMEOUT_S)
        reports.insert(0, self.driver.kv_memory())
        self.num_kv_blocks = plan_kv_blocks_over_ranks(reports, config, self.max_model_len)
        self._call_ranks("allocate_kv_cache", self.num_kv_blocks, timeout_s=REPLY_TIMEOUT_S)
        self.driver.allocate_kv_cache(self.num_kv_blocks)
        self.watcher = threading.Thread(target=self._watch, name="tp-watcher", daemon=True)
        self.watcher.start()

    # ---- steps ------------------------------------------------------------------------
    def execute(self, model_input: ModelInput) -> torch.Tensor | None:
        if self.closed and self.failure is None:
            raise TensorParallelError("the tensor-parallel executor has been shut down")
        try:
            self.check_health()
            self._call_ranks("execute", model_input, timeout_s=None)
            with intra_op_threads(self.threads_per_rank):
                return self.driver.execute(model_input)
        except Exception as error:
            # Whatever broke, the ranks are out of step now. Stopping them happens here, in
            # the thread that drives the group, never from a health check.
            raise self._fail(f"a tensor-parallel step failed on rank 0: {error!r}") from error

    def check_health(self) -> None:
        """Raise TensorParallelError if a rank has died or failed, or after shutdown. Safe
        from any thread: the watcher notices a failed rank within WATCH_INTERVAL_S."""
        with self.lock:
            if self.failure is not None:
                raise TensorParallelError(self.failure)
            if self.closed:
                raise TensorParallelError("the tensor-parallel executor has been shut down")

    def _fail(self, fallback: str) -> TensorParallelError:
        """Shut down and return the error to raise. A dead rank breaks rank 0's collective at
        once: give the watcher a moment to name it before settling for `fallback`."""
        if self.watcher is not None:
            self.rank_failed.wait(FAILURE_GRACE_S)
        with self.lock:
            if self.failure is None:
                self.failure = fallback
        self.shutdown()
        return TensorParallelError(self.failure)

    def _watch(self) -> None:
        while not self.stop_watching.is_set():
            failure = self._wait_for_rank_failure(WATCH_INTERVAL_S)
            if failure is None or self.stop_watching.is_set():
                continue
            with self.lock:
                if self.failure is None:
                    self.failure = failure
            self.rank_failed.set()
            self.driver.abort()  # NCCL: unblock a collective that waits on the failed rank
            return

    # ---- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every rank, destroy the group and free the KV cache; safe to call twice."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.stop_watching.set()
        if self.watcher is not None and self.watcher is not threading.current_thread():
            self.watcher.join()
        self._stop_ranks()
        if self.driver is not None:
            self.driver.shutdown()


@contextlib.contextmanager
def intra_op_threads(num_threads: int) -> Iterator[None]:
    """Run the block with `num_threads` torch threads (0: unchanged), then restore the count;
    the engine process keeps its own setting outside the driver rank's forward."""
    if not num_threads:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def make_executor(config: EngineConfig, model_dir: Path) -> Executor:
    """TP=1: in-process, no process group. TP>1: one local process per extra rank."""
    if config.tensor_parallel_size == 1:
        return InProcessExecutor(config, model_dir)
    # Imported here: the multiprocess machinery is not needed for TP=1.
    from serve_app.engine.parallel.multiproc_executor import MultiprocessExecutor

    return MultiprocessExecutor(config, model_dir)
