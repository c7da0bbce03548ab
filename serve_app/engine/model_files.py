"""The files of a HuggingFace model directory that say what the model is (config.json,
generation_config.json, which *.safetensors hold its weights), read without torch: the
preflight checks them in a process that never loads a model (`make deploy` starts faster).
serve_app/engine/loader.py loads the weights."""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.engine.models.architecture import ModelArchitecture


class ModelFilesError(FileNotFoundError):
    """A required file of the model directory is missing or unreadable."""


def read_json(model_dir: Path, name: str, required: bool = True) -> dict:
    path = model_dir / name
    if not path.is_file():
        if required:
            raise ModelFilesError(f"model directory {model_dir} has no {name}")
        return {}
    return json.loads(path.read_text())


def read_architecture(model_dir: Path) -> ModelArchitecture:
    return ModelArchitecture.from_hf_config(read_json(model_dir, "config.json"))


def eos_token_ids(model_dir: Path) -> list[int]:
    """End-of-sequence ids from generation_config.json, falling back to config.json."""
    for name in ("generation_config.json", "config.json"):
        value = read_json(model_dir, name, required=False).get("eos_token_id")
        if value is not None:
            return [value] if isinstance(value, int) else list(value)
    return []


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / name for name in shard_names]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise ModelFilesError(f"shards listed in {index.name} are missing: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelFilesError(f"model directory {model_dir} has no *.safetensors weights")
    return files
