"""RayExecutor: a replica's tensor-parallel ranks 1..N-1 as Ray actors in its placement group.

The transport of TensorParallelExecutor (engine/parallel/executor.py) under Serve. Each rank
is a `TensorParallelActor` driving a TensorParallelWorker, scheduled into bundle `rank` of
the replica's placement group (build_app asks Serve for one bundle per rank, STRICT_PACK, so
every rank is on the replica's node): the group meets on the node's IP at a port the OS
picks, gloo on CPU, NCCL on GPU (one GPU per bundle, so every rank sees its GPU as device 0).

Each actor also holds one long call open in a separate concurrency group; it returns when
the actor fails a step, and raises RayActorError when the actor dies. The watcher waits on
those calls, and the first to return kills the other actors, so a step in flight fails at
once, `check_health` raises TensorParallelError, and Serve replaces the replica.
"""

from __future__ import annotations

import os
import threading
import traceback
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.errors import TensorParallelError
from serve_app.engine.model_input import ModelInput
from serve_app.engine.model_path import resolve_model_dir
from serve_app.engine.parallel.executor import TensorParallelExecutor
from serve_app.engine.parallel.group import Rendezvous
from serve_app.engine.parallel.worker import KVMemoryReport, TensorParallelWorker

ACTOR_START_TIMEOUT_S = 120.0  # a worker process starting in its bundle
SHUTDOWN_GRACE_S = 5.0
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
    ) -> None:
        """Join the group and build this rank's model; a failure is kept for `kv_memory`,
        the driver's next call, to report."""
        try:  # Ray shows this actor only the GPU of its bundle.
            self.worker = TensorParallelWorker(
                config, model_dir, rank, rendezvous, None, local_address, cuda_device_index=0
            )
        except Exception:
            self._failure = traceback.format_exc()

    def kv_memory(self) -> KVMemoryReport:
        if self.worker is None:
            raise RuntimeError(f"joining the tensor-parallel group failed:\n{self._failure}")
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


class RayExecutor(TensorParallelExecutor):
    def __init__(
        self,
        config: EngineConfig,
        model_dir: Path,
        placement_group: PlacementGroup | None = None,  # None: the caller's own
    ) -> None:
        self.placement_group = placement_group or get_current_placement_group()
        self.host = ray.util.get_node_ip_address()
        self.actors: list = []  # ray ActorHandles, rank 1..N-1 in order
        self._watch_refs: dict = {}  # ObjectRef of wait_for_failure -> rank
        super().__init__(config, model_dir)

    def _start_ranks(self, config: EngineConfig, model_dir: Path, rendezvous: Rendezvous) -> None:
        bundles = placement_group_bundles(self.placement_group, self.world_size)
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
        for rank, actor in enumerate(self.actors, start=1):
            actor.join.remote(config, model_dir, rank, rendezvous, self.host)
            watch = actor.wait_for_failure.options(concurrency_group=WATCH_GROUP).remote()
            self._watch_refs[watch] = rank

    def _call_ranks(self, method: str, *args, timeout_s: float | None) -> list:
        refs = [getattr(actor, method).remote(*args) for actor in self.actors]
        return [] if timeout_s is None else self._get(refs, timeout_s, f"answer {method}")

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

    def _wait_for_rank_failure(self, timeout_s: float) -> str | None:
        ready, _ = ray.wait(list(self._watch_refs), num_returns=1, timeout=timeout_s)
        if not ready:
            return None
        rank = self._watch_refs[ready[0]]
        try:
            failure = f"tensor-parallel worker rank {rank} failed a step:\n{ray.get(ready[0])}"
        except RayActorError as error:
            failure = f"tensor-parallel worker rank {rank} (Ray actor) died: {error}"
        # A rank that failed a step is still alive; rank 0's gloo collective fails once the
        # peers' sockets close.
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        return failure

    def _stop_ranks(self) -> None:
        stops = [actor.shutdown.remote() for actor in self.actors]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=SHUTDOWN_GRACE_S)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)  # frees the bundle at once


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
