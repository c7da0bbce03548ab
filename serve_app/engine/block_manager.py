"""BlockManager: paged KV blocks with ref counts and a prefix cache of hashed full blocks.

A full block is identified by a chained hash of its token ids and its parent's hash, so
two sequences that share a prompt prefix share its blocks. Freed blocks keep their hash
and stay findable until they are handed out again, oldest-freed first (LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from serve_app.engine.sequence import Sequence

NO_PARENT_HASH = 0x5EED


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()  # kept with the hash so a hash collision is never a hit


@dataclass(slots=True)
class PrefixHit:
    block_id: int
    block_hash: int


def chained_block_hash(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    return hash((parent_hash, token_ids))


class BlockManager:
    """Owns the block pool. The scheduler asks it whether work fits; it never decides policy."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        # Free blocks in the order they were freed: the first is the least recently used.
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached_block_ids: dict[int, int] = {}  # block hash -> block id
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    # ---- accounting -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_block_ids)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        if self.prefix_query_tokens == 0:
            return 0.0
        return self.prefix_hit_tokens / self.prefix_query_tokens

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- admission of a waiting sequence ----------------------------------------------
    def find_prefix_hits(self, seq: Sequence) -> list[PrefixHit]:
        """Leading full blocks of `seq` already in the cache. At least the last token is
        always left to compute, since its logits are needed."""
        if not self.enable_prefix_caching:
            return []
        max_hit_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[PrefixHit] = []
        parent_hash = NO_PARENT_HASH
        for block_index in range(max_hit_blocks):
            start = block_index * self.block_size
            token_ids = tuple(seq.tokens_in_range(start, start + self.block_size))
            block_hash = chained_block_hash(parent_hash, token_ids)
            block_id = self.cached_block_ids.get(block_hash)
            if block_id is None or self.blocks[block_id].token_ids != token_ids:
                break
            hits.append(PrefixHit(block_id, block_hash))
            parent_hash = block_hash
        return hits

    def can_admit(self, hits: list[PrefixHit], num_tokens_after: int) -> bool:
        """Whether blocks for `num_tokens_after` tokens fit, reusing `hits`."""
        hits_now_free = sum(1 for hit in hits if self.blocks[hit.block_id].ref_count == 0)
        new_blocks = self.blocks_needed(num_tokens_after) - len(hits)
        return new_blocks + hits_now_free <= self.num_free_blocks

    def admit(self, seq: Sequence, hits: list[PrefixHit], num_tokens_after: int) -> None:
        """Give `seq` the hit blocks plus fresh blocks for `num_tokens_after` tokens."""
        assert not seq.block_table, "sequence already holds blocks"
        for hit in hits:
            block = self.blocks[hit.block_id]
            if block.ref_count == 0:
                del self.free_block_ids[hit.block_id]
            block.ref_count += 1
            seq.block_table.append(hit.block_id)
            seq.block_hashes.append(hit.block_hash)
        num_cached = len(hits) * self.block_size
        seq.num_computed_tokens = num_cached
        seq.num_cached_prompt_tokens = num_cached
        self.prefix_query_tokens += seq.num_tokens
        self.prefix_hit_tokens += num_cached
        self.grow(seq, num_tokens_after)

    # ---- growth of a running sequence -------------------------------------------------
    def can_grow(self, seq: Sequence, num_tokens_after: int) -> bool:
        return self.blocks_needed(num_tokens_after) - len(seq.block_table) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens_after: int) -> None:
        for _ in range(self.blocks_needed(num_tokens_after) - len(seq.block_table)):
            seq.block_table.append(self._take_free_block())

    def register_full_blocks(self, seq: Sequence) -> None:
        """Hash blocks that became full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        parent_hash = seq.block_hashes[-1] if seq.block_hashes else NO_PARENT_HASH
        for block_index in range(len(seq.block_hashes), num_full):
            start = block_index * self.block_size
            token_ids = tuple(seq.tokens_in_range(start, start + self.block_size))
            block_hash = chained_block_hash(parent_hash, token_ids)
            block = self.blocks[seq.block_table[block_index]]
            block.block_hash = block_hash
            block.token_ids = token_ids
            self.cached_block_ids.setdefault(block_hash, block.block_id)
            seq.block_hashes.append(block_hash)
            parent_hash = block_hash

    # ---- release ----------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references. Its tail blocks are freed first so they are evicted
        first: a prefix is worth more than a suffix."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def _take_free_block(self) -> int:
        block_id, _ = self.free_block_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self.cached_block_ids.get(block.block_hash) == block_id:
                del self.cached_block_ids[block.block_hash]
            block.block_hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id
