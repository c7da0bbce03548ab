"""RayExecutor: a replica's tensor-parallel ranks 1..N-1 as Ray actors in its placement group.

Rank 0 (the driver) runs inside the replica's own process, beside the engine, so its logits
never leave it. Each other rank is a `TensorParallelActor` driving a TensorParallelWorker,
scheduled into bundle `rank` of the replica's placement group (build_app asks Serve for one
bundle per rank, STRICT_PACK, so every rank is on the replica's node): the group meets on
the node's IP at a port the OS picks, gloo on CPU, NCCL on GPU (one GPU per bundle, so every
rank sees its GPU as device 0).

Per step the driver submits the ModelInput to every actor without waiting for an answer and
runs its own forward; the collectives inside the layers keep the ranks in lock-step. Each
actor also holds one long call open in a separate concurrency group; it returns when the
actor fails a step, and raises RayActorError when the actor dies. A watcher thread waits on
those calls: the first to return records why, aborts the group and kills the other actors,
so a step in flight fails at once, `check_health` raises TensorParallelError, and Serve
replaces the replica.
"""

from __future__ import annotations

import os
import threading
import traceback
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from serve_app.engine.config import EngineConfig
from serve_app.engine.distributed import Rendezvous, backend_for_device, open_rendezvous
from serve_app.engine.engine import LLMEngine
from serve_app.engine.loader import read_architecture
from serve_app.engine.model_input import ModelInput
from serve_app.engine.model_runner import resolve_device
from serve_app.engine.parallel import check_tensor_parallel_sizes
from serve_app.engine.tensor_parallel import (
    ExecutorLifecycle,
    TensorParallelError,
    plan_kv_blocks_over_ranks,
)
from serve_app.engine.tiny import resolve_model_dir
from serve_app.engine.worker import KVMemoryReport, TensorParallelWorker

ACTOR_START_TIMEOUT_S = 120.0  # a worker process starting in its bundle
STARTUP_TIMEOUT_S = 600.0  # loading a large checkpoint on every rank
REPLY_TIMEOUT_S = 120.0
SHUTDOWN_GRACE_S = 5.0
WATCH_INTERVAL_S = 0.2
WORKER_NAMESPACE = "serve_app_tp"  # where the worker actors' names live
WATCH_GROUP = "watch"  # the actors' second thread: it only waits for a failure or shutdown


class TensorParallelActor:
    """One rank >= 1 in a Ray actor. Its calls run in submission order on one thread, except
    `wait_for_failure`, which runs on its own thread for the actor's whole life."""

    def __init__(self) -> None:
        self.worker: TensorParallelWorker | None = None
        self._failure: str | None = None
        self._stopped = threading.Event()

    def join(
        self,
        config: EngineConfig,
        model_dir: Path,
        rank: int,
        rendezvous: Rendezvous,
        local_address: str,
    ) -> KVMemoryReport:
        """Join the group, build this rank's model, report its KV memory."""
        # Ray shows this actor only the GPU of its bundle.
        self.worker = TensorParallelWorker(
            config, model_dir, rank, rendezvous, None, local_address, cuda_device_index=0
        )
        return self.worker.kv_memory()

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.worker.allocate_kv_cache(num_blocks)

    def execute(self, model_input: ModelInput) -> None:
        """Run one step; never answered with a value (nobody waits for it). A failure is kept
        for `wait_for_failure` instead of being raised into a reference nobody reads."""
        if self._failure is not None:
            return
        try:
            self.worker.execute(model_input)
        except Exception:
            self._failure = traceback.format_exc()
            self._stopped.set()

    def placement(self) -> dict:
        """Where Ray put this rank: its placement group, node and process."""
        context = ray.get_runtime_context()
        return {
            "placement_group_id": context.get_placement_group_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
        }

    def wait_for_failure(self) -> str | None:
        """Returns a failed step's traceback, or None after shutdown; raises (RayActorError,
        to the caller) if this actor dies."""
        self._stopped.wait()
        return self._failure

    def shutdown(self) -> None:
        self._stopped.set()
        if self.worker is not None:
            self.worker.shutdown()


