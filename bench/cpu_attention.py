"""One layer's attention on CPU: the native kernel (the `cpu` backend) against the torch
reference (the `torch` backend), for a batch of decodes and for single prefill chunks of
several lengths. Prints a table of median milliseconds per call.

The native kernel visits every (query, key) pair with vector dot products, reading the
paged cache in place; the reference gathers each sequence's blocks and runs SDPA (for
grouped-query heads, torch's math path, with an explicit mask for chunks after a prefix).

    .venv/bin/python -m bench.cpu_attention
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import serve_kernels.reference as reference
from bench.decode_batch import BLOCK_SIZE, add_decode_batch_arguments, make_decode_batch
from serve_kernels.cpu_paged_attention import load_cpu_paged_attention


def median_ms(function: Callable[[], object], repeats: int, calls: int) -> tuple[float, float]:
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - started) / calls * 1000)
    return statistics.median(samples), min(samples)


def prefill_row(kernel, length: int, num_heads: int, num_kv_heads: int, args) -> tuple:
    """One fresh prompt of `length` tokens: every token sees the ones before it."""
    blocks = -(-length // BLOCK_SIZE)
    shape = (blocks + 8, BLOCK_SIZE, num_kv_heads, args.head_dim)
    k_cache, v_cache = torch.randn(shape), torch.randn(shape)
    table = torch.randperm(blocks + 8, dtype=torch.int32)[:blocks].view(1, blocks)
    query = torch.randn(length, num_heads, args.head_dim)
    out = torch.empty_like(query)
    token_seqs = torch.zeros(length, dtype=torch.int32)
    token_lens = torch.arange(1, length + 1, dtype=torch.int32)
    scale = args.head_dim**-0.5
    native = median_ms(
        lambda: kernel.attend_into(
            out, query, k_cache, v_cache, table, token_seqs, token_lens, scale
        ),
        args.repeats,
        args.calls,
    )
    torch_ref = median_ms(
        lambda: reference.paged_prefill_attention(query, k_cache, v_cache, table[0], length, scale),
        args.repeats,
        args.calls,
    )
    return f"prefill of {length} tokens", native, torch_ref


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decode_batch_arguments(parser)
    parser.add_argument("--prefill-lens", type=int, nargs="+", default=[64, 256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="per repeat")
    args = parser.parse_args(argv)

    num_heads, num_kv_heads = args.heads
    kernel = load_cpu_paged_attention(Path(tempfile.mkdtemp(prefix="serve_app_kernels_")))
    scale = args.head_dim**-0.5
    rows = []

    batch = make_decode_batch(args)  # decodes: contexts scattered over a shuffled cache
    query, k_cache, v_cache, tables = batch.query, batch.k_cache, batch.v_cache, batch.block_tables
    lens = batch.context_lens
    context_lens = torch.tensor(lens, dtype=torch.int32)
    starts = batch.query_start_loc
    native = median_ms(
        lambda: kernel.decode(query, k_cache, v_cache, tables, context_lens, scale),
        args.repeats,
        args.calls,
    )
    torch_ref = median_ms(
        lambda: reference.paged_attention(
            query, k_cache, v_cache, tables, starts, lens, len(lens), scale, context_lens
        ),
        args.repeats,
        args.calls,
    )
    rows.append((f"{args.num_decodes} decodes, contexts {lens[0]}-{lens[-1]}", native, torch_ref))

    for length in args.prefill_lens:
        rows.append(prefill_row(kernel, length, num_heads, num_kv_heads, args))

    print(
        f"\n{num_heads}/{num_kv_heads} heads, head_dim {args.head_dim}, float32, "
        f"{torch.get_num_threads()} threads; median (min) ms per call over {args.repeats} x "
        f"{args.calls} calls"
    )
    print("| batch | native kernel | torch reference | reference / native |")
    print("|---|---|---|---|")
    for name, (native_median, native_min), (ref_median, ref_min) in rows:
        print(
            f"| {name} | {native_median:.2f} ({native_min:.2f}) | {ref_median:.2f} "
            f"({ref_min:.2f}) | {ref_median / native_median:.2f}x |"
        )


if __name__ == "__main__":
    main()
