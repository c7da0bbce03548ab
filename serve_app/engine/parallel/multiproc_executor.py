"""MultiprocessExecutor: tensor parallelism on one machine, one process per extra rank.

Ranks 1..N-1 are spawned processes, each driving a TensorParallelWorker from a pipe
(worker_process.py). A call is pickled once and written to every pipe; a rank that dies
closes its process sentinel, which the watcher waits on.

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
from pathlib import Path

import torch
import torch.multiprocessing as mp

from serve_app.engine.config import EngineConfig
from serve_app.engine.errors import TensorParallelError
from serve_app.engine.model_runner import resolve_device
from serve_app.engine.parallel.executor import STARTUP_TIMEOUT_S, TensorParallelExecutor
from serve_app.engine.parallel.group import Rendezvous
from serve_app.engine.parallel.worker_process import run_worker_process

DEATH_GRACE_S = 5.0  # how long to wait for a dead rank's exit, or a stopped one's
WORKER_MODULE = "serve_app.engine.parallel.worker_process"  # the fork server imports it once


class MultiprocessExecutor(TensorParallelExecutor):
    def __init__(self, config: EngineConfig, model_dir: Path) -> None:
        # The lock also guards every look at the worker processes: a fork-server child's exit
        # status can be read only once (a second concurrent reader would see a bogus 255).
        self.processes: list[mp.Process] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        device = resolve_device(config)
        world_size = config.tensor_parallel_size
        if device.type == "cuda" and torch.cuda.device_count() < world_size:
            raise TensorParallelError(
                f"EngineConfig.tensor_parallel_size {world_size} needs that many CUDA "
                f"devices, {torch.cuda.device_count()} visible"
            )
        # On CPU the ranks share the host's cores: each rank's forward gets its share of the
        # intra-op threads instead of all of them.
        if device.type == "cpu":
            self.threads_per_rank = max(1, torch.get_num_threads() // world_size)
        super().__init__(config, model_dir)

    def _start_ranks(self, config: EngineConfig, model_dir: Path, rendezvous: Rendezvous) -> None:
        # Not fork: the engine process is threaded. A fork server that has imported the model
        # stack once starts every later worker in milliseconds instead of a fresh interpreter.
        context = mp.get_context("forkserver")
        context.set_forkserver_preload([WORKER_MODULE])
        for rank in range(1, self.world_size):
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=run_worker_process,
                args=(child_end, config, model_dir, rank, rendezvous, self.threads_per_rank),
                name=f"tp-worker-{rank}",
                daemon=True,  # never outlive the engine process
            )
            process.start()
            child_end.close()
            self.processes.append(process)
            self._conns.append(parent_end)
        for rank in range(1, self.world_size):
            self._receive(rank, STARTUP_TIMEOUT_S)  # imported and about to join the group

    def _call_ranks(self, method: str, *args, timeout_s: float | None) -> list:
        self._send_all(method, *args)
        if timeout_s is None:
            return []
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

    def _wait_for_rank_failure(self, timeout_s: float) -> str | None:
        sentinels = {process.sentinel: rank for rank, process in enumerate(self.processes, 1)}
        ready = multiprocessing.connection.wait(list(sentinels), timeout_s)
        if not ready:
            return None
        rank = sentinels[ready[0]]
        with self.lock:
            death = describe_dead_worker(rank, self.processes[rank - 1])
        report = read_worker_error(self._conns[rank - 1])  # its traceback, if it sent one
        return death if report is None else f"{death}\n{report}"

    def _stop_ranks(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # that worker is already gone
                conn.send_bytes(pickle.dumps(("shutdown", ())))
        with self.lock:
            for process in self.processes:
                process.join(timeout=DEATH_GRACE_S)
                if process.is_alive():
                    process.kill()
                    process.join()
        for conn in self._conns:
            conn.close()


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
