"""What every retrying client shares: its policy and waits, and closing as a context manager."""

from __future__ import annotations

from typing import Any

from serve_app.client.retry import RetryPolicy, RetrySchedule, Waits


class ClientBase:
    def __init__(self, policy: RetryPolicy | None, waits: Waits | None):
        self.policy = policy or RetryPolicy()
        self.waits = waits or Waits()

    def new_schedule(self) -> RetrySchedule:
        """The retry schedule of one call (its deadline starts now)."""
        return RetrySchedule(self.policy, self.waits)


class SyncClientBase(ClientBase):
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncClientBase(ClientBase):
    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()
