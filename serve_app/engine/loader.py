"""Reads a HuggingFace model directory: config.json, generation_config.json and
*.safetensors (single file or sharded with an index) into sharded parameters."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from serve_app.engine.model_files import ModelFilesError, safetensors_files

SKIPPED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)


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
