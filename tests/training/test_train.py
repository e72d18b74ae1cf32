"""The trainer on a tiny model: it learns, resumes after SIGKILL, keeps checkpoints valid, runs DDP,
and exports something the engine loads with identical outputs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixellm_ros.engine import Engine
from training.config import TrainConfig
from training.data.synthetic import synthetic_sample
from training.losses import dice_per_mask, overlap_per_mask
from training.train import latest_checkpoint, save_checkpoint, train

from tests.support.training_runs import assert_resume_after_sigkill_matches, config, metrics, run_cli

SINGLE_SAMPLE_SEED = 45  # synthetic_sample(45, 0): "Where is the red cup?", one large target


def test_losses_behave():
    target = torch.zeros(2, 8, 8)
    target[0, :4] = 1
    target[1, 2:6] = 1
    perfect = (target * 40 - 20)
    assert dice_per_mask(perfect, target).max() < 1e-3
    assert dice_per_mask(-perfect, target).min() > 0.99
    assert overlap_per_mask(perfect[:1], target[:1]).item() == 0.0  # one target: nothing to refine
    both = torch.full((2, 8, 8), 5.0)  # two predictions claiming every pixel
    assert (overlap_per_mask(both, target) > 0).all()


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"stepz": 3})


def test_few_steps_learn_a_single_sample(base_model, tmp_path):
    """Overfitting one sample: the loss falls and the answer (with its codebook group) is learned token for
    token. Mask quality needs far more steps; the embedded model's held-out metrics cover it."""
    out = tmp_path / "run"
    seed = SINGLE_SAMPLE_SEED
    cfg = TrainConfig.from_dict(config(base_model, out, steps=80, lr=5e-3, warmup_steps=5, log_every=5,
                                       data={"sources": [{"kind": "synthetic", "seed": seed, "size": 1}]}))
    train(cfg)
    rows = metrics(out)
    assert float(rows[-1]["ce"]) < 0.1 * float(rows[0]["ce"])
    assert float(rows[-1]["bce"]) < 0.5 * float(rows[0]["bce"])
    sample = synthetic_sample(seed, 0)
    engine = Engine.from_pretrained(out / "model", device="cpu")
    engine.set_image(sample.image)
    result = engine.ask(sample.question)
    assert result.answer == sample.answer.replace(" {seg}", "")
    assert len(result.targets) == 1 and result.targets[0].mask.shape == sample.masks[0].shape


def test_resume_after_sigkill_continues_the_same_curve(base_model, tmp_path):
    straight = tmp_path / "straight"
    train(TrainConfig.from_dict(config(base_model, straight, steps=8, save_every=2)))
    assert_resume_after_sigkill_matches(straight, config(base_model, tmp_path / "killed", steps=8, save_every=2),
                                        tmp_path)


def test_checkpoint_interrupted_mid_write_leaves_previous_valid(base_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(TrainConfig.from_dict(config(base_model, out, steps=2, save_every=2)))
    good = latest_checkpoint(out)
    assert good is not None and good.name == "step_0000002"
    from accelerate import Accelerator

    def crash(self, path, *a, **k):
        Path(path, "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(Accelerator, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(Accelerator(), out, 4, 99, keep=2)
    assert latest_checkpoint(out) == good
    state = json.loads((good / "trainer_state.json").read_text())
    assert (state["step"], state["position"], state["scheduler"]["last_epoch"]) == (2, 4, 2)
    # nothing accelerate would unpickle with weights_only=False (registered objects) is written
    assert not list(good.glob("custom_checkpoint_*"))


def test_two_process_ddp_matches_one_process(base_model, tmp_path):
    """Same global batch (1 process x 2 samples vs 2 processes x 1 sample): same loss curve."""
    single = tmp_path / "single"
    train(TrainConfig.from_dict(config(base_model, single, steps=3, batch_size=2)))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    ddp = run_cli(config(base_model, tmp_path / "ddp", steps=3, batch_size=1), tmp_path, launcher=launcher,
                  env={"ACCELERATE_USE_CPU": "true"})
    output = ddp.communicate(timeout=600)[0]
    assert ddp.returncode == 0, output
    assert "rank 1 of 2" in output  # really two processes
    a, b = metrics(single), metrics(tmp_path / "ddp")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in ("loss", "ce", "bce", "dice"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-3, abs=1e-5), (key, ra, rb)


def test_lora_adapter_export_matches_merged_model(base_model, tmp_path):
    out = tmp_path / "lora"
    cfg = config(base_model, out, steps=3, lr=1e-2, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
                 trainable=["model.mask_decoder", "model.text_hidden_fcs"], train_vision_tower=False)
    result = train(TrainConfig.from_dict(cfg))
    adapter, merged = Path(result["adapter"]), Path(result["model"])
    sample = synthetic_sample(5, 1)
    engine = Engine.from_pretrained(base_model, device="cpu")
    engine.set_image(sample.image)
    base_answer = engine.ask(sample.question)
    engine.load_adapter(adapter)
    assert engine.adapter_id == "adapter"
    engine.set_image(sample.image)
    with_adapter = engine.ask(sample.question)
    reference = Engine.from_pretrained(merged, device="cpu")
    reference.set_image(sample.image)
    expected = reference.ask(sample.question)
    assert with_adapter.token_ids == expected.token_ids
    for t, e in zip(with_adapter.targets, expected.targets):
        np.testing.assert_allclose(t.logits, e.logits, atol=1e-4)
    engine.unload_adapter()
    engine.set_image(sample.image)
    back = engine.ask(sample.question)
    assert back.token_ids == base_answer.token_ids


def test_naming_head_separates_prompts_and_is_not_exported(base_model):
    """The training-only naming loss reads each target's name off its prompt's direction and trains the prompt
    path (text_hidden_fcs, the LLM); the head is not part of PixelLM."""
    from pixellm_ros.model import load_pixellm
    from training.config import DataConfig, LossConfig, SourceConfig
    from training.data.dataset import IndexedBatches, MixtureStream
    from training.objective import TrainingModel, combine_losses

    model, tok = load_pixellm(base_model)
    tm = TrainingModel(model, LossConfig(naming_weight=1.0)).train().requires_grad_(True)
    stream = MixtureStream(DataConfig(sources=[SourceConfig(seed=5, questions_per_scene=4)]), tok,
                           model.config.resize_vision_tower_size, 0)
    batch = IndexedBatches(stream, 4).next_batch()
    assert any(it.target_name_ids for it in batch["items"])
    parts = tm(batch["pixels"], batch["items"], tok.seg_token_ids)
    losses = combine_losses(parts, parts["tokens"], parts["masks"], tm.loss_cfg)
    assert torch.isfinite(losses["naming"]) and losses["naming"] > 0
    losses["naming"].backward()
    assert model.model.text_hidden_fcs[0][2].weight.grad.abs().sum() > 0
    assert tm.naming_head.weight.grad.abs().sum() > 0
    assert not any("naming" in k for k in model.state_dict())
    off = TrainingModel(model, LossConfig())
    assert off.naming_head is None
