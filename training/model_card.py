"""Package a finished run as a shippable model folder with its model card.

    python -m training.model_card --run runs/embedded --eval runs/embedded/eval --out models/pixellm_tabletop

Copies the run's exported model (safetensors, own vision tower and tokenizer), its loss plot and the
held-out evaluation (report + example grid), and writes MODEL_CARD.md: data, steps, time, the exact
commands that reproduce it, and the held-out metrics.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import yaml


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def write_card(run: Path, eval_dir: Path, out: Path, preset: str, train_minutes: float | None,
               hardware: str = "2 CPU cores (shared with other work), no GPU", notes: str = "",
               stage1: Path | None = None, stage1_step: int = 0) -> Path:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run / "model", out)
    for src, name in ((run / "metrics.png", "training_curves.png"), (eval_dir / "examples.png", "heldout_examples.png"),
                      (eval_dir / "report.json", "heldout_report.json")):
        if src.is_file():
            shutil.copy(src, out / name)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    report = json.loads((eval_dir / "report.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    last = rows[-1] if rows else {}
    params = json.loads((out / "config.json").read_text())
    samples = cfg["steps"] * cfg["batch_size"] * cfg["grad_accum"]
    met = report["gIoU"] >= 0.75 and report["target_count_accuracy"] >= 0.90
    verdict = ("met." if met else "**not met** by this checkpoint (see the notes below). Train longer (start from "
               "this folder as `base_model`) before relying on it.")
    loss = cfg["loss"]
    terms = [f"{loss['ce_weight']} CE", f"{loss['bce_weight']} BCE", f"{loss['dice_weight']} DICE"]
    terms += [f"{loss['overlap_weight']} target refinement"] if loss.get("overlap_weight") else []
    terms += [f"{loss['naming_weight']} prompt naming (training-only head)"] if loss.get("naming_weight") else []
    pre_path = Path(cfg["base_model"]) / "vision_pretraining.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else None
    pre_row = (f"| vision pretraining | `training.pretrain_vision`: {pre['steps']} steps x batch {pre['batch_size']} "
               f"synthetic scenes (seed 0), per-patch kind+color labels, {pre['seconds']:.0f} s on one H100; "
               f"object-patch accuracy {pre['final_object_patch_accuracy']:.2f} |\n" if pre else "")
    tower = ("pretrained (row above), then frozen" if not cfg.get("train_vision_tower") else "trained with the rest")
    sources = cfg["data"]["sources"][0]
    stage1_row = ""
    if stage1 is not None:
        c1 = yaml.safe_load((stage1 / "config.yaml").read_text())
        s1 = c1["data"]["sources"][0]
        stage1_row = (f"| stage 1 | `training/configs/embedded_stage1.yaml`: {stage1_step} steps x batch {c1['batch_size']} "
                      f"(synthetic seed {s1.get('seed', 0)}, {s1.get('questions_per_scene', 1)} questions per scene), "
                      f"lr {c1['lr']} (schedule for {c1['steps']} steps, stopped and exported at step {stage1_step}) |\n")
    reinit = cfg.get("reinit_modules") or []
    reinit_text = f"; re-initialised first: {', '.join(reinit)}" if reinit else ""
    card = f"""# pixellm_tabletop — the embedded default model

A small PixelLM-structured model (same module tree and code paths as PixelLM-7B: CLIP-architecture vision
tower, LLaMA-architecture LLM with the `[SEG0]`..`[SEG5]` codebook, projectors, pixel decoder) trained from
scratch by this project, because no pretrained CLIP/LLaMA weights can be downloaded here. It knows one
domain: synthetic tabletop scenes (`training/data/synthetic.py`: cups, bowls, bottles, knives, scissors and
balls in four colors, 2-4 per scene, with occlusion) and referring / affordance / attribute questions.
It is what `make demo` and the node use by default; for real robots use the published PixelLM weights or
fine-tune on your own data.

| | |
|---|---|
| LLM | {params['num_hidden_layers']} layers, hidden {params['hidden_size']}, {params['num_attention_heads']} heads, vocab {params['vocab_size']} (own SentencePiece BPE) |
| vision tower | `vision_tower/` (CLIP ViT, patch 14), run at {params['resize_vision_tower_size']} px |
| size on disk | {folder_mb(out):.1f} MB ({params.get('torch_dtype')}) |
{pre_row}{stage1_row}| {'stage 2' if stage1_row else 'training'} data | synthetic stream, seed {sources.get('seed', 0)}, {sources.get('questions_per_scene', 1)} questions per scene: {samples} samples ({cfg['steps']} steps x batch {cfg['batch_size']}) |
| {'stage 2' if stage1_row else 'training'} | LLM, projectors, codebook and pixel decoder trained{reinit_text}; vision tower {tower}; AdamW lr {cfg['lr']}, {cfg['warmup_steps']} warm-up steps then linear decay; loss {' + '.join(terms)} |
| time | {f'{train_minutes:.0f} min' if train_minutes else 'see metrics'} on {hardware} |
| final training loss | {last.get('loss', '?')} (CE {last.get('ce', '?')}, BCE {last.get('bce', '?')}, DICE {last.get('dice', '?')}) |

## Held-out metrics (synthetic stream with a seed never used in training)

| questions | gIoU | cIoU | target-count accuracy |
|---|---|---|---|
| {report['questions']} | {report['gIoU']:.3f} | {report['cIoU']:.3f} | {report['target_count_accuracy']:.3f} |

Aim set for this model: gIoU >= 0.75 and target count >= 0.90: {verdict}
`heldout_examples.png`: predicted (left) vs true (right) masks; `training_curves.png`: the loss curves.

## Reproduce

```bash
python -m training.init_model --preset {preset} --out runs/embedded/init
python -m training.pretrain_vision --model runs/embedded/init --out runs/embedded/init_pretrained --steps {pre['steps'] if pre else 800} --batch-size {pre['batch_size'] if pre else 64} --device cuda --workers 14
python -m training.train training/configs/embedded_stage1.yaml        # stopped after step {stage1_step or '?'}
python -m training.export --base runs/embedded/init_pretrained --checkpoint runs/embedded/stage1/checkpoints/step_{stage1_step:07d} --out runs/embedded/stage1_step{stage1_step} --dtype float32
cp runs/embedded/init_pretrained/vision_pretraining.json runs/embedded/stage1_step{stage1_step}/
python -m training.train training/configs/embedded_default.yaml
python -m training.evaluate --model {run}/model --samples {report['questions']} --seed 9999 --out {eval_dir}
python -m training.model_card --run {run} --eval {eval_dir} --out {out} --stage1-run runs/embedded/stage1 --stage1-step {stage1_step}
```
(`--resume` continues an interrupted run on the same curve.)
"""
    if notes:
        card += "\n## Notes\n\n" + notes.strip() + "\n"
    (out / "MODEL_CARD.md").write_text(card)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--train-minutes", type=float)
    ap.add_argument("--hardware", default="2 CPU cores (shared with other work), no GPU")
    ap.add_argument("--notes", type=Path, help="markdown file appended as the card's Notes section")
    ap.add_argument("--stage1-run", type=Path, help="the stage-1 run folder, when the model was trained in stages")
    ap.add_argument("--stage1-step", type=int, default=0, help="the stage-1 checkpoint step stage 2 started from")
    args = ap.parse_args(argv)
    print(write_card(Path(args.run), Path(args.eval), Path(args.out), args.preset, args.train_minutes,
                     args.hardware, args.notes.read_text() if args.notes else "", args.stage1_run, args.stage1_step))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
