"""Every kernel compiles to a Hopper (sm_90) cubin with the tiles the launchers pick, even on a
machine without a GPU: Triton's compiler and ptxas run on the CPU. This catches what the
interpreter lets through (MMA shapes, constexpr use, control flow the compiler rejects).

The interpreter is chosen when a kernel is decorated, so the compile runs in a fresh
process without TRITON_INTERPRET: this file, run as a script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence 3.9's notice about the 3.10 default
    result = subprocess.run(
        [sys.executable, __file__],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compiled = [line for line in result.stdout.splitlines() if line.startswith("compiled")]
    assert len(compiled) == 6, result.stdout


def compile_all() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from serve_kernels.decode_attention import _decode_combine_kernel, _decode_split_kernel
    from serve_kernels.prefill_attention import _prefill_kernel
    from serve_kernels.store_kv import _store_kv_kernel
    from serve_kernels.tiling import decode_tiles, prefill_tiles

    assert isinstance(_decode_split_kernel, triton.runtime.JITFunction), "interpreter is on"
    target = GPUTarget("cuda", 90, 32)
    indices = {"block_tables_ptr": "*i32", "context_lens_ptr": "*i32"}
    indices |= {"query_start_loc_ptr": "*i32", "slot_mapping_ptr": "*i64", "lse_ptr": "*fp32"}

    def build(kernel, element: str, constexprs: dict, num_warps: int = 4, **pointers) -> None:
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = pointers.get(name) or indices.get(name) or f"*{element}"
            else:
                signature[name] = "fp32" if name == "scale_log2" else "i32"
        source = ASTSource(kernel, signature, constexprs)
        binary = triton.compile(source, target=target, options={"num_warps": num_warps})
        print(f"compiled {kernel.__name__} {element} {constexprs}: {len(binary.asm['cubin'])} B")

    for head_dim, group, element, splits in [(128, 8, "fp16", 4), (64, 1, "fp32", 1)]:
        tiles = decode_tiles(head_dim, group)
        precision = "ieee" if element == "fp32" else "tf32"
        constexprs = {"BLOCK_SIZE": 16, "BLOCK_HEAD_DIM": tiles.head_dim}
        constexprs |= {"BLOCK_GROUP": tiles.group, "BLOCK_TOKENS": tiles.tokens}
        constexprs |= {"NUM_SPLITS": splits, "DOT_PRECISION": precision}
        out = "*fp32" if splits > 1 else f"*{element}"
        build(_decode_split_kernel, element, constexprs, tiles.num_warps, out_ptr=out)
    build(
        _decode_combine_kernel,
        "bf16",
        {"NUM_SPLITS": 5, "BLOCK_SPLITS": 8, "BLOCK_HEAD_DIM": 128},
        partial_ptr="*fp32",
    )
    for head_dim, group, element in [(128, 8, "bf16"), (64, 1, "fp16")]:
        tiles = prefill_tiles(head_dim, group)
        constexprs = {"BLOCK_SIZE": 16, "BLOCK_HEAD_DIM": tiles.head_dim}
        constexprs |= {"BLOCK_GROUP": tiles.group, "BLOCK_QUERY": tiles.query_tokens}
        constexprs |= {"BLOCK_TOKENS": tiles.tokens, "DOT_PRECISION": "tf32"}
        build(_prefill_kernel, element, constexprs, tiles.num_warps)
    constexprs = {"BLOCK_SIZE": 16, "BLOCK_TOKENS": 16, "BLOCK_HEAD_DIM": 128, "NUM_KV_HEADS": 8}
    build(_store_kv_kernel, "bf16", constexprs)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    compile_all()
