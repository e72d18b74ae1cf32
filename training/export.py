"""Export a run: the adapter (for the node's ~/load_adapter) and/or a merged hf_model folder.

    python -m training.export --base DIR (--adapter DIR | --checkpoint DIR) --out DIR [--dtype bfloat16]

merges an adapter into its base model (or turns a mid-run checkpoint into a model) and saves a
self-contained safetensors folder the engine loads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from pixellm_ros.model import load_pixellm, save_pixellm
from pixellm_ros.model.adapters import apply_adapter, lora_layers, merge_lora, save_adapter

from .config import TrainConfig
from .memory import DTYPES, fold_token_rows


def saved_modules(cfg: TrainConfig) -> list[str]:
    return [m for m in cfg.trainable if m != "all"]


def export_run(training_model, tokenizer, cfg: TrainConfig, out: Path) -> dict:
    """Called at the end of training. Writes out/adapter (LoRA runs) and out/model (merged). A run on a
    quantized base writes only the adapter: merging into 4/8-bit weights would round the update away;
    `python -m training.export --base FULL_PRECISION_BASE --adapter out/adapter` merges it."""
    model = training_model.pixellm
    model.attach_vision_tower(training_model.vision_tower)
    fold_token_rows(model)
    written = {}
    if lora_layers(model):
        save_adapter(model, out / "adapter", saved_modules(cfg), cfg.lora.spec(), base_model=str(cfg.base_model))
        written["adapter"] = str(out / "adapter")
        if cfg.model.quantization != "none":
            return written
        merge_lora(model)
    model = model.to(DTYPES[cfg.export_dtype])
    save_pixellm(model.eval(), tokenizer, out / "model")
    model.float()
    written["model"] = str(out / "model")
    return written


def merge_adapter(base: str, adapter: str, out: str, dtype: str = "bfloat16") -> Path:
    model, tokenizer = load_pixellm(base)
    apply_adapter(model, adapter)
    merge_lora(model)
    return save_pixellm(model.to(DTYPES[dtype]), tokenizer, out)


def export_checkpoint(checkpoint: str, base: str, out: str, dtype: str = "float32") -> Path:
    """A full-training checkpoint (no LoRA) of a run -> hf_model folder, e.g. to evaluate mid-run."""
    from safetensors.torch import load_file
    model, tokenizer = load_pixellm(base)
    state = load_file(str(Path(checkpoint) / "model.safetensors"))
    if any("lora_" in k for k in state):
        raise ValueError(f"{checkpoint} holds LoRA weights: export it by finishing or resuming the run")
    model.load_state_dict({k.removeprefix("pixellm."): v for k, v in state.items() if k.startswith("pixellm.")})
    model.vision_tower.load_state_dict({k.removeprefix("vision_tower."): v for k, v in state.items()
                                        if k.startswith("vision_tower.")})
    return save_pixellm(model.to(DTYPES[dtype]), tokenizer, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the run's base_model folder")
    ap.add_argument("--adapter", help="adapter folder to merge into the base")
    ap.add_argument("--checkpoint", help="or: a full-training checkpoint folder of a run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    args = ap.parse_args(argv)
    if bool(args.adapter) == bool(args.checkpoint):
        ap.error("give exactly one of --adapter and --checkpoint")
    if args.adapter:
        path = merge_adapter(args.base, args.adapter, args.out, args.dtype)
    else:
        path = export_checkpoint(args.checkpoint, args.base, args.out, args.dtype)
    print(json.dumps({"model": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
