"""PixelLM at the release's TRUE size (7B / 13B, random weights): load time, memory and speed per precision/path.

    python benchmarks/bench_scale.py --size 7b --precision bf16 4bit 8bit --path eager compiled --device cpu
    python benchmarks/bench_scale.py --size 7b --precision bf16 --path release eager --peer eager static

Weights: random, at the real shapes (7B: LLaMA 32 x 4096, MLP 11008, vocab 32008; 13B: 40 x 5120, MLP 13824;
CLIP ViT-L/14-336, 24 layers, run at 448 px), written ONCE into a cache folder in the release's layout and
reused by every later run:

    <cache>/<size>/hf_model/   config.json (the release's field set), generation_config.json,
                               pytorch_model-0000k-of-0000n.bin (bf16 torch pickles, --shard-gb each),
                               pytorch_model.bin.index.json, tokenizer files
    <cache>/<size>/clip-vit-large-patch14-336/   config.json + pytorch_model.bin (fp32, CLIPVisionModel naming)

Disk: 7B 13.5 GB + 1.2 GB CLIP; 13B 26.0 GB + 1.2 GB (default cache ~/.cache/pixellm_ros/scale). Each tensor is
drawn on its own from a meta-device model's state-dict shapes (never a full fp32 model). Tokenizer: the real
LLaMA tokenizer (32000 pieces + the 8 added tokens) when --tokenizer names a folder holding one (default: the
project's shared fixture, read at bench time, never shipped); otherwise a small SentencePiece model trained here
(same vocab_size 32008 for the embedding and lm_head; only the prompt is a bit shorter).

Each row (size x precision x path) runs in a FRESH subprocess, so its peak RSS (VmHWM) is its own: it loads
through `Engine.from_pretrained`, encodes one frame, answers a scripted 2-target question (~40 new tokens; weights
are random, so a logits processor chooses each token while the model still computes every step) and then a
second question on the same frame. `release` = the release's algorithm (`generate_recompute`: every token re-runs
the image and the whole sequence), timed on a SHORT 1-target answer only. `peer-eager` / `peer-static` =
transformers' `LlamaForCausalLM.generate` on the same LLaMA weights (greedy, same length; static cache + compile),
for decode tok/s.

Memory: bf16 loads memory-map the shards, so `load_peak_rss_bytes` (VmHWM right after loading) is small; pages
become resident while the first answer runs. `peak_rss_bytes` is the peak over load + first answer (the figure
to size a machine by); `end_peak_rss_bytes` adds the second answer. On CUDA, `load_peak_device_bytes` and
`answer_peak_device_bytes` are torch's max allocated; `peak_device_bytes` is the larger.
Times: `ttft_s` / `first_mask_s` / `total_s` count from the frame arriving (set_image) and so include the image
encode and prefill; `decode_tok_s` is steady state (token intervals after the first two, mask decodes excluded).
Prints a table; merges its rows into --out/scale_<device>.json (same size/device/precision/path replaced).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
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

# ------------------------------------------------------------------------------------------- sizes
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
}
CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=336, projection_dim=768)
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2, patch_size=14,
                 image_size=336, projection_dim=32)
VOCAB = 32008  # 32000 LLaMA pieces + [SEG0]..[SEG5] + <im_start>, <im_end>
CLIP_FOLDER = "clip-vit-large-patch14-336"
DEFAULT_CACHE = Path(os.environ.get("PIXELLM_SCALE_CACHE", Path.home() / ".cache" / "pixellm_ros" / "scale"))
LLAMA_TOKENIZER = ROOT.parent / "shared" / "fixtures" / "pixellm_official_tiny" / "checkpoint"
WRITER_VERSION = 1  # bump when the written files change, so stale caches are rebuilt
PRECISIONS = ("bf16", "fp16", "8bit", "4bit")
PATHS = ("release", "eager", "compiled")
PEERS = ("eager", "static")
QUESTIONS = ("Which objects on the table could hold water?", "What could I use to cut the rope?")
REQUIRED_KEYS = ("size", "device", "device_name", "precision", "path", "load_s", "load_peak_rss_bytes",
                 "peak_device_bytes", "ttft_s", "first_mask_s", "decode_tok_s", "total_s", "answered")


def release_config(size: str, base_vocab: int, vision_folder: str) -> dict:
    """config.json as the release's save_pretrained (transformers 4.31) writes it, at `size`."""
    s = SIZES[size]
    return {
        "architectures": ["PixelLMForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "freeze_mm_mlp_adapter": True, "hidden_act": "silu", "hidden_size": s["hidden_size"],
        "image_aspect_ratio": "square", "image_feature_scale_num": 2, "image_grid_pinpoints": None,
        "initializer_range": 0.02, "intermediate_size": s["intermediate_size"], "max_position_embeddings": 4096,
        "mm_hidden_size": (CLIP_TINY if size == "tiny" else CLIP_L14_336)["hidden_size"],
        "mm_projector_hidden_dim": 2, "mm_projector_out_dim": 1, "mm_use_im_patch_token": False,
        "mm_use_im_start_end": True, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_folder, "model_type": "llava", "num_attention_heads": s["num_attention_heads"],
        "num_hidden_layers": s["num_hidden_layers"], "num_key_value_heads": s["num_attention_heads"],
        "out_dim": 256, "pad_token_id": 0, "pad_train_clip_images": True, "pretrain_mm_mlp_adapter": None,
        "pretraining_tp": 1, "resize_vision_tower": True, "resize_vision_tower_size": 448, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "separate_mm_projector": True, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "train_mask_decoder": True, "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False, "use_cache": False, "use_mm_proj": True, "vision_tower": vision_folder,
        "vision_tower_for_mask": True, "vocab_size": max(VOCAB, base_vocab + 8),
    }


def clip_config(size: str) -> dict:
    c = CLIP_TINY if size == "tiny" else CLIP_L14_336
    return {"architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "hidden_act": "quick_gelu",
            "initializer_factor": 1.0, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
            "model_type": "clip_vision_model", "num_channels": 3, "torch_dtype": "float32",
            "transformers_version": "4.31.0", **c}


# ------------------------------------------------------------------------------------------ writer
def _random_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator,
                   device: str) -> torch.Tensor:
    """One tensor, drawn on its own: N(0, 0.02) weights, unit norm weights, zero biases."""
    if key.endswith("position_ids"):
        return torch.arange(shape[-1])[None]
    if key.endswith("positional_encoding_gaussian_matrix"):
        return torch.empty(shape, dtype=dtype, device=device).normal_(generator=gen).cpu()
    if len(shape) == 1 and key.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1 and key.endswith(".weight"):  # RMSNorm / LayerNorm / LayerNorm2d
        return torch.ones(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen).cpu()


