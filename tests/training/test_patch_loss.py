"""The auxiliary vision-patch loss (loss.patch_weight): synthetic samples carry per-pixel class maps, the
encoded items their per-patch class mix, and the training-only heads read it off both tower features,
train with the run and send gradients into the unfrozen tower. Sources without a class map add nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.config import DataConfig, LossConfig, SourceConfig, TrainConfig
from training.data.dataset import IndexedBatches, MixtureStream
from training.data.patch_labels import NUM_CLASSES, balanced_weights, labelled_patches, patch_targets
from training.data.randomize import negative_sample
from training.data.synthetic import COLORS, KINDS, synthetic_sample
from training.memory import select_trainable
from training.objective import TrainingModel, combine_losses


def test_class_map_labels_every_object_pixel_with_its_kind_and_colour():
    s = synthetic_sample(3, 0)
    objects_map = s.class_map
    assert objects_map.shape == s.image.shape[:2]
    for mask, name in zip(s.masks, s.names):  # the targets' masks carry their own class (visible pixels)
        color, kind = name.split()[-2:]
        expected = 1 + KINDS.index(kind) * len(COLORS) + list(COLORS).index(color)
        assert (objects_map[mask] == expected).mean() > 0.95
    assert (negative_sample(3, 0).class_map == 0).all()  # photographs and distractors are background


def test_patch_targets_are_class_fractions_inside_the_image_and_zero_in_the_padding():
    labels = np.zeros((20, 40), np.int64)
    labels[:, 20:] = 5  # right half: class 5
    target = patch_targets(labels, input_size=(16, 32), side=32, grid=4)  # padded to 32x32, bottom half empty
    assert target.shape == (16, NUM_CLASSES)
    valid = labelled_patches(target).view(4, 4)
    assert valid[:2].all() and not valid[2:].any()
    rows = target.view(4, 4, NUM_CLASSES)
    assert torch.allclose(rows[:2, :2, 0], torch.ones(2, 2)) and torch.allclose(rows[:2, 2:, 5], torch.ones(2, 2))


def test_balanced_weights_give_object_and_background_patches_half_each():
    target = torch.zeros(10, NUM_CLASSES)
    target[:8, 0] = 1  # table
    target[8:, 3] = 1  # one small object
    w = balanced_weights(target)
    assert float(w.sum()) == pytest.approx(10) and float(w[8:].sum()) == pytest.approx(float(w[:8].sum()))
    assert torch.equal(balanced_weights(target[:8]), torch.ones(8))  # no object: a plain mean


def _batch(model, tok, patch_grid: int, kind: str = "synthetic"):
    stream = MixtureStream(DataConfig(sources=[SourceConfig(kind=kind, seed=5, questions_per_scene=2)]), tok,
                           model.config.resize_vision_tower_size, 0, patch_grid=patch_grid)
    return IndexedBatches(stream, 2).next_batch()


def test_patch_heads_train_and_reach_the_tower_while_the_naming_head_stays_fixed(base_model, tmp_path):
    from pixellm_ros.model import load_pixellm

    model, tok = load_pixellm(base_model)
    cfg = TrainConfig.from_dict({"base_model": str(base_model), "output_dir": str(tmp_path), "trainable": ["all"],
                                 "train_vision_tower": True, "loss": {"patch_weight": 1.0, "naming_weight": 1.0}})
    tm = TrainingModel(model, cfg.loss)
    select_trainable(tm, cfg)
    assert all(p.requires_grad for p in tm.patch_heads.parameters())
    assert not tm.naming_head.weight.requires_grad  # fixed name directions, by design (objective.py)
    batch = _batch(model, tok, model.config.vision_grid)
    assert all(it.patch_classes.shape == (model.config.vision_grid ** 2, NUM_CLASSES) for it in batch["items"])
    parts = tm(batch["pixels"], batch["items"], tok.seg_token_ids)
    assert parts["patches"] > 0
    losses = combine_losses(parts, parts["tokens"], parts["masks"], cfg.loss)
    assert 0 < losses["patch"].item() < 2 * np.log(NUM_CLASSES)  # per-patch mean, not a sum
    losses["patch"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tm.patch_heads.parameters())
    tower_grads = [p.grad for p in model.vision_tower.parameters()]
    assert all(g is not None for g in tower_grads) and sum(g.abs().sum() for g in tower_grads) > 0
    assert not any("patch_heads" in k for k in model.state_dict())  # not part of PixelLM


def test_items_without_a_class_map_add_no_patch_loss(base_model):
    from pixellm_ros.model import load_pixellm

    model, tok = load_pixellm(base_model)
    tm = TrainingModel(model, LossConfig(patch_weight=1.0))
    batch = _batch(model, tok, patch_grid=0)  # what a MUSE / COCO / labelme item looks like: no labels
    assert all(it.patch_classes is None for it in batch["items"])
    parts = tm(batch["pixels"], batch["items"], tok.seg_token_ids)
    assert int(parts["patches"]) == 0 and float(parts["patch_sum"]) == 0.0
    assert TrainingModel(model, LossConfig()).patch_heads is None


def test_patch_loss_with_a_frozen_tower_is_refused_before_loading():
    cfg = TrainConfig.from_dict({"base_model": "unused", "loss": {"patch_weight": 0.5}})
    with pytest.raises(ValueError, match="train_vision_tower: true"):
        cfg.check()


def test_vision_pretraining_on_the_same_labels_learns_and_writes_a_loadable_tower(base_model, tmp_path):
    from pixellm_ros.model import load_pixellm
    from training.pretrain_vision import pretrain

    summary = pretrain(str(base_model), str(tmp_path / "out"), steps=40, batch_size=4, lr=3e-3, workers=0)
    history = json.loads((tmp_path / "out" / "vision_pretraining.json").read_text())["history"]
    assert np.mean([h["loss"] for h in history[-5:]]) < 0.7 * np.mean([h["loss"] for h in history[:5]])
    before, _ = load_pixellm(base_model)
    after, _ = load_pixellm(summary["model"])
    changed = [not torch.equal(a, b) for a, b in zip(before.vision_tower.state_dict().values(),
                                                      after.vision_tower.state_dict().values())]
    assert any(changed)
