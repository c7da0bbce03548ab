"""No import name of ours collides with an installed distribution's.

The repository root is on `sys.path` under pytest, `serve run` and `python -m bench...`, so a
package folder there (one with an `__init__.py`) wins over an installed package of the same
name. Our kernels folder was once the package `kernels`, which is also Hugging Face's
`kernels` distribution, imported by transformers: every transformers model import then failed.
"""

from __future__ import annotations

import importlib.metadata

from tests.python_in_repo import ROOT, run_python_in_repo

OUR_DISTRIBUTION = "serve-app"


def our_import_names() -> set[str]:
    """Top-level names importable from the repository root or from the kernels folder."""
    names = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    names |= {path.stem for path in ROOT.glob("*.py")}
    names |= {path.parent.name for path in (ROOT / "kernels").glob("*/__init__.py")}
    return names


def test_our_import_names_are_ours_alone() -> None:
    names = our_import_names()
    assert {"serve_app", "serve_kernels"} <= names
    assert "kernels" not in names
    providers = importlib.metadata.packages_distributions()
    taken = {
        name: sorted(set(providers[name]) - {OUR_DISTRIBUTION})
        for name in names
        if set(providers.get(name, ())) - {OUR_DISTRIBUTION}
    }
    assert taken == {}, f"import names of ours that installed distributions also provide: {taken}"


def test_transformers_models_and_our_engine_in_one_process_from_the_root() -> None:
    script = (
        "import importlib.metadata, pathlib\n"
        "hf = importlib.metadata.distribution('kernels')  # Hugging Face's, from the lock\n"
        "from transformers import LlamaForCausalLM  # imports transformers.activations -> kernels\n"
        "import kernels\n"
        "origin = pathlib.Path(kernels.__file__).resolve()\n"
        "expected = pathlib.Path(hf.locate_file('kernels/__init__.py')).resolve()\n"
        "assert origin == expected, f'kernels came from {origin}, not {expected}'\n"
        "from serve_app.engine.config import EngineConfig\n"
        "from serve_app.engine.engine import LLMEngine\n"
        "from serve_app.engine.sampling_params import SamplingParams\n"
        "engine = LLMEngine(EngineConfig(model='tiny', kv_cache_memory_bytes=1 << 20,\n"
        "    max_model_len=64))\n"
        "[tokens] = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))\n"
        "print(LlamaForCausalLM.__name__, len(tokens))\n"
    )
    assert run_python_in_repo(script).split() == ["LlamaForCausalLM", "4"]
