"""A tiny random PixelLM checkpoint in the OFFICIAL release layout, built at test time.

Layout written under ``root`` (mirrors a released ``hf_model`` folder next to its CLIP folder):

    root/checkpoint/                 config.json (released field set, tiny sizes), generation_config.json,
                                     pytorch_model-0000i-of-0000n.bin (bf16 torch pickles, sharded),
                                     pytorch_model.bin.index.json, tokenizer.model (SentencePiece trained
                                     here, NOT the LLaMA one), added_tokens.json, tokenizer_config.json,
                                     special_tokens_map.json
    root/clip-vit-tiny-test-patch14-336/
                                     config.json (CLIPVisionModel), pytorch_model.bin (fp32,
                                     transformers naming, all 12 layers + post_layernorm + position_ids)

config.json names the CLIP folder by its relative name, as the release does: the loader finds it next
to the checkpoint folder. The shards carry ``model.layers.{i}.self_attn.rotary_emb.inv_freq`` buffers
(as transformers 4.31 saved them) and no vision-tower keys.

Also: ``teach_answers`` fine-tunes a loaded model (in memory) by teacher forcing so that greedy
decoding emits planned answers, codebook tokens included. Both are plain functions so benchmarks can
reuse them.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from torch import nn

from pixellm_ros.model.clip import CLIPVisionTower
from pixellm_ros.model.config import PixelLMConfig, VisionConfig
from pixellm_ros.model.pixellm import PixelLMForCausalLM

VISION_FOLDER = "clip-vit-tiny-test-patch14-336"
SEG_TOKENS = [f"[SEG{i}]" for i in range(6)]
ADDED_TOKENS = SEG_TOKENS + ["<im_start>", "<im_end>"]

# The questions the taught tiny model answers (tests/model/conftest.py: `taught`) and their planned answers.
SEG = " ".join(SEG_TOKENS)
Q_ONE = "Where is the cat?"
Q_THREE = "Segment the rocket, the tower and the sky."
Q_SEVEN = "Show me the dog."
PLANNED = {
    Q_ONE: f"It is {SEG} .",  # one target
    Q_THREE: f"Here they are: the rocket {SEG} , the tower {SEG} and the sky {SEG} .",  # three targets
    Q_SEVEN: f"The dog is {SEG} [SEG0] .",  # one target + one stray codebook token
}
REPO = Path(__file__).resolve().parents[2]
OFFICIAL_FIXTURE = REPO.parent / "shared" / "fixtures" / "pixellm_official_tiny"
KEYS_DOC = REPO.parent / "shared" / "design" / "pixellm_checkpoint_keys.md"

TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2,
                 image_size=336, patch_size=14)
SHARD_BYTES = 8 * 1024 ** 2  # small shards, so even a tiny model is sharded like a released one

WORDS = ("where is the cat dog cup bowl knife scissors rope table chair wall sky rocket tower robot which "
         "objects could hold water cut segment please it they are here and a an of on in to red green blue "
         "yellow small large left right behind front this photo picture describe few words white launch pad "
         "show me what see can you there sure".split())
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the human's questions. USER: ASSISTANT:")


@dataclass
class TinyCheckpoint:
    root: Path
    checkpoint: Path  # the hf_model folder
    vision: Path  # the CLIP folder
    config: dict  # config.json as written
    state_dict: dict[str, torch.Tensor]  # every tensor written to the shards (bf16), inv_freq included
    shard_of: dict[str, str]  # the index's weight_map
    base_vocab: int  # SentencePiece pieces before the added tokens


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [SYSTEM]
    for _ in range(400):
        n = rng.randint(3, 12)
        sentence = " ".join(rng.choice(WORDS) for _ in range(n))
        lines.append(sentence.capitalize() + rng.choice([".", "?", "!", ",", ":"]))
    lines += [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]
    return lines


def train_sentencepiece(path: Path, seed: int = 0, vocab_size: int = 400) -> int:
    """Train a small LLaMA-style SentencePiece model (unk 0, bos 1, eos 2, no pad, byte fallback)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2, num_threads=1, seed_sentencepiece_size=10000)
    path.write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def official_config(base_vocab: int, vision_folder: str = VISION_FOLDER) -> dict:
    """config.json with the field set of a released PixelLM config, tiny sizes."""
    return {
        "architectures": ["PixelLMForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "freeze_mm_mlp_adapter": True, "hidden_act": "silu", "hidden_size": TINY_LLM["hidden_size"],
        "image_aspect_ratio": "square", "image_feature_scale_num": 2, "image_grid_pinpoints": None,
        "initializer_range": 0.02, "intermediate_size": TINY_LLM["intermediate_size"],
        "max_position_embeddings": 2048, "mm_hidden_size": TINY_CLIP["hidden_size"],
        "mm_projector_hidden_dim": 2, "mm_projector_out_dim": 1, "mm_use_im_patch_token": False,
        "mm_use_im_start_end": True, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_folder, "model_type": "llava",
        "num_attention_heads": TINY_LLM["num_attention_heads"],
        "num_hidden_layers": TINY_LLM["num_hidden_layers"],
        "num_key_value_heads": TINY_LLM["num_key_value_heads"], "out_dim": 256, "pad_token_id": 0,
        "pad_train_clip_images": True, "pretrain_mm_mlp_adapter": None, "pretraining_tp": 1,
        "resize_vision_tower": True, "resize_vision_tower_size": 448, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "separate_mm_projector": True, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "train_mask_decoder": True, "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False, "use_cache": False, "use_mm_proj": True,
        "vision_tower": vision_folder, "vision_tower_for_mask": True,
        "vocab_size": base_vocab + len(ADDED_TOKENS),
    }


def clip_config() -> dict:
    return {"architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "hidden_act": "quick_gelu",
            "initializer_factor": 1.0, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
            "model_type": "clip_vision_model", "num_channels": 3, "projection_dim": 32,
            "torch_dtype": "float32", "transformers_version": "4.31.0", **TINY_CLIP}


def randomize(module: nn.Module, gen: torch.Generator, std: float = 0.05) -> None:
    """Normal(0, std) weights, small random biases, norm weights around 1, buffers redrawn."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = "norm" in name or "layernorm" in name or "layrnorm" in name
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if type(parent).__name__ in ("LayerNorm", "LayerNorm2d", "RMSNorm"):
                is_norm = True
            if is_norm and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
        for name, b in module.named_buffers():
            if name.endswith("positional_encoding_gaussian_matrix"):
                b.copy_(torch.randn(b.shape, generator=gen))


def _write_sharded(state: dict[str, torch.Tensor], folder: Path) -> dict[str, str]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        torch.save(shard, folder / name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return weight_map


def build_tiny_official_checkpoint(root: str | Path, seed: int = 0) -> TinyCheckpoint:
    """Write a tiny random PixelLM checkpoint + CLIP folder in the official layout under `root`."""
    root = Path(root)
    ckpt, vision = root / "checkpoint", root / VISION_FOLDER
    ckpt.mkdir(parents=True, exist_ok=True)
    vision.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    # Tokenizer: our own SentencePiece model plus the release's added tokens (base .. base+7).
    base = train_sentencepiece(ckpt / "tokenizer.model", seed)
    (ckpt / "added_tokens.json").write_text(
        json.dumps({tok: base + i for i, tok in enumerate(ADDED_TOKENS)}, indent=2, sort_keys=True))
    (ckpt / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}, indent=2))
    (ckpt / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
         "eos_token": "</s>", "legacy": True, "model_max_length": 2048, "pad_token": None,
         "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
         "unk_token": "<unk>"}, indent=2))

    config = official_config(base)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (ckpt / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "transformers_version": "4.31.0"}, indent=2))

    # LLM + PixelLM modules, random, saved in bf16 with the rotary buffers transformers 4.31 kept.
    cfg = PixelLMConfig.from_dict(config)
    cfg.vision = VisionConfig.from_dict(clip_config())
    model = PixelLMForCausalLM(cfg)
    randomize(model, gen)
    state = {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    ordered: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        ordered[key] = t
        if key.endswith("self_attn.o_proj.weight"):  # after each layer's attention weights
            ordered[key.replace("o_proj.weight", "rotary_emb.inv_freq")] = inv_freq.clone()
    shard_of = _write_sharded(ordered, ckpt)

    # CLIP folder in transformers CLIPVisionModel naming, all layers (the model builds only 11).
    vcfg = VisionConfig.from_dict(clip_config())
    tower = CLIPVisionTower(vcfg)
    randomize(tower, gen)
    with torch.no_grad():
        tower.vision_model.embeddings.position_embedding.weight.normal_(0, 0.5, generator=gen)
        tower.vision_model.embeddings.class_embedding.normal_(0, 0.5, generator=gen)
    vstate = dict(tower.state_dict())
    h, layers, inter = vcfg.hidden_size, vcfg.num_hidden_layers, vcfg.intermediate_size
    extra_shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
                    "self_attn.out_proj": (h, h), "layer_norm1": (h,), "mlp.fc1": (inter, h),
                    "mlp.fc2": (h, inter), "layer_norm2": (h,)}
    for i in range(len(tower.vision_model.encoder.layers), layers):
        for name, shape in extra_shapes.items():
            prefix = f"vision_model.encoder.layers.{i}.{name}"
            if name.startswith("layer_norm"):
                vstate[prefix + ".weight"] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                vstate[prefix + ".weight"] = 0.05 * torch.randn(shape, generator=gen)
            vstate[prefix + ".bias"] = 0.02 * torch.randn(shape[0], generator=gen)
    vstate["vision_model.post_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=gen)
    vstate["vision_model.post_layernorm.bias"] = 0.02 * torch.randn(h, generator=gen)
    vstate["vision_model.embeddings.position_ids"] = torch.arange(577)[None]
    torch.save({k: v.detach().clone().contiguous() for k, v in vstate.items()}, vision / "pytorch_model.bin")
    (vision / "config.json").write_text(json.dumps(clip_config(), indent=2, sort_keys=True))
    (vision / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336}, indent=2))
    return TinyCheckpoint(root, ckpt, vision, config, ordered, shard_of, base)


# ------------------------------------------------------------------------------------------ teaching
def synthetic_image(height: int = 150, width: int = 220, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 test image (gradients + a disc)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                    128 + 60 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=-1)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(height, width) * 0.25) ** 2
    img[disc] = (230, 40, 40)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of a planned answer (added tokens split out as the release's tokenizer does), + </s>."""
    return tokenizer.encode(answer, add_bos=False) + [tokenizer.eos_id]


def teach_answers(model: PixelLMForCausalLM, tokenizer, image, plans: dict[str, list[int]],
                  steps: int = 120, lr: float = 1e-2, seed: int = 0, target_loss: float = 2e-3) -> float:
    """Teacher-force `plans` (question -> answer ids incl. </s>) into the LLM so greedy decoding on
    `image` (ImageFeatures, kept fixed) emits them. Returns the final loss. Modifies `model` in place."""
    from pixellm_ros.model.generation import split_prompt

    torch.manual_seed(seed)
    llm_params = [p for n, p in model.named_parameters()
                  if n.startswith("model.layers.") or n.startswith(("model.embed_tokens", "model.norm", "lm_head"))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in llm_params:
        p.requires_grad_(True)
    batch = []
    for question, ans in plans.items():
        head, tail = split_prompt(tokenizer, question, model.config.mm_use_im_start_end)
        batch.append((head, tail, ans))
    image_tokens = image.llm_tokens.detach()
    opt = torch.optim.Adam(llm_params, lr=lr)
    loss_value = float("inf")
    model.train()
    # Adam's second moments of tiny gradients are subnormal floats, which are ~100x slower on CPU.
    flush = torch.set_flush_denormal(True)
    try:
        loss_value = _teach_loop(model, batch, image, image_tokens, opt, steps, target_loss)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return loss_value


def _teach_loop(model, batch, image, image_tokens, opt, steps, target_loss) -> float:
    loss_value = float("inf")
    for _ in range(steps):
        opt.zero_grad()
        total = 0.0
        for head, tail, ans in batch:
            m = model.model
            text = torch.tensor([tail + ans[:-1]])
            embeds = torch.cat([m.embed_tokens(torch.tensor([head])), image_tokens, m.embed_tokens(text)], 1)
            valid = torch.ones(embeds.shape[:2], dtype=torch.bool)
            valid[:, len(head): len(head) + image_tokens.shape[1]] = image.llm_valid
            hidden = m(embeds, torch.arange(embeds.shape[1])[None], valid)[0]
            logits = model.lm_head(hidden[-len(ans):])
            total = total + nn.functional.cross_entropy(logits, torch.tensor(ans))
        total = total / len(batch)
        total.backward()
        opt.step()
        loss_value = float(total.detach())
        if loss_value < target_loss:
            break
    return loss_value