def _write_shards(specs: list[tuple[str, tuple[int, ...], torch.dtype]], folder: Path, stem: str,
                  shard_bytes: int, gen: torch.Generator, device: str, extra: dict | None = None) -> int:
    """Write `pytorch_model-0000k-of-0000n.bin` + index (or one `pytorch_model.bin`); one shard in memory."""
    groups: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
    size = 0
    for key, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((key, shape, dtype))
        size += nbytes
    n = len(groups)
    names = [f"{stem}.bin"] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.bin" for i in range(n)]
    weight_map, total = {}, 0
    for name, group in zip(names, groups):
        shard = {}
        for key, shape, dtype in group:
            shard[key] = extra[key] if extra and key in extra else _random_tensor(key, shape, dtype, gen, device)
            total += shard[key].numel() * shard[key].element_size()
            weight_map[key] = name
        torch.save(shard, folder / name)
        shard_gb = sum(t.numel() * t.element_size() for t in shard.values()) / 1e9
        print(f"  wrote {folder.name}/{name} ({shard_gb:.2f} GB)", flush=True)
        del shard
        gc.collect()
    if n > 1:
        (folder / f"{stem}.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


def _tokenizer_files(dst: Path, tokenizer: str | None) -> tuple[int, str]:
    """Copy a LLaMA tokenizer folder's files into `dst`, or train a small one. Returns (base pieces, kind)."""
    import sentencepiece as spm
    if tokenizer == "train":
        src = None
    else:
        src = Path(tokenizer) if tokenizer else (LLAMA_TOKENIZER if LLAMA_TOKENIZER.is_dir() else None)
    if src is not None and (src / "tokenizer.model").is_file():
        for name in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
            if (src / name).is_file():
                (dst / name).write_bytes((src / name).read_bytes())
        base = spm.SentencePieceProcessor(model_file=str(dst / "tokenizer.model")).get_piece_size()
        return base, f"llama-{base}" if base == 32000 else f"copied-{base}"
    if tokenizer and tokenizer != "train":
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer.model there")
    from pixellm_ros.model.scratch import default_corpus, train_tokenizer
    tok = train_tokenizer(default_corpus(), vocab_size=300)
    tok.save(dst)
    return tok.sp.get_piece_size(), f"trained-{tok.sp.get_piece_size()}"


def checkpoint_specs(size: str, base_vocab: int) -> tuple[dict, list, dict, list]:
    """(config.json, [(key, shape, dtype)] of the hf_model in save order, extra tensors, CLIP specs)."""
    from pixellm_ros.model.clip import CLIPVisionTower
    from pixellm_ros.model.config import PixelLMConfig, VisionConfig
    from pixellm_ros.model.pixellm import PixelLMForCausalLM
    config = release_config(size, base_vocab, CLIP_FOLDER)
    cfg = PixelLMConfig.from_dict(config)
    cfg.vision = VisionConfig.from_dict(clip_config(size))
    with torch.device("meta"):
        model = PixelLMForCausalLM(cfg)
        tower = CLIPVisionTower(cfg.vision)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    specs, extra = [], {}
    for key, t in model.state_dict().items():
        specs.append((key, tuple(t.shape), torch.bfloat16))
        if key.endswith("self_attn.o_proj.weight"):  # transformers 4.31 saved the rotary buffers
            k = key.replace("o_proj.weight", "rotary_emb.inv_freq")
            specs.append((k, tuple(inv_freq.shape), torch.float32))
            extra[k] = inv_freq
    # CLIP in transformers' CLIPVisionModel naming with ALL its layers (the model builds only those it runs).
    vstate = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    built = len(tower.vision_model.encoder.layers)
    layer0 = {k.split("layers.0.", 1)[1]: s for k, s in vstate.items() if ".layers.0." in k}
    vspecs = [(k, s, torch.float32) for k, s in vstate.items()]
    for i in range(built, cfg.vision.num_hidden_layers):
        vspecs += [(f"vision_model.encoder.layers.{i}.{name}", s, torch.float32) for name, s in layer0.items()]
    h = cfg.vision.hidden_size
    vspecs += [("vision_model.post_layernorm.weight", (h,), torch.float32),
               ("vision_model.post_layernorm.bias", (h,), torch.float32),
               ("vision_model.embeddings.position_ids", (1, (cfg.vision.image_size // cfg.vision.patch_size) ** 2 + 1),
                torch.int64)]
    return config, specs, extra, vspecs


def ensure_checkpoint(size: str, cache: Path, shard_gb: float = 4.0, tokenizer: str | None = None,
                      device: str = "cpu", seed: int = 0) -> tuple[Path, Path, dict]:
    """The cached (hf_model, clip) folders for `size`, written first if missing or stale."""
    folder = Path(cache) / size
    marker = folder / "bench_scale.json"
    want = {"writer": WRITER_VERSION, "size": size, "shard_gb": shard_gb, "seed": seed,
            "tokenizer_arg": str(tokenizer) if tokenizer else None}
    if marker.is_file():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == want:
            return folder / "hf_model", folder / CLIP_FOLDER, have
        print(f"cache {folder} was written with other settings ({have}); rewriting", flush=True)
    partial = Path(cache) / f"{size}.partial"
    for old in (partial, folder):
        if old.exists():
            _remove_cache_folder(old)
    hf, clip = partial / "hf_model", partial / CLIP_FOLDER
    hf.mkdir(parents=True)
    clip.mkdir()
    t0 = time.perf_counter()
    base, kind = _tokenizer_files(hf, tokenizer)
    config, specs, extra, vspecs = checkpoint_specs(size, base)
    (hf / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (hf / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "transformers_version": "4.31.0"}, indent=2))
    gen_device = device if device.startswith("cuda") else "cpu"
    gen = torch.Generator(device=gen_device).manual_seed(seed)
    print(f"writing random {size} weights to {folder} ...", flush=True)
    shard_bytes = int(shard_gb * 1024 ** 3) if size != "tiny" else 2 * 1024 ** 2  # tiny: still sharded
    llm_bytes = _write_shards(specs, hf, "pytorch_model", shard_bytes, gen, gen_device, extra)
    (clip / "config.json").write_text(json.dumps(clip_config(size), indent=2, sort_keys=True))
    (clip / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336}, indent=2))
    clip_bytes = _write_shards(vspecs, clip, "pytorch_model", 1 << 62, gen, gen_device)
    info = {**want, "tokenizer": kind, "base_vocab": base, "llm_bytes": llm_bytes, "clip_bytes": clip_bytes,
            "disk_bytes": sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()),
            "write_s": round(time.perf_counter() - t0, 1)}
    (partial / "bench_scale.json").write_text(json.dumps(info, indent=2))
    os.replace(partial, folder)
    print(f"wrote {folder}: {info['disk_bytes'] / 1e9:.2f} GB in {info['write_s']} s", flush=True)
    return folder / "hf_model", folder / CLIP_FOLDER, info


