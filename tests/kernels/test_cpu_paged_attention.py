"""The native CPU attention kernel (serve_kernels/cpu_paged_attention.py) against the references:
decodes (ragged lengths, shuffled strided block tables, GQA ratios, head sizes on both of
its paths, block sizes above its 16-token tile, thread counts), and the `cpu` backend on
batches of decodes and prefill chunks (fresh prompts and chunks after a cached prefix); each
on the AVX-512 build and on the portable one (`native_build_flags`)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from serve_kernels import reference
from serve_kernels.cpu_backend import CpuAttentionBackend
from serve_kernels.cpu_paged_attention import CpuPagedAttention
from serve_kernels.native_build import NativeBuildError, load_native_library

# Length 1, mid-block, exactly one block, one past a block, several blocks ending mid-tile.
CONTEXT_LENS = [1, 6, 16, 17, 45, 130]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("native-kernels")


@pytest.fixture(scope="module")
def cpu_kernel(cache_dir, native_build_flags) -> CpuPagedAttention:
    return CpuPagedAttention(cache_dir, native_build_flags)


def backend_and_reference(
    cache_dir: Path, cpu_kernel: CpuPagedAttention, batch, num_decode_seqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `cpu` backend (running the build under test) and the reference on one batch laid
    out as the engine lays it out: `num_decode_seqs` decodes first, then prefill chunks."""
    metadata = SimpleNamespace(
        block_tables=batch.block_tables,
        context_lens=batch.context_lens,
        context_lens_host=batch.context_lens_host,
        query_start_loc_host=batch.query_start_loc_host,
        num_decode_seqs=num_decode_seqs,
    )
    backend = CpuAttentionBackend(cache_dir)
    backend.kernel = cpu_kernel
    out = backend.attend(batch.query, batch.k_cache, batch.v_cache, metadata, batch.scale)
    expected = reference.paged_attention(
        **batch.upcast(),
        block_tables=batch.block_tables,
        query_start_loc=batch.query_start_loc_host,
        context_lens=batch.context_lens_host,
        num_decode_seqs=num_decode_seqs,
        scale=batch.scale,
    )
    return out, expected


def on_cpu(batch):
    """The batch's tensors on the CPU (the fixtures build them on CUDA when there is one)."""
    return dataclasses.replace(
        batch,
        **{
            field.name: getattr(batch, field.name).cpu()
            for field in dataclasses.fields(batch)
            if isinstance(getattr(batch, field.name), torch.Tensor)
        },
    )


def decode_with(cpu_kernel, batch) -> torch.Tensor:
    return cpu_kernel.decode(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.context_lens,
        batch.scale,
    )


def reference_decode(batch) -> torch.Tensor:
    return reference.paged_decode_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.context_lens,
        max(batch.context_lens_host),
        batch.scale,
    )


@pytest.mark.parametrize(
    ("query_group_size", "head_dim", "block_size"),
    [
        (1, 64, 16),  # vector path (head_dim a multiple of 16), no GQA
        (2, 64, 16),  # the bench model's shape
        (4, 128, 8),
        (8, 64, 32),  # a block of two 16-token tiles
        (2, 80, 16),  # head_dim 80: vector path, 5 chunks
        (4, 40, 16),  # head_dim 40: the portable path
        (1, 24, 64),  # the portable path over 64-token blocks
    ],
)
def test_matches_reference(
    paged_batch, check_close, cpu_kernel, query_group_size, head_dim, block_size
):
    batch = on_cpu(
        paged_batch(
            CONTEXT_LENS, [1] * 6, 2, query_group_size, head_dim, block_size, torch.float32, 3
        )
    )
    assert cpu_kernel.supports(batch.query, batch.k_cache)
    check_close(decode_with(cpu_kernel, batch), reference_decode(batch), torch.float32)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(paged_batch, check_close, cpu_kernel, threads):
    """Work items spread over however many threads torch runs with (more than cores too)."""
    batch = on_cpu(paged_batch(CONTEXT_LENS * 4, [1] * 24, 4, 2, 64, 16, torch.float32, threads))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = decode_with(cpu_kernel, batch)
    finally:
        torch.set_num_threads(saved)
    check_close(out, reference_decode(batch), torch.float32)


def test_large_scores_stay_finite(paged_batch, check_close, cpu_kernel):
    """Scores in the hundreds: the running-max softmax must neither overflow nor lose the
    small terms (e^-87 and below flush to zero, as in float32 softmax)."""
    batch = on_cpu(paged_batch(CONTEXT_LENS, [1] * 6, 2, 2, 64, 16, torch.float32, 5))
    batch = dataclasses.replace(batch, query=batch.query * 40)
    out = decode_with(cpu_kernel, batch)
    assert torch.isfinite(out).all()
    check_close(out, reference_decode(batch), torch.float32)


