"""Package a finished run as a shippable model folder with its model card.

    python -m training.model_card --stages runs/embedded/stage1:600 runs/embedded/stage2 runs/embedded/stage3 \
        --run runs/embedded/stage4 --eval runs/embedded/eval --out models/pixellm_tabletop

Copies the final run's exported model (safetensors, own vision tower and tokenizer), its loss plot and the
held-out evaluation (report + example grid), and writes MODEL_CARD.md: data, steps and time of every stage,
the exact commands that reproduce it, and the held-out metrics. `--stages` lists the earlier runs in order;
`RUN:STEP` marks a run whose checkpoint at STEP (not its end) was exported and trained on.

    python -m training.model_card --previous-card models/pixellm_tabletop/MODEL_CARD.md --run runs/embedded/stage11 \
        --eval runs/embedded/eval11_500 --ood runs/embedded/ood11 --ood-baseline runs/embedded/ood10 \
        --notes NOTES.md --out models/pixellm_tabletop

`--previous-card` continues the card of the model the run started from, when the earlier stages' run folders are
gone: its stage rows, training time, reproduce commands and notes are kept and the run becomes the next stage.
`--ood DIR` adds the out-of-domain table (`python -m training.evaluate --ood --out DIR`), with `--ood-baseline`
(the model it started from) beside it; `--demo DIR` / `--demo-baseline DIR` likewise the `make demo` table
(`python -m training.evaluate --demo --out DIR`).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.randomize import HELDOUT_PHOTOS
from .grow import GROWN_FILE
from .losses import LOSS_TERMS, RELEASE_TERMS, TOTAL

CONFIGS = Path(__file__).resolve().parent / "configs"
AIM_GIOU, AIM_COUNT = 0.75, 0.90


@dataclass
class Stage:
    run: Path
    config: dict
    config_file: str  # training/configs/<name>.yaml whose output_dir is this run, else the run's copy
    stopped_at: int = 0  # 0 = ran to its last step

    @classmethod
    def parse(cls, spec: str) -> "Stage":
        run, _, step = spec.partition(":")
        run_dir = Path(run)
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        outputs = {Path(cfg["output_dir"]), run_dir}  # (a run folder may have been moved since it ran)
        match = next((f"training/configs/{p.name}" for p in sorted(CONFIGS.glob("*.yaml"))
                      if Path((yaml.safe_load(p.read_text()) or {}).get("output_dir", "")) in outputs),
                     str(run_dir / "config.yaml"))
        return cls(run_dir, cfg, match, int(step or 0))

    @property
    def steps(self) -> int:
        return self.stopped_at or self.config["steps"]

    def minutes(self) -> float:
        """Training time from metrics.csv (samples/s of each logged interval, up to the steps used)."""
        rows = [r for r in csv.DictReader((self.run / "metrics.csv").open()) if int(r["step"]) <= self.steps]
        batch = self.config["batch_size"] * self.config["grad_accum"]
        seconds, prev = 0.0, 0
        for r in rows:
            step = int(r["step"])
            seconds += (step - prev) * batch / max(float(r["samples_per_s"]), 1e-9)
            prev = step
        return seconds / 60

    def row(self, k: int) -> str:
        c = self.config
        loss = c["loss"]
        terms = [f"{loss[t.weight_field]} {t.label}" for t in LOSS_TERMS if t.release or loss.get(t.weight_field)]
        data = "; ".join(_source_text(s) for s in self.config["data"]["sources"])
        stop = f" (schedule for {c['steps']} steps, stopped and exported at step {self.stopped_at})" if self.stopped_at else ""
        reinit = f"; re-initialised first: {', '.join(c['reinit_modules'])}" if c.get("reinit_modules") else ""
        grew = (f"; LLM grown from {self.grown['layers_before']} to {self.grown['layers']} layers first "
                "(`training.grow`)" if self.grown else "")
        trained = f"; trained only: {', '.join(c['trainable'])}" if c.get("trainable", ["all"]) != ["all"] else ""
        tower = "; vision tower trained too" if c.get("train_vision_tower") else ""
        return (f"| stage {k} | `{self.config_file}`: {self.steps} steps x batch {c['batch_size']} ({data}); "
                f"lr {c['lr']}{stop}; loss {' + '.join(terms)}{grew}{reinit}{trained}{tower}; "
                f"{self.minutes():.0f} min |\n")

    @functools.cached_property
    def grown(self) -> dict | None:
        """training.grow's record when this stage started from a grown model (its base folder's grown.json)."""
        path = Path(self.config["base_model"]) / GROWN_FILE
        return json.loads(path.read_text()) if path.is_file() else None


SOURCE_KINDS = {"synthetic": "synthetic", "randomized": "synthetic objects over photographs / textures (randomized)",
                "negative": "photographs / textures without domain objects (negative)"}


def _source_text(src: dict) -> str:
    mix = src.get("question_mix") or {}
    share = f"{src.get('ratio', 1.0):g} of the mix: " if src.get("ratio", 1.0) != 1.0 else ""
    kind = SOURCE_KINDS.get(src.get("kind", "synthetic"), src.get("kind"))
    return (f"{share}{kind} seed {src.get('seed', 0)}, {src.get('questions_per_scene', 1)} questions per scene"
            + (f", question mix {mix}" if mix else "")
            + (f", {src['objects'][0]}-{src['objects'][1]} objects per scene" if src.get("objects") else "")
            + (f", only {'/'.join(src['kinds'])}" if src.get("kinds") else "")
            + (f", only {'/'.join(src['colors'])} objects" if src.get("colors") else "")
            + (", no kind and colour twice" if src.get("distinct") else "")
            + (f", {src['phrasing']} phrasings" if src.get("phrasing", "template") != "template" else ""))


@dataclass
class PreviousCard:
    """What a shipped card says about the stages before this run (their run folders may be gone)."""

    pre_row: str = ""
    stage_rows: list[str] = field(default_factory=list)
    minutes: float = 0.0
    reproduce: list[str] = field(default_factory=list)
    notes: str = ""

    @classmethod
    def parse(cls, text: str) -> "PreviousCard":
        lines = text.splitlines()
        stage_rows = [ln + "\n" for ln in lines if re.match(r"^\| stage \d+ \|", ln)]
        pre_row = "".join(ln + "\n" for ln in lines if ln.startswith("| vision pretraining |"))
        time = re.search(r"^\| time \| (\d+(?:\.\d+)?) min", text, re.M)
        block = re.search(r"## Reproduce\n\n```bash\n(.*?)\n```", text, re.S)
        notes = text.split("\n## Notes\n\n", 1)
        if not stage_rows or time is None or block is None:
            raise ValueError("previous card: expected '| stage N |' rows, a '| time |' row and a Reproduce block")
        return cls(pre_row, stage_rows, float(time.group(1)), block.group(1).splitlines(),
                   notes[1].strip() if len(notes) == 2 else "")


OOD_COLUMNS = (("answers", "answers", "{:d}"), ("no target", "no_target_fraction", "{:.2f}"),
               ("ended by EOS", "eos_fraction", "{:.2f}"), ("cut by a guard", "guard_cut_fraction", "{:.2f}"),
               ("bounded", "bounded_fraction", "{:.2f}"), ("mean tokens", "mean_tokens", "{:.1f}"),
               ("mean targets", "mean_targets", "{:.2f}"), ("max targets", "max_targets", "{:d}"),
               ("max chars", "max_chars", "{:d}"), ("max word run", "max_word_run", "{:d}"))
OOD_SETTINGS = {"node_defaults": "node defaults (guards on)", "engine_defaults": "engine defaults (no guards)"}


def ood_table(reports: dict[str, dict]) -> str:
    """Markdown rows of `evaluate --ood` reports: {model label: report_ood.json}, one row per sampling setting."""
    head = "| model | sampling | " + " | ".join(c for c, _, _ in OOD_COLUMNS) + " |\n"
    head += "|---" * (len(OOD_COLUMNS) + 2) + "|\n"
    rows = [f"| {label} | {OOD_SETTINGS.get(name, name)} | " + " | ".join(fmt.format(s[key]) for _, key, fmt in OOD_COLUMNS)
            + " |\n" for label, report in reports.items() for name, s in report["settings"].items()]
    return head + "".join(rows)


def demo_table(reports: dict[str, dict]) -> str:
    """Markdown rows of `evaluate --demo` reports ({model label: report_demo.json}): right / names right per
    question on the camera's scenes, failure kinds, and the demo's own scene."""
    questions = list(next(iter(reports.values()))["by_question"])
    kinds = list(next(iter(reports.values()))["failures"])
    head = ("| model | right | names right | " + " | ".join(f'"{q}"' for q in questions) + " | "
            + " | ".join(kinds) + " | demo scene |\n" + "|---" * (4 + len(questions) + len(kinds)) + "|\n")
    rows = []
    for label, r in reports.items():
        scene = r.get("demo_scene")
        rows.append(f"| {label} | {r['right']}/{r['asked']} | {r['names_right']}/{r['asked']} | "
                    + " | ".join(f"{b['right']}/{b['asked']}" for b in r["by_question"].values()) + " | "
                    + " | ".join(str(r["failures"][k]) for k in kinds) + " | "
                    + (f"{scene['right']}/{len(scene['answers'])}" if scene else "-") + " |\n")
    return head + "".join(rows)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def reproduce(stages: list[Stage], final: Stage, eval_dir: Path, out: Path, questions: int, pre: dict | None,
              preset: str) -> str:
    lines = [f"python -m training.init_model --preset {preset} --out runs/embedded/init"]
    if pre:
        lines.append(f"python -m training.pretrain_vision --model runs/embedded/init --out runs/embedded/init_pretrained "
                     f"--steps {pre['steps']} --batch-size {pre['batch_size']} --device cuda --workers 14")
    for s in stages + [final]:
        if s.grown:
            lines.append(f"python -m training.grow --model {s.grown['source']} --layers {s.grown['layers']} "
                         f"--out {s.config['base_model']}")
        lines.append(f"python -m training.train {s.config_file}" + (f"        # stopped after step {s.stopped_at}"
                                                                     if s.stopped_at else ""))
        if s.stopped_at:  # the next stage starts from an export of that checkpoint
            base, target = s.config["base_model"], f"{s.run}_step{s.stopped_at}"
            lines.append(f"python -m training.export --base {base} --checkpoint {s.run}/checkpoints/"
                         f"step_{s.stopped_at:07d} --out {target} --dtype float32")
            lines.append(f"cp {base}/vision_pretraining.json {target}/")
    specs = " ".join(f"{s.run}" + (f":{s.stopped_at}" if s.stopped_at else "") for s in stages)
    lines.append(f"python -m training.evaluate --model {final.run}/model --samples {questions} --seed 9999 --out {eval_dir}")
    lines.append(f"python -m training.model_card --stages {specs} --run {final.run} --eval {eval_dir} --out {out}")
    return "\n".join(lines)


def write_card(run: Path, eval_dir: Path, out: Path, preset: str = "embedded",
               hardware: str = "2 CPU cores (shared with other work), no GPU", notes: str = "",
               stages: list[str] | None = None, previous_card: Path | None = None, ood: Path | None = None,
               ood_baseline: Path | None = None, demo: Path | None = None, demo_baseline: Path | None = None) -> Path:
    final = Stage.parse(str(run))
    earlier = [Stage.parse(s) for s in stages or []]
    prev = PreviousCard.parse(previous_card.read_text()) if previous_card else None  # read before `out` goes
    ood_reports = {label: json.loads((d / "report_ood.json").read_text())
                   for label, d in (("before (the base model)", ood_baseline), ("this model", ood)) if d}
    demo_reports = {label: json.loads((d / "report_demo.json").read_text())
                    for label, d in (("before (the base model)", demo_baseline), ("this model", demo)) if d}
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run / "model", out)
    for src, name in ((run / "metrics.png", "training_curves.png"), (eval_dir / "examples.png", "heldout_examples.png"),
                      (eval_dir / "report.json", "heldout_report.json"),
                      *(((ood / "report_ood.json", "ood_report.json"),) if ood else ()),
                      *(((demo / "report_demo.json", "demo_report.json"),) if demo else ())):
        if src.is_file():
            shutil.copy(src, out / name)
    report = json.loads((eval_dir / "report.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    last = rows[-1] if rows else {}
    params = json.loads((out / "config.json").read_text())
    met = report["gIoU"] >= AIM_GIOU and report["target_count_accuracy"] >= AIM_COUNT
    verdict = ("met." if met else "**not met** by this checkpoint (see the notes below). Train longer (start from "
               "this folder as `base_model`) before relying on it.")
    first_base = Path((earlier[0] if earlier else final).config["base_model"])
    pre_path = first_base / "vision_pretraining.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else None
    pre_row = (f"| vision pretraining | `training.pretrain_vision`: {pre['steps']} steps x batch {pre['batch_size']} "
               f"synthetic scenes (seed 0), per-patch kind+color labels, {pre['seconds']:.0f} s on one H100; "
               f"object-patch accuracy {pre['final_object_patch_accuracy']:.2f}; then frozen |\n" if pre else "")
    first = len(prev.stage_rows) + 1 if prev else 1
    stage_rows = "".join(prev.stage_rows if prev else []) + "".join(
        s.row(k) for k, s in enumerate(earlier + [final], start=first))
    pre_row = pre_row or (prev.pre_row if prev else "")
    total = sum(s.minutes() for s in earlier + [final]) + (prev.minutes if prev else 0.0)
    commands = reproduce(earlier, final, eval_dir, out, report['questions'], pre, preset).splitlines()
    if prev:  # the earlier commands ship the base model; this run's follow
        commands = [ln for ln in commands if not ln.startswith(("python -m training.init_model",
                                                                  "python -m training.pretrain_vision"))]
        commands[-1] = commands[-1].replace("--stages  --run", "--run").replace(
            "--run", f"--previous-card {out}/MODEL_CARD.md --run", 1)
    if ood:
        commands[-1:] = [f"python -m training.evaluate --model {final.run}/model --ood --out {ood}",
                         commands[-1].replace(f" --out {out}", f" --ood {ood} --out {out}")]
    if demo:
        commands[-1:] = [f"python -m training.evaluate --model {final.run}/model --demo --out {demo}",
                         commands[-1].replace(f" --out {out}", f" --demo {demo} --out {out}")]
    commands = "\n".join((prev.reproduce if prev else []) + commands)
    ood_section = "" if not ood_reports else f"""
