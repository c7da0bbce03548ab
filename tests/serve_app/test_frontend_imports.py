"""The deployments that never run the model (the batcher; the ingress until it loads its
tokenizer) and the preflight (`make run`, `make deploy`) import no torch: each of their
processes starts seconds sooner and smaller. The types they share with the engine live in
torch-free modules (engine/mailbox.py, engine/errors.py, engine/model_files.py,
engine/parallel/sizes.py)."""

from __future__ import annotations

import pytest

from tests.python_in_repo import run_python_in_repo


@pytest.mark.parametrize(
    "module", ["serve_app.batcher.deployment", "serve_app.ingress.http", "serve_app.preflight"]
)
def test_module_imports_without_torch(module: str) -> None:
    script = f"import sys, {module}\nprint(sorted(n for n in sys.modules if n == 'torch'))"
    assert run_python_in_repo(script, timeout_s=120).strip() == "[]"
