"""Test helpers that watch a real engine without changing what it does."""

from __future__ import annotations

import torch


class RecordingExecutor:
    """Passes every call through to a real executor and keeps each step's logits."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.logits: list[torch.Tensor] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def execute(self, model_input):
        logits = self.inner.execute(model_input)
        self.logits.append(logits.clone())
        return logits