## Out-of-domain answers (`python -m training.evaluate --ood`)

{next(iter(ood_reports.values()))['questions']} questions (referring to an absent object, affordance, colour; varied phrasings) on
{next(iter(ood_reports.values()))['images']} images that hold no domain object and were never trained on: scikit-image photographs held out of
training (`randomize.HELDOUT_PHOTOS`: {', '.join(HELDOUT_PHOTOS)}), procedural kinds training never draws
(two coloured rectangles on black, waves, scribbles) and the training texture kinds at an unused seed. The right
answer is always "There is no such object in the image."; "bounded": at most 8 targets, 300 characters and no word
5 times in a row; "cut by a guard": stopped by `max_targets` or the repetition stop.

{ood_table(ood_reports)}"""
    if demo_reports:
        d = next(iter(demo_reports.values()))
        ood_section += f"""
## `make demo`'s questions (`python -m training.evaluate --demo`)

The demo planner's {len(d['by_question'])} questions on each of the demo camera's first {len(d['scenes'])} scenes (seed
{d['seed']}) with the node's default guards, scored by the synthetic domain's answer rules: "right" = the targets'
names are the true ones and each mask overlaps its object with IoU >= 0.5; "names right" ignores the masks. Failure
kinds count answers (one answer can have several). "demo scene": the one scene `make demo` shows
(`pixellm_ros.scenes.DEMO_SCENE`, scene {d.get('demo_scene', {}).get('scene', '?')}).

