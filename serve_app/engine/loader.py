"""Reads a HuggingFace model directory: config.json, generation_config.json and
*.safetensors (single file or sharded with an index) into sharded parameters."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from serve_app.engine.models.architecture import ModelArchitecture

SKIPPED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)


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


def load_weights(model: nn.Module, model_dir: Path) -> None:
    """Copy every checkpoint tensor into its (sharded) parameter via its weight loader."""
    packed = getattr(model, "packed_modules", {})
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a dict
                if name.endswith(SKIPPED_TENSOR_SUFFIXES):
                    continue
                target, part = _target_parameter(name, packed)
                if target not in params:
                    raise ModelFilesError(
                        f"checkpoint tensor {name!r} has no parameter in {type(model).__name__}"
                    )
                param = params[target]
                full = tensors.get_tensor(name).to(param.dtype)
                loader = getattr(param, "weight_loader", copy_whole)
                with torch.no_grad():
                    if part is None:
                        loader(param, full)
                    else:
                        loader(param, full, part)
                loaded.add(target)
    _check_all_loaded(model, params, loaded)


def copy_whole(param: nn.Parameter, full: torch.Tensor) -> None:
    """The loader of unsharded parameters (norms)."""
    if param.shape != full.shape:
        raise ModelFilesError(
            f"checkpoint tensor shape {tuple(full.shape)} does not match "
            f"parameter shape {tuple(param.shape)}"
        )
    param.data.copy_(full)


def _target_parameter(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    for checkpoint_part, (fused, part) in packed.items():
        if f".{checkpoint_part}." in name:
            return name.replace(f".{checkpoint_part}.", f".{fused}."), part
    return name, None


def _check_all_loaded(model: nn.Module, params: dict[str, nn.Parameter], loaded: set[str]) -> None:
    tied = {
        name
        for name, p in params.items()
        for other in loaded
        if name not in loaded and params[other] is p
    }
    missing = sorted(set(params) - loaded - tied)
    if missing:
        raise ModelFilesError(
            f"checkpoint has no weights for parameters {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}"
        )
