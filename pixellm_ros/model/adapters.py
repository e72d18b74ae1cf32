"""LoRA on PixelLM: inject and merge (training/), and the adapters training writes: save, apply, remove.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``: the LoRA matrices
of the LLM's target linears plus the full weights of the modules the run trained besides LoRA (in the
release recipe: lm_head, embed_tokens, mask decoder, text_hidden_fcs, both projectors), so applying
it reproduces the fine-tuned model exactly. Removing it restores those modules from the base
checkpoint on disk, so no second copy of the weights is kept in memory. Uses peft's LoRA layers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .checkpoint import CheckpointError, iter_tensors, weight_files
from .pixellm import PixelLMForCausalLM

ADAPTER_FORMAT = "pixellm_ros-lora-1"
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA to inject (training.config.LoraConfig, the YAML schema and its defaults, hands its fields over)."""

    r: int
    alpha: int
    dropout: float
    target_modules: str  # a regular expression that must match a linear layer's whole name


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_target_names(model: nn.Module, pattern: str) -> list[str]:
    """Names of the linear layers whose whole name matches `pattern`."""
    regex = re.compile(pattern)
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and regex.fullmatch(n)]


def _inject(model: nn.Module, targets: list[str], r: int, alpha: int, dropout: float) -> None:
    from peft import LoraConfig, inject_adapter_in_model
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                       bias="none"), model, adapter_name=ADAPTER_NAME)


def add_lora(model: PixelLMForCausalLM, spec: LoraSpec) -> list[str]:
    """Inject peft LoRA layers into the LLM's target linears (in place), to train. Returns the wrapped names."""
    targets = lora_target_names(model, spec.target_modules)
    if not targets:
        raise ValueError(f"LoRA target pattern {spec.target_modules!r} matches no linear layer")
    _inject(model, targets, spec.r, spec.alpha, spec.dropout)
    return targets


def merge_lora(model: PixelLMForCausalLM) -> int:
    """Fold every LoRA layer into its base linear and remove it (the release's merge). Returns count."""
    return _unwrap(model, merge=True)


def _unwrap(model: nn.Module, merge: bool) -> int:
    """Put each LoRA layer's base linear back in its place, with the LoRA update folded in or dropped."""
    layers = lora_layers(model)
    for name, module in layers.items():
        if merge:
            module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return len(layers)


def save_adapter(model: PixelLMForCausalLM, folder: str | Path, saved_modules: list[str], spec: LoraSpec,
                 base_model: str = "") -> Path:
    """Write LoRA weights (names without peft's adapter name) + the fully trained modules' weights. `spec`:
    the LoRA `add_lora` injected; the config records the layers it matched, not its pattern."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            tensors[name.replace(f".{ADAPTER_NAME}.", ".")] = tensor
        elif any(name == m or name.startswith(m + ".") for m in saved_modules) and "base_layer" not in name:
            tensors[name] = tensor
    targets = sorted(lora_layers(model))
    cfg = {"format": ADAPTER_FORMAT, "base_model": base_model, "r": spec.r, "alpha": spec.alpha,
           "dropout": spec.dropout, "target_modules": targets, "saved_modules": saved_modules}
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
    if lora_layers(model):
        raise RuntimeError("an adapter is already applied: remove it first")
    cfg = read_adapter_config(folder)
    names = dict(model.named_modules())
    missing = [t for t in cfg["target_modules"] if t not in names]
    if missing:
        raise CheckpointError(f"adapter targets layers this model lacks: {missing[:5]}")
    _inject(model, cfg["target_modules"], cfg["r"], cfg["alpha"], dropout=0.0)
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
    _unwrap(model, merge=False)
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
