"""bench/kernels.py: skips cleanly without CUDA; on a GPU a two-point sweep prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


def load_bench():
    # Loaded under another name: "kernels" is the package the benchmark measures.
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_bench_skips_cleanly_without_cuda(capsys):
    assert load_bench().main([]) == 0
    assert "skipped: no CUDA GPU here" in capsys.readouterr().out


@pytest.mark.gpu
def test_bench_quick_sweep_prints_bandwidth(capsys):
    assert load_bench().main(["--quick", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth (roofline for decode)" in out
    decode_rows = [line for line in out.splitlines() if line.startswith("decode")]
    assert len(decode_rows) == 2
