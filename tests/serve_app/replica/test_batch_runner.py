"""ModelReplica.generate_batch without Ray: a batch streams every request's greedy tokens,
aborting one request of it frees that request alone, a request the engine rejects ends
with its own error while the others complete, a drain hands every request back until it
ends, and a request resumed here while its old stream is still open takes over from it."""

from __future__ import annotations

import asyncio

from serve_app.config import load_app_config
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchMessage, BatchRequest, ReplicaDrainingError, TaggedChunk
from serve_app.replica.deployment import ModelReplica

ARGS = {"engine": {"kv_cache_memory_bytes": 2**20, "max_num_seqs": 4}}
PROMPTS = [[72, 101, 108], [1, 2, 3, 4, 5], [9, 8, 7, 6]]


def expected_tokens(params: SamplingParams) -> list[list[int]]:
    return LLMEngine(load_app_config(ARGS).engine).generate(PROMPTS, params)


def batch(params: SamplingParams, prompts=PROMPTS) -> list[BatchRequest]:
    return [BatchRequest(f"r{i}", prompt, params) for i, prompt in enumerate(prompts)]


async def collect(replica: ModelReplica, requests: list[BatchRequest], on_message=None):
    """Tokens and final messages per request id, from one generate_batch stream."""
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    finals: dict[str, TaggedChunk] = {}
    stream = replica.generate_batch(requests)
    async for batch_message in stream:
        assert isinstance(batch_message, BatchMessage)
        assert batch_message.abort_channel is None  # no Ray here: no channel to name
        for message in batch_message.chunks:
            if message.chunk is not None:
                tokens[message.request_id] += message.chunk.token_ids
            if message.final:
                finals[message.request_id] = message
        if on_message is not None:
            on_message(tokens)
    return tokens, finals


def test_a_batch_streams_each_requests_greedy_tokens():
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    tokens, finals = asyncio.run(collect(replica, batch(params)))
    assert [tokens[f"r{i}"] for i in range(3)] == expected_tokens(params)
    assert all(finals[f"r{i}"].chunk.finish_reason == "length" for i in range(3))
    assert replica.num_cancelled_streams == 0
    replica.engine.shutdown()


def test_a_batch_groups_each_requests_tokens_by_the_stream_interval():
    replica = ModelReplica(load_app_config({**ARGS, "replica": {"stream_interval_tokens": 3}}))
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    sizes: dict[str, list[int]] = {f"r{i}": [] for i in range(3)}

    async def run():
        stream = replica.generate_batch(batch(params))
        tokens = {name: [] for name in sizes}
        async for batch_message in stream:
            for message in batch_message.chunks:
                if message.chunk is not None and message.chunk.token_ids:
                    sizes[message.request_id].append(len(message.chunk.token_ids))
                    tokens[message.request_id] += message.chunk.token_ids
        return tokens

    tokens = asyncio.run(run())
    assert [tokens[f"r{i}"] for i in range(3)] == expected_tokens(params)
    assert all(group == [1, 3, 3, 1] for group in sizes.values()), sizes
    replica.engine.shutdown()


def test_aborting_one_request_of_a_batch_frees_it_alone():
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    seen_running: list[int] = []

    def abort_r1_once_started(tokens: dict[str, list[int]]) -> None:
        if tokens["r1"] and not seen_running:
            seen_running.append(replica.engine.stats().num_running)
            replica.batches.abort_requests(["r1", "unknown-id"])

    tokens, finals = asyncio.run(collect(replica, batch(params), abort_r1_once_started))
    expected = expected_tokens(params)
    assert seen_running == [3]
    assert finals["r1"].chunk is None and finals["r1"].error is None  # aborted
    assert 0 < len(tokens["r1"]) < 40 and tokens["r1"] == expected[1][: len(tokens["r1"])]
    assert (tokens["r0"], tokens["r2"]) == (expected[0], expected[2])
    stats = replica.engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_used_kv_blocks) == (0, 0, 0)
    assert replica.num_cancelled_streams == 1
    assert replica.batches.num_live_requests == 0
    replica.engine.shutdown()


def test_a_rejected_request_ends_with_its_error_and_the_others_complete():
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=4, temperature=0)
    requests = batch(params, [PROMPTS[0], [10**9], PROMPTS[2]])
    tokens, finals = asyncio.run(collect(replica, requests))
    assert isinstance(finals["r1"].error, RequestError)
    assert "prompt token ids" in str(finals["r1"].error)
    expected = expected_tokens(params)
    assert (tokens["r0"], tokens["r2"]) == (expected[0], expected[2])
    replica.engine.shutdown()


def test_closing_the_batch_stream_aborts_every_request():
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)

    async def run():
        stream = replica.generate_batch(batch(params))
        await anext(stream)  # some tokens
        await stream.aclose()
        for _ in range(100):
            stats = replica.engine.stats()
            if stats.num_running == stats.num_used_kv_blocks == 0:
                break
            await asyncio.sleep(0.02)
        return stats

    stats = asyncio.run(run())
    assert (stats.num_running, stats.num_used_kv_blocks) == (0, 0)
    assert replica.num_cancelled_streams == 3
    replica.engine.shutdown()


