"""Stop strings over streamed text: find the first stop string and hold back any tail that
could still become one, so a stop string never reaches the client."""

from __future__ import annotations


class StopChecker:
    def __init__(self, stop_strings: list[str]) -> None:
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""  # text received but not yet released
        self.stopped = False

    def add(self, text: str) -> str:
        """Take new text; return the part that is safe to send. Sets `stopped` when a stop
        string appears (the returned text then ends right before it)."""
        if self.stopped:
            return ""
        self.pending += text
        if not self.stop_strings:
            released, self.pending = self.pending, ""
            return released
        first = min(
            (index for s in self.stop_strings if (index := self.pending.find(s)) >= 0),
            default=-1,
        )
        if first >= 0:
            self.stopped = True
            released, self.pending = self.pending[:first], ""
            return released
        keep = self._longest_partial_match()
        released = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return released

    def flush(self) -> str:
        """At the end of generation (no stop string seen): release the held-back tail."""
        released, self.pending = ("" if self.stopped else self.pending), ""
        return released

    def _longest_partial_match(self) -> int:
        """Length of the longest suffix of `pending` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            for length in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
