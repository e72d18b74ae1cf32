"""Compiled vs eager decode on one model (default: the embedded models/pixellm_tabletop), in one process.

    python benchmarks/bench_compile.py [--model DIR] [--device cpu] [--threads 1 2] [--repeats 7] [--tokens 128]

Two engines on the same weights, `compile` false and true. Runs alternate (eager, compiled, eager, ...) so that
noise on a shared machine hits both alike; medians are reported. Two measures per thread count:
- answer: a new synthetic tabletop frame (set_image) and the question the training data would ask about it, as a
  user would get it (text and masks): seconds per answer, first token, first mask.
- decode: the same question with an answer forced to --tokens tokens without codebook tokens or EOS (a logits
  processor bans them), so that the time is decoding only: tok/s = (new_tokens - 1) / timings.decode.
The compiled engine's load time includes compiling (its warm-up). Prints a table and writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pixellm_ros.engine import Engine  # noqa: E402
from pixellm_ros.model import SamplingConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class NoStop:
    """Logits processor: never a codebook token or EOS, so an answer runs to max_new_tokens with no mask."""

    def __init__(self, banned: list[int]) -> None:
        self.banned = banned

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[self.banned] = float("-inf")
        return logits


def scenes(n: int) -> list[tuple[np.ndarray, str]]:
    sys.path.insert(0, str(REPO))
    from training.data.synthetic import SyntheticConfig, make_question, render_scene
    out = []
    for i in range(n):
        rng = np.random.default_rng([11, i])
        rgb, objects = render_scene(rng, SyntheticConfig())
        out.append((rgb, make_question(rng, objects, SyntheticConfig())[0]))
    return out


def run(engine: Engine, rgb: np.ndarray, key: str, question: str, sampling: SamplingConfig | None):
    engine.set_image(rgb, image_key=key)
    t0 = time.perf_counter()
    result = engine.ask(question, sampling)
    return result, time.perf_counter() - t0


def measure(engines: dict[str, Engine], frames, repeats: int, tokens: int) -> dict:
    tok = engines["eager"].tokenizer
    forced = SamplingConfig(max_new_tokens=tokens, logits_processor=NoStop(tok.seg_token_ids + [tok.eos_id]))
    answer = {name: [] for name in engines}
    decode = {name: [] for name in engines}
    same = True
    for r in range(repeats):
        for i, (rgb, question) in enumerate(frames):
            results = {}
            for name, engine in engines.items():  # alternate: eager then compiled on the same frame
                result, seconds = run(engine, rgb, f"{r}-{i}", question, None)
                results[name] = result
                answer[name].append({"s": seconds, "first_token_s": result.timings.first_token,
                                     "first_mask_s": result.timings.first_mask, "new_tokens": result.timings.new_tokens,
                                     "targets": len(result.targets)})
            same &= results["eager"].token_ids == results["compiled"].token_ids
        for name, engine in engines.items():
            result, _ = run(engine, frames[0][0], "forced", frames[0][1], forced)
            decode[name].append((result.timings.new_tokens - 1) / result.timings.decode)
            results[name] = result
        same &= results["eager"].token_ids == results["compiled"].token_ids
    out = {}
    for name in engines:
        masks = [a["first_mask_s"] for a in answer[name] if a["first_mask_s"]]
        out[name] = {"answer_s_median": statistics.median(a["s"] for a in answer[name]),
                     "first_token_s_median": statistics.median(a["first_token_s"] for a in answer[name]),
                     "first_mask_s_median": statistics.median(masks) if masks else None,
                     "answer_tokens_mean": float(np.mean([a["new_tokens"] for a in answer[name]])),
                     "decode_tok_s_median": statistics.median(decode[name]), "decode_tok_s": decode[name]}
    out["compiled_over_eager_decode_tok_s"] = out["compiled"]["decode_tok_s_median"] / out["eager"]["decode_tok_s_median"]
    out["eager_over_compiled_answer_s"] = out["eager"]["answer_s_median"] / out["compiled"]["answer_s_median"]
    out["same_token_ids"] = bool(same)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "pixellm_tabletop"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=4, help="frames (each with its question) per repeat")
    ap.add_argument("--tokens", type=int, default=128, help="length of the forced decode-only answer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    report = {"model": Path(args.model).name, "device": args.device, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpus": __import__("os").cpu_count(),
              "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
              "repeats": args.repeats, "frames": args.frames, "forced_tokens": args.tokens, "rows": []}
    engines = {}
    for name, compile in (("eager", "false"), ("compiled", "true")):
        engines[name] = Engine.from_pretrained(args.model, device=args.device, compile=compile)
        report[f"{name}_load_s"] = engines[name].load_seconds
    frames = scenes(args.frames)
    print(f"load: eager {report['eager_load_s']:.1f} s, compiled {report['compiled_load_s']:.1f} s (incl. compiling)")
    print(f"{'threads':>7} {'eager tok/s':>11} {'comp tok/s':>10} {'x':>5} {'eager ans':>9} {'comp ans':>9} {'x':>5} "
          f"{'ttft e/c':>13} {'mask e/c':>13} same")
    for threads in args.threads:
        torch.set_num_threads(threads)
        row = {"threads": threads, **measure(engines, frames, args.repeats, args.tokens)}
        report["rows"].append(row)
        e, c = row["eager"], row["compiled"]
        fm = (f"{e['first_mask_s_median'] * 1e3:5.0f}/{c['first_mask_s_median'] * 1e3:<5.0f}ms"
              if e["first_mask_s_median"] and c["first_mask_s_median"] else f"{'n/a':>13}")
        print(f"{threads:>7} {e['decode_tok_s_median']:>11.1f} {c['decode_tok_s_median']:>10.1f} "
              f"{row['compiled_over_eager_decode_tok_s']:>5.2f} {e['answer_s_median'] * 1e3:>7.0f}ms "
              f"{c['answer_s_median'] * 1e3:>7.0f}ms {row['eager_over_compiled_answer_s']:>5.2f} "
              f"{e['first_token_s_median'] * 1e3:5.0f}/{c['first_token_s_median'] * 1e3:<5.0f}ms {fm} "
              f"{row['same_token_ids']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compile_{torch.device(args.device).type}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
