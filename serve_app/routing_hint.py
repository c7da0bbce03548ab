"""RoutingHint: what a batch call tells the model replicas' request router, and what the
router tells the call back, through Serve's request-router API (`PendingRequest.kwargs`
in `choose_replicas`, the `on_request_routed` hook; serve_app/replica/router.py).

A call passes one as the `routing` keyword of `generate_batch` (the replica ignores it):

- `avoid`: the Serve replica ids that already failed one of the call's requests. A replica
  whose engine died while its actor lives stays routable until Serve's next health check
  and, empty, looks like the best choice; the router offers these only when no other
  replica is left.
- `on_routed`: called with the replica's id once a replica has accepted the call, on the
  router's event loop (the caller's own, or Serve's router thread). From then on the call
  is at that replica, which sends its first message within a heartbeat (BatchCall's
  watchdog), and a failure of the call is that replica's.

The callback stays in the caller's process: a hint pickles without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROUTING_KWARG = "routing"  # the keyword of `generate_batch` that carries the hint


@dataclass(frozen=True, slots=True)
class RoutingHint:
    avoid: frozenset[str] = frozenset()
    on_routed: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def __reduce__(self):
        return (RoutingHint, (self.avoid,))  # the callback is the caller's, not the replica's

    def routed(self, replica_id: str) -> None:
        if self.on_routed is not None:
            self.on_routed(replica_id)


def hint_in(kwargs: Mapping[Any, Any] | None) -> RoutingHint | None:
    """The hint among a call's keyword arguments, if it carries one."""
    hint = (kwargs or {}).get(ROUTING_KWARG)
    return hint if isinstance(hint, RoutingHint) else None
