"""The inference engine: pure PyTorch (never imports ray).

Public entry points: `EngineConfig`, `SamplingParams`, `LLMEngine`, `AsyncEngine`.
"""

from serve_app.engine.config import EngineConfig
from serve_app.engine.sampling_params import SamplingParams

__all__ = ["EngineConfig", "SamplingParams"]
