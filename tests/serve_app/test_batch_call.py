"""BatchCall's watchdog: a stream that has started and then sends nothing for the silence
timeout fails its open requests with BatchStreamSilentError (a failover the batcher
resumes); heartbeats (empty messages) keep a quiet stream alive; without a timeout it
waits. The watchdog runs from the moment the call is sent: a call no replica has
answered fails after the first-message timeout, and one a replica accepted (the router
says so through the call's RoutingHint) after the silence timeout."""

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

    def remote(self, requests, routing=None):
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


class Unanswered:
    """A handle whose call sends nothing at all: a replica's node vanished before the call's
    first message. `accepted_after_s`: when the router reports a replica accepted the call
    (None: never, e.g. the node vanished while Serve waited for the replica to accept it);
    `then_beats`: from then on the replica answers with a heartbeat every 0.05 s and ends."""

    def __init__(self, accepted_after_s: float | None, then_beats: int = 0) -> None:
        self.accepted_after_s = accepted_after_s
        self.then_beats = then_beats
        self.hints: list = []

    def options(self, **_) -> Unanswered:
        return self

    def remote(self, requests, routing=None):
        outer = self
        self.hints.append(routing)

        class Responses:
            def __aiter__(self):
                return self._messages()

            async def _messages(self):
                if outer.accepted_after_s is None:
                    await asyncio.sleep(3600)
                await asyncio.sleep(outer.accepted_after_s)
                routing.routed("replica-7")  # Serve's router calls the hook on acceptance
                if not outer.then_beats:
                    await asyncio.sleep(3600)
                for _ in range(outer.then_beats):
                    await asyncio.sleep(0.05)
                    yield BatchMessage([])
                end = TokenChunk([8], True, "length", 3, 1)
                yield BatchMessage([TaggedChunk(r.request_id, end) for r in requests])

            def cancel(self):
                pass

        return Responses()


def run_call(handle, wait_s: float = 5.0, **timeouts):
    """(ended, seconds, delivered, call) of one call with these watchdog timeouts."""
    delivered: list[TaggedChunk] = []

    async def go():
        call = BatchCall(handle, REQUESTS, delivered.extend, AbortSender(), **timeouts)
        started = asyncio.get_running_loop().time()
        task = call.start()
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            task.cancel()
            return False, wait_s, list(delivered), call
        return True, asyncio.get_running_loop().time() - started, delivered, call

    return asyncio.run(go())


def silent_errors(delivered: list[TaggedChunk]) -> list[BaseException]:
    errors = [tagged.error for tagged in delivered if tagged.chunk is None]
    assert len(errors) == len(REQUESTS), delivered
    assert all(isinstance(e, BatchStreamSilentError) and is_replica_failure(e) for e in errors)
    return errors


def test_a_call_no_replica_ever_answers_fails_after_the_first_message_timeout():
    """Issue 26.4: the watchdog started at the first message, so this call hung forever."""
    handle = Unanswered(accepted_after_s=None)
    ended, seconds, delivered, _ = run_call(
        handle, silence_timeout_s=0.2, first_message_timeout_s=0.6
    )
    assert ended and 0.6 <= seconds < 2.0, seconds
    errors = silent_errors(delivered)
    assert "0.6 s after the call" in str(errors[0])


def test_a_call_a_replica_accepted_must_answer_within_the_silence_timeout():
    """Issue 26.4: once Serve's router reports a replica accepted the call, its first
    message is due within the silence timeout (the replica heartbeats), not the generous
    first-message one; the call knows which replica it was (failover avoids it)."""
    handle = Unanswered(accepted_after_s=0.1)
    ended, seconds, delivered, call = run_call(
        handle, silence_timeout_s=0.3, first_message_timeout_s=60
    )
    assert ended and 0.4 <= seconds < 2.0, seconds
    assert "replica-7" in str(silent_errors(delivered)[0])
    assert call.replica_id == "replica-7"


def test_a_call_queued_longer_than_the_silence_timeout_is_not_failed():
    """Waiting in Serve's router for a replica (none accepted it yet) is legitimate up to the
    first-message timeout; once accepted, heartbeats keep it alive until it ends."""
    handle = Unanswered(accepted_after_s=0.5, then_beats=10)
    ended, _, delivered, call = run_call(handle, silence_timeout_s=0.2, first_message_timeout_s=5)
    assert ended and [t.chunk.token_ids for t in delivered] == [[8], [8]], delivered
    assert call.replica_id == "replica-7"
