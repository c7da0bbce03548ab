"""AbortSender without Ray: a channel name is looked up once (off the event loop) and its
handle reused; a name that cannot be found drops those aborts without raising, and is
looked up again next time."""

from __future__ import annotations

import asyncio

from serve_app.abort_channel import AbortSender


class RecordingChannel:
    """Stands in for an AbortChannel handle: `abort.remote(ids)` records the ids."""

    def __init__(self) -> None:
        self.abort = self
        self.received: list[list[str]] = []

    def remote(self, request_ids: list[str]) -> None:
        self.received.append(list(request_ids))


async def settle() -> None:
    for _ in range(50):  # the first send of a name waits for a worker-thread lookup
        await asyncio.sleep(0.01)


def test_a_name_is_looked_up_once_and_its_handle_reused():
    channel = RecordingChannel()
    lookups: list[str] = []

    def lookup(name: str) -> RecordingChannel:
        lookups.append(name)
        return channel

    async def run() -> None:
        sender = AbortSender(lookup)
        sender.send("replica-a", ["r1"])
        await settle()
        sender.send("replica-a", ["r2", "r3"])
        await settle()

    asyncio.run(run())
    assert lookups == ["replica-a"]
    assert channel.received == [["r1"], ["r2", "r3"]]


def test_a_missing_channel_drops_its_aborts_and_is_looked_up_again():
    channel = RecordingChannel()
    attempts: list[str] = []

    def lookup(name: str) -> RecordingChannel:
        attempts.append(name)
        if len(attempts) == 1:
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return channel

    async def run() -> None:
        sender = AbortSender(lookup)
        sender.send("replica-b", ["r1"])  # the lookup fails: logged, dropped
        await settle()
        sender.send("replica-b", ["r2"])
        await settle()

    asyncio.run(run())
    assert attempts == ["replica-b", "replica-b"]
    assert channel.received == [["r2"]]
