"""QLoRA (4-bit / 8-bit base + LoRA), gradient checkpointing and new-token-row training on the tiny model:
a 4-bit run trains, resumes after SIGKILL on the same curve, exports an adapter the engine loads on a full-precision
and on a quantized base; checkpointing changes no gradient; bad configs are refused before any weight is read."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixellm_ros.engine import Engine
from pixellm_ros.model import load_pixellm
from pixellm_ros.model.adapters import add_lora, apply_adapter, lora_layers
from training.config import DataConfig, LossConfig, ModelConfig, SourceConfig, TrainConfig
from training.data.dataset import IndexedBatches, MixtureStream
from training.data.synthetic import synthetic_sample
from training.memory import checkpointing_wanted, enable_gradient_checkpointing
from training.objective import TrainingModel, combine_losses
from training.train import train

from tests.support.training_runs import assert_resume_after_sigkill_matches, config, metrics

pytest.importorskip("bitsandbytes")
QLORA = dict(model={"quantization": "4bit", "gradient_checkpointing": True, "token_rows": "new"},
             lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.05}, train_vision_tower=False,
             trainable=["lm_head", "model.embed_tokens", "model.mask_decoder", "model.text_hidden_fcs",
                        "model.mm_projector", "model.out_mm_projector"], lr=3e-3)


def batch_loss(model, tokenizer, seed: int = 3) -> float:
    """The trainer's loss of the model on the first batch of a synthetic stream (no grad)."""
    stream = MixtureStream(DataConfig(sources=[SourceConfig(seed=seed)]), tokenizer,
                           model.config.resize_vision_tower_size, 0)
    batch = IndexedBatches(stream, 2).next_batch()
    with torch.no_grad():
        parts = TrainingModel(model, LossConfig())(batch["pixels"], batch["items"], tokenizer.seg_token_ids)
        return float(combine_losses(parts, parts["tokens"], parts["masks"], LossConfig())["loss"])


@pytest.mark.parametrize("bad, message", [
    ({"model": {"quantization": "3bit"}}, "model.quantization must be one of"),
    ({"model": {"checkpoint_modules": ["mask_decoder"]}}, "'mask_decoder' has no checkpointable layers"),
    ({"model": {"gradient_checkpointing": True, "checkpoint_modules": ["vision_tower"]}},
     "vision_tower, but it is frozen"),
    ({"model": {"quantization": "4bit"}, "trainable": ["all"]}, "list the fully trained modules"),
    ({"model": {"dtype": "bfloat16"}}, "needs mixed_precision"),
    ({"model": {"token_rows": "some"}}, "model.token_rows must be one of"),
    ({"model": {"gradient_checkpointing": "sometimes"}}, "true, false or auto"),
])
def test_bad_config_is_refused_before_any_weight_is_read(tmp_path, bad, message):
    cfg = TrainConfig.from_dict({"base_model": str(tmp_path / "no_such_model"), "output_dir": str(tmp_path / "run"),
                                 "train_vision_tower": False, **bad})
    with pytest.raises(ValueError, match=message):
        train(cfg)  # the base folder does not exist: a refusal that came after loading would say so instead
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("distributed, stage, message", [
    ("FSDP", None, "cannot be sharded by FSDP"), ("DEEPSPEED", 3, "cannot be partitioned by DeepSpeed ZeRO-3")])
def test_quantized_base_with_sharding_engines_is_refused(distributed, stage, message):
    cfg = TrainConfig.from_dict(QLORA)
    with pytest.raises(ValueError, match=message):
        cfg.check(distributed, stage)
    cfg.check("DEEPSPEED", 2)  # ZeRO-2 shards only what trains: allowed
    cfg.check("MULTI_GPU")
    TrainConfig.from_dict({}).check(distributed, stage)  # full precision: allowed


def test_auto_checkpointing_is_on_for_7b_width_only():
    assert not checkpointing_wanted(ModelConfig(), 64)
    assert checkpointing_wanted(ModelConfig(), 4096)
    assert not checkpointing_wanted(ModelConfig(gradient_checkpointing=False), 4096)
    assert checkpointing_wanted(ModelConfig(gradient_checkpointing=True), 64)


