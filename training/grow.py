"""Make a trained model's LLM deeper without changing what it answers (LLaMA Pro's block expansion).

    python -m training.grow --model runs/embedded/stage13/model --layers 6 --out runs/embedded/stage13_grown

A copy of a decoder layer is inserted after each group of original layers, with its two output projections
(attention o_proj, MLP down_proj) set to zero: a new layer then adds nothing to the residual stream, so the grown
model gives the same tokens and masks as the one it came from, and training continues from there with room to
learn more (Wu et al. 2024, arXiv:2401.02415). It is the cheap way to give a trained model more LLM capacity:
training a bigger one from scratch takes hours here. (The embedded model's stage 16 grew 3 -> 6 layers; it did not
answer `make demo`'s questions better, whose errors are perception: model card.)
Writes `grown.json` beside the weights so the model card can give the command that made the folder.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from pixellm_ros.model import PixelLMForCausalLM, load_pixellm, save_pixellm

GROWN_FILE = "grown.json"


def insertion_points(layers: int, new_layers: int) -> list[int]:
    """Indices of the original layers after which a new layer goes: the last of each of `new_layers` groups."""
    if not 1 <= new_layers <= layers:
        raise ValueError(f"can add 1 to {layers} layers to a {layers}-layer LLM, asked for {new_layers}")
    return [(j + 1) * layers // new_layers - 1 for j in range(new_layers)]


def grow_llm(model: PixelLMForCausalLM, layers: int) -> list[int]:
    """Grow `model`'s LLM to `layers` decoder layers in place. Returns the original indices copied."""
    old = list(model.model.layers)
    after = insertion_points(len(old), layers - len(old))
    grown = []
    for i, layer in enumerate(old):
        grown.append(layer)
        for _ in range(after.count(i)):
            new = copy.deepcopy(layer)
            with torch.no_grad():
                new.self_attn.o_proj.weight.zero_()
                new.mlp.down_proj.weight.zero_()
            grown.append(new)
    model.model.layers = torch.nn.ModuleList(grown)
    model.config.num_hidden_layers = len(grown)
    return after


def grow(model_dir: str | Path, layers: int, out: str | Path) -> Path:
    model, tokenizer = load_pixellm(model_dir)
    before = model.config.num_hidden_layers
    after = grow_llm(model, layers)
    out = save_pixellm(model, tokenizer, out)
    (out / GROWN_FILE).write_text(json.dumps({"source": str(model_dir), "layers_before": before,
                                               "layers": layers, "copied_layers": after}, indent=1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the trained model folder to grow")
    ap.add_argument("--layers", type=int, required=True, help="decoder layers of the grown LLM")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    print(json.dumps({"model": str(grow(args.model, args.layers, args.out))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
