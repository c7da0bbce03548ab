"""The micro-batcher inside Serve: concurrent HTTP requests through ingress -> batcher ->
replica give the engine's greedy outputs, and so does an app with the batcher switched off;
a caller leaving one request of a multi-request batch aborts that request alone on the
replica (through its AbortChannel) and frees its KV blocks; `reconfigure` changes batching
on the running batcher replica."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from transformers import AutoTokenizer

from serve_app.engine.model_path import resolve_model_dir
from serve_app.engine.sampling_params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.ray]

PROMPTS = [f"Story number {index} begins" for index in range(8)]
MAX_TOKENS = 10
# Wide windows so that a burst is certainly batched: the policy counts arrivals over 10
# windows and targets 1 + a tenth of them, so after 20 recent arrivals it waits for 3.
BURSTY = {"max_wait_ms": 1000, "target_ttft_ms": 30_000, "max_batch_size": 8}
NUM_WARMUP = 20
# Concurrent requests at a time: a new handle's router queues every call until it has heard
# of the replicas, and the test app's batcher queues at most MAX_QUEUED (8).
GROUP = 5
MAX_EXTRA_GROUPS = 16


@pytest.fixture(scope="module")
def expected_texts(engine) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("tiny"))
    prompt_ids = [tokenizer.encode(prompt) for prompt in PROMPTS]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    return [
        tokenizer.decode(ids, skip_special_tokens=True)
        for ids in engine.generate(prompt_ids, params)
    ]


@pytest.fixture(scope="module")
def batcher_handle(live_app):
    from ray import serve

    from serve_app.app import BATCHER_NAME
    from tests.serve_app.conftest import APP_NAME

    handle = serve.get_deployment_handle(BATCHER_NAME, app_name=APP_NAME)
    yield handle
    handle.reconfigure.remote({}).result()  # back to the session app's (default) knobs


def complete_concurrently(base_url: str, headers: dict[str, str]) -> list[str]:
    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
            bodies = [
                {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
                | {"ignore_eos": True}
                for prompt in PROMPTS
            ]
            responses = await asyncio.gather(
                *(http.post("/v1/completions", json=body) for body in bodies)
            )
        assert [response.status_code for response in responses] == [200] * len(PROMPTS)
        return [response.json()["choices"][0]["text"] for response in responses]

    return asyncio.run(run())


def forwarded(stats: dict) -> int:
    return sum(size * count for size, count in stats["batch_size_counts"].items())


def test_concurrent_http_requests_equal_engine_greedy(live_app, batcher_handle, expected_texts):
    before = batcher_handle.stats.remote().result()
    assert complete_concurrently(live_app.base_url, live_app.headers()) == expected_texts
    after = batcher_handle.stats.remote().result()
    assert forwarded(after) - forwarded(before) == len(PROMPTS)  # all went through it
    assert after["num_live_requests"] == after["num_queued"] == 0


def test_batcher_off_gives_the_same_outputs(live_app, expected_texts):
    from ray import serve

    from serve_app.app import BATCHER_NAME, REPLICA_NAME, build_app
    from tests.serve_app.conftest import APP_NAME

    args = {
        **live_app.args,
        "batcher": {"enabled": False},
        "replica": {**live_app.args["replica"], "num_cpus": 0.25},
        "ingress": {"num_cpus": 0.05},
    }
    serve.run(build_app(args), name="direct", route_prefix="/direct")
    try:
        status = serve.status().applications
        assert BATCHER_NAME in status[APP_NAME].deployments
        assert REPLICA_NAME in status["direct"].deployments
        assert BATCHER_NAME not in status["direct"].deployments
        texts = complete_concurrently(live_app.base_url + "/direct", live_app.headers())
        assert texts == expected_texts
    finally:
        serve.delete("direct", _blocking=False)  # its replicas stop in the background


async def drain(stream) -> list[int]:
    return [token async for chunk in stream for token in chunk.token_ids]


async def burst(batcher_handle, tag: str, num_groups: int, until_target: int = 1) -> None:
    """One-token requests, GROUP at a time, at least `num_groups` times and until the policy's
    target batch size is `until_target` (a loaded machine may need more groups to get there)."""
    from serve_app.ingress.token_source import BatchingTokenStreamer

    streamer = BatchingTokenStreamer(batcher_handle)
    short = SamplingParams(max_tokens=1, temperature=0)
    for group in range(num_groups + MAX_EXTRA_GROUPS):
        if group >= num_groups:
            stats = await batcher_handle.stats.remote()
            if stats["target_batch_size"] >= until_target:
                return
        ids = [f"burst-{tag}-{group}-{i}" for i in range(GROUP)]
        await asyncio.gather(*(drain(streamer.stream([5, 6], short, id)) for id in ids))
    raise AssertionError(f"the policy never expected batches of {until_target}: {stats}")


def test_leaving_one_request_of_a_batch_aborts_it_alone(
    live_app, batcher_handle, replica_handle, engine
):
    from serve_app.ingress.token_source import BatchingTokenStreamer
    from tests.serve_app.replica_idle import wait_for_idle

    before = wait_for_idle(replica_handle)
    batcher_handle.reconfigure.remote(BURSTY).result()
    prompts = [[11, 12, 13, 14], [21, 22, 23], [31, 32, 33, 34, 35]]
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    # The one that leaves has seconds of work left, so its abort certainly comes first.
    long_params = [params, SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True), params]
    tag = uuid.uuid4().hex[:8]

    async def run():
        streamer = BatchingTokenStreamer(batcher_handle)
        await burst(batcher_handle, tag, NUM_WARMUP // GROUP, until_target=len(prompts))
        streams = [
            streamer.stream(prompt, long_params[i], f"long-{tag}-{i}")
            for i, prompt in enumerate(prompts)
        ]
        firsts = await asyncio.gather(*(anext(stream) for stream in streams))
        live = await batcher_handle.live_requests.remote()
        during = await replica_handle.stats.remote()
        await streams[1].aclose()  # this caller leaves; the other two go on
        rests = await asyncio.gather(drain(streams[0]), drain(streams[2]))
        tokens = [
            first.token_ids + rest
            for first, rest in zip([firsts[0], firsts[2]], rests, strict=True)
        ]
        return live, during, tokens

    live, during, tokens = asyncio.run(run())
    batch_ids = {live[f"long-{tag}-{i}"].batch_id for i in range(3)}
    assert len(batch_ids) == 1 and None not in batch_ids  # the three shared one batch
    assert during["num_running"] == 3
    expected = engine.generate(prompts, params)  # the same as alone: greedy is batch-free
    assert tokens == [expected[0], expected[2]]
    after = wait_for_idle(replica_handle)
    assert (after["num_running"], after["num_waiting"], after["num_used_kv_blocks"]) == (0, 0, 0)
    # The replica ended exactly one request unfinished: the abort reached it.
    assert after["num_cancelled_streams"] == before["num_cancelled_streams"] + 1
    assert batcher_handle.stats.remote().result()["num_live_requests"] == 0


def test_reconfigure_changes_the_batch_size_live(batcher_handle):
    tag = uuid.uuid4().hex[:8]

    def burst_sizes(knobs: dict, name: str) -> tuple[set[int], int]:
        batcher_handle.reconfigure.remote(knobs).result()
        # Enough recent arrivals that the policy expects batches of 3 (when allowed).
        target = min(3, knobs["max_batch_size"])
        asyncio.run(burst(batcher_handle, f"warm-{name}-{tag}", 1, until_target=target))
        before = batcher_handle.stats.remote().result()["batch_size_counts"]
        asyncio.run(burst(batcher_handle, f"{name}-{tag}", NUM_WARMUP // GROUP))
        stats = batcher_handle.stats.remote().result()
        assert stats["policy"]["max_batch_size"] == knobs["max_batch_size"]
        after = stats["batch_size_counts"]
        return {size for size in after if after[size] > before.get(size, 0)}, stats["pid"]

    one_by_one, pid = burst_sizes({**BURSTY, "max_batch_size": 1}, "single")
    batched, same_pid = burst_sizes(BURSTY, "batched")
    assert one_by_one == {1}
    assert max(batched) >= 2
    assert same_pid == pid  # the same batcher replica, reconfigured in place


def test_batch_size_and_queue_wait_reach_prometheus(live_app, batcher_handle):
    import time

    from serve_app import metrics
    from tests.serve_app.test_metrics import exported_values

    assert complete_concurrently(live_app.base_url, live_app.headers())
    names = [
        metrics.BATCH_SIZE.series("_count"),
        metrics.BATCH_QUEUE_WAIT_S.series("_count"),
    ]
    counts = dict.fromkeys(names, 0.0)
    deadline = time.monotonic() + 60
    while min(counts.values()) == 0 and time.monotonic() < deadline:
        time.sleep(1)
        counts = dict.fromkeys(names, 0.0)
        for series, value in exported_values(live_app.metrics_url).items():
            name = series.split("{")[0]
            if name in counts and 'deployment="Batcher"' in series:
                counts[name] += float(value)
    batch_count, wait_count = counts.values()
    assert batch_count >= 1
    assert wait_count >= len(PROMPTS) and wait_count >= batch_count  # one wait per request
