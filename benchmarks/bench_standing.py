"""Standing queries: the same question on every frame, answered from scratch vs with the previous answer as a draft.

    python benchmarks/bench_standing.py [--configs embedded 7b-shaped] [--frames 16] [--cut-every 4]
    python benchmarks/bench_standing.py --configs 7b-shaped --llm-layers 32 --clip-layers 24 --device cuda \
        --dtype bfloat16 --figure     # the released 7B's full depth on a GPU (scripts/gpu_session.sh STEPS=standing)

Per frame, both ways pay the frame's own image work (preprocess, CLIP + projectors + neck, the image prefix's
KV cache) and the answer's masks; `regenerate` then decodes one step per answer token, `draft` runs the question
and the previous frame's answer (its own previous answer, as a node would) in one pass and decodes only after the
first disagreement (pixellm_ros/model/drafts.py). The two are interleaved frame by frame (order alternating) in one
process, so both see the same machine load; the load average is recorded.

Frames: the demo camera's synthetic tabletop scenes (pixellm_ros.scenes) with fresh sensor noise on every frame:
`steady` one scene; `moving` one scene with an object from another scene sliding in from the left edge (6 px per
frame: it appears, then moves); `cut` a new scene every --cut-every frames. (`blink`, an object present for three
frames and absent for three, is used by the exactness tests.)

Configs: `embedded` = models/pixellm_tabletop (its real answers); `7b-shaped` = the released 7B widths (LLaMA 4096,
MLP 11008, 32 heads, vocab 32008; CLIP-L/14 widths) with few layers and random weights (the 14 GB 7B weights are
not loaded). Random weights answer nothing, so its answers are scripted by a logits processor from the frame's
visible objects ("the red cup [SEG]x6, the blue ball [SEG]x6 ."): a scene change changes the answer as a real
model's would; the model still computes every pass in full.

Rows: config, scenario, per_frame_s_regenerate, per_frame_s_draft (medians over frames after the first, which
has no draft; per frame the fastest of --repeats runs), speedup, answer_s_* (the same without the image work),
image_s, accepted_fraction (accepted draft tokens / answer tokens), tokens_per_frame, decode_steps_regenerate /
decode_steps_draft (answer tokens not taken from the draft), exact (every frame: identical token ids and stop
reason, mask logits within rtol 1e-6 + atol 1e-5 in float32, within HALF_MASK_EPS rounding steps of the largest
logit in bf16/fp16), max_mask_logit_diff, max_mask_pixel_fraction (mask pixels on different sides of 0). Prints a table; writes benchmarks/results/standing_<device>.json and, with --figure,
benchmarks/figures/standing_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pixellm_ros.model import (Generation, SamplingConfig, generate, load_pixellm, prefill_image,  # noqa: E402
                               preprocess_image)
from pixellm_ros.model.config import VisionConfig  # noqa: E402
from pixellm_ros.model.scratch import (LLAMA_7B, ScriptedAnswer, default_corpus, make_config, random_model,  # noqa: E402
                                       train_tokenizer)
from pixellm_ros.scenes import render_scene  # noqa: E402

SCENARIOS = ("steady", "moving", "cut")
EMBEDDED = ROOT / "models" / "pixellm_tabletop"
QUESTION = "Which objects could hold water?"
MASK_RTOL, MASK_ATOL = 1e-6, 1e-5  # fp32: different summation orders give ~1e-6 relative differences
# Half precisions round every op to eps = 2^-7 (bf16) / 2^-10 (fp16) relative, so the batched verification and
# step-by-step decoding give mask logits that differ by far more than 1e-5 (bf16, 7B widths: ~1.4 % of the largest
# logit, measured). There `exact` means identical token ids and stop reason, and mask logits within
# HALF_MASK_EPS * eps * max|logit| of regenerating's.
HALF_MASK_EPS = 4


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    objects: list[str]  # names of the objects visible in it, left to right


def _shift(a: np.ndarray, dx: int) -> np.ndarray:
    """a shifted right by dx columns (left when negative), zeros entering."""
    out = np.zeros_like(a)
    if dx >= 0:
        out[:, dx:] = a[:, : a.shape[1] - dx]
    else:
        out[:, :dx] = a[:, -dx:]
    return out


def frame_stream(scenario: str, frames: int, seed: int = 0, cut_every: int = 4, noise: float = 2.0,
                 speed: int = 6) -> Iterator[Frame]:
    """Frames of a demo-camera scene as a camera would see them (see the module docstring)."""
    rng = np.random.default_rng([seed, 99])
    base, objs = render_scene(np.random.default_rng([seed, 0]))
    extra_rgb, extra_objs = render_scene(np.random.default_rng([seed, 1]))
    mover = extra_objs[0]
    left = int(np.nonzero(mover.mask)[1].min())
    for k in range(frames):
        names = [o.name for o in sorted(objs, key=lambda o: o.x)]
        if scenario == "cut":
            scene = k // cut_every
            img, cut_objs = (base, objs) if scene == 0 else render_scene(np.random.default_rng([seed, 100 + scene]))
            names = [o.name for o in sorted(cut_objs, key=lambda o: o.x)]
        elif scenario in ("moving", "blink"):
            if scenario == "moving":
                width = int(np.ptp(np.nonzero(mover.mask)[1]))
                dx = -left - width // 2 + speed * k  # starts half outside the left edge
            else:
                dx = 0 if (k // 3) % 2 else None
            img = base.copy()
            if dx is not None:
                mask = _shift(mover.mask, dx)
                img[mask] = _shift(extra_rgb, dx)[mask]
                if mask.sum() > 75:
                    names = [mover.name] + [o.name for o in sorted(objs, key=lambda o: o.x)
                                            if (o.mask & ~mask).sum() > 75]
        elif scenario == "steady":
            img = base
        else:
            raise ValueError(f"unknown scenario {scenario!r}; use one of {SCENARIOS + ('blink',)}")
        noisy = img.astype(np.float32) + rng.normal(0, noise, img.shape)
        yield Frame(np.clip(noisy, 0, 255).astype(np.uint8), names)


# --------------------------------------------------------------------------------------- subjects
def scripted_ids(tok, objects: list[str], max_targets: int = 3) -> list[int]:
    """"the red cup [SEG0..5] , the blue ball [SEG0..5] ." for the first max_targets objects, then EOS."""
    ids: list[int] = []
    for i, name in enumerate(objects[:max_targets]):
        ids += tok.sp.encode((", " if i else "") + name) + tok.seg_token_ids
    return ids + tok.sp.encode(".")[-1:] + [tok.eos_id]


@dataclass
class Subject:
    name: str
    model: object
    tok: object
    sampling_for: Callable[[Frame], SamplingConfig]


def load_subject(name: str, llm_layers: int = 2, clip_layers: int = 12, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Subject:
    if name == "embedded":
        model, tok = load_pixellm(EMBEDDED)
        return Subject(name, model.to(device, dtype), tok, lambda frame: SamplingConfig())
    if name == "7b-shaped":
        tok = train_tokenizer(default_corpus() + ["the red green blue yellow cup bowl bottle knife scissors ball"],
                              vocab_size=300)
        cfg = make_config(tok, VisionConfig(num_hidden_layers=clip_layers),
                          **{**LLAMA_7B, "num_hidden_layers": llm_layers})
        cfg.vocab_size = 32008  # the released vocabulary (embedding and lm_head cost)
        model = random_model(cfg, seed=0).to(device, dtype)

        def sampling_for(frame: Frame) -> SamplingConfig:
            script = scripted_ids(tok, frame.objects)
            return SamplingConfig(max_new_tokens=64, logits_processor=ScriptedAnswer(script))
        return Subject(name, model, tok, sampling_for)
    raise ValueError(f"unknown config {name!r}")


@torch.no_grad()
def answer_frame(s: Subject, frame: Frame, draft: list[int] | None) -> tuple[Generation, float, float]:
    """(generation, seconds for the whole frame, seconds of its image work)."""
    sync()
    t0 = time.perf_counter()
    p = preprocess_image(frame.rgb, s.model.config.resize_vision_tower_size)
    image = s.model.encode_image(p.pixels.to(s.model.device, s.model.dtype), p.input_size, p.original_size)
    prefix = prefill_image(s.model, s.tok, image)
    sync()
    t1 = time.perf_counter()
    g = generate(s.model, s.tok, image, prefix, QUESTION, s.sampling_for(frame), draft=draft)
    sync()
    return g, time.perf_counter() - t0, t1 - t0


def sync() -> None:
    """Timings end when the GPU's queued work does."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def same_answer(a: Generation, b: Generation, half_eps: float = 0.0) -> tuple[bool, float, float]:
    """(identical ids/stop reason and mask logits within tolerance, max mask logit difference, max fraction of mask
    pixels on different sides of 0). float32 (half_eps 0): MASK_RTOL/MASK_ATOL; half: HALF_MASK_EPS * half_eps."""
    if a.token_ids != b.token_ids or a.stop_reason != b.stop_reason or len(a.targets) != len(b.targets):
        return False, float("inf"), 1.0
    pairs = [(np.asarray(x.logits, np.float32), np.asarray(y.logits, np.float32)) for x, y in zip(a.targets, b.targets)]
    diff = max((float(np.abs(x - y).max()) for x, y in pairs), default=0.0)
    flipped = max((float(((x > 0) != (y > 0)).mean()) for x, y in pairs), default=0.0)
    if half_eps:
        close = all(np.abs(x - y).max() <= HALF_MASK_EPS * half_eps * np.abs(x).max() for x, y in pairs)
    else:
        close = all(np.allclose(x, y, rtol=MASK_RTOL, atol=MASK_ATOL) for x, y in pairs)
    return close, diff, flipped


