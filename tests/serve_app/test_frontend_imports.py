"""The deployments that never run the model (the batcher; the ingress until it loads its
tokenizer) import no torch: each of their processes starts seconds sooner and smaller. The
types they share with the engine live in torch-free modules (engine/mailbox.py,
engine/errors.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["serve_app.batcher.deployment", "serve_app.ingress.http"])
def test_module_imports_without_torch(module: str) -> None:
    script = f"import sys, {module}\nprint(sorted(n for n in sys.modules if n == 'torch'))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
