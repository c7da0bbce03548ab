"""Whether a model splits over a tensor-parallel size: checked at start-up, before any
process starts, by the engine and by the preflight (which runs without torch)."""

from __future__ import annotations

from serve_app.engine.config import ConfigError
from serve_app.engine.models.architecture import ModelArchitecture


def check_tensor_parallel_sizes(arch: ModelArchitecture, world_size: int) -> None:
    """Fail at start-up, before any process starts, when the model cannot be split over
    `world_size` ranks; the message says which size and by what."""
    if world_size == 1:
        return
    problems = [
        f"{name} ({size}) is not divisible by {world_size}"
        for name, size in (
            ("num_attention_heads", arch.num_heads),
            ("intermediate_size", arch.intermediate_size),
            ("vocab_size", arch.vocab_size),
        )
        if size % world_size
    ]
    if arch.num_kv_heads >= world_size and arch.num_kv_heads % world_size:
        problems.append(
            f"num_key_value_heads ({arch.num_kv_heads}) is not divisible by {world_size}"
        )
    if arch.num_kv_heads < world_size and world_size % arch.num_kv_heads:
        problems.append(
            f"{world_size} is not a multiple of num_key_value_heads ({arch.num_kv_heads}), "
            "which replicating KV heads over ranks needs"
        )
    if problems:
        raise ConfigError(
            f"EngineConfig.tensor_parallel_size {world_size} cannot split this "
            f"{arch.architecture}: " + "; ".join(problems)
        )
