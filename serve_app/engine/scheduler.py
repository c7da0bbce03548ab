"""Scheduler: token-budget continuous batching with chunked prefill and preemption by recompute.

Each step it first gives every running sequence its next tokens (one for a decode, a
chunk for an unfinished prefill), oldest first, preempting the newest arrivals when KV
blocks run out; then it admits waiting sequences (FCFS) while budget, slots and blocks last.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from serve_app.engine.block_manager import BlockManager
from serve_app.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledChunk:
    """`num_new_tokens` tokens of `seq`, starting at its `num_computed_tokens`, run this step."""

    seq: Sequence
    num_new_tokens: int

    @property
    def samples_token(self) -> bool:
        """A chunk that reaches the end of the sequence's tokens yields the next token."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool


class Scheduler:
    def __init__(self, limits: SchedulerLimits, block_manager: BlockManager) -> None:
        self.limits = limits
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival: the last is preempted first
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues and release its blocks (finish or abort)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> list[ScheduledChunk]:
        """Pick this step's work: decodes (one new token) first, by context length."""
        budget = self.limits.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preemptions_before = self.num_preemptions

        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            remaining = seq.num_tokens - seq.num_computed_tokens
            num_new = min(remaining, budget)
            if num_new < remaining and not self.limits.enable_chunked_prefill:
                index += 1
                continue
            if not self._make_room(seq, seq.num_computed_tokens + num_new):
                break  # seq itself was preempted, and everything after it before it
            self.block_manager.grow(seq, seq.num_computed_tokens + num_new)
            chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new
            index += 1

        # Admitting new work right after preempting would only thrash the cache.
        if self.num_preemptions == preemptions_before:
            self._admit_waiting(chunks, budget)

        # Decodes first (the Triton backend splits the batch there), shortest context first
        # (the torch backend pads each group of decodes to its longest context).
        chunks.sort(key=_batch_order)
        return chunks

    def _admit_waiting(self, chunks: list[ScheduledChunk], budget: int) -> None:
        block_manager = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            hits = block_manager.find_prefix_hits(seq)
            num_cached = len(hits) * block_manager.block_size
            remaining = seq.num_tokens - num_cached
            num_new = min(remaining, budget)
            if num_new < remaining and not self.limits.enable_chunked_prefill:
                break
            if not block_manager.can_admit(hits, num_cached + num_new):
                break
            self.waiting.popleft()
            block_manager.admit(seq, hits, num_cached + num_new)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=_arrival)
            chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new

    def _make_room(self, seq: Sequence, num_tokens_after: int) -> bool:
        """Preempt the newest running sequences until `seq` can grow. False if `seq` itself
        had to go."""
        while not self.block_manager.can_grow(seq, num_tokens_after):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV, keep the tokens, requeue at the front."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)


def _batch_order(chunk: ScheduledChunk) -> tuple[bool, int]:
    is_decode = chunk.num_new_tokens == 1
    return (not is_decode, chunk.seq.num_computed_tokens if is_decode else 0)


def _arrival(seq: Sequence) -> int:
    return seq.arrival_index
