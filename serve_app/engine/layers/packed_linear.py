"""Float32 projections on CPU through oneDNN, with each weight packed once after loading.

oneDNN (which torch ships beside MKL, its default CPU GEMM) runs float32 products about twice
as fast once the weight is reordered into its blocked layout (`python -m
bench.engine_throughput` prints both rates; bench/README.md, "Numbers behind the engine's
code comments"). Results are ordinary float32 GEMMs.

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

# The batch size oneDNN tunes the packed layout for; any token count works with it. 2048 was
# the fastest hint tried, decode-sized batches included (bench/README.md, as above).
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
