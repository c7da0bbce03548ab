"""The worker side of the multiprocess transport: a spawned process's whole life as one
tensor-parallel rank, driven over a pipe by MultiprocessExecutor (multiproc_executor.py).

Messages from the driver are pickled `(method, args)` tuples; the worker answers everything
but `execute` with `("ok", result)` (steps are paced by the collectives instead), and on
any failure sends `("error", traceback)` before exiting with code 1.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import pickle
import signal
import traceback
from pathlib import Path

import torch

from serve_app.engine.config import EngineConfig
from serve_app.engine.parallel.group import Rendezvous
from serve_app.engine.parallel.worker import TensorParallelWorker

WORKER_METHODS = ("kv_memory", "allocate_kv_cache", "execute")


def run_worker_process(
    conn: multiprocessing.connection.Connection,
    config: EngineConfig,
    model_dir: Path,
    rank: int,
    rendezvous: Rendezvous,
    num_threads: int,
) -> None:
    """A worker process's whole life: join, build, then run what the driver sends until it
    says shutdown or goes away. Any failure is reported on the pipe before exiting."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    if num_threads:
        torch.set_num_threads(num_threads)
    worker = None
    try:
        conn.send(("started", None))
        worker = TensorParallelWorker(config, model_dir, rank, rendezvous)
        while True:
            try:
                method, args = pickle.loads(conn.recv_bytes())
            except EOFError:
                return  # the driver's process is gone
            if method == "shutdown":
                return
            assert method in WORKER_METHODS, method
            result = getattr(worker, method)(*args)
            if method != "execute":  # steps are never answered: the collectives pace them
                conn.send(("ok", result))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if worker is not None:
            worker.shutdown()
