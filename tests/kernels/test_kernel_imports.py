"""Import rules of the kernels: they never reach back into serve_app, and the torch path
(reference.py, the CPU default) runs without ever importing triton."""

from __future__ import annotations

import ast

from tests.python_in_repo import ROOT, run_python_in_repo


def test_kernels_never_import_serve_app():
    offenders = []
    for path in (ROOT / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("serve_app")]
    assert offenders == []


def test_torch_backend_generates_without_importing_triton():
    script = (
        "import sys\n"
        "from serve_app.engine.config import EngineConfig\n"
        "from serve_app.engine.engine import LLMEngine\n"
        "from serve_app.engine.sampling_params import SamplingParams\n"
        "engine = LLMEngine(EngineConfig(model='tiny', attention_backend='torch',\n"
        "    kv_cache_memory_bytes=1 << 20, max_model_len=64))\n"
        "[tokens] = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0))\n"
        "assert len(tokens) == 2, tokens\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'triton'))\n"
    )
    assert run_python_in_repo(script, timeout_s=120).strip() == "[]"
