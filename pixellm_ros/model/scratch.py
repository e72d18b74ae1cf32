"""Build PixelLM models from scratch: tokenizers, random initialisation, size presets.

Used where no released weights exist: tests, benchmarks, the demo's fallback model and the start of
training the embedded default model. Same module tree as the released 7B/13B, only smaller.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
import torch
from torch import nn

from .clip import CLIPVisionTower
from .config import CODEBOOK_SIZE, PixelLMConfig, VisionConfig
from .pixellm import PixelLMForCausalLM
from .tokenizer import PixelLMTokenizer

# Sizes: the released 7B / 13B and small variants with the same structure.
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
LLAMA_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)
CLIP_L14_336 = VisionConfig()  # openai/clip-vit-large-patch14-336
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
# hidden_states[-11] is read, so a tower needs at least 11 layers.
TINY_VISION = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, seed_text: str = "") -> PixelLMTokenizer:
    """A LLaMA-style SentencePiece BPE model (unk 0, bos 1, eos 2, byte fallback) plus the codebook tokens."""
    corpus = "\n".join(list(texts) + [seed_text])
    with tempfile.TemporaryDirectory() as tmp:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus.splitlines()), model_writer=model, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=1.0, split_digits=True, hard_vocab_limit=False, minloglevel=2,
            num_threads=1)
        path = Path(tmp) / "tokenizer.model"
        path.write_bytes(model.getvalue())
        return PixelLMTokenizer(path)


def make_config(tokenizer: PixelLMTokenizer, vision: VisionConfig, **llm) -> PixelLMConfig:
    return PixelLMConfig(vocab_size=len(tokenizer), mm_hidden_size=vision.hidden_size, rms_norm_eps=1e-6,
                         vision_tower="vision_tower", vision=vision, torch_dtype="float32", **llm)


def init_weights(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """Small normal weights, zero biases, unit norms; the decoder's random PE buffers are redrawn."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            nn.init.normal_(m.weight, std=std, generator=generator)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "weight") and isinstance(getattr(m, "weight"), nn.Parameter) and m.weight.dim() == 1:
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        if hasattr(m, "class_embedding"):
            nn.init.normal_(m.class_embedding, std=std, generator=generator)
        if "positional_encoding_gaussian_matrix" in getattr(m, "_buffers", {}):
            m.positional_encoding_gaussian_matrix.normal_(generator=generator)


def random_model(config: PixelLMConfig, seed: int = 0, device="cpu", dtype=torch.float32) -> PixelLMForCausalLM:
    if config.vision is None:
        raise ValueError("config.vision must be set to build the vision tower")
    gen = torch.Generator().manual_seed(seed)
    with torch.device(device):
        model = PixelLMForCausalLM(config)
        tower = CLIPVisionTower(config.vision, config.mm_vision_select_layer)
    init_weights(model, generator=gen)
    init_weights(tower, generator=gen)
    tower.resize_position_table(config.resize_vision_tower_size)
    model.attach_vision_tower(tower.requires_grad_(False))
    return model.to(dtype).eval()


def default_corpus() -> list[str]:
    """Enough English for a small tokenizer when no domain text is given."""
    words = ("where is the cat dog cup bowl knife scissors rope table chair wall sky rocket tower robot "
             "which objects could hold water cut segment please it they are here and a an of on in to "
             "red green blue yellow small large left right behind front this photo describe few words").split()
    return [" ".join(words[i:] + words[:i]) for i in range(len(words))] + [
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: ASSISTANT:"]


def tiny_random_pixellm(seed: int = 0) -> tuple[PixelLMForCausalLM, PixelLMTokenizer]:
    """A few-MB model with random weights: structure only, its answers mean nothing."""
    tokenizer = train_tokenizer(default_corpus(), vocab_size=300)
    config = make_config(tokenizer, TINY_VISION, **TINY_LLM)
    assert len(tokenizer.seg_token_ids) == CODEBOOK_SIZE
    return random_model(config, seed), tokenizer


class ScriptedAnswer:
    """Logits processor forcing planned token ids, for random-weight models whose own answers mean nothing (tests,
    benchmarks): step k emits ids[k]; past the plan, its last id again, or with `loop` the plan from its start
    (a model that loops)."""

    def __init__(self, ids: list[int], loop: bool = False) -> None:
        self.ids, self.loop = list(ids), loop

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        k = len(generated)
        forced = torch.full_like(logits, float("-inf"))
        forced[self.ids[k % len(self.ids) if self.loop else min(k, len(self.ids) - 1)]] = 0.0
        return forced
