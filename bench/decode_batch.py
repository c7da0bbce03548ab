"""A random batch of decodes over a shuffled paged cache, and the command-line options that
shape it: shared by the attention micro-benchmarks (decode_groups.py, cpu_attention.py)."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import torch

BLOCK_SIZE = 16


@dataclass
class DecodeBatch:
    query: torch.Tensor  # (num_decodes, num_heads, head_dim)
    k_cache: torch.Tensor  # (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # (num_decodes, blocks_per_seq) int32
    context_lens: list[int]  # ascending, as the engine orders decodes

    @property
    def query_start_loc(self) -> list[int]:
        return list(range(len(self.context_lens) + 1))


def add_decode_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-decodes", type=int, default=128)
    parser.add_argument("--context-range", type=int, nargs=2, default=(20, 380))
    parser.add_argument("--heads", type=int, nargs=2, default=(8, 4), help="query, KV heads")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)


def make_decode_batch(args: argparse.Namespace) -> DecodeBatch:
    """Random context lengths in --context-range; each sequence's blocks scattered over the
    cache."""
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    num_heads, num_kv_heads = args.heads
    lens = sorted(rng.randint(*args.context_range) for _ in range(args.num_decodes))
    blocks_per_seq = -(-max(lens) // BLOCK_SIZE)
    num_blocks = args.num_decodes * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, args.head_dim)
    block_ids = list(range(num_blocks))
    rng.shuffle(block_ids)
    return DecodeBatch(
        query=torch.randn(args.num_decodes, num_heads, args.head_dim),
        k_cache=torch.randn(shape),
        v_cache=torch.randn(shape),
        block_tables=torch.tensor(block_ids, dtype=torch.int32).view(args.num_decodes, -1),
        context_lens=lens,
    )
