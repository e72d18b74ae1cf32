"""What training holds in memory: which parameters train (`select_trainable`), in which dtype
(`cast_trainable`), which rows of the vocabulary matrices (`train_new_token_rows`), and which activations
backward keeps (gradient checkpointing). Together they decide whether a run fits a device (config.ModelConfig:
QLoRA on a 16 GB board); what they train toward is objective.py's. Checkpointing changes no gradient
(tests/training/test_qlora.py).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pixellm_ros.model import PixelLMForCausalLM

from .config import AUTO_CHECKPOINT_MIN_HIDDEN, DTYPE_NAMES, ModelConfig, TrainConfig

if TYPE_CHECKING:
    from .objective import TrainingModel

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def select_trainable(model: TrainingModel, cfg: TrainConfig) -> list[str]:
    """Freeze everything, then unfreeze the configured parts and LoRA weights. Returns trained names."""
    model.requires_grad_(False)
    names = []
    for name, p in model.pixellm.named_parameters():
        if "all" in cfg.trainable or "lora_" in name or any(name == t or name.startswith(t + ".") for t in cfg.trainable):
            p.requires_grad_(True)
            names.append(name)
    if cfg.train_vision_tower:
        model.vision_tower.requires_grad_(True)
        names += [f"vision_tower.{n}" for n, _ in model.vision_tower.named_parameters()]
    for head in model.trained_heads:
        head.requires_grad_(True)
    return names


def checkpointing_wanted(cfg: ModelConfig, hidden_size: int) -> bool:
    """Resolve model.gradient_checkpointing ("auto": on for LLMs of 7B width, see config.py)."""
    if cfg.gradient_checkpointing == "auto":
        return hidden_size >= AUTO_CHECKPOINT_MIN_HIDDEN
    return bool(cfg.gradient_checkpointing)


def _checkpointed(forward, *args, **kwargs):
    # Only while autograd records: evaluation / no_grad forwards run the layer plainly. Non-reentrant
    # checkpointing handles inputs that need no grad (a frozen layer before any trained one) and keyword
    # arguments; the RNG state is restored for the recompute, so LoRA dropout draws the same mask.
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: TrainingModel, modules: list[str]) -> int:
    """Keep only each layer's input for backward and recompute the layer there (activation memory
    O(layers x sequence x hidden) instead of every intermediate of every layer). `modules`: of
    config.CHECKPOINTABLE. Patches the layers' forward in place, so parameter names (checkpoints,
    adapters) do not change. Returns the number of layers."""
    import torch.utils.checkpoint  # noqa: F401  (torch.utils.checkpoint is not imported by `import torch`)
    layers: list[nn.Module] = []
    if "llm" in modules:
        layers += list(model.pixellm.model.layers)
    if "vision_tower" in modules:
        layers += list(model.vision_tower.vision_model.encoder.layers)
    for layer in layers:
        if not isinstance(layer.forward, functools.partial):
            layer.forward = functools.partial(_checkpointed, type(layer).forward.__get__(layer))
    return len(layers)


def cast_trainable(model: TrainingModel, dtype: torch.dtype) -> int:
    """Hold every parameter that trains in `dtype` (full precision master weights on a bf16 / quantized
    base, as peft's k-bit preparation does); frozen ones keep the base dtype. Returns the count cast."""
    from pixellm_ros.model.checkpoint import release_pages
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            old = p.data
            p.data = old.to(dtype)
            release_pages(old)  # a bf16 base is memory-mapped: drop the copied pages (see checkpoint.py)
            n += 1
    return n


class _NewRows(nn.Module):
    """An embedding / output matrix whose rows >= `first` train (`new_rows`, in the trained dtype) while the
    others stay in the frozen `weight`. `weight` keeps its name, so the module reads like the one it replaces."""

    def __init__(self, base: nn.Module, first: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.first = first
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.new_rows = nn.Parameter(base.weight[first:].detach().to(dtype).clone())

    def folded(self) -> torch.Tensor:
        """`weight` with the trained rows written back (in its dtype)."""
        with torch.no_grad():
            self.weight[self.first:] = self.new_rows.to(self.weight.dtype)
        return self.weight


class NewRowsEmbedding(_NewRows):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        base = F.embedding(ids, self.weight).to(self.new_rows.dtype)
        new = F.embedding((ids - self.first).clamp(min=0), self.new_rows)
        return torch.where((ids >= self.first)[..., None], new, base)


class NewRowsHead(_NewRows):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.linear(x, self.weight[: self.first]), F.linear(x, self.new_rows)], dim=-1)


def train_new_token_rows(model: PixelLMForCausalLM, first: int, dtype: torch.dtype) -> None:
    """Swap embed_tokens and lm_head for modules training only rows >= `first` (config model.token_rows "new")."""
    model.model.embed_tokens = NewRowsEmbedding(model.model.embed_tokens, first, dtype)
    model.lm_head = NewRowsHead(model.lm_head, first, dtype)


def fold_token_rows(model: PixelLMForCausalLM) -> None:
    """Undo train_new_token_rows, the trained rows written into plain nn.Embedding / nn.Linear (for export)."""
    for parent, name, cls in ((model.model, "embed_tokens", nn.Embedding), (model, "lm_head", nn.Linear)):
        module = getattr(parent, name)
        if isinstance(module, _NewRows):
            weight = module.folded()
            with torch.device("meta"):
                plain = cls(weight.shape[1], weight.shape[0], bias=False) if cls is nn.Linear else cls(*weight.shape)
            plain.weight = nn.Parameter(weight, requires_grad=False)
            setattr(parent, name, plain)