def run_scenario(s: Subject, scenario: str, frames: int, cut_every: int, repeats: int = 1) -> dict:
    per = {"regen": [], "draft": [], "regen_answer": [], "draft_answer": [], "image": []}
    accepted = tokens = steps_regen = steps_draft = 0
    exact, max_diff, max_flipped, previous = True, 0.0, 0.0, None
    half_eps = torch.finfo(s.model.dtype).eps if s.model.dtype in (torch.bfloat16, torch.float16) else 0.0
    for k, frame in enumerate(frame_stream(scenario, frames, cut_every=cut_every)):
        order = ("regen", "draft") if k % 2 == 0 else ("draft", "regen")
        out = {}
        for mode in order:  # the fastest of `repeats` runs: the machine's load only ever adds time
            runs = [answer_frame(s, frame, previous.token_ids if mode == "draft" and previous else None)
                    for _ in range(repeats)]
            out[mode] = min(runs, key=lambda run: run[1])
        (ref, regen_s, regen_img), (got, draft_s, draft_img) = out["regen"], out["draft"]
        ok, diff, flipped = same_answer(ref, got, half_eps)
        exact, max_diff, max_flipped = exact and ok, max(max_diff, diff), max(max_flipped, flipped)
        if previous is not None:  # frame 0 has no draft: it only starts the stream
            per["regen"].append(regen_s), per["draft"].append(draft_s)
            per["regen_answer"].append(regen_s - regen_img), per["draft_answer"].append(draft_s - draft_img)
            per["image"].append((regen_img + draft_img) / 2)
            accepted += got.accepted_draft_tokens
            tokens += len(got.token_ids)
            steps_regen += len(ref.token_ids)
            steps_draft += len(got.token_ids) - got.accepted_draft_tokens
        previous = got
    n = frames - 1
    med = {k: statistics.median(v) for k, v in per.items()}
    return {"config": s.name, "scenario": scenario, "dtype": str(s.model.dtype).removeprefix("torch."),
            "llm_layers": s.model.config.num_hidden_layers, "frames": frames, "cut_every": cut_every, "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "per_frame_s_regenerate": round(med["regen"], 4), "per_frame_s_draft": round(med["draft"], 4),
            "speedup": round(med["regen"] / med["draft"], 2),
            "answer_s_regenerate": round(med["regen_answer"], 4), "answer_s_draft": round(med["draft_answer"], 4),
            "answer_speedup": round(med["regen_answer"] / med["draft_answer"], 2), "image_s": round(med["image"], 4),
            "accepted_fraction": round(accepted / max(tokens, 1), 3), "tokens_per_frame": round(tokens / n, 1),
            "decode_steps_regenerate": round(steps_regen / n, 1), "decode_steps_draft": round(steps_draft / n, 1),
            "exact": exact, "max_mask_logit_diff": max_diff, "max_mask_pixel_fraction": max_flipped,
            "load_avg": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["embedded", "7b-shaped"], choices=["embedded", "7b-shaped"])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--frames", type=int, default=16, help="frames per scenario (the first has no draft)")
    ap.add_argument("--cut-every", type=int, default=4, help="cut: a new scene every N frames")
    ap.add_argument("--llm-layers", type=int, default=2, help="7b-shaped: LLaMA layers (7B has 32)")
    ap.add_argument("--clip-layers", type=int, default=12, help="7b-shaped: CLIP layers (>= 11; CLIP-L has 24)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per frame and mode; the fastest counts")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--figure", action="store_true", help="also write benchmarks/figures/standing_<device>.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    report = {"device": device.type, "dtype": args.dtype,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "question": QUESTION,
              "llm_layers_7b_shaped": args.llm_layers,
              "clip_layers_7b_shaped": args.clip_layers, "load_avg_start": [round(x, 2) for x in os.getloadavg()],
              "rows": []}
    paths = [Path(args.out) / f"standing_{device.type}.json"]
    if args.figure:
        paths.append(ROOT / "benchmarks" / "figures" / f"standing_{device.type}.json")
    print(f"{'config':<10} {'scenario':<8} {'regen/fr':>9} {'draft/fr':>9} {'x':>5} {'answer x':>8} {'image':>7} "
          f"{'accepted':>8} {'steps r/d':>10} {'exact':>5} {'max diff':>9} {'load':>5}")
    for name in args.configs:
        subject = load_subject(name, args.llm_layers, args.clip_layers, device, dtype)
        answer_frame(subject, next(frame_stream("steady", 1)), None)  # warm-up
        for scenario in args.scenarios:
            r = run_scenario(subject, scenario, args.frames, args.cut_every, args.repeats)
            report["rows"].append(r)
            print(f"{name:<10} {scenario:<8} {r['per_frame_s_regenerate']:>8.3f}s {r['per_frame_s_draft']:>8.3f}s "
                  f"{r['speedup']:>4.1f}x {r['answer_speedup']:>7.1f}x {r['image_s']:>6.3f}s "
                  f"{r['accepted_fraction']:>8.2f} "
                  f"{r['decode_steps_regenerate']:>4.1f}/{r['decode_steps_draft']:<5.1f} "
                  f"{str(r['exact']):>5} {r['max_mask_logit_diff']:>9.1e} {r['load_avg']:>5.2f}", flush=True)
            write(report, paths)  # after every row: a long run that is stopped keeps what it measured
        del subject
    for path in paths:
        print(f"wrote {path}")
    return 0


def row_key(row: dict) -> tuple:
    """Rows of the same config, scenario and dtype replace each other (rows without a dtype: float32)."""
    return row["config"], row["scenario"], row.get("dtype", "float32")


def write(report: dict, paths: list[Path]) -> None:
    """Merge report's rows into each file: rows of other (config, scenario) pairs there are kept."""
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = {row_key(r) for r in report["rows"]}
        old = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
        merged = dict(report, rows=[r for r in old if row_key(r) not in mine] + report["rows"])
        path.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
