"""How many decodes the CPU attention path should attend per SDPA call.

`kernels/reference.py` attends a batch's decodes (ordered by context length) in groups of
`DECODE_GROUP_SIZE`, each padded to its own longest context. Smaller groups pad less but
make more calls. This times one layer's `paged_attention` over a decode batch with random
context lengths and a shuffled paged cache, for several group sizes, interleaved and
repeated so drift hits every size alike, and prints the median per call.

    .venv/bin/python -m bench.decode_groups --context-range 20 380
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import kernels.reference as reference

BLOCK_SIZE = 16


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-decodes", type=int, default=128)
    parser.add_argument("--context-range", type=int, nargs=2, default=(20, 380))
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--heads", type=int, nargs=2, default=(8, 4), help="query, KV heads")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="per repeat and group size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    num_heads, num_kv_heads = args.heads
    lens = sorted(rng.randint(*args.context_range) for _ in range(args.num_decodes))
    blocks_per_seq = -(-max(lens) // BLOCK_SIZE)
    num_blocks = args.num_decodes * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, args.head_dim)
    k_cache, v_cache = torch.randn(shape), torch.randn(shape)
    block_ids = list(range(num_blocks))
    rng.shuffle(block_ids)
    # (num_decodes, blocks_per_seq): each sequence's blocks scattered over the cache
    block_tables = torch.tensor(block_ids, dtype=torch.int32).view(args.num_decodes, -1)
    query = torch.randn(args.num_decodes, num_heads, args.head_dim)
    query_start_loc = list(range(args.num_decodes + 1))

    def attend() -> None:
        reference.paged_attention(
            query, k_cache, v_cache, block_tables, query_start_loc, lens, len(lens), 0.125
        )

    saved = reference.DECODE_GROUP_SIZE
    times_ms: dict[int, list[float]] = {group: [] for group in args.groups}
    try:
        for _ in range(args.repeats):
            for group in args.groups:
                reference.DECODE_GROUP_SIZE = group
                attend()  # warm-up
                started = time.perf_counter()
                for _ in range(args.calls):
                    attend()
                times_ms[group].append((time.perf_counter() - started) / args.calls * 1000)
    finally:
        reference.DECODE_GROUP_SIZE = saved

    print(
        f"\n{args.num_decodes} decodes, contexts {args.context_range[0]}-"
        f"{args.context_range[1]}, {num_heads}/{num_kv_heads} heads, head_dim {args.head_dim}, "
        f"{torch.get_num_threads()} threads (current DECODE_GROUP_SIZE {saved})"
    )
    print("| group size | median ms per call | min ms |")
    print("|---|---|---|")
    for group, samples in times_ms.items():
        print(f"| {group} | {statistics.median(samples):.2f} | {min(samples):.2f} |")


if __name__ == "__main__":
    main()
