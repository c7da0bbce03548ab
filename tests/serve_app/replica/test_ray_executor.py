"""RayExecutor without Serve: an actor in bundle 0 of a placement group plays the replica.

Greedy tokens equal the in-process engine's; a worker that fails a step makes the driver's
health check name the rank and the error; shutdown removes the worker actors.
"""

from __future__ import annotations

import sys
import time

import pytest

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampling_params import SamplingParams

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(180)]

CONFIG = EngineConfig(model="tiny", max_num_seqs=4, kv_cache_memory_bytes=2**22)
TP_CONFIG = EngineConfig(
    model="tiny", max_num_seqs=4, kv_cache_memory_bytes=2**22, tensor_parallel_size=2
)
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 6, 7], [(3 * i + 1) % 256 for i in range(17)]]
RANK_CPUS = 0.5


class EngineHost:
    """Holds rank 0 (the engine) inside bundle 0, as a Serve replica would."""

    def __init__(self, config: EngineConfig) -> None:
        from serve_app.replica.ray_executor import make_llm_engine

        self.engine = make_llm_engine(config)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        return self.engine.generate(prompts, params)

    def worker_names(self) -> list[str]:
        from serve_app.replica.ray_executor import worker_actor_name

        executor = self.engine.executor
        return [worker_actor_name(executor.placement_group, 1)]

    def send_bad_step_to_rank_1(self) -> None:
        """A step only rank 1 runs, with float token ids: its embedding lookup raises."""
        from serve_app.engine.model_input import build_model_input

        executor = self.engine.executor
        request_id = self.engine.add_request([1, 2, 3], GREEDY)
        chunks = self.engine.scheduler.schedule()
        model_input = build_model_input(chunks, TP_CONFIG.block_size)
        model_input.token_ids = model_input.token_ids.float()
        executor.actors[0].execute.remote(model_input)
        self.engine.abort(request_id)

    def health(self) -> str:
        try:
            self.engine.executor.check_health()
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return "healthy"

    def shutdown(self) -> None:
        self.engine.shutdown()


@pytest.fixture
def engine_host(live_app):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # Ray's workers cannot import this test module by name: ship its classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    group = placement_group([{"CPU": RANK_CPUS}] * 2, strategy="STRICT_PACK")
    ray.get(group.ready(), timeout=60)
    host = (
        ray.remote(EngineHost)
        .options(
            num_cpus=RANK_CPUS,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
        )
        .remote(TP_CONFIG)
    )
    try:
        yield host
    finally:
        ray.kill(host)
        remove_placement_group(group)


def wait_for_actor_gone(name: str, timeout_s: float = 10.0) -> bool:
    import ray

    from serve_app.replica.ray_executor import WORKER_NAMESPACE

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=WORKER_NAMESPACE)
        except ValueError:
            return True
        time.sleep(0.1)
    return False


def test_greedy_tokens_equal_the_in_process_engine_and_shutdown_removes_workers(engine_host):
    import ray

    engine = LLMEngine(CONFIG)
    expected = engine.generate(PROMPTS, GREEDY)
    engine.shutdown()
    assert ray.get(engine_host.generate.remote(PROMPTS, GREEDY), timeout=60) == expected
    [name] = ray.get(engine_host.worker_names.remote())
    assert ray.get(engine_host.health.remote()) == "healthy"
    ray.get(engine_host.shutdown.remote(), timeout=30)
    assert ray.get(engine_host.health.remote()).endswith("has been shut down")
    assert wait_for_actor_gone(name)


def test_a_worker_that_fails_a_step_fails_the_health_check_with_its_error(engine_host):
    import ray

    [name] = ray.get(engine_host.worker_names.remote())
    ray.get(engine_host.send_bad_step_to_rank_1.remote(), timeout=30)
    deadline = time.monotonic() + 10
    while (health := ray.get(engine_host.health.remote())) == "healthy":
        assert time.monotonic() < deadline, "the failed step was never reported"
        time.sleep(0.1)
    assert health.startswith("TensorParallelError: tensor-parallel worker rank 1 failed a step")
    assert "embedding" in health  # the worker's own traceback
    assert wait_for_actor_gone(name)  # the executor stopped its ranks
    with pytest.raises(ray.exceptions.RayTaskError, match="rank 1 failed a step"):
        ray.get(engine_host.generate.remote(PROMPTS, GREEDY), timeout=30)
