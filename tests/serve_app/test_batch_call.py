"""BatchCall's silence watchdog: a stream that has started and then sends nothing for the
timeout fails its open requests with BatchStreamSilentError (a failover the batcher
resumes); heartbeats (empty messages) keep a quiet stream alive; without a timeout it
waits."""

from __future__ import annotations

import asyncio

from serve_app.abort_channel import AbortSender
from serve_app.batch_call import BatchCall, BatchStreamSilentError
from serve_app.batcher.failover import is_replica_failure
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchMessage, BatchRequest, TaggedChunk, TokenChunk

REQUESTS = [BatchRequest(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=4)) for i in range(2)]


class Scripted:
    """A handle whose stream sends `beats` heartbeats `gap_s` apart after one token each,
    then falls silent (a vanished server) or ends the requests."""

    def __init__(self, beats: int, gap_s: float, then_finish: bool) -> None:
        self.beats, self.gap_s, self.then_finish = beats, gap_s, then_finish
        self.cancelled = False

    def remote(self, requests):
        outer = self

        class Responses:
            def __aiter__(self):
                return self._messages()

            async def _messages(self):
                chunk = TokenChunk([7], False, None, 3, 1)
                yield BatchMessage([TaggedChunk(r.request_id, chunk) for r in requests])
                for _ in range(outer.beats):
                    await asyncio.sleep(outer.gap_s)
                    yield BatchMessage([])
                if outer.then_finish:
                    end = TokenChunk([8], True, "length", 3, 2)
                    yield BatchMessage([TaggedChunk(r.request_id, end) for r in requests])
                    return
                await asyncio.sleep(3600)

            def cancel(self):
                outer.cancelled = True

        return Responses()


def run(handle: Scripted, silence_timeout_s: float | None, wait_s: float = 5.0):
    delivered: list[TaggedChunk] = []

    async def go():
        call = BatchCall(
            handle, REQUESTS, delivered.extend, AbortSender(), silence_timeout_s=silence_timeout_s
        )
        task = call.start()
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            seen = list(delivered)  # what it delivered while waiting, before the cancel
            task.cancel()
            return False, seen
        return True, delivered

    return asyncio.run(go())


def test_a_stream_that_falls_silent_fails_its_open_requests_as_a_replica_failure():
    handle = Scripted(beats=2, gap_s=0.05, then_finish=False)
    ended, delivered = run(handle, silence_timeout_s=0.3)
    assert ended and handle.cancelled
    errors = [tagged.error for tagged in delivered if tagged.chunk is None]
    assert len(errors) == 2 and all(isinstance(e, BatchStreamSilentError) for e in errors)
    assert all(is_replica_failure(error) for error in errors)


def test_heartbeats_keep_a_quiet_stream_alive_past_the_timeout():
    handle = Scripted(beats=8, gap_s=0.1, then_finish=True)  # 0.8 s quiet, beats every 0.1
    ended, delivered = run(handle, silence_timeout_s=0.3)
    assert ended and not handle.cancelled
    assert [t.chunk.token_ids for t in delivered] == [[7], [7], [8], [8]]


def test_without_a_timeout_a_silent_stream_is_waited_for():
    handle = Scripted(beats=0, gap_s=0, then_finish=False)
    ended, delivered = run(handle, silence_timeout_s=None, wait_s=0.5)
    assert not ended and len(delivered) == 2  # the first tokens only, no error
