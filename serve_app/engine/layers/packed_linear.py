"""Float32 projections on CPU through oneDNN, with each weight packed once after loading.

torch's default float32 GEMM on CPU is MKL's; on this project's dev box (an AMD EPYC with
AVX-512) it ran a 1024 x 1024 matmul at 175-185 GFLOP/s and decode-sized projections at
100-180, while oneDNN (which torch also ships) ran the same products at 330-420 GFLOP/s once
the weight was reordered into its blocked layout (`python -m bench.engine_throughput`
prints both rates; bench/README.md has the tables). Results are ordinary float32 GEMMs
(relative error ~4e-7 against float64, as MKL's).

Packing goes through torch's `mkldnn` operators, which are not a public API: availability
is checked by running them once on a small product against F.linear, and the engine keeps
the plain path where the check fails (`EngineConfig.cpu_packed_weights` turns it off).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# The batch size oneDNN tunes the packed layout for; any token count works with it. Over the
# bench model's five projection shapes and 16-2048 tokens, 2048 was as fast as or faster
# than 128 and 512 everywhere, by 5-15% on decode-sized batches (medians of 3 rounds).
PACKING_BATCH_HINT = 2048


@functools.cache
def onednn_packing_available() -> bool:
    """True when torch's oneDNN linear operators run here and agree with F.linear."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(24, 40, generator=generator)
        bias = torch.randn(24, generator=generator)
        x = torch.randn(5, 40, generator=generator)
        got = packed_linear(x, pack_weight(weight), bias)
        return bool(torch.allclose(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError) as error:
        logger.info("oneDNN weight packing unavailable (%s): plain float32 GEMMs", error)
        return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) float32 weight -> an opaque oneDNN tensor of the same size."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKING_BATCH_HINT)


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x W^T + b for x (tokens, in): a contiguous (tokens, out) tensor."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
