"""Create a new PixelLM-structured model folder with random weights, to train from scratch.

    python -m training.init_model --preset embedded --out runs/embedded/init

Where no pretrained CLIP / LLaMA weights can be had, the project trains its own small model: a
SentencePiece BPE tokenizer (LLaMA layout: unk 0, bos 1, eos 2, byte fallback) trained on the
domain's text plus the codebook tokens, a small LLaMA and a small CLIP tower. Same module tree and
code paths as PixelLM-7B.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pixellm_ros.model import save_pixellm
from pixellm_ros.model.config import VisionConfig
from pixellm_ros.model.scratch import LLAMA_7B, TINY_LLM, TINY_VISION, default_corpus, make_config, random_model, train_tokenizer

from .data.synthetic import domain_text

PRESETS = {
    # ~12M parameters (9M of them the release's fixed-width pixel decoder); 224 px input
    "embedded": dict(llm=dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4),
                     vision=VisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=12,
                                         num_attention_heads=4),
                     image_size=224, vocab=800),
    # For throughput benchmarks on a GPU: the released 7B widths (LLM 4096, vocab 32008; CLIP-L/14 at
    # 448 px) with 2 LLM and 12 CLIP layers. Not for training a useful model.
    "7b-shaped": dict(llm={**LLAMA_7B, "num_hidden_layers": 2}, vision=VisionConfig(num_hidden_layers=12),
                      image_size=448, vocab=800, vocab_size=32008),
    "tiny": dict(llm=TINY_LLM, vision=TINY_VISION, image_size=224, vocab=300),
}


def init_model(preset: str, out: str | Path, seed: int = 0) -> Path:
    p = PRESETS[preset]
    tokenizer = train_tokenizer(domain_text() + default_corpus(), vocab_size=p["vocab"])
    config = make_config(tokenizer, p["vision"], **p["llm"])
    config.resize_vision_tower_size = p["image_size"]
    config.vocab_size = max(config.vocab_size, p.get("vocab_size", 0))  # rows past the tokenizer stay unused
    model = random_model(config, seed)
    return save_pixellm(model, tokenizer, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="embedded", choices=sorted(PRESETS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = init_model(args.preset, args.out, args.seed)
    print(json.dumps({"model": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
