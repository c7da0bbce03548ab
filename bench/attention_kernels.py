"""Paged-attention kernels on a CUDA GPU: the Triton decode and prefill kernels against the
torch reference (serve_kernels/reference.py) and `scaled_dot_product_attention` on contiguous KV.

Decode reads the whole KV cache once per step and does little arithmetic, so its roofline
is memory bandwidth: each decode row shows the bytes it must move over its time, next to
this device's copy bandwidth measured in the same run. Prefill rows show TFLOP/s.
Without CUDA it prints why it skipped and exits 0.

    .venv/bin/python -m bench.attention_kernels [--dtype bfloat16] [--quick] [--plot out.png]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16  # a Llama-3-8B layer


@dataclass
class Row:
    kind: str
    batch: int
    tokens: int  # context length (decode) or prompt length (prefill)
    times_us: dict[str, float]
    work: dict[str, float]  # GB/s (decode) or TFLOP/s (prefill) per system


def time_us(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50) * 1e3


def copy_bandwidth_gbs(device: torch.device) -> float:
    """Read + write bytes per second of a 1 GiB device-to-device copy."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_us(lambda: dst.copy_(src)) * 1e-6) / 1e9


def paged_cache(batch: int, context: int, dtype: torch.dtype, device: torch.device):
    """Random K/V caches and shuffled block tables holding `batch` sequences of `context`."""
    blocks_per_seq = -(-context // BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, dtype=dtype, device=device)
    v_cache = torch.randn(shape, dtype=dtype, device=device)
    tables = torch.randperm(num_blocks, device=device).view(batch, blocks_per_seq)
    return k_cache, v_cache, tables.to(torch.int32)


def contiguous_kv(cache: torch.Tensor, tables: torch.Tensor, context: int) -> torch.Tensor:
    """(batch, kv_heads, context, head_dim): the layout a dense attention call wants."""
    return cache[tables.long()].flatten(1, 2)[:, :context].transpose(1, 2).contiguous()


def bench_decode(batch: int, context: int, dtype: torch.dtype, device: torch.device) -> Row:
    from serve_kernels import reference
    from serve_kernels.decode_attention import paged_decode_attention

    k_cache, v_cache, tables = paged_cache(batch, context, dtype, device)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    query = torch.randn(batch, NUM_HEADS, HEAD_DIM, dtype=dtype, device=device)
    scale = HEAD_DIM**-0.5
    keys, values = contiguous_kv(k_cache, tables, context), contiguous_kv(v_cache, tables, context)
    systems = {
        "triton": lambda: paged_decode_attention(
            query, k_cache, v_cache, tables, lens, context, scale
        ),
        "reference": lambda: reference.paged_decode_attention(
            query, k_cache, v_cache, tables, lens, context, scale
        ),
        "sdpa": lambda: F.scaled_dot_product_attention(
            query.unsqueeze(2), keys, values, scale=scale, enable_gqa=True
        ),
    }
    times = {name: time_us(fn) for name, fn in systems.items()}
    element = k_cache.element_size()
    moved = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * element  # K and V, read once
    moved += 2 * batch * NUM_HEADS * HEAD_DIM * element  # query in, output out
    work = {name: moved / (t * 1e-6) / 1e9 for name, t in times.items()}
    return Row("decode", batch, context, times, work)


def bench_prefill(batch: int, prompt: int, dtype: torch.dtype, device: torch.device) -> Row:
    from serve_kernels import reference
    from serve_kernels.prefill_attention import paged_prefill_attention

    k_cache, v_cache, tables = paged_cache(batch, prompt, dtype, device)
    lens = torch.full((batch,), prompt, dtype=torch.int32, device=device)
    starts_host = [prompt * i for i in range(batch + 1)]
    starts = torch.tensor(starts_host, dtype=torch.int32, device=device)
    query = torch.randn(batch * prompt, NUM_HEADS, HEAD_DIM, dtype=dtype, device=device)
    dense_query = query.view(batch, prompt, NUM_HEADS, HEAD_DIM).transpose(1, 2)
    scale = HEAD_DIM**-0.5
    keys, values = contiguous_kv(k_cache, tables, prompt), contiguous_kv(v_cache, tables, prompt)
    systems = {
        "triton": lambda: paged_prefill_attention(
            query, k_cache, v_cache, tables, starts, lens, prompt, scale
        ),
        "reference": lambda: reference.paged_attention(
            query, k_cache, v_cache, tables, starts_host, [prompt] * batch, 0, scale
        ),
        "sdpa": lambda: F.scaled_dot_product_attention(
            dense_query, keys, values, is_causal=True, scale=scale, enable_gqa=True
        ),
    }
    times = {name: time_us(fn) for name, fn in systems.items()}
    # QK^T and PV over the causal half: 2 matmuls x 2 FLOPs x prompt^2 / 2 per head.
    flops = 2 * batch * NUM_HEADS * prompt * prompt * HEAD_DIM
    work = {name: flops / (t * 1e-6) / 1e12 for name, t in times.items()}
    return Row("prefill", batch, prompt, times, work)


def print_table(rows: list[Row], copy_gbs: float) -> None:
    print(f"device copy bandwidth (roofline for decode): {copy_gbs:,.0f} GB/s")
    header = (
        f"{'kernel':<8}{'batch':>6}{'tokens':>8}"
        f"{'triton us':>11}{'ref us':>11}{'sdpa us':>11}"
        f"{'triton':>10}{'ref':>10}{'sdpa':>10}{'unit':>8}{'% copy bw':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        unit = "GB/s" if row.kind == "decode" else "TFLOP/s"
        share = f"{100 * row.work['triton'] / copy_gbs:.0f}%" if row.kind == "decode" else "-"
        print(
            f"{row.kind:<8}{row.batch:>6}{row.tokens:>8}"
            f"{row.times_us['triton']:>11.1f}{row.times_us['reference']:>11.1f}"
            f"{row.times_us['sdpa']:>11.1f}"
            f"{row.work['triton']:>10.1f}{row.work['reference']:>10.1f}{row.work['sdpa']:>10.1f}"
            f"{unit:>8}{share:>11}"
        )


def save_plot(rows: list[Row], copy_gbs: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    decode = [row for row in rows if row.kind == "decode"]
    for batch in sorted({row.batch for row in decode}):
        points = [(row.tokens, row.work["triton"]) for row in decode if row.batch == batch]
        axis.plot(*zip(*points, strict=True), marker="o", label=f"triton, batch {batch}")
    axis.axhline(copy_gbs, color="black", linestyle="--", label="device copy bandwidth")
    axis.set(xscale="log", xlabel="context length", ylabel="GB/s", title="Paged decode")
    axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    print(f"plot saved to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--quick", action="store_true", help="a two-point sweep (smoke test)")
    parser.add_argument("--plot", type=Path, help="save a decode bandwidth plot here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench.attention_kernels: skipped: no CUDA GPU here "
            "(the Triton kernels compile for CUDA)"
        )
        return 0
    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    decode_batches, contexts = (
        ([1, 16], [512]) if args.quick else ([1, 8, 32, 128], [512, 2048, 8192])
    )
    prefill_batches, prompts = ([1], [256]) if args.quick else ([1, 4, 16], [512, 2048])
    print(f"{torch.cuda.get_device_name(device)}, {args.dtype}, heads {NUM_HEADS}/{NUM_KV_HEADS}")
    rows = [bench_decode(b, c, dtype, device) for b in decode_batches for c in contexts]
    rows += [bench_prefill(b, p, dtype, device) for b in prefill_batches for p in prompts]
    copy_gbs = copy_bandwidth_gbs(device)
    print_table(rows, copy_gbs)
    if args.plot:
        save_plot(rows, copy_gbs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
