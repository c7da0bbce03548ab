"""bench/attention_kernels.py: skips cleanly without CUDA; on a GPU a two-point sweep prints its
table."""

from __future__ import annotations

import pytest
import torch

from bench import attention_kernels


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_bench_skips_cleanly_without_cuda(capsys):
    assert attention_kernels.main([]) == 0
    assert "skipped: no CUDA GPU here" in capsys.readouterr().out


@pytest.mark.gpu
def test_bench_quick_sweep_prints_bandwidth(capsys):
    assert attention_kernels.main(["--quick", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth (roofline for decode)" in out
    decode_rows = [line for line in out.splitlines() if line.startswith("decode")]
    assert len(decode_rows) == 2