def _remove_cache_folder(folder: Path) -> None:
    """Delete a cache folder this script wrote (never anything else)."""
    import shutil
    names = {p.name for p in folder.iterdir()}
    if not names <= {"hf_model", CLIP_FOLDER, "bench_scale.json"}:
        raise RuntimeError(f"{folder} holds files this benchmark did not write ({sorted(names)}); move them away")
    shutil.rmtree(folder)


# ------------------------------------------------------------------------------------- scripting
class ScriptedAnswer:
    """Logits processor forcing a planned answer (random weights); records when each step chose its token."""

    def __init__(self, ids: list[int], sync=None) -> None:
        self.ids, self.times, self.sync = ids, [], sync

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.sync:
            self.sync()
        self.times.append(time.perf_counter())
        forced = torch.full_like(logits, float("-inf"))
        forced[self.ids[min(len(generated), len(self.ids) - 1)]] = 0.0
        return forced


def planned_answer(tok, n_tokens: int, targets: int) -> list[int]:
    """About `n_tokens` ids: words, then a codebook group per target, a period and </s>."""
    seg = tok.seg_token_ids
    words = tok.sp.encode("the red cup on the left of the table and the small blue bowl next to the plate and "
                          "the glass jar behind them " * 4)
    n_words = max(0, n_tokens - targets * len(seg) - 2)
    per = [n_words // targets + (1 if i < n_words % targets else 0) for i in range(targets)]
    ids, w = [], 0
    for k in per:
        ids += words[w: w + k] + seg
        w += k
    return ids + tok.sp.encode(".")[-1:] + [tok.eos_id]


def synthetic_frame(h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * y / h, 128 + 60 * np.sin(x / 9.0)], -1) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ measurement
def vm_hwm() -> int | None:
    """Peak resident set size of this process (bytes), from /proc; None where there is no /proc."""
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        name = m.group(1).strip() if m else platform.processor()
    except OSError:
        name = platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cpus, {torch.get_num_threads()} threads)"