def test_unsupported_inputs_are_refused(paged_batch, cpu_kernel):
    batch = on_cpu(paged_batch(CONTEXT_LENS, [1] * 6, 1, 32, 64, 16, torch.float32, 1))
    assert not cpu_kernel.supports(batch.query, batch.k_cache), "group 32 > the kernel's 16"
    half = on_cpu(paged_batch(CONTEXT_LENS, [1] * 6, 2, 2, 64, 16, torch.float16, 1))
    assert not cpu_kernel.supports(half.query, half.k_cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "query_lens",
    [
        [1, 1, 1, 1, 1, 1],  # decodes only
        [1, 1, 1, 17, 5, 130],  # decodes, then a fresh prompt, a chunk after a prefix, a prompt
        [1, 6, 16, 17, 45, 130],  # fresh prompts only
        [1, 3, 9, 1, 40, 64],  # chunks after cached prefixes (and one-token chunks)
    ],
)
def test_backend_batches(paged_batch, check_close, cache_dir, cpu_kernel, dtype, query_lens):
    """Decodes first, then prefill chunks, as the engine lays them out; float16, which the
    kernel does not take, runs wholly on the reference."""
    num_decode_seqs = next((i for i, n in enumerate(query_lens) if n != 1), len(query_lens))
    batch = on_cpu(paged_batch(CONTEXT_LENS, query_lens, 2, 2, 64, 16, dtype, sum(query_lens)))
    check_close(*backend_and_reference(cache_dir, cpu_kernel, batch, num_decode_seqs), dtype)


@pytest.mark.parametrize(
    ("query_group_size", "head_dim", "block_size"),
    [
        (1, 64, 16),  # 16 tokens per rows item
        (4, 128, 8),  # 4 tokens per item, 8-token blocks: tiles end at block ends
        (8, 64, 32),  # 2 tokens per item, two tiles per block
        (16, 64, 16),  # one token per item: every token on the per-token path
        (2, 80, 16),  # head_dim 80
        (3, 64, 16),  # a group that does not divide the 16 lanes: per-token path only
    ],
)
def test_prefill_rows_match_reference(
    paged_batch, check_close, cache_dir, cpu_kernel, query_group_size, head_dim, block_size
):
    """Prefill chunks run with 16 / group tokens (times the group's heads) in the lanes of one
    vector: runs cut at sequence ends and at 16 rows, partial runs, single-token
    remainders, chunks after cached prefixes, and a context longer than a 16-token tile."""
    context_lens = [1, 19, 33, 64, 130, 140]
    query_lens = [1, 19, 3, 17, 130, 9]
    batch = on_cpu(
        paged_batch(
            context_lens, query_lens, 2, query_group_size, head_dim, block_size, torch.float32, 11
        )
    )
    check_close(*backend_and_reference(cache_dir, cpu_kernel, batch, 1), torch.float32)


def test_skipped_prefill_tokens_keep_their_rows(paged_batch, cpu_kernel):
    """A context length of 0 skips a token inside a rows item: its output row is left as it
    was, and its neighbours' rows are still written."""
    batch = on_cpu(paged_batch([40], [40], 2, 2, 64, 16, torch.float32, 13))
    layout = SimpleNamespace(
        seqs=torch.zeros(40, dtype=torch.int32),
        context_lens=torch.arange(1, 41, dtype=torch.int32),
    )
    skipped = [0, 5, 6, 39]
    layout.context_lens[skipped] = 0
    out = torch.full(batch.query.shape, float("nan"))
    cpu_kernel.attend_into(
        out,
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        layout.seqs,
        layout.context_lens,
        batch.scale,
    )
    written = torch.isfinite(out).all(dim=(1, 2))
    assert written.tolist() == [i not in skipped for i in range(40)]


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(NativeBuildError, match="no-such-compiler-xyz"):
        load_native_library("cpu_paged_attention", tmp_path)
    assert not list(tmp_path.iterdir()), "nothing is left behind"


def test_unwritable_cache_is_a_clear_error(tmp_path):
    """A NativeBuildError (which `auto` turns into the torch fallback), not an OSError."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(NativeBuildError, match="cannot build into"):
        load_native_library("cpu_paged_attention", blocker / "kernels")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_portable_build_has_no_avx512_code(tmp_path):
    """The portable build the tests above run really is another code path: no zmm register
    in it, while the native build on an AVX-512 machine has them."""
    native = load_native_library("cpu_paged_attention", tmp_path)
    portable = load_native_library("cpu_paged_attention", tmp_path, ("-mno-avx512f",))
    assert native.path != portable.path, "the flags are part of the cache key"

    def uses_zmm(path: Path) -> bool:
        listing = subprocess.run(
            ["objdump", "-d", str(path)], capture_output=True, text=True, check=True
        ).stdout
        return "%zmm" in listing

    assert not uses_zmm(portable.path)
    if "avx512f" in Path("/proc/cpuinfo").read_text():
        assert uses_zmm(native.path)


def test_build_is_cached_by_content(tmp_path):
    first = load_native_library("cpu_paged_attention", tmp_path)
    built = first.path.stat().st_mtime_ns
    second = load_native_library("cpu_paged_attention", tmp_path)
    assert second.path == first.path
    assert second.path.stat().st_mtime_ns == built, "a cached library is not rebuilt"
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name], "no temporary files"
