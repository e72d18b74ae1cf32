"""LoRA inject / merge / unwrap (model/adapters.py) on a tiny random model: the injected layers are the ones the
pattern names, merging keeps the LoRA model's outputs, unwrapping without merging gives the base model's back."""
from __future__ import annotations

import pytest
import torch

from pixellm_ros.model.adapters import LoraSpec, add_lora, lora_layers, merge_lora, remove_adapter
from pixellm_ros.model.scratch import tiny_random_pixellm

QV = r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"


def llm_logits(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, 7, model.config.hidden_size, generator=g)
    positions = torch.arange(7)[None]
    with torch.no_grad():
        return model.logits(model.model(embeds, positions, torch.ones(1, 7, dtype=torch.bool)))


@pytest.fixture
def lora_model():
    """A tiny model with r=2 LoRA on q/v whose B matrices are non-zero (a fresh LoRA is the identity)."""
    model, _ = tiny_random_pixellm(seed=0)
    base = llm_logits(model)
    targets = add_lora(model, LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=QV))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(std=0.5, generator=torch.Generator().manual_seed(2))
    return model, targets, base


def test_add_lora_wraps_exactly_the_layers_the_pattern_names(lora_model):
    model, targets, _ = lora_model
    n = len(model.model.layers)
    assert sorted(targets) == sorted(f"model.layers.{i}.self_attn.{p}" for i in range(n) for p in ("q_proj", "v_proj"))
    assert sorted(lora_layers(model)) == sorted(targets)
    with pytest.raises(ValueError, match="matches no linear layer"):
        add_lora(model, LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=r"no\.such\.layer"))


def test_merge_keeps_the_lora_outputs_and_unwrapping_restores_the_base(lora_model):
    model, targets, base = lora_model
    with_lora = llm_logits(model)
    assert not torch.allclose(with_lora, base, atol=1e-4)  # the LoRA changes the answer
    assert merge_lora(model) == len(targets) and not lora_layers(model)
    torch.testing.assert_close(llm_logits(model), with_lora, atol=1e-4, rtol=1e-4)

    fresh, _ = tiny_random_pixellm(seed=0)
    add_lora(fresh, LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=QV))
    with torch.no_grad():
        for layer in lora_layers(fresh).values():
            layer.lora_B["default"].weight.fill_(0.3)
    remove_adapter(fresh, None)  # unwrap without merging
    assert not lora_layers(fresh)
    torch.testing.assert_close(llm_logits(fresh), base, atol=0, rtol=0)
