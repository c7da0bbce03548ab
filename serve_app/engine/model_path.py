"""Where the engine finds a model: a preset name or a HuggingFace directory, and the cache root
that presets and built kernels live under."""

from __future__ import annotations

import os
from pathlib import Path

from serve_app.engine.tiny import PRESETS, build_preset


def cache_root() -> Path:
    return Path(os.environ.get("SERVE_APP_CACHE", Path.home() / ".cache" / "serve_app"))


def resolve_model_dir(model: str) -> Path:
    """A preset name builds (once) and returns its directory; anything else is a path."""
    if model in PRESETS:
        return build_preset(model, cache_root())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither a preset {sorted(PRESETS)} nor a directory"
        )
    return path
