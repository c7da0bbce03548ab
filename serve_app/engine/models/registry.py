"""Maps a checkpoint's architecture name to the model class that runs it."""

from __future__ import annotations

from torch import nn

from serve_app.engine.models.llama import LlamaForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def model_class_for(architecture: str) -> type[nn.Module]:
    return MODEL_CLASSES[architecture]