class RayExecutor:
    def __init__(
        self,
        config: EngineConfig,
        model_dir: Path,
        placement_group: PlacementGroup | None = None,  # None: the caller's own
    ) -> None:
        self.world_size = config.tensor_parallel_size
        assert self.world_size > 1, "TP=1 runs in-process (InProcessExecutor)"
        check_tensor_parallel_sizes(read_architecture(model_dir), self.world_size)
        self.placement_group = placement_group or get_current_placement_group()
        self.driver: TensorParallelWorker | None = None
        self.actors: list = []  # ray ActorHandles, rank 1..N-1 in order
        self._watch_refs: dict = {}  # ObjectRef of wait_for_failure -> rank
        self.life = ExecutorLifecycle()
        self._worker_failed = threading.Event()  # set by the watcher with `life.failure`
        try:
            self._start(config, model_dir)
        except BaseException:
            self.shutdown()
            raise

    # ---- start-up ---------------------------------------------------------------------
    def _start(self, config: EngineConfig, model_dir: Path) -> None:
        bundles = placement_group_bundles(self.placement_group, self.world_size)
        device = resolve_device(config)  # rank 0's: the replica holds bundle 0's resources
        host = ray.util.get_node_ip_address()
        store, rendezvous = open_rendezvous(self.world_size, backend_for_device(device.type), host)
        actor_class = ray.remote(concurrency_groups={WATCH_GROUP: 1})(TensorParallelActor)
        for rank in range(1, self.world_size):
            resources = dict(bundles[rank])
            actor = actor_class.options(
                name=worker_actor_name(self.placement_group, rank),  # for operators and tests
                namespace=WORKER_NAMESPACE,
                num_cpus=resources.pop("CPU", 0),
                num_gpus=resources.pop("GPU", 0),
                resources=resources or None,
                max_restarts=0,  # a restarted rank could not rejoin the group
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group,
                    placement_group_bundle_index=rank,
                    placement_group_capture_child_tasks=False,
                ),
            ).remote()
            self.actors.append(actor)
        ready = [actor.placement.remote() for actor in self.actors]
        self._get(ready, ACTOR_START_TIMEOUT_S, "start in its placement-group bundle")
        joins = [
            actor.join.remote(config, model_dir, rank, rendezvous, host)
            for rank, actor in enumerate(self.actors, start=1)
        ]
        self.driver = TensorParallelWorker(
            config, model_dir, 0, rendezvous, store, host, cuda_device_index=0
        )
        self.runner = self.driver.runner  # the engine samples on rank 0's device
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.arch.vocab_size
        reports = [self.driver.kv_memory(), *self._get(joins, STARTUP_TIMEOUT_S, "load")]
        self.num_kv_blocks = plan_kv_blocks_over_ranks(reports, config, self.max_model_len)
        allocations = [actor.allocate_kv_cache.remote(self.num_kv_blocks) for actor in self.actors]
        self._get(allocations, REPLY_TIMEOUT_S, "allocate its KV cache")
        self.driver.allocate_kv_cache(self.num_kv_blocks)
        for rank, actor in enumerate(self.actors, start=1):
            watch = actor.wait_for_failure.options(concurrency_group=WATCH_GROUP).remote()
            self._watch_refs[watch] = rank
        self.life.start_watcher(self._watch, "tp-ray-watcher")

    def _get(self, refs: list, timeout_s: float, what: str) -> list:
        try:
            return ray.get(refs, timeout=timeout_s)
        except GetTimeoutError:
            raise TensorParallelError(
                f"a tensor-parallel worker actor did not {what} within {timeout_s:.0f}s"
            ) from None
        except RayActorError as error:
            raise TensorParallelError(f"a tensor-parallel worker actor died: {error}") from None
        except ray.exceptions.RayTaskError as error:
            raise TensorParallelError(
                f"a tensor-parallel worker failed to {what}:\n{error}"
            ) from None

    # ---- steps ------------------------------------------------------------------------
    def execute(self, model_input: ModelInput) -> torch.Tensor | None:
        self.check_health()
        try:
            for actor in self.actors:
                actor.execute.remote(model_input)  # nobody waits: the collectives pace steps
            return self.driver.execute(model_input)
        except Exception as error:
            # The ranks are out of step now; stop them here, in the thread driving the group.
            raise self._fail(f"a tensor-parallel step failed on rank 0: {error!r}") from error

    def check_health(self) -> None:
        """Raise TensorParallelError if a rank has died or failed, or after shutdown. Safe
        from any thread: the watcher notices a dead actor within WATCH_INTERVAL_S."""
        with self.life.lock:
            self.life.raise_if_unusable()

    def _fail(self, fallback: str) -> TensorParallelError:
        # A dead actor breaks rank 0's collective at once; give the watcher a moment to say
        # which rank it was before settling for the collective's own error.
        if self.life.watcher is not None:
            self._worker_failed.wait(SHUTDOWN_GRACE_S)
        with self.life.lock:
            if self.life.failure is None:
                self.life.failure = fallback
            failure = self.life.failure
        self.shutdown()
        return TensorParallelError(failure)

    def _watch(self) -> None:
        pending = list(self._watch_refs)
        while not self.life.stop_watching.is_set():
            ready, pending = ray.wait(pending, num_returns=1, timeout=WATCH_INTERVAL_S)
            if not ready or self.life.stop_watching.is_set():
                continue
            rank = self._watch_refs[ready[0]]
            try:
                traceback_text = ray.get(ready[0])
                failure = f"tensor-parallel worker rank {rank} failed a step:\n{traceback_text}"
            except RayActorError as error:
                failure = f"tensor-parallel worker rank {rank} (Ray actor) died: {error}"
            with self.life.lock:
                if self.life.failure is None:
                    self.life.failure = failure
            self._worker_failed.set()
            # Unblock rank 0: NCCL needs an abort; gloo fails once the peers' sockets close.
            self.driver.abort()
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            return

    # ---- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every worker actor, destroy the group and free the KV cache; safe twice."""
        if not self.life.close():
            return
        stops = [actor.shutdown.remote() for actor in self.actors]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=SHUTDOWN_GRACE_S)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)  # frees the bundle at once
        if self.driver is not None:
            self.driver.shutdown()


