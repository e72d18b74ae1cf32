"""One training step of PixelLM at the release's TRUE size (7B, random weights): peak memory and time per recipe.

    python benchmarks/bench_training_scale.py --size 7b --recipes 4bit-ckpt                 # the whole 7B
    python benchmarks/bench_training_scale.py --size 7b --layers 2 4 --recipes bf16 bf16-ckpt 8bit-ckpt 4bit-ckpt

Weights: the inference benchmark's cache (`bench_scale.py` writes <cache>/7b once, 14.9 GB; reused here).
`--layers N` runs the 7B shape with only the first N LLaMA layers (a folder <cache>/7b_L<N>/hf_model with those
tensors is written once), for recipes that cannot run at 32 layers on this machine: their 32-layer figures are
EXTRAPOLATED linearly from the few-layer rows (`--extrapolate`), and marked so (`"extrapolated": true`).

Recipes (the trainer's own code: training.train.build, TrainingModel, combine_losses, AdamW):
  bf16        LoRA r8 on q/v, bf16 base, no gradient checkpointing
  bf16-ckpt   the same with gradient checkpointing of the LLaMA layers
  8bit-ckpt   QLoRA: LLM.int8() base + LoRA, checkpointing
  4bit-ckpt   QLoRA: nf4 base + LoRA, checkpointing
All train the release's fully trained parts (lm_head, embed_tokens, projectors, text_hidden_fcs, mask decoder)
in float32 with AdamW under bf16 autocast (`--token-rows new`, the default here and the onboard recipe's:
only the added tokens' rows of lm_head / embed_tokens train; `all`: every row, as the release); the CLIP tower stays frozen. The batch: one 448 px image, a
question, a scripted ~60-token answer naming 2 targets, 2 masks (same batch and seed for every recipe, so the
first step's loss compares recipes).

Each row runs in a FRESH subprocess (its VmHWM is its own), watched by this process: past --rss-limit-gib of
resident memory the row is killed and recorded as "did not fit: exceeded N GiB" instead of pushing the machine
into the OOM killer. Rows merge into --out (benchmarks/figures/training_<device>.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from training.config import TOKEN_ROWS  # noqa: E402
from bench_scale import _versions, device_name, planned_answer, synthetic_frame, vm_hwm  # noqa: E402

RECIPES = {
    "bf16": dict(quantization="none", gradient_checkpointing=False),
    "bf16-ckpt": dict(quantization="none", gradient_checkpointing=True),
    "8bit-ckpt": dict(quantization="8bit", gradient_checkpointing=True),
    "4bit-ckpt": dict(quantization="4bit", gradient_checkpointing=True),
}
QUESTION = "Which objects on the table could hold water? Please output segmentation masks."
ANSWER_TOKENS = 60
TARGETS = 2
log = logging.getLogger("bench_training_scale")


# ------------------------------------------------------------------------------------------- weights
def few_layer_folder(full: Path, layers: int) -> Path:
    """<cache>/<size>_L<layers>/hf_model: the full folder's tensors minus LLaMA layers >= `layers` (written once)."""
    from safetensors.torch import save_file

    from pixellm_ros.model.checkpoint import iter_tensors, weight_files
    out = full.parent.parent / f"{full.parent.name}_L{layers}" / "hf_model"
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name("hf_model.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in full.iterdir():
        if f.is_file() and not f.name.startswith("pytorch_model"):
            (tmp / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((full / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    pattern = re.compile(r"^model\.layers\.(\d+)\.")
    kept = {}
    for key, tensor in iter_tensors(weight_files(full)):
        m = pattern.match(key)
        if m is None or int(m.group(1)) < layers:
            kept[key] = tensor.clone() if key.endswith("inv_freq") else tensor.contiguous()
    save_file(kept, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------- one row
def make_batch(tokenizer, image_size: int):
    """One sample: synthetic 480x640 frame, QUESTION, a scripted 2-target answer of ~ANSWER_TOKENS tokens."""
    from pixellm_ros.model.generation import split_prompt
    from pixellm_ros.model.processing import preprocess_image
    from training.data.dataset import Encoded, collate
    image = synthetic_frame()
    head, tail = split_prompt(tokenizer, QUESTION)
    answer = planned_answer(tokenizer, ANSWER_TOKENS, TARGETS)
    masks = torch.zeros(TARGETS, *image.shape[:2])
    masks[0, 100:250, 80:260] = 1
    masks[1, 220:400, 350:600] = 1
    p = preprocess_image(image, image_size)
    item = Encoded(p.pixels[0], p.input_size, p.original_size, head, tail, answer, masks, "bench")
    return collate([item])


def run_row(spec: dict) -> dict:
    """In this process: build the trainer's model for the recipe, run `steps` optimizer steps on one batch."""
    from training.config import TrainConfig
    from training.losses import RELEASE_TERMS, TOTAL
    from training.objective import combine_losses
    from training.train import build
    torch.set_num_threads(spec["threads"])
    row = {"size": spec["size"], "layers": spec["layers"], "recipe": spec["recipe"], "device": spec["device"],
           "device_name": device_name(torch.device(spec["device"])), "load_avg": round(os.getloadavg()[0], 2),
           "threads": torch.get_num_threads(), **_versions(), "batch": 1, "image_px": 448,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **RECIPES[spec["recipe"]],
           "token_rows": spec["token_rows"]}
    cfg = TrainConfig.from_dict({
        "base_model": spec["hf_model"], "vision_tower": spec["clip"], "mixed_precision": "bf16",
        "model": {"dtype": "bfloat16", "token_rows": spec["token_rows"], **RECIPES[spec["recipe"]]}, "lr": 1e-4, "warmup_steps": 0})
    cfg.check()
    device = torch.device(spec["device"])
    t0 = time.perf_counter()
    model, tokenizer, _ = build(cfg, device)
    model.to(device)
    row["load_s"] = time.perf_counter() - t0
    row["load_peak_rss_bytes"] = vm_hwm()
    _progress(spec, f"built in {row['load_s']:.1f} s, peak RSS {row['load_peak_rss_bytes'] / 2 ** 30:.2f} GiB")
    params = [p for p in model.parameters() if p.requires_grad]
    row["trained_params"] = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas)
    batch = make_batch(tokenizer, model.pixellm.config.resize_vision_tower_size)
    steps, losses = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for k in range(spec["steps"]):
        torch.manual_seed(0)  # LoRA dropout: the same masks for every recipe
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            parts = model(batch["pixels"], batch["items"], tokenizer.seg_token_ids)
            out = combine_losses(parts, parts["tokens"], parts["masks"], cfg.loss)
        out[TOTAL].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps.append(time.perf_counter() - t)
        losses.append({key: float(out[key].detach()) for key in (TOTAL, *(t.key for t in RELEASE_TERMS))})
        _progress(spec, f"step {k + 1}: {steps[-1]:.1f} s, loss {losses[-1]['loss']:.5f}, "
                        f"peak RSS {vm_hwm() / 2 ** 30:.2f} GiB")
    row.update(step_s=steps, first_step_losses=losses[0], losses=losses, answer_tokens=len(batch["items"][0].answer_ids),
               samples_per_s=1.0 / min(steps), peak_rss_bytes=vm_hwm(), load_avg_end=round(os.getloadavg()[0], 2))
    if device.type == "cuda":
        row["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def _progress(spec: dict, text: str) -> None:
    print(f"[{spec['recipe']} L{spec['layers']}] {text}", file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    try:
        m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def run_row_watched(spec: dict, limit_bytes: int, timeout: float) -> dict:
    """The row in a child process; killed (and recorded as not fitting) once its RSS passes `limit_bytes`."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, row_file = Path(tmp) / "spec.json", Path(tmp) / "row.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_row", str(spec_file),
                                 "--_row-out", str(row_file)])
        start, peak, why = time.monotonic(), 0, None
        while proc.poll() is None:
            peak = max(peak, rss_bytes(proc.pid))
            if peak > limit_bytes:
                why = f"did not fit: exceeded {limit_bytes / 2 ** 30:.1f} GiB"
            elif time.monotonic() - start > timeout:
                why = f"timed out after {timeout:.0f} s"
            if why:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
        if why is None and row_file.is_file():
            return json.loads(row_file.read_text())
        return {"size": spec["size"], "layers": spec["layers"], "recipe": spec["recipe"], "device": spec["device"],
                **RECIPES[spec["recipe"]], "token_rows": spec["token_rows"], "error": why or f"row subprocess failed with exit code {proc.returncode}",
                "watched_peak_rss_bytes": peak, "elapsed_s": time.monotonic() - start}


# ------------------------------------------------------------------------------------------- results
def extrapolate(rows: list[dict], size: str, full_layers: int) -> list[dict]:
    """Per recipe: the line through its two largest measured few-layer rows, at `full_layers` (memory and time
    grow linearly with the layer count; every other part of the model is the same)."""
    out = []
    for recipe, token_rows in ((r, t) for r in RECIPES for t in TOKEN_ROWS):
        few = sorted((r for r in rows if r["recipe"] == recipe and r["size"] == size and not r.get("extrapolated")
                      and r.get("token_rows") == token_rows and "error" not in r and r["layers"] < full_layers),
                     key=lambda r: r["layers"])
        if len(few) < 2:
            continue
        a, b = few[-2], few[-1]

        def at(key, a=a, b=b):
            va, vb = (min(a[key]) if key == "step_s" else a[key]), (min(b[key]) if key == "step_s" else b[key])
            return va + (vb - va) * (full_layers - a["layers"]) / (b["layers"] - a["layers"])
        row = {"size": size, "layers": full_layers, "recipe": recipe, "device": a["device"], **RECIPES[recipe],
               "token_rows": token_rows, "extrapolated": True, "from_layers": [a["layers"], b["layers"]],
               "peak_rss_bytes": int(at("peak_rss_bytes")), "load_avg": [a.get("load_avg"), b.get("load_avg")]}
        if min(b["step_s"]) > min(a["step_s"]):  # on a loaded machine the few-layer times may not order at all
            row.update(step_s=[at("step_s")], samples_per_s=1.0 / at("step_s"))
        else:
            row["step_s_note"] = "not extrapolated: the few-layer step times did not grow with the layers (load)"
        out.append(row)
    return out


def merge_rows(path: Path, rows: list[dict], meta: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"meta": meta, "rows": []}
    data["meta"].update(meta)
    key = lambda r: (r["size"], r["layers"], r["recipe"], r.get("token_rows"), r["device"],  # noqa: E731
                     bool(r.get("extrapolated")))
    new = {key(r) for r in rows}
    data["rows"] = [r for r in data["rows"] if key(r) not in new] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def row_line(r: dict) -> str:
    g = 2 ** 30
    kind = "extrapolated" if r.get("extrapolated") else ("measured" if "error" not in r else r["error"])
    rss = r.get("peak_rss_bytes")
    step = min(r["step_s"]) if r.get("step_s") else None
    loss = r.get("first_step_losses", {}).get("loss")
    return (f"{r['size']:>4} {r['layers']:>3} {r['recipe']:>10} {r.get('token_rows', '-'):>4} {(f'{rss / g:.2f}' if rss else '-'):>9} "
            f"{(f'{step:.1f}' if step else '-'):>8} {(f'{loss:.5f}' if loss is not None else '-'):>9}  {kind}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="7b", choices=["7b", "13b"])
    ap.add_argument("--layers", type=int, nargs="+", default=[0], help="LLaMA layers to keep (0 = all)")
    ap.add_argument("--recipes", nargs="+", default=["4bit-ckpt"], choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--token-rows", default="new", choices=TOKEN_ROWS,
                    help="rows of lm_head / embed_tokens that train (training config model.token_rows)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rss-limit-gib", type=float, default=12.0, help="kill a row past this resident size")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per row, seconds")
    ap.add_argument("--extrapolate", action="store_true", help="add 32-layer rows fitted to the few-layer rows")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "pixellm_ros" / "scale"))
    ap.add_argument("--out", default=None, help="JSON to merge rows into (default benchmarks/figures/training_<device>.json)")
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    ap.add_argument("--_row-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args._row:
        row = run_row(json.loads(Path(args._row).read_text()))
        Path(args._row_out).write_text(json.dumps(row))
        return 0
    folder = Path(args.cache) / args.size
    full_hf, clip = folder / "hf_model", folder / "clip-vit-large-patch14-336"
    if not (full_hf / "config.json").is_file():  # written by the inference benchmark, once
        ap.error(f"no {args.size} weights in {folder}: run `python benchmarks/bench_scale.py --size {args.size} "
                 f"--precision bf16 --path eager` first (it writes them, then reuses them)")
    full_layers = json.loads((full_hf / "config.json").read_text())["num_hidden_layers"]
    out = Path(args.out or ROOT / "benchmarks" / "figures" / f"training_{args.device}.json")
    rows = []
    print(f"{'size':>4} {'L':>3} {'recipe':>10} {'rows':>4} {'peak GiB':>9} {'step s':>8} {'loss':>9}", flush=True)
    for layers in args.layers:
        hf = full_hf if layers in (0, full_layers) else few_layer_folder(full_hf, layers)
        for recipe in args.recipes:
            spec = {"size": args.size, "layers": layers or full_layers, "recipe": recipe, "device": args.device,
                    "hf_model": str(hf), "clip": str(clip), "steps": args.steps, "token_rows": args.token_rows, "threads": args.threads}
            row = run_row_watched(spec, int(args.rss_limit_gib * 2 ** 30), args.timeout)
            row["rss_limit_bytes"] = int(args.rss_limit_gib * 2 ** 30)
            rows.append(row)
            print(row_line(row), flush=True)
            merge_rows(out, [row], {"bench": "benchmarks/bench_training_scale.py"})
    if args.extrapolate:
        data = json.loads(out.read_text())["rows"] if out.is_file() else rows
        extra = extrapolate(data, args.size, full_layers)
        for r in extra:
            print(row_line(r), flush=True)
        merge_rows(out, extra, {})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