def test_time_slices_under_load_carry_several_tokens_per_message_unchanged():
    replica = ModelReplica(load_app_config({**ARGS, "replica": {"stream_interval_ms": 200}}))
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    sizes: list[list[int]] = []

    def on_message(tokens):
        sizes.append([len(ids) for ids in tokens.values()])

    tokens, finals = asyncio.run(collect(replica, batch(params), on_message))
    assert [tokens[f"r{i}"] for i in range(3)] == expected_tokens(params)
    assert all(final.chunk.num_output_tokens == 24 for final in finals.values())
    # 3 of 4 sequences: 150 ms slices; a step of `tiny` takes a few ms, so the 24 tokens
    # arrive in far fewer messages than steps, the first tokens at once.
    assert sizes[0] == [1, 1, 1] and len(sizes) < 12, sizes
    replica.engine.shutdown()


def test_handing_back_ends_every_running_request_and_every_later_batch_with_a_drain_error():
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    drained = ReplicaDrainingError("node n1 is draining")

    def hand_back_once_started(tokens: dict[str, list[int]]) -> None:
        if all(tokens.values()) and replica.batches.num_live_requests:
            replica.batches.hand_back(drained)

    tokens, finals = asyncio.run(collect(replica, batch(params), hand_back_once_started))
    assert all(final.error is drained for final in finals.values())
    expected = expected_tokens(SamplingParams(max_tokens=len(tokens["r0"]), temperature=0))
    assert 0 < len(tokens["r0"]) < 200 and tokens["r0"] == expected[0]  # a prefix, then none
    stats = replica.engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_used_kv_blocks) == (0, 0, 0)
    assert replica.num_cancelled_streams == 0  # handed back, not cancelled by a caller

    later, later_finals = asyncio.run(collect(replica, batch(params)))
    assert later == {f"r{i}": [] for i in range(3)}  # not started: back to the caller at once
    assert all(final.error is drained for final in later_finals.values())
    replica.engine.shutdown()


def test_after_a_cancelled_drain_later_batches_run_here_again():
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    replica.batches.hand_back(ReplicaDrainingError("node n1 is draining"))
    replica.batches.resume()  # the drain was cancelled: the node stays
    tokens, finals = asyncio.run(collect(replica, batch(params)))
    assert [tokens[f"r{i}"] for i in range(3)] == expected_tokens(params)
    assert all(final.error is None for final in finals.values())
    replica.engine.shutdown()


def test_a_stream_with_nothing_to_say_sends_heartbeats():
    # Every token of a request is held until its end (stream_interval_tokens): between the
    # first token and the end, only heartbeats (empty messages) come.
    replica = ModelReplica(load_app_config({**ARGS, "replica": {"stream_interval_tokens": 4096}}))
    replica.batches._heartbeat_s = 0.02
    params = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
    requests = batch(params, PROMPTS[:1])
    empty = 0

    async def run():
        nonlocal empty
        tokens = []
        async for message in replica.generate_batch(requests):
            empty += not message.chunks
            tokens += [
                t for tagged in message.chunks if tagged.chunk for t in tagged.chunk.token_ids
            ]
        return tokens

    tokens = asyncio.run(run())
    assert tokens == expected_tokens(params)[0]
    assert empty >= 2
    replica.engine.shutdown()


def test_a_request_resumed_here_while_its_old_stream_is_open_takes_over_cleanly():
    """Issue 26.5: after a silence timeout the resumed request can reach this replica before
    its old stream is torn down. Before, the engine rejected the id as already in use (a
    400 to the client), and the old stream's clean-up, not finding its own entry, left the
    old sequence running with no owner. Now the resume runs as a sequence of its own, the
    old one is aborted, and either stream's clean-up touches only its own run."""
    replica = ModelReplica(load_app_config(ARGS))
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    want = expected_tokens(params)[0]

    async def run():
        old = replica.generate_batch([BatchRequest("r0", PROMPTS[0], params)])
        so_far: list[int] = []
        while len(so_far) < 3:  # the old stream has started; then its caller went quiet
            for tagged in (await anext(old)).chunks:
                so_far += tagged.chunk.token_ids if tagged.chunk else []
        resumed = BatchRequest("r0", PROMPTS[0], params, output_ids=list(so_far))
        tokens, finals = [], []
        async for message in replica.generate_batch([resumed]):
            for tagged in message.chunks:
                tokens += tagged.chunk.token_ids if tagged.chunk else []
                finals += [tagged] if tagged.final else []
            if len(tokens) == 2:
                await old.aclose()  # the old stream's clean-up, while the resume runs
        return so_far, tokens, finals

    so_far, tokens, finals = asyncio.run(run())
    assert len(finals) == 1 and finals[0].error is None, finals
    assert so_far + tokens == want
    assert finals[0].chunk.num_output_tokens == 24
    stats = replica.engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_used_kv_blocks) == (0, 0, 0)
    assert replica.batches.num_live_requests == 0
    replica.engine.shutdown()