def steady_rate(times: list[float], skip: set[int] = frozenset(), warm: int = 2) -> float | None:
    """Tokens per second from per-token timestamps, after `warm` intervals, without the intervals in `skip`."""
    iv = [times[i] - times[i - 1] for i in range(warm + 1, len(times)) if i not in skip]
    return len(iv) / sum(iv) if iv and sum(iv) > 0 else None


def _versions() -> dict:
    v = {"torch": torch.__version__}
    for name in ("transformers", "bitsandbytes"):
        try:
            v[name] = __import__(name).__version__
        except Exception:
            v[name] = None
    return v


def _engine_kwargs(precision: str, path: str) -> dict:
    """Precision and path -> Engine keyword arguments (quantization=, compile= where the engine has them)."""
    from pixellm_ros.engine import EngineConfig
    kw = {"dtype": {"fp16": "float16"}.get(precision, "bfloat16")}
    if precision in ("4bit", "8bit"):
        kw["quantization"] = precision
    has_compile = "compile" in {f.name for f in dataclasses.fields(EngineConfig)}
    if path == "compiled":
        if not has_compile:
            raise RuntimeError("this engine has no `compile` option (EngineConfig.compile) yet")
        kw["compile"] = "true"
    elif has_compile:
        kw["compile"] = "false"
    return kw


