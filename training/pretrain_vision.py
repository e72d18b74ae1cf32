"""Pretrain a from-scratch vision tower on the synthetic domain: the stand-in for CLIP's weights.

    python -m training.pretrain_vision --model runs/embedded/init --out runs/embedded/init_pretrained

PixelLM starts from a pretrained CLIP tower and keeps it frozen; its pixel decoder only has to
*retrieve* the region that matches the codebook prompt from features that already say what is where.
No CLIP weights can be downloaded here, and a tower trained from scratch together with everything
else learns only "object vs table": the decoder then settles on segmenting every object whatever the
question. So the tower is first trained alone with dense labels the synthetic scenes give for free:
every patch predicts the mix of (kind, color) classes under it, from both hidden states PixelLM reads.
The linear heads are thrown away; the model folder is written with the trained tower.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pixellm_ros.model import load_pixellm, save_pixellm
from pixellm_ros.model.processing import preprocess_image

from .data.patch_labels import NUM_CLASSES, class_map, labelled_patches, patch_cross_entropy, patch_targets
from .data.synthetic import SyntheticConfig, render_scene

log = logging.getLogger(__name__)


class PatchLabels(torch.utils.data.Dataset):
    """Scene i of the synthetic stream (seed) -> pixels (3, S, S), patch_valid (g*g,) as PixelLM computes
    it, and per-patch class fractions (g*g, C)."""

    def __init__(self, seed: int, length: int, image_size: int, grid: int, cfg: SyntheticConfig) -> None:
        self.seed, self.length, self.image_size, self.grid, self.cfg = seed, length, image_size, grid, cfg

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        image, objects = render_scene(np.random.default_rng([self.seed, i]), self.cfg)
        p = preprocess_image(image, self.image_size)
        side = p.pixels.shape[-1]
        target = patch_targets(class_map(objects, image.shape[:2]), p.input_size, side, self.grid)
        pixel_valid = torch.zeros((1, 1, side, side))
        pixel_valid[..., : p.input_size[0], : p.input_size[1]] = 1
        valid = F.interpolate(pixel_valid, size=(self.grid, self.grid), mode="nearest").flatten()
        return p.pixels[0], valid, target


def pretrain(model_dir: str, out: str, steps: int = 600, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
             threads: int = 0, workers: int = 1, device: str = "cpu") -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, tokenizer = load_pixellm(model_dir, device=device, dtype=torch.float32)
    tower = model.vision_tower.train().requires_grad_(True)
    width, grid = tower.config.hidden_size, model.config.vision_grid
    heads = nn.ModuleList(nn.Linear(width, NUM_CLASSES) for _ in range(2)).to(device)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
    cfg = SyntheticConfig()
    history = []
    t0 = time.perf_counter()
    data = PatchLabels(seed, steps * batch_size, model.config.resize_vision_tower_size, grid, cfg)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    bar = tqdm(zip(range(steps), loader), total=steps, desc="pretrain vision")
    for step, (pixels, valid, target) in bar:
        pixels, valid, target = pixels.to(device), valid.to(device), target.to(device)
        feats = tower(pixels, valid)
        valid = valid.bool() & labelled_patches(target)
        loss = sum(patch_cross_entropy(h(f)[valid], target[valid]).mean() for h, f in zip(heads, feats)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            hit = heads[0](feats[0]).argmax(-1) == target.argmax(-1)
            on_object = valid & (target.argmax(-1) > 0)  # most patches are table: score the objects' own
            acc = hit[on_object].float().mean().item()
        history.append({"step": step + 1, "loss": loss.item(), "object_patch_accuracy": acc})
        bar.set_postfix(loss=f"{loss.item():.3f}", object_acc=f"{acc:.3f}")
    model.attach_vision_tower(tower.eval().requires_grad_(False))
    path = save_pixellm(model.cpu(), tokenizer, out)
    tail = history[-20:]
    summary = {"model": str(path), "steps": steps, "batch_size": batch_size, "seconds": round(time.perf_counter() - t0, 1),
               "final_loss": float(np.mean([h["loss"] for h in tail])),
               "final_object_patch_accuracy": float(np.mean([h["object_patch_accuracy"] for h in tail]))}
    (Path(out) / "vision_pretraining.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder whose vision tower to pretrain (e.g. from init_model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="processes rendering scenes ahead")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(pretrain(args.model, args.out, args.steps, args.batch_size, args.lr, args.seed, args.threads,
                                args.workers, args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
