"""Per-query cost of PixelLM: the release's algorithm vs this engine, on the same weights.

    python benchmarks/bench_engine.py [--configs tiny 7b-shaped] [--device cpu] [--out DIR]

Release-style path: for every new token, encode the image again and run the whole sequence with no
KV cache (what the official `evaluate` does). Ours: image features and the image prefix's KV cache
computed once per frame, question prefill once, then one position per token.

Weights are random, so each answer is scripted with a logits processor (the model still computes
every step in full; only the choice of token is fixed) to get answers of known length with one
target. "7b-shaped" = the released 7B widths (LLM hidden 4096, MLP 11008, 32 heads, vocab 32008,
CLIP-L/14 width 1024) with few layers, so it fits and runs on a CPU.
Prints a table and writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pixellm_ros.model import (SamplingConfig, generate, generate_recompute, prefill_image,  # noqa: E402
                               preprocess_image)
from pixellm_ros.model.config import VisionConfig  # noqa: E402
from pixellm_ros.model.scratch import (LLAMA_7B, TINY_LLM, TINY_VISION, ScriptedAnswer, default_corpus,  # noqa: E402
                                       make_config, random_model, train_tokenizer)


def planned_answer(tokenizer, words: int) -> list[int]:
    """`words` ordinary tokens, one complete codebook group, a period and EOS."""
    text = tokenizer.sp.encode("the red cup on the table is the one you want and it is right here " * 8)
    return text[:words] + tokenizer.seg_token_ids + tokenizer.sp.encode(".")[-1:] + [tokenizer.eos_id]


def build(name: str, clip_layers: int, llm_layers: int):
    if name == "tiny":
        tok = train_tokenizer(default_corpus(), vocab_size=300)
        cfg = make_config(tok, TINY_VISION, **TINY_LLM)
    else:
        tok = train_tokenizer(default_corpus(), vocab_size=300)
        vision = VisionConfig(num_hidden_layers=clip_layers)  # CLIP-L/14 widths
        cfg = make_config(tok, vision, **{**LLAMA_7B, "num_hidden_layers": llm_layers})
        cfg.vocab_size = 32008  # the released vocabulary size (embedding and lm_head cost)
    return random_model(cfg, seed=0), tok


def timed(fn, device):
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def bench_config(name: str, device: torch.device, dtype: torch.dtype, lengths: list[int], repeats: int,
                 clip_layers: int, llm_layers: int) -> dict:
    model, tok = build(name, clip_layers, llm_layers)
    model = model.to(device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
    question = "which object could hold water?"
    rows = []
    for words in lengths:
        script = planned_answer(tok, words)
        sampling = SamplingConfig(max_new_tokens=len(script), logits_processor=ScriptedAnswer(script))
        p = preprocess_image(rgb)
        pixels = p.pixels.to(device)

        def release():
            return generate_recompute(model, tok, pixels, p.input_size, p.original_size, question, sampling)

        def first_question():
            t0 = time.perf_counter()
            image = model.encode_image(pixels, p.input_size, p.original_size)
            t1 = time.perf_counter()
            prefix = prefill_image(model, tok, image)
            t2 = time.perf_counter()
            first = {}
            gen = _stream_timed(model, tok, image, prefix, question, sampling, t0, first)
            return gen, image, prefix, {"encode_image": t1 - t0, "prefill_image": t2 - t1, **first}

        release_out, _ = timed(release, device)  # warm-up
        release_s = min(timed(release, device)[1] for _ in range(repeats))
        (ours_out, image, prefix, stages), _ = timed(first_question, device)  # warm-up
        firsts = [timed(first_question, device) for _ in range(repeats)]
        first_s = min(t for _, t in firsts)
        stages = min((out[3] for out, _ in firsts), key=lambda s: s["total"])
        second_s = min(timed(lambda: generate(model, tok, image, prefix, question, sampling), device)[1]
                       for _ in range(repeats))
        assert ours_out.token_ids == release_out.token_ids == script, "paths disagree"
        diff = float(np.abs(ours_out.targets[0].logits - release_out.targets[0].logits).max())
        rows.append({"config": name, "new_tokens": len(script), "targets": len(ours_out.targets),
                     "release_s": release_s, "ours_first_s": first_s, "ours_second_s": second_s,
                     "speedup_first": release_s / first_s, "speedup_second": release_s / second_s,
                     "second_vs_first": first_s / second_s, "stages_s": stages, "mask_logit_max_diff": diff})
    params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in model.vision_tower.parameters())
    return {"config": name, "params": params, "rows": rows}


def _stream_timed(model, tok, image, prefix, question, sampling, t0, out):
    from pixellm_ros.model import TargetEvent, TextEvent, stream
    events = stream(model, tok, image, prefix, question, sampling)
    for event in events:
        now = time.perf_counter() - t0
        if isinstance(event, TextEvent) and "first_token" not in out:
            out["first_token"] = now
        if isinstance(event, TargetEvent) and "first_mask" not in out:
            out["first_mask"] = now
    out["total"] = time.perf_counter() - t0
    return events.result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "7b-shaped"], choices=["tiny", "7b-shaped"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--words", type=int, nargs="+", default=[3, 23], help="answer words before the target")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--clip-layers", type=int, default=12, help="7b-shaped: CLIP layers (>= 11; CLIP-L has 24)")
    ap.add_argument("--llm-layers", type=int, default=2, help="7b-shaped: LLaMA layers (7B has 32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    report = {"device": str(device), "dtype": args.dtype, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "clip_layers": args.clip_layers, "llm_layers": args.llm_layers, "results": []}
    header = (f"{'config':<10} {'tokens':>6} {'release':>9} {'ours 1st':>9} {'ours 2nd':>9} {'x 1st':>6} "
              f"{'x 2nd':>6} {'2nd/1st':>7} {'ttft':>7} {'1st mask':>8} {'encode':>7} {'prefill':>7}")
    print(header)
    for name in args.configs:
        res = bench_config(name, device, dtype, args.words, args.repeats, args.clip_layers, args.llm_layers)
        report["results"].append(res)
        for r in res["rows"]:
            s = r["stages_s"]
            print(f"{name:<10} {r['new_tokens']:>6} {r['release_s']:>8.3f}s {r['ours_first_s']:>8.3f}s "
                  f"{r['ours_second_s']:>8.3f}s {r['speedup_first']:>5.1f}x {r['speedup_second']:>5.1f}x "
                  f"{r['second_vs_first']:>6.1f}x {s['first_token']:>6.3f}s {s['first_mask']:>7.3f}s "
                  f"{s['encode_image']:>6.3f}s {s['prefill_image']:>6.3f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"engine_{device.type}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