{demo_table(demo_reports)}"""
    card = f"""# pixellm_tabletop — the embedded default model

A small PixelLM-structured model (same module tree and code paths as PixelLM-7B: CLIP-architecture vision
tower, LLaMA-architecture LLM with the `[SEG0]`..`[SEG5]` codebook, projectors, pixel decoder) trained from
scratch by this project, because no pretrained CLIP/LLaMA weights can be downloaded here. It knows one
domain: synthetic tabletop scenes (`training/data/synthetic.py`: cups, bowls, bottles, knives, scissors and
balls in four colors, 2-4 per scene, 3-5 in the crowded sources, with occlusion) and referring / affordance /
attribute questions.
It is what `make demo` and the node use by default; for real robots use the published PixelLM weights or
fine-tune on your own data.

| | |
|---|---|
| LLM | {params['num_hidden_layers']} layers, hidden {params['hidden_size']}, {params['num_attention_heads']} heads, vocab {params['vocab_size']} (own SentencePiece BPE) |
| vision tower | `vision_tower/` (CLIP ViT, patch 14), run at {params['resize_vision_tower_size']} px |
| size on disk | {folder_mb(out):.1f} MB ({params.get('torch_dtype')}) |
{pre_row}{stage_rows}| every stage | LLM, projectors, codebook and pixel decoder trained, vision tower frozen (unless the stage's row says otherwise); AdamW, warm-up then linear decay; batches of fresh samples (each seen once) |
| time | {total:.0f} min of training on {hardware} (from the runs' metrics.csv) |
| final training loss | {last.get(TOTAL, '?')} ({', '.join(f"{t.label} {last.get(t.key, '?')}" for t in RELEASE_TERMS)}) |

## Held-out metrics (synthetic stream with a seed never used in training)

| questions | gIoU | cIoU | target-count accuracy |
|---|---|---|---|
| {report['questions']} | {report['gIoU']:.3f} | {report['cIoU']:.3f} | {report['target_count_accuracy']:.3f} |

Aim set for this model: gIoU >= {AIM_GIOU} and target count >= {AIM_COUNT}: {verdict}
`heldout_examples.png`: predicted (left) vs true (right) masks; `training_curves.png`: the last stage's loss curves.
{ood_section}
## Reproduce

```bash
{commands}
```
(`--resume` continues an interrupted run on the same curve.)
"""
    notes = "\n\n".join(n for n in ((prev.notes if prev else ""), notes.strip()) if n)
    if notes:
        card += "\n## Notes\n\n" + notes + "\n"
    (out / "MODEL_CARD.md").write_text(card)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the last stage's run folder (its model/ is shipped)")
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", nargs="*", default=[], help="earlier stages' run folders in order, RUN[:STEP]")
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--hardware", default="2 CPU cores (shared with other work), no GPU")
    ap.add_argument("--notes", type=Path, help="markdown file appended as the card's Notes section")
    ap.add_argument("--previous-card", type=Path, help="the base model's MODEL_CARD.md: continue its stages")
    ap.add_argument("--ood", type=Path, help="folder of `training.evaluate --ood` on this model")
    ap.add_argument("--ood-baseline", type=Path, help="folder of `training.evaluate --ood` on the base model")
    ap.add_argument("--demo", type=Path, help="folder of `training.evaluate --demo` on this model")
    ap.add_argument("--demo-baseline", type=Path, help="folder of `training.evaluate --demo` on the base model")
    args = ap.parse_args(argv)
    print(write_card(Path(args.run), Path(args.eval), Path(args.out), args.preset, args.hardware,
                     args.notes.read_text() if args.notes else "", args.stages, args.previous_card, args.ood,
                     args.ood_baseline, args.demo, args.demo_baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
