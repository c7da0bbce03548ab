"""Kernel-test setup: the Triton interpreter on machines without CUDA, and random paged batches.

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when a `kernels.*` kernel
module is first imported; this conftest runs at collection, before any test module imports
them. With CUDA present the same tests run the compiled kernels on the GPU instead.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pytest
import torch

from serve_kernels import reference  # pure torch: importing it never decorates a kernel

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# ‖out − ref‖ / ‖ref‖ allowed per dtype (the contract; bfloat16 only runs on CUDA).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@dataclass
class PagedBatch:
    """A random batch over a shuffled paged cache; sequence i has query_lens[i] new tokens
    at the end of its context_lens[i] tokens."""

    query: torch.Tensor  # (num_tokens, num_heads, head_dim), a strided view
    k_cache: torch.Tensor  # (num_blocks, block_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # (num_seqs, max_blocks) int32, a non-contiguous view
    context_lens: torch.Tensor  # (num_seqs,) int32
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32
    context_lens_host: list[int]
    query_start_loc_host: list[int]
    scale: float

    def poisoned_out(self) -> torch.Tensor:
        """NaN everywhere, so an element the kernel never writes fails the comparison."""
        return torch.full(self.query.shape, float("nan"), dtype=self.query.dtype, device=DEVICE)

    def upcast(self) -> dict[str, torch.Tensor]:
        """float32 copies for the oracle: the reference's own low-precision rounding would
        otherwise count against the kernel."""
        return {
            "query": self.query.float(),
            "k_cache": self.k_cache.float(),
            "v_cache": self.v_cache.float(),
        }

    # Kernels are imported inside the methods: after TRITON_INTERPRET is set above.
    def decode(self, **options) -> torch.Tensor:
        """The decode kernel (every sequence has one new token) into a poisoned out."""
        from serve_kernels.decode_attention import paged_decode_attention

        out = self.poisoned_out()
        returned = paged_decode_attention(
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.context_lens,
            max(self.context_lens_host),
            self.scale,
            out=out,
            **options,
        )
        assert returned is out
        return out

    def prefill(self, **options) -> torch.Tensor:
        """The prefill/extend kernel over every sequence into a poisoned out."""
        from serve_kernels.prefill_attention import paged_prefill_attention

        out = self.poisoned_out()
        paged_prefill_attention(
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.query_start_loc,
            self.context_lens,
            self.max_query_len,
            self.scale,
            out=out,
            **options,
        )
        return out

    def mixed(self, num_decode_seqs: int, **options) -> torch.Tensor:
        """kernels.paged_attention (decodes first, then chunks) into a poisoned out."""
        from serve_kernels.paged_attention import paged_attention

        out = self.poisoned_out()
        paged_attention(
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.query_start_loc,
            self.context_lens,
            self.context_lens_host,
            num_decode_seqs,
            self.max_query_len,
            self.scale,
            out=out,
            **options,
        )
        return out

    def reference_decode(self) -> torch.Tensor:
        return reference.paged_decode_attention(
            **self.upcast(),
            block_tables=self.block_tables,
            context_lens=self.context_lens,
            max_context_len=max(self.context_lens_host),
            scale=self.scale,
        )

    def reference_mixed(self, num_decode_seqs: int) -> torch.Tensor:
        return reference.paged_attention(
            **self.upcast(),
            block_tables=self.block_tables,
            query_start_loc=self.query_start_loc_host,
            context_lens=self.context_lens_host,
            num_decode_seqs=num_decode_seqs,
            scale=self.scale,
        )

    @property
    def max_query_len(self) -> int:
        starts = self.query_start_loc_host
        return max(end - start for start, end in itertools.pairwise(starts))


def make_paged_batch(
    context_lens: list[int],
    query_lens: list[int],
    num_kv_heads: int,
    query_group_size: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int,
) -> PagedBatch:
    generator = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-length // block_size) for length in context_lens]
    max_blocks = max(blocks_per_seq) + 1
    # Spare blocks hold random values too: reading a wrong block changes the result.
    num_blocks = sum(blocks_per_seq) + 3
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=generator).to(DEVICE, dtype)
    v_cache = torch.randn(cache_shape, generator=generator).to(DEVICE, dtype)
    # Padding entries point at real blocks, so only masking keeps them out of the result.
    wide_tables = torch.randint(
        0, num_blocks, (len(context_lens), 2 * max_blocks), generator=generator
    )
    shuffled = torch.randperm(num_blocks, generator=generator).tolist()
    for row, count in enumerate(blocks_per_seq):
        wide_tables[row, :count] = torch.tensor(shuffled[:count])
        shuffled = shuffled[count:]
    block_tables = wide_tables.to(DEVICE, torch.int32)[:, :max_blocks]
    num_heads = num_kv_heads * query_group_size
    num_tokens = sum(query_lens)
    # A slice of a wider projection, like the engine's q out of its fused qkv output.
    fused = torch.randn(num_tokens, num_heads * head_dim + 24, generator=generator)
    query = fused.to(DEVICE, dtype)[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    starts = [0]
    for length in query_lens:
        starts.append(starts[-1] + length)
    return PagedBatch(
        query=query,
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables,
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=DEVICE),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=DEVICE),
        context_lens_host=list(context_lens),
        query_start_loc_host=starts,
        scale=head_dim**-0.5,
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN (an unwritten poisoned element) gives NaN."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    error = relative_error(out, ref)
    assert error < TOLERANCE[dtype], f"relative error {error:.3e} >= {TOLERANCE[dtype]:.0e}"


@pytest.fixture
def device() -> torch.device:
    return DEVICE


# Flags added to a native CPU kernel build: none (this machine's paths: AVX-512 here), or the
# portable C that CPUs without AVX-512 run, compiled here with -mno-avx512f.
NATIVE_BUILDS = {"native": (), "portable": ("-mno-avx512f",)}


@pytest.fixture(scope="module", params=sorted(NATIVE_BUILDS))
def native_build_flags(request) -> tuple[str, ...]:
    """Each native-kernel test runs on both builds (the portable one only differs from the
    native one where the CPU has AVX-512)."""
    return NATIVE_BUILDS[request.param]


@pytest.fixture
def paged_batch():
    """make_paged_batch(context_lens, query_lens, num_kv_heads, query_group_size, head_dim,
    block_size, dtype, seed) -> PagedBatch."""
    return make_paged_batch


@pytest.fixture
def check_close():
    """check_close(out, ref, dtype): relative error under the dtype's tolerance."""
    return assert_close
