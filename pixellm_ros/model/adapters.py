"""LoRA adapters made by training/: save, apply to a loaded model, remove again.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``: the LoRA matrices
of the LLM's target linears plus the full weights of the modules the run trained besides LoRA (in the
release recipe: lm_head, embed_tokens, mask decoder, text_hidden_fcs, both projectors), so applying
it reproduces the fine-tuned model exactly. Removing it restores those modules from the base
checkpoint on disk, so no second copy of the weights is kept in memory. Uses peft's LoRA layers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .checkpoint import CheckpointError, iter_tensors, weight_files
from .pixellm import PixelLMForCausalLM

ADAPTER_FORMAT = "pixellm_ros-lora-1"
ADAPTER_NAME = "default"


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def save_adapter(model: PixelLMForCausalLM, folder: str | Path, saved_modules: list[str], lora: dict,
                 base_model: str = "") -> Path:
    """Write LoRA weights (names without peft's adapter name) + the fully trained modules' weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            tensors[name.replace(f".{ADAPTER_NAME}.", ".")] = tensor
        elif any(name == m or name.startswith(m + ".") for m in saved_modules) and "base_layer" not in name:
            tensors[name] = tensor
    targets = sorted(lora_layers(model))
    cfg = {"format": ADAPTER_FORMAT, "base_model": base_model, "r": lora["r"], "alpha": lora["alpha"],
           "dropout": lora.get("dropout", 0.0), "target_modules": targets, "saved_modules": saved_modules}
    tmp = folder / "adapter_model.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an adapter folder: no adapter_config.json")
    cfg = json.loads(path.read_text())
    if cfg.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path}: unknown adapter format {cfg.get('format')!r}")
    if not (Path(folder) / "adapter_model.safetensors").is_file():
        raise CheckpointError(f"{folder} has no adapter_model.safetensors")
    return cfg


def apply_adapter(model: PixelLMForCausalLM, folder: str | Path) -> dict:
    """Inject the adapter's LoRA layers and load all its tensors. The model must have no adapter."""
    from peft import LoraConfig, inject_adapter_in_model
    if lora_layers(model):
        raise RuntimeError("an adapter is already applied: remove it first")
    cfg = read_adapter_config(folder)
    names = dict(model.named_modules())
    missing = [t for t in cfg["target_modules"] if t not in names]
    if missing:
        raise CheckpointError(f"adapter targets layers this model lacks: {missing[:5]}")
    inject_adapter_in_model(LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                       target_modules=cfg["target_modules"]), model, adapter_name=ADAPTER_NAME)
    state = model.state_dict()
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            name = key
            if "lora_" in key:
                part = ".lora_A." if ".lora_A." in key else ".lora_B."
                name = key.replace(part, f"{part}{ADAPTER_NAME}.")
            if name not in state:
                remove_adapter(model, None)
                raise CheckpointError(f"adapter tensor {key} has no place in this model")
            target = state[name]
            if target.shape != f.get_slice(key).get_shape() and list(target.shape) != f.get_slice(key).get_shape():
                remove_adapter(model, None)
                raise CheckpointError(f"adapter tensor {key} has shape {f.get_slice(key).get_shape()}, "
                                      f"model has {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(f.get_tensor(key).to(target.dtype))
    model.requires_grad_(False)
    return cfg


def remove_adapter(model: PixelLMForCausalLM, base_folder: str | Path | None,
                   saved_modules: list[str] | None = None) -> None:
    """Unwrap LoRA layers (without merging) and reload `saved_modules` from the base checkpoint."""
    for name, module in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    if base_folder is not None and saved_modules:
        state = model.state_dict()
        wanted = {k for k in state if any(k == m or k.startswith(m + ".") for m in saved_modules)}
        found = set()
        with torch.no_grad():
            for key, tensor in iter_tensors(weight_files(Path(base_folder))):
                if key in wanted:
                    state[key].copy_(tensor.to(state[key].dtype))
                    found.add(key)
        if wanted - found:
            raise CheckpointError(f"base checkpoint lacks {sorted(wanted - found)[:5]} to restore")
