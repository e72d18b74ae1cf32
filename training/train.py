"""Fine-tune PixelLM: LoRA on the LLM + the release's fully trained parts, on a mixture of sources.

    python -m training.train CONFIG.yaml [--resume] [--set key=value ...]
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.train CONFIG.yaml     # DDP on CPUs (gloo)
    accelerate launch --config_file training/accelerate/ddp_gpu.yaml -m training.train CONFIG.yaml

One process, DDP, DeepSpeed ZeRO-2 or FSDP through accelerate (GPU config files in training/accelerate/;
`accelerate launch` starts a single process on CPUs, hence torchrun there).
Checkpoints are written to a temporary folder and renamed (a crash mid-write leaves the previous one
valid); `--resume` restores model, optimizer, scheduler, RNG and the data position, so the loss
curve continues where it stopped. Metrics go to metrics.csv (and TensorBoard when installed) and
are plotted to metrics.png.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from pixellm_ros.model import load_pixellm
from pixellm_ros.model.adapters import add_lora

from .config import TrainConfig
from .data.dataset import IndexedBatches, MixtureStream
from .losses import LOG_KEYS, LOSS_TERMS, MASKS, PATCHES, RELEASE_TERMS, TOKENS, TOTAL
from .memory import (DTYPES, cast_trainable, checkpointing_wanted, enable_gradient_checkpointing, select_trainable,
                     train_new_token_rows)
from .objective import TrainingModel, combine_losses

log = logging.getLogger("training")
TOKEN_PANEL = {TOTAL, *(t.key for t in LOSS_TERMS if t.per == TOKENS)}  # metrics.png: left panel, the rest right


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up then linear decay to 0 (the release's WarmupDecayLR)."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        return max(0.0, (cfg.steps - step) / max(cfg.steps - cfg.warmup_steps, 1))
    return f


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(accelerator, out: Path, step: int, position: int, keep: int, scheduler=None) -> Path:
    """accelerate state (model, optimizer, RNG) + our position and scheduler state (JSON), in a temp dir
    renamed at the end. Nothing is registered with accelerate: its custom objects are unpickled with
    weights_only=False on resume, so a checkpoint from elsewhere could run code."""
    ckpts = out / "checkpoints"
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "position": position,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(ckpts / "latest", final.name)
        for old in sorted(p for p in ckpts.glob("step_*") if p != final)[:-max(keep - 1, 0) or None]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def plot_metrics(csv_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in LOG_KEYS:
        vals = [float(r[k]) for r in rows]
        ax[0 if k in TOKEN_PANEL else 1].plot(steps, vals, label=k)
    for a, title in zip(ax, ("loss / token CE", "mask losses")):
        a.set_xlabel("step")
        a.set_title(title)
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def build(cfg: TrainConfig, device):
    """The model to train: base (optionally quantized: QLoRA) + LoRA, trained parts in full precision,
    gradient checkpointing as configured. A quantized base is built on its device (bitsandbytes quantizes
    as it places a weight); a full-precision one on the CPU, which accelerate then moves."""
    mc = cfg.model
    quantized = mc.quantization != "none"
    model, tokenizer = load_pixellm(cfg.base_model, cfg.vision_tower, device=device if quantized else "cpu",
                                    dtype=DTYPES[mc.dtype], quantization=mc.quantization)
    if cfg.reinit_modules:
        from pixellm_ros.model.scratch import init_weights
        gen = torch.Generator().manual_seed(cfg.seed)
        for name in cfg.reinit_modules:
            init_weights(model.get_submodule(name), generator=gen)
    if cfg.lora.enabled:
        add_lora(model, cfg.lora.spec())
    tm = TrainingModel(model, cfg.loss)
    if mc.token_rows == "new":
        train_new_token_rows(model, min(tokenizer.added_tokens.values()), DTYPES[mc.trainable_dtype])
    names = select_trainable(tm, cfg)
    if mc.token_rows == "new":
        for module in (model.model.embed_tokens, model.lm_head):
            module.weight.requires_grad_(False)
        names = [n for n in names if n not in ("model.embed_tokens.weight", "lm_head.weight")]
    cast_trainable(tm, DTYPES[mc.trainable_dtype])
    if checkpointing_wanted(mc, model.config.hidden_size):
        n = enable_gradient_checkpointing(tm, mc.checkpoint_modules)
        log.info("gradient checkpointing: %d layers of %s", n, ", ".join(mc.checkpoint_modules))
    return tm.train(), tokenizer, names


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # A process whose batch names no target leaves the decoder without gradients; DDP must allow that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=[ddp])
    plugin = accelerator.state.deepspeed_plugin
    cfg.check(accelerator.distributed_type.name, plugin.zero_stage if plugin is not None else None)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    model, tokenizer, trained = build(cfg, accelerator.device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("rank %d of %d: training %d parameters in %d tensors", accelerator.process_index,
             accelerator.num_processes, n_train, len(trained))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # The scheduler stays unprepared (accelerate's wrapper steps it once per process, and our steps are
    # global) and unregistered (its state goes to trainer_state.json, see save_checkpoint).
    model, optimizer = accelerator.prepare(model, optimizer)
    trained_only = cfg.model.quantization != "none"
    if trained_only:
        accelerator.register_save_state_pre_hook(_only_trained_weights(model))
    start_step, position = 0, 0
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", out)
    if ckpt is not None:
        if trained_only:
            _check_trained_weights(model, ckpt)
            accelerator.load_state(str(ckpt), strict=False)  # the frozen quantized base came from base_model
        else:
            accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        start_step, position = state["step"], state["position"]
        if state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        log.info("resumed from %s (step %d, sample %d)", ckpt, start_step, position)
    mcfg = model_config(model)
    stream = MixtureStream(cfg.data, tokenizer, mcfg.resize_vision_tower_size, cfg.seed,
                           patch_grid=mcfg.vision_grid if cfg.loss.patch_weight > 0 else 0)
    batches = IndexedBatches(stream, cfg.batch_size, accelerator.process_index, accelerator.num_processes, position,
                             workers=cfg.data_workers)
    seg_ids = tokenizer.seg_token_ids
    csv_path = out / "metrics.csv"
    if accelerator.is_main_process and (start_step == 0 or not csv_path.exists()):
        csv_path.write_text("step,lr,samples_per_s," + ",".join(LOG_KEYS) + "\n")
    elif accelerator.is_main_process:
        _truncate_csv(csv_path, start_step)
    writer = _tensorboard(out) if accelerator.is_main_process else None
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="train",
               disable=not accelerator.is_main_process)
    sums, t_log, n_log, last_log = {k: 0.0 for k in LOG_KEYS}, time.perf_counter(), 0, start_step
    for step in bar:
        for micro in range(cfg.grad_accum):
            batch = batches.next_batch()
            sync = micro == cfg.grad_accum - 1
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                parts = model(batch["pixels"], batch["items"], seg_ids)
                counts = accelerator.reduce(torch.stack([parts[TOKENS], parts[MASKS], parts[PATCHES]]).float(),
                                            reduction="sum")
                losses = combine_losses(parts, counts[0], counts[1], cfg.loss, accelerator.num_processes, counts[2])
                accelerator.backward(losses[TOTAL] / cfg.grad_accum)
            for k in LOG_KEYS:
                sums[k] += float(losses[k].detach()) / cfg.grad_accum
            n_log += len(batch["items"]) * accelerator.num_processes
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            window = done - last_log
            means = {k: accelerator.reduce(torch.tensor(v / window), reduction="mean").item() for k, v in sums.items()}
            last_log = done
            rate = n_log / (time.perf_counter() - t_log)
            if accelerator.is_main_process:
                with csv_path.open("a") as f:
                    f.write(f"{done},{scheduler.get_last_lr()[0]:.6g},{rate:.3f}," +
                            ",".join(f"{means[k]:.6f}" for k in LOG_KEYS) + "\n")
                if writer:
                    for k, v in means.items():
                        writer.add_scalar(f"train/{k}", v, done)
                bar.set_postfix({k: f"{means[k]:.3f}" for k in (TOTAL, *(t.key for t in RELEASE_TERMS))})
            sums, t_log, n_log = {k: 0.0 for k in LOG_KEYS}, time.perf_counter(), 0
            if not all(math.isfinite(v) for v in means.values()):
                raise FloatingPointError(f"non-finite loss at step {done}: {means}")
        if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
            save_checkpoint(accelerator, out, done, batches.position, cfg.keep_checkpoints, scheduler)
    if accelerator.is_main_process:
        plot_metrics(csv_path, out / "metrics.png")
    accelerator.wait_for_everyone()
    result = {"output_dir": str(out), "steps": cfg.steps, "skipped_records": stream.skipped}
    if accelerator.is_main_process:
        from .export import export_run
        result.update(export_run(accelerator.unwrap_model(model), tokenizer, cfg, out))
    return result


def _trained_names(model) -> set[str]:
    return {n for n, p in getattr(model, "module", model).named_parameters() if p.requires_grad}


def _only_trained_weights(model):
    """save_state pre-hook for runs on a quantized base: a checkpoint keeps what trains; the frozen base is read
    from base_model again on resume (its 4/8-bit tensors would not load back into the layers, and at 7B they
    would add 3.5 GB to every checkpoint)."""
    names = _trained_names(model)

    def hook(models, weights, output_dir) -> None:
        for state in weights:
            for key in [k for k in state if k.removeprefix("module.") not in names]:
                del state[key]
    return hook


def _check_trained_weights(model, ckpt: Path) -> None:
    """The non-strict load of a trained-only checkpoint must still find every trained tensor."""
    from safetensors import safe_open
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        keys = {k.removeprefix("module.") for k in f.keys()}
    missing = _trained_names(model) - keys
    if missing:
        raise RuntimeError(f"{ckpt} lacks {len(missing)} trained tensors ({sorted(missing)[:3]} ...): it was "
                           f"written by another configuration; start a new output_dir")


def model_config(model):
    return getattr(model, "module", model).pixellm.config


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    lines = path.read_text().splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= step]
    path.write_text("\n".join(kept) + "\n")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override top-level config keys")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = TrainConfig.from_yaml(args.config, overrides)
    result = train(cfg, resume=args.resume)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
