"""A TP=2 app (tiny model, CPU, gloo) beside the session's TP=1 app: the same greedy tokens,
both ranks in the replica's placement group, and a killed worker actor gets the replica
replaced by Serve."""

from __future__ import annotations

import copy
import time

import httpx
import pytest

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

TP_APP = "llm-tp2"
TP_PREFIX = "/tp2"
PROMPTS = [[7, 11, 13], [(5 * i + 3) % 256 for i in range(20)]]
MAX_TOKENS = 12
HEALTH_CHECK_PERIOD_S = 1.0
REPLACE_DEADLINE_S = 60.0
UNHEALTHY_DEADLINE_S = 10.0  # from the kill to a failing health check


@pytest.fixture(scope="module")
def tp_app(live_app):
    from ray import serve

    from serve_app.app import build_app

    args = copy.deepcopy(live_app.args)
    args["engine"]["tensor_parallel_size"] = 2
    args["replica"].update(
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=5,
        graceful_shutdown_timeout_s=1,
    )
    serve.run(build_app(args), name=TP_APP, route_prefix=TP_PREFIX)
    try:
        yield live_app.base_url + TP_PREFIX
    finally:
        serve.delete(TP_APP, _blocking=False)  # its replicas stop in the background


def complete_greedy(base_url: str, live_app, prompt: list[int]) -> str:
    body = {
        "model": live_app.model,
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }
    response = httpx.post(
        base_url + "/v1/completions", json=body, headers=live_app.headers(), timeout=60
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    return choice["text"]


def replica_token_ids(prompt: list[int]) -> list[int]:
    from ray import serve

    from serve_app.app import REPLICA_NAME

    handle = serve.get_deployment_handle(REPLICA_NAME, app_name=TP_APP).options(stream=True)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    token_ids: list[int] = []
    request = BatchRequest(f"tp-test-{time.monotonic_ns()}", prompt, params)
    for message in handle.generate_batch.remote([request]):
        token_ids.extend(t for tagged in message.chunks for t in tagged.chunk.token_ids)
    return token_ids


def tp_placement_groups() -> dict[str, dict]:
    """The live placement groups of the TP app's replicas, by id."""
    import ray

    table = ray.util.placement_group_table()
    return {
        pg_id: info
        for pg_id, info in table.items()
        if TP_APP in info["name"] and info["state"] == "CREATED"
    }


def worker_actor(pg_id: str):
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    from serve_app.replica.ray_executor import WORKER_NAMESPACE, worker_actor_name

    group = PlacementGroup(PlacementGroupID.from_hex(pg_id))
    return ray.get_actor(worker_actor_name(group, 1), namespace=WORKER_NAMESPACE)


def test_tp2_gives_the_greedy_tokens_of_tp1(tp_app, live_app):
    engine = LLMEngine(EngineConfig(model="tiny", max_num_seqs=4, kv_cache_memory_bytes=2**22))
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    expected = engine.generate(PROMPTS, params)
    engine.shutdown()
    assert [replica_token_ids(prompt) for prompt in PROMPTS] == expected
    for prompt in PROMPTS:
        assert complete_greedy(tp_app, live_app, prompt) == complete_greedy(
            live_app.base_url, live_app, prompt
        )


def test_replica_placement_group_holds_both_ranks(tp_app, live_app):
    import ray

    groups = tp_placement_groups()
    assert len(groups) == 1, groups
    ((pg_id, info),) = groups.items()
    assert info["strategy"] == "STRICT_PACK"
    cpus = live_app.args["replica"]["num_cpus"]  # per rank
    assert list(info["bundles"].values()) == [{"CPU": cpus}, {"CPU": cpus}]
    placement = ray.get(worker_actor(pg_id).placement.remote(), timeout=30)
    assert placement["placement_group_id"] == pg_id  # the worker says so itself
    assert placement["node_id"] == info["bundles_to_node_id"][1]


def test_killed_worker_makes_the_replica_unhealthy_and_serve_replaces_it(tp_app, live_app):
    import ray
    from ray import serve

    from serve_app.app import REPLICA_NAME

    expected = complete_greedy(tp_app, live_app, PROMPTS[0])
    (old_pg_id,) = tp_placement_groups()
    handle = serve.get_deployment_handle(REPLICA_NAME, app_name=TP_APP)
    start = time.monotonic()
    ray.kill(worker_actor(old_pg_id), no_restart=True)
    # The replica's own health check fails as soon as Ray reports the actor dead to the
    # executor's watcher (ray.kill returns before that: asking at once raced it), naming
    # the dead rank.
    while True:
        try:
            handle.check_health.remote().result(timeout_s=10)
        except Exception as error:  # Serve wraps the replica's TensorParallelError
            assert "rank 1" in str(error), error
            unhealthy_after = time.monotonic() - start
            break
        assert time.monotonic() - start < UNHEALTHY_DEADLINE_S, "still healthy after the kill"
        time.sleep(0.05)
    new_pg_ids: list[str] = []
    while time.monotonic() - start < REPLACE_DEADLINE_S:
        new_pg_ids = [pg_id for pg_id in tp_placement_groups() if pg_id != old_pg_id]
        if new_pg_ids and old_pg_id not in tp_placement_groups():
            break
        time.sleep(0.25)
    assert new_pg_ids, f"no replacement replica within {REPLACE_DEADLINE_S}s"
    assert complete_greedy(tp_app, live_app, PROMPTS[0]) == expected
    elapsed = time.monotonic() - start
    assert ray.get(worker_actor(new_pg_ids[0]).placement.remote(), timeout=30)["pid"] > 0
    print(
        f"replica unhealthy {unhealthy_after:.2f}s and replaced and serving again "
        f"{elapsed:.1f}s after the kill"
    )
    assert elapsed < REPLACE_DEADLINE_S
