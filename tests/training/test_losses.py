"""The table of loss terms: one term per LossConfig weight, the logged keys old runs were written with, and
combine_losses dividing each term by its own count and weighting it with its own field."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from training.config import LoraConfig, LossConfig
from training.losses import LOG_KEYS, LOSS_TERMS, MASKS, PATCHES, TOKENS
from training.objective import combine_losses


def test_every_loss_weight_belongs_to_one_term_and_the_logged_keys_are_the_old_ones():
    assert [t.weight_field for t in LOSS_TERMS] == [f.name for f in dataclasses.fields(LossConfig)]
    # The columns of every metrics.csv written so far (the model card and bench_training read them by name);
    # new terms only append.
    assert LOG_KEYS[:6] == ("loss", "ce", "bce", "dice", "overlap", "naming")
    assert LOG_KEYS[6:] == ("patch",)
    assert {t.per for t in LOSS_TERMS} == {TOKENS, MASKS, PATCHES}


@pytest.mark.parametrize("world", [1, 2])
def test_combine_losses_divides_each_term_by_its_count_and_weights_it_by_its_field(world):
    cfg = LossConfig(ce_weight=1.5, bce_weight=2.0, dice_weight=0.25, overlap_weight=3.0, naming_weight=0.5,
                     patch_weight=0.1)
    sums = {"ce": 12.0, "bce": 3.0, "dice": 1.5, "overlap": 0.75, "naming": 6.0, "patch": 40.0}
    parts = {f"{k}_sum": torch.tensor(v) for k, v in sums.items()}
    parts[PATCHES] = torch.tensor(5)  # this process's count; the global one (20) is passed
    out = combine_losses(parts, torch.tensor(8), torch.tensor(3), cfg, world, patches=torch.tensor(20))
    expected = {"ce": 12.0 / 8, "bce": 1.0, "dice": 0.5, "overlap": 0.25, "naming": 2.0, "patch": 2.0}
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value * world)
    assert float(out["loss"]) == pytest.approx(world * (1.5 * 1.5 + 2.0 * 1.0 + 0.25 * 0.5 + 3.0 * 0.25 + 0.5 * 2.0
                                                         + 0.1 * 2.0))
    # Without a global count, the process's own; empty counts (no target in the whole batch) divide by 1, not 0.
    assert float(combine_losses(parts, torch.tensor(8), torch.tensor(3), cfg)["patch"]) == pytest.approx(8.0)
    parts[PATCHES] = torch.tensor(0)
    assert torch.isfinite(combine_losses(parts, torch.tensor(0), torch.tensor(0), cfg)["loss"])


def test_lora_config_hands_its_fields_to_the_model_layer():
    spec = LoraConfig(r=4, alpha=8, dropout=0.1, target_modules="x").spec()
    assert (spec.r, spec.alpha, spec.dropout, spec.target_modules) == (4, 8, 0.1, "x")
