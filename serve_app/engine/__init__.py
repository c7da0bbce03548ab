"""The inference engine: pure PyTorch (never imports ray).

Exported here: `EngineConfig` and `SamplingParams`, which load no torch. The engine itself
is `engine.LLMEngine`, or `async_engine.AsyncEngine` for asyncio.
"""

from serve_app.engine.config import EngineConfig
from serve_app.engine.sampling_params import SamplingParams

__all__ = ["EngineConfig", "SamplingParams"]
