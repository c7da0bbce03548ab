"""MultiprocessExecutor: tensor parallelism on one machine, one process per extra rank.

Rank 0 (the driver) runs inside the engine's own process, so its logits never cross a
process boundary; ranks 1..N-1 are spawned processes, each driving a TensorParallelWorker
from a pipe. Per step the driver pickles the ModelInput once, writes it to every pipe and
runs its own forward; workers never answer a step (the collectives inside the layers keep
the ranks in lock-step). A watcher thread notices a worker that dies; a dead peer also
breaks the driver's next collective at once, and either way the executor shuts everything
down and raises TensorParallelError instead of hanging.

Workers come from multiprocessing's fork server, started once per process with the model
stack imported: a TP engine after the first starts its workers in milliseconds. Workers
therefore see the environment (CUDA_VISIBLE_DEVICES included) of the moment the fork server
started, not of the moment a later engine is created.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.multiprocessing as mp

from serve_app.engine.config import EngineConfig
from serve_app.engine.distributed import backend_for_device, open_rendezvous
from serve_app.engine.model_input import ModelInput
from serve_app.engine.model_runner import resolve_device
from serve_app.engine.tensor_parallel import (
    ExecutorLifecycle,
    TensorParallelError,
    plan_kv_blocks_over_ranks,
)
from serve_app.engine.worker import TensorParallelWorker
from serve_app.engine.worker_process import run_worker_process

STARTUP_TIMEOUT_S = 600.0  # loading a large checkpoint on every rank
REPLY_TIMEOUT_S = 120.0
DEATH_GRACE_S = 5.0  # after a failed collective, how long to wait for the dead rank's exit
WATCH_INTERVAL_S = 0.2
WORKER_MODULE = "serve_app.engine.worker_process"  # the fork server imports it once


class MultiprocessExecutor:
    def __init__(self, config: EngineConfig, model_dir: Path) -> None:
        self.world_size = config.tensor_parallel_size
        assert self.world_size > 1, "TP=1 runs in-process (InProcessExecutor)"
        self.driver: TensorParallelWorker | None = None
        self.processes: list[mp.Process] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        # Its lock also guards every look at the worker processes: the watcher, health checks
        # and the engine thread may look at once, and a fork-server child's exit status can be
        # read only once (a second concurrent reader would see a bogus 255).
        self.life = ExecutorLifecycle()
        device = resolve_device(config)
        if device.type == "cuda" and torch.cuda.device_count() < self.world_size:
            raise TensorParallelError(
                f"EngineConfig.tensor_parallel_size {self.world_size} needs that many CUDA "
                f"devices, {torch.cuda.device_count()} visible"
            )
        # On CPU the ranks share the host's cores: each rank's forward gets its share of the
        # intra-op threads instead of all of them (0: leave the thread count alone).
        self.threads_per_rank = (
            max(1, torch.get_num_threads() // self.world_size) if device.type == "cpu" else 0
        )
        try:
            self._start(config, model_dir, device.type, self.threads_per_rank)
        except BaseException:
            self.shutdown()
            raise

    # ---- start-up ---------------------------------------------------------------------
    def _start(
        self, config: EngineConfig, model_dir: Path, device_type: str, threads_per_rank: int
    ) -> None:
        store, rendezvous = open_rendezvous(self.world_size, backend_for_device(device_type))
        # Not fork: the engine process is threaded. A fork server that has imported the model
        # stack once starts every later worker in milliseconds instead of a fresh interpreter.
        context = mp.get_context("forkserver")
        context.set_forkserver_preload([WORKER_MODULE])
        for rank in range(1, self.world_size):
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=run_worker_process,
                args=(child_end, config, model_dir, rank, rendezvous, threads_per_rank),
                name=f"tp-worker-{rank}",
                daemon=True,  # never outlive the engine process
            )
            process.start()
            child_end.close()
            self.processes.append(process)
            self._conns.append(parent_end)
        for rank in range(1, self.world_size):
            self._receive(rank, STARTUP_TIMEOUT_S)  # imported and about to join the group
        self.driver = TensorParallelWorker(config, model_dir, 0, rendezvous, store)
        self.runner = self.driver.runner  # the engine samples on rank 0's device
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.arch.vocab_size
        reports = [self.driver.kv_memory(), *self._call_workers("kv_memory", STARTUP_TIMEOUT_S)]
        self.num_kv_blocks = plan_kv_blocks_over_ranks(reports, config, self.max_model_len)
        self._call_workers("allocate_kv_cache", REPLY_TIMEOUT_S, self.num_kv_blocks)
        self.driver.allocate_kv_cache(self.num_kv_blocks)
        self.life.start_watcher(self._watch, "tp-watcher")

    def _call_workers(self, method: str, timeout_s: float, *args) -> list:
        self._send_all(method, *args)
        return [self._receive(rank, timeout_s) for rank in range(1, self.world_size)]

    def _send_all(self, method: str, *args) -> None:
        payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self._conns:
            conn.send_bytes(payload)

    def _receive(self, rank: int, timeout_s: float):
        conn, process = self._conns[rank - 1], self.processes[rank - 1]
        ready = multiprocessing.connection.wait([conn, process.sentinel], timeout_s)
        if conn in ready:
            kind, value = conn.recv()
            if kind == "error":
                raise TensorParallelError(f"tensor-parallel worker rank {rank} failed:\n{value}")
            return value
        if process.sentinel in ready:
            raise TensorParallelError(describe_dead_worker(rank, process))
        raise TensorParallelError(
            f"tensor-parallel worker rank {rank} did not answer within {timeout_s:.0f}s"
        )

    # ---- steps ------------------------------------------------------------------------
    def execute(self, model_input: ModelInput) -> torch.Tensor | None:
        if self.life.closed and self.life.failure is None:
            raise TensorParallelError("the tensor-parallel executor has been shut down")
        try:
            self.check_health()
            self._send_all("execute", model_input)
            with intra_op_threads(self.threads_per_rank):
                return self.driver.execute(model_input)
        except Exception as error:
            # Whatever broke, the ranks are out of step now. Stopping them happens here, in
            # the thread that drives the group, never from a health check.
            raise self._fail(f"a tensor-parallel step failed on rank 0: {error!r}") from error

    def check_health(self) -> None:
        """Raise TensorParallelError if any rank is dead or the executor has shut down.
        Safe from any thread: it only looks."""
        with self.life.lock:
            if self.life.failure is None and not self.life.closed:
                for rank, process in enumerate(self.processes, start=1):
                    if not process.is_alive():
                        self.life.failure = describe_dead_worker(rank, process)
                        break
            self.life.raise_if_unusable()

    def _fail(self, fallback: str) -> TensorParallelError:
        """Name the ranks that died (waiting briefly for their exit) and what they reported,
        shut everything down, and return the error to raise."""
        with self.life.lock:
            if self.life.failure is None:
                sentinels = [process.sentinel for process in self.processes]
                multiprocessing.connection.wait(sentinels, DEATH_GRACE_S)
                dead = [
                    describe_dead_worker(rank, process)
                    for rank, process in enumerate(self.processes, start=1)
                    if not process.is_alive()
                ]
                self.life.failure = "; ".join(dead) if dead else fallback
            if not self.life.closed:
                reports = [report for conn in self._conns if (report := read_worker_error(conn))]
                self.life.failure = "\n".join([self.life.failure, *reports])
        self.shutdown()
        return TensorParallelError(self.life.failure)

    def _watch(self) -> None:
        sentinels = {process.sentinel: rank for rank, process in enumerate(self.processes, 1)}
        while not self.life.stop_watching.is_set():
            ready = multiprocessing.connection.wait(list(sentinels), WATCH_INTERVAL_S)
            if ready and not self.life.stop_watching.is_set():
                rank = sentinels[ready[0]]
                with self.life.lock:
                    if self.life.failure is None:
                        self.life.failure = describe_dead_worker(rank, self.processes[rank - 1])
                self.driver.abort()  # NCCL: unblock a collective that waits on the dead rank
                return

    # ---- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every worker, destroy the group and free the KV cache; safe to call twice."""
        if not self.life.close():
            return
        for conn in self._conns:
            with contextlib.suppress(OSError):  # that worker is already gone
                conn.send_bytes(pickle.dumps(("shutdown", ())))
        with self.life.lock:
            for process in self.processes:
                process.join(timeout=DEATH_GRACE_S)
                if process.is_alive():
                    process.kill()
                    process.join()
        for conn in self._conns:
            conn.close()
        if self.driver is not None:
            self.driver.shutdown()


@contextlib.contextmanager
def intra_op_threads(num_threads: int) -> Iterator[None]:
    """Run the block with `num_threads` torch threads (0: unchanged), then restore the count;
    the engine process keeps its own setting outside the driver rank's forward."""
    saved = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def describe_dead_worker(rank: int, process: mp.Process) -> str:
    process.join(DEATH_GRACE_S)  # its pipes close a moment before its exit code is known
    code = process.exitcode
    how = (
        f"was killed by {signal.Signals(-code).name}"
        if code is not None and code < 0
        else f"exited with code {code}"
    )
    return f"tensor-parallel worker rank {rank} (pid {process.pid}) {how}"


def read_worker_error(conn: multiprocessing.connection.Connection) -> str | None:
    """The traceback a failed worker left on its pipe, if it managed to send one."""
    try:
        while conn.poll():
            kind, value = conn.recv()
            if kind == "error":
                return value
    except (OSError, EOFError):
        pass  # it died before it could say why
    return None