@pytest.mark.parametrize("modules", [["llm"], ["llm", "vision_tower"]])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(base_model, modules):
    grads = []
    for checkpointing in (False, True):
        model, tok = load_pixellm(base_model)
        torch.manual_seed(0)  # lora_A's draw
        add_lora(model, TrainConfig().lora.spec())
        tm = TrainingModel(model, LossConfig()).train().requires_grad_(True)
        if checkpointing:
            assert enable_gradient_checkpointing(tm, modules) == (
                len(model.model.layers) + (len(tm.vision_tower.vision_model.encoder.layers)
                                           if "vision_tower" in modules else 0))
        stream = MixtureStream(DataConfig(sources=[SourceConfig(seed=4)]), tok, model.config.resize_vision_tower_size, 0)
        batch = IndexedBatches(stream, 2).next_batch()
        torch.manual_seed(0)  # LoRA dropout: recomputation must draw the same mask
        parts = tm(batch["pixels"], batch["items"], tok.seg_token_ids)
        loss = combine_losses(parts, parts["tokens"], parts["masks"], tm.loss_cfg)["loss"]
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in tm.named_parameters() if p.grad is not None}))
    (loss_a, ga), (loss_b, gb) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert ga.keys() == gb.keys() and any("lora_A" in n for n in ga) and any("vision_tower" in n for n in ga)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-6, msg=name)


def test_qlora_4bit_trains_resumes_exports_and_the_engine_loads_it(base_model, tmp_path):
    straight = tmp_path / "straight"
    result = train(TrainConfig.from_dict(config(base_model, straight, steps=8, save_every=2, **QLORA)))
    rows = metrics(straight)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # SIGKILL mid-run, then --resume: the same curve, step for step
    assert_resume_after_sigkill_matches(straight, config(base_model, tmp_path / "killed", steps=8, save_every=2,
                                                         **QLORA), tmp_path)
    # the export: an adapter only (a merge into 4-bit weights would round the update away)
    adapter = Path(result["adapter"])
    assert "model" not in result and not (straight / "model").exists()
    # only the added tokens' rows of embed_tokens / lm_head trained (model.token_rows: new)
    base, tok = load_pixellm(base_model)
    first = min(tok.added_tokens.values())
    tuned, _ = load_pixellm(base_model)
    apply_adapter(tuned, adapter)
    for get in (lambda m: m.model.embed_tokens.weight, lambda m: m.lm_head.weight):
        assert torch.equal(get(tuned)[:first], get(base)[:first])
        assert not torch.equal(get(tuned)[first:], get(base)[first:])
    # the adapter moves a full-precision and a 4-bit base the same way (up to nf4 rounding of the base)
    quantized, _ = load_pixellm(base_model, quantization="4bit")
    apply_adapter(quantized, adapter)
    import bitsandbytes as bnb
    assert all(isinstance(m.get_base_layer(), bnb.nn.Linear4bit) for m in lora_layers(quantized).values())
    plain_loss, tuned_loss, q_loss = batch_loss(base, tok), batch_loss(tuned, tok), batch_loss(quantized, tok)
    assert tuned_loss < plain_loss
    assert abs(q_loss - tuned_loss) < 0.25 * (plain_loss - tuned_loss), (plain_loss, tuned_loss, q_loss)
    # the engine (the node's ~/load_adapter calls Engine.load_adapter) on both bases
    sample = synthetic_sample(5, 1)
    for kwargs in ({}, {"quantization": "4bit"}):
        engine = Engine.from_pretrained(base_model, device="cpu", **kwargs)
        assert engine.load_adapter(adapter) == "adapter"
        engine.set_image(sample.image)
        answer = engine.ask(sample.question)
        assert answer.token_ids and engine.adapter_id == "adapter"
        engine.unload_adapter()
        assert not lora_layers(engine.model)
        engine.close()


def test_onboard_recipe_is_a_valid_4bit_checkpointed_config():
    cfg = TrainConfig.from_yaml(Path(__file__).parents[2] / "training" / "configs" / "onboard_7b_qlora.yaml")
    cfg.check()
    cfg.check("DEEPSPEED", 2)
    assert (cfg.model.quantization, cfg.model.gradient_checkpointing, cfg.batch_size) == ("4bit", True, 1)
    assert cfg.grad_accum > 1 and cfg.mixed_precision in ("bf16", "fp16") and cfg.lora.r == 8