def run_row(spec: dict) -> dict:
    """One row, in this process: load, answer, measure. spec: size, device, precision, path, hf_model, clip, ..."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    row = {"size": spec["size"], "device": device.type, "device_name": device_name(device),
           "precision": spec["precision"], "path": spec["path"], "load_avg": round(os.getloadavg()[0], 2),
           "threads": torch.get_num_threads(), **_versions(), "tokenizer": spec.get("tokenizer"),
           "checkpoint_bytes": spec.get("checkpoint_bytes"),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    try:
        if spec["path"].startswith("peer-"):
            row.update(_run_peer(spec, device, sync))
        else:
            row.update(_run_engine(spec, device, sync))
    except Exception as e:  # a failed row is still a row: it says why
        row.setdefault("answered", False)
        row["error"] = f"{type(e).__name__}: {e}"
    row["end_peak_rss_bytes"] = vm_hwm()
    row.setdefault("peak_rss_bytes", row["end_peak_rss_bytes"])
    for k in REQUIRED_KEYS:
        row.setdefault(k, None)
    return row


def _device_peak(device, reset: bool = True) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak


def _run_engine(spec: dict, device, sync) -> dict:
    from pixellm_ros.engine import Engine
    from pixellm_ros.model import SamplingConfig, TargetEvent, TextEvent, generate_recompute, preprocess_image
    out: dict = {}
    kw = _engine_kwargs(spec["precision"], spec["path"])
    t0 = time.perf_counter()
    # max_new_tokens as the node's parameter would set it (a compiled decoder is warmed up for it while loading)
    engine = Engine.from_pretrained(spec["hf_model"], device=str(device), vision_tower=spec["clip"],
                                    sampling=SamplingConfig(max_new_tokens=spec["tokens"]), **kw)
    out["load_s"] = time.perf_counter() - t0
    out["load_peak_rss_bytes"] = vm_hwm()
    out["load_peak_device_bytes"] = _device_peak(device)
    _progress(spec, f"loaded in {out['load_s']:.1f} s, peak RSS {out['load_peak_rss_bytes'] / 2 ** 30:.2f} GiB")
    model, tok = engine.model, engine.tokenizer
    out["model_bytes"] = sum(t.numel() * t.element_size() for m in (model, model.vision_tower)
                             for t in (*m.parameters(), *m.buffers()))
    frame = synthetic_frame()
    if spec["path"] == "release":
        script = planned_answer(tok, spec["release_tokens"], 1)
        proc = ScriptedAnswer(script, sync)
        sampling = SamplingConfig(max_new_tokens=len(script), logits_processor=proc)
        t0 = time.perf_counter()
        p = preprocess_image(frame, model.config.resize_vision_tower_size)
        _progress(spec, f"release algorithm, {len(script)} tokens (each re-runs the image and the whole sequence)")
        g = generate_recompute(model, tok, p.pixels.to(device), p.input_size, p.original_size, QUESTIONS[0], sampling)
        if sync:
            sync()
        t1 = time.perf_counter()
        times = [t - t0 for t in proc.times]
        out.update(new_tokens=len(g.token_ids), targets_expected=1, targets=len(g.targets),
                   answered=g.token_ids == script and len(g.targets) == 1, ttft_s=times[0],
                   first_mask_s=t1 - t0, total_s=t1 - t0, decode_tok_s=steady_rate(proc.times, warm=0),
                   s_per_token=(t1 - t0) / max(1, len(g.token_ids)))
        out["peak_rss_bytes"] = vm_hwm()
        out["answer_peak_device_bytes"] = _device_peak(device)
        out["peak_device_bytes"] = _max(out["load_peak_device_bytes"], out["answer_peak_device_bytes"])
        return out
    for q, (question, n) in enumerate(zip(QUESTIONS, (spec["tokens"], spec["tokens"]))):
        script = planned_answer(tok, n, 2)
        sampling = SamplingConfig(max_new_tokens=len(script), logits_processor=ScriptedAnswer(script))
        t0 = time.perf_counter()
        cached = engine.set_image(frame, image_key="frame0")
        t_img = time.perf_counter()
        if q == 0:
            out["image_peak_rss_bytes"] = vm_hwm()  # load + image encode + image prefill
        times, mask_after, first_mask = [], set(), None
        events = engine.stream(question, sampling)
        for event in events:
            now = time.perf_counter()
            if isinstance(event, TextEvent):
                times.append(now)
            elif isinstance(event, TargetEvent):
                first_mask = first_mask or now
                mask_after.add(len(times))  # the interval to the next token includes this mask decode
        t_end = time.perf_counter()
        result = events.result
        _progress(spec, f"question {q + 1}: {len(result.token_ids)} tokens, {len(result.targets)} targets in "
                        f"{t_end - t0:.1f} s (image {t_img - t0:.1f} s)")
        answered = result.token_ids == script and len(result.targets) == 2
        pre = "" if q == 0 else "second_"
        if q == 0:
            out.update(encode_image_s=result.timings.encode_image, prefill_image_s=result.timings.prefill_image,
                       preprocess_s=result.timings.preprocess, set_image_s=t_img - t0, new_tokens=len(result.token_ids),
                       targets_expected=2, targets=len(result.targets), image_cached=cached)
        out.update({f"{pre}question_prefill_s": times[0] - t_img if times else None,
                    f"{pre}ttft_s": times[0] - t0 if times else None,
                    f"{pre}first_mask_s": first_mask - t0 if first_mask else None,
                    f"{pre}decode_tok_s": steady_rate(times, mask_after),
                    f"{pre}total_s": t_end - t0, f"{pre}answered": answered})
        if q == 0:
            out["peak_rss_bytes"] = vm_hwm()
            out["answer_peak_device_bytes"] = _device_peak(device, reset=False)
    out["answered"] = bool(out["answered"] and out["second_answered"])
    out["answer_peak_device_bytes"] = _max(out["answer_peak_device_bytes"], _device_peak(device))
    out["peak_device_bytes"] = _max(out["load_peak_device_bytes"], out["answer_peak_device_bytes"])
    out["image_prefix_tokens"] = engine._prefix.length if engine._prefix is not None else None
    return out


def _progress(spec: dict, text: str) -> None:
    print(f"  [{spec['size']} {spec['precision']} {spec['path']}] {text}", flush=True)


def _max(*values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _run_peer(spec: dict, device, sync) -> dict:
    """transformers' LlamaForCausalLM.generate on the same LLaMA weights (greedy, same length)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from pixellm_ros.model.checkpoint import iter_tensors, weight_files
    from pixellm_ros.model.config import PixelLMConfig
    from pixellm_ros.model.generation import split_prompt
    from pixellm_ros.model.tokenizer import PixelLMTokenizer
    if spec["precision"] not in ("bf16", "fp16"):
        raise ValueError("the peer rows run bf16/fp16 only")
    dtype = torch.float16 if spec["precision"] == "fp16" else torch.bfloat16
    out: dict = {}
    folder = Path(spec["hf_model"])
    pc = PixelLMConfig.from_folder(folder)
    cfg = LlamaConfig(vocab_size=pc.vocab_size, hidden_size=pc.hidden_size, intermediate_size=pc.intermediate_size,
                      num_hidden_layers=pc.num_hidden_layers, num_attention_heads=pc.num_attention_heads,
                      num_key_value_heads=pc.num_key_value_heads, rms_norm_eps=pc.rms_norm_eps,
                      max_position_embeddings=pc.max_position_embeddings, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    llama = re.compile(r"^(model\.(layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|input_layernorm|"
                       r"post_attention_layernorm)\.weight|embed_tokens\.weight|norm\.weight)|lm_head\.weight)$")
    state = {k: t.to(device=device, dtype=dtype) for k, t in iter_tensors(weight_files(folder)) if llama.match(k)}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if missing or unexpected:
        raise RuntimeError(f"peer model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.model.rotary_emb = LlamaRotaryEmbedding(cfg).to(device)
    model.eval().requires_grad_(False)
    out["load_s"] = time.perf_counter() - t0
    out["load_peak_rss_bytes"] = vm_hwm()
    out["load_peak_device_bytes"] = _device_peak(device)
    out["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    _progress(spec, f"loaded in {out['load_s']:.1f} s")
    tok = PixelLMTokenizer.from_folder(folder)
    head, tail = split_prompt(tok, QUESTIONS[0])
    ids = head + [tok.unk_id] * 256 + tail  # same length as the multimodal prompt (256 image tokens)
    input_ids = torch.tensor([ids], device=device)
    n = len(planned_answer(tok, spec["tokens"], 2))
    out["prompt_tokens"] = len(ids)
    kwargs: dict = {}
    if spec["path"] == "peer-static":
        from transformers import CompileConfig
        cc = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
        cc._compile_all_devices = True  # transformers compiles on CUDA only unless told
        kwargs = dict(cache_implementation="static", compile_config=cc)

    def run(k: int) -> float:
        gcfg = GenerationConfig(do_sample=False, pad_token_id=0, eos_token_id=2, bos_token_id=1, max_new_tokens=k,
                                min_new_tokens=k, **kwargs)
        t = time.perf_counter()
        with torch.no_grad():
            o = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gcfg)
        if sync:
            sync()
        assert o.shape[1] == len(ids) + k
        _progress(spec, f"generate({k} tokens): {time.perf_counter() - t:.1f} s")
        return time.perf_counter() - t

    if spec["path"] == "peer-static":
        out["warmup_s"] = run(n)  # compiles prefill and decode graphs
    t1 = run(1)
    tn = run(n)
    out["peak_rss_bytes"] = vm_hwm()
    out["answer_peak_device_bytes"] = _device_peak(device)
    out["peak_device_bytes"] = _max(out["load_peak_device_bytes"], out["answer_peak_device_bytes"])
    out.update(new_tokens=n, ttft_s=t1, question_prefill_s=t1, total_s=tn, decode_tok_s=(n - 1) / (tn - t1),
               answered=None, note="LLaMA only (no image encode, no masks); decode_tok_s = (n-1)/(t(n)-t(1))")
    return out


# ---------------------------------------------------------------------------------------- driver
def run_row_subprocess(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, row_file = Path(tmp) / "spec.json", Path(tmp) / "row.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_row", str(spec_file), "--_row-out", str(row_file)]
        try:  # the child's progress lines go straight to this process's output
            proc = subprocess.run(cmd, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc = None
        if row_file.is_file():
            return json.loads(row_file.read_text())
        row = {k: None for k in REQUIRED_KEYS}
        row.update(size=spec["size"], device=spec["device"], precision=spec["precision"], path=spec["path"],
                   answered=False, error=f"row subprocess timed out after {timeout:.0f} s" if proc is None
                   else f"row subprocess failed with exit code {proc.returncode} (its output is above)")
        return row


def fmt(v, unit="", scale=1.0, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return f"{v / scale:.{digits}f}{unit}"


HEADER = (f"{'size':<5} {'prec':<5} {'path':<12} {'load':>7} {'RSS load':>9} {'RSS peak':>9} {'dev peak':>9} "
          f"{'encode':>7} {'prefill':>8} {'ttft':>8} {'1st mask':>8} {'tok/s':>7} {'total':>8} {'2nd tot':>8} "
          f"{'ok':>3}")


def row_line(r: dict) -> str:
    g = 1024 ** 3
    return (f"{r['size']:<5} {r['precision']:<5} {r['path']:<12} {fmt(r.get('load_s'), 's'):>7} "
            f"{fmt(r.get('load_peak_rss_bytes'), 'G', g):>9} {fmt(r.get('peak_rss_bytes'), 'G', g):>9} "
            f"{fmt(r.get('peak_device_bytes'), 'G', g):>9} {fmt(r.get('encode_image_s'), 's'):>7} "
            f"{fmt(r.get('prefill_image_s'), 's'):>8} {fmt(r.get('ttft_s'), 's', digits=3):>8} "
            f"{fmt(r.get('first_mask_s'), 's', digits=3):>8} {fmt(r.get('decode_tok_s'), '', digits=2):>7} "
            f"{fmt(r.get('total_s'), 's'):>8} {fmt(r.get('second_total_s'), 's'):>8} {fmt(r.get('answered')):>3}"
            + (f"  ERROR {r['error'][:160]}" if r.get("error") else ""))


def markdown_rows(rows: list[dict]) -> str:
    """README table rows: | what | weights | RSS load | RSS load + 1st answer | load | ttft / 1st mask | tok/s |
    1st total | 2nd total | load average at the row's start | (device memory added on CUDA)."""
    g, lines = 1024 ** 3, []
    order = {"eager": 0, "compiled": 1, "release": 2, "peer-eager": 3, "peer-static": 4}
    for r in sorted(rows, key=lambda r: (r["size"], order.get(r["path"], 9), PRECISIONS.index(r["precision"]))):
        what = {"release": f"{r['precision']}, release algorithm ({r.get('new_tokens')} tokens, 1 target)",
                "peer-eager": f"{r['precision']}, transformers `generate` (LLaMA only)",
                "peer-static": f"{r['precision']}, transformers `generate`, static cache + compile (LLaMA only)",
                }.get(r["path"], f"{r['precision']} {r['path']}")
        if r.get("error"):
            lines.append(f"| {what} | failed: {r['error'][:100]} |")
            continue
        first = (f"{fmt(r.get('ttft_s'), ' s', digits=1)} / {fmt(r.get('first_mask_s'), ' s', digits=1)}"
                 if r.get("first_mask_s") else f"{fmt(r.get('ttft_s'), ' s', digits=1)} (prefill)")
        cells = [what, fmt(r.get("model_bytes"), " GiB", g), fmt(r.get("load_peak_rss_bytes"), " GiB", g),
                 fmt(r.get("peak_rss_bytes"), " GiB", g), fmt(r.get("load_s"), " s", digits=1), first,
                 fmt(r.get("decode_tok_s"), "", digits=2), fmt(r.get("total_s"), " s", digits=1),
                 fmt(r.get("second_total_s"), " s", digits=1), fmt(r.get("load_avg"), "", digits=1)]
        if r.get("device") == "cuda":
            cells.append(fmt(r.get("peak_device_bytes"), " GiB", g))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_rows(path: Path, rows: list[dict], meta: dict) -> None:
    """Write rows into `path`, replacing earlier rows of the same size/device_name/precision/path."""
    old = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    key = lambda r: (r.get("size"), r.get("device_name"), r.get("precision"), r.get("path"))  # noqa: E731
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    path.write_text(json.dumps({"meta": meta, "rows": merged}, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="7b", choices=list(SIZES))
    ap.add_argument("--precision", nargs="+", default=["bf16"], choices=PRECISIONS)
    ap.add_argument("--path", nargs="*", default=["eager"], choices=PATHS,
                    help="release = the release's algorithm (short answer), eager / compiled = this engine")
    ap.add_argument("--peer", nargs="*", default=[], choices=PEERS,
                    help="transformers LlamaForCausalLM.generate rows (bf16/fp16 only): eager, static "
                         "(static cache + compile)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=40, help="new tokens of each scripted 2-target answer")
    ap.add_argument("--release-tokens", type=int, default=8, help="new tokens of the release row's 1-target answer")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the random checkpoints are written once")
    ap.add_argument("--shard-gb", type=float, default=4.0, help="shard size of the written hf_model")
    ap.add_argument("--tokenizer", default=None, help="folder with a LLaMA tokenizer.model (+ added_tokens.json); "
                    "'train' = a small one trained here; default: the shared LLaMA fixture if present, else 'train'")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--in-process", action="store_true", help="run rows in this process (tests; RSS not per row)")
    ap.add_argument("--markdown", metavar="JSON", help="print the README table rows of a results file and exit")
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    ap.add_argument("--_row-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown_rows(json.loads(Path(args.markdown).read_text())["rows"]))
        return 0
    if args._row:  # child: one row
        row = run_row(json.loads(Path(args._row).read_text()))
        Path(args._row_out).write_text(json.dumps(row))
        return 0
    hf, clip, info = ensure_checkpoint(args.size, Path(args.cache).expanduser(), args.shard_gb, args.tokenizer,
                                       args.device)
    base = {"size": args.size, "device": args.device, "hf_model": str(hf), "clip": str(clip), "tokens": args.tokens,
            "release_tokens": args.release_tokens, "threads": args.threads, "tokenizer": info.get("tokenizer"),
            "checkpoint_bytes": info.get("disk_bytes")}
    specs = [{**base, "precision": p, "path": path} for p in args.precision for path in args.path]
    specs += [{**base, "precision": p, "path": f"peer-{peer}"} for peer in args.peer for p in args.precision
              if p in ("bf16", "fp16")]
    print(f"{args.size}: checkpoint {hf} ({info.get('disk_bytes', 0) / 1e9:.1f} GB on disk, tokenizer "
          f"{info.get('tokenizer')}); {len(specs)} rows, one fresh process each")
    print(HEADER, flush=True)
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scale_{torch.device(args.device).type}.json"
    meta = {"bench": "benchmarks/bench_scale.py", "note": "random weights at the release's shapes; CPU timings on a "
            "shared machine are noisy (load_avg is recorded per row)", "checkpoint": info}
    for spec in specs:
        row = run_row(spec) if args.in_process else run_row_subprocess(spec, args.timeout)
        rows.append(row)
        print(row_line(row), flush=True)
        if not args.in_process:
            merge_rows(path, rows, meta)  # keep what is measured if a later row hangs
    merge_rows(path, rows, meta)
    print(f"wrote {path}")
    return 0 if all(r.get("answered") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