def placement_group_bundles(placement_group: PlacementGroup | None, world_size: int) -> list:
    """The bundles of the replica's placement group: one per rank, rank 0's first."""
    if placement_group is None:
        raise TensorParallelError(
            "EngineConfig.tensor_parallel_size > 1 under Ray needs a placement group with one "
            "bundle per rank; build_app sets the replica's placement_group_bundles"
        )
    bundles = placement_group.bundle_specs
    if len(bundles) < world_size:
        raise TensorParallelError(
            f"the placement group has {len(bundles)} bundles; EngineConfig.tensor_parallel_size "
            f"{world_size} needs one per rank"
        )
    return bundles


def worker_actor_name(placement_group: PlacementGroup, rank: int) -> str:
    """Unique per replica (its placement group), in WORKER_NAMESPACE."""
    return f"tp-worker-{placement_group.id.hex()}-rank{rank}"


def make_llm_engine(config: EngineConfig) -> LLMEngine:
    """The replica's engine: with TP > 1 its extra ranks are Ray actors in the replica's
    placement group instead of local processes."""
    if config.tensor_parallel_size == 1:
        return LLMEngine(config)
    executor = RayExecutor(config, resolve_model_dir(config.model))
    try:
        return LLMEngine(config, executor=executor)
    except BaseException:
        executor.shutdown()
        raise
