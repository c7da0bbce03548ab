"""How many decodes the CPU attention path should attend per SDPA call.

`serve_kernels/reference.py` attends a batch's decodes (ordered by context length) in groups of
`DECODE_GROUP_SIZE`, each padded to its own longest context. Smaller groups pad less but
make more calls. This times one layer's `paged_attention` over a decode batch with random
context lengths and a shuffled paged cache, for several group sizes, interleaved and
repeated so drift hits every size alike, and prints the median per call.

    .venv/bin/python -m bench.decode_groups --context-range 20 380
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import serve_kernels.reference as reference
from bench.decode_batch import add_decode_batch_arguments, make_decode_batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decode_batch_arguments(parser)
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="per repeat and group size")
    args = parser.parse_args(argv)

    batch = make_decode_batch(args)
    num_heads, num_kv_heads = args.heads
    lens = batch.context_lens

    def attend() -> None:
        reference.paged_attention(
            batch.query,
            batch.k_cache,
            batch.v_cache,
            batch.block_tables,
            batch.query_start_loc,
            lens,
            len(lens),
            0.125,
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
