"""The ingress's BatchingTokenStreamer, made from the app config: with `batcher.enabled=false`
it calls the model replicas itself, and a call no replica ever answers (its node vanished)
fails the request with a 503 after the watchdog's timeout instead of hanging; behind the
batcher (which watches its own calls to the replicas) it sets none."""

from __future__ import annotations

import asyncio

from serve_app.batch_call import BatchStreamSilentError
from serve_app.config import AppConfig, load_app_config
from serve_app.engine.sampling_params import SamplingParams
from serve_app.ingress.downstream_errors import to_api_error
from serve_app.ingress.token_source import BatchingTokenStreamer
from tests.serve_app.test_batch_call import Unanswered


def app_config(batcher_enabled: bool) -> AppConfig:
    """The defaults, with watchdog timeouts below their minimum (a fast test)."""
    config = load_app_config({"batcher": {"enabled": batcher_enabled}})
    failover = config.batcher.failover.model_copy(
        update={"silence_timeout_s": 0.2, "first_message_timeout_s": 0.4}
    )
    batcher = config.batcher.model_copy(update={"failover": failover})
    return config.model_copy(update={"batcher": batcher})


def first_outcome(streamer: BatchingTokenStreamer, wait_s: float):
    """The request's first chunk or error, or None if nothing came within `wait_s`."""

    async def go():
        stream = streamer.stream([1, 2, 3], SamplingParams(max_tokens=4), "r0")
        try:
            return await asyncio.wait_for(anext(stream), wait_s)
        except TimeoutError:
            return None
        except BatchStreamSilentError as error:
            return error
        finally:
            await stream.aclose()

    return asyncio.run(go())


def test_without_the_batcher_an_unanswered_call_is_a_503_not_a_hang():
    """Issue 26.4: with the batcher off the ingress's calls had no watchdog at all."""
    handle = Unanswered(accepted_after_s=None)
    outcome = first_outcome(BatchingTokenStreamer.for_config(handle, app_config(False)), 3.0)
    assert isinstance(outcome, BatchStreamSilentError), outcome
    assert to_api_error(outcome, retry_after_s=1).status == 503


def test_behind_the_batcher_the_ingress_sets_no_watchdog_of_its_own():
    handle = Unanswered(accepted_after_s=None)
    assert first_outcome(BatchingTokenStreamer.for_config(handle, app_config(True)), 0.6) is None
    assert handle.hints == [None]  # no RoutingHint for the batcher's default router
