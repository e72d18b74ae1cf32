"""Load and save PixelLM ``hf_model`` folders and CLIP vision-tower folders.

Reads what the release wrote (``pytorch_model*.bin`` pickles, sharded with an index, bf16) without
conversion, and safetensors shards; writes safetensors. Pickles are opened only with
``torch.load(weights_only=True)``: a weights file can never run code. Nothing is fetched from a hub.
"""
from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .clip import CLIPVisionTower
from .config import PixelLMConfig, VisionConfig
from .llama import Rotary
from .pixellm import PixelLMForCausalLM
from .quantize import Quantizer, check_quantization, prepare_quantized
from .tokenizer import PixelLMTokenizer

log = logging.getLogger(__name__)

# Buffers the release saved that we recompute (rotary tables).
IGNORED_KEYS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
# Parts of a CLIP folder PixelLM never uses (text tower, final norm, pooled projections, id buffers).
VISION_UNUSED = re.compile(r"^(text_model\.|visual_projection|text_projection|logit_scale|"
                           r"vision_model\.post_layernorm\.|vision_model\.embeddings\.position_ids)")
MAX_SHARD_BYTES = 4 * 1024 ** 3


class CheckpointError(RuntimeError):
    """A weights folder does not match the model it should hold."""


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in the order its index names them."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise CheckpointError(f"{index} names shards that are not there: {missing}")
            return [folder / n for n in names]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"no weights in {folder}: expected model.safetensors[.index.json] or "
                          f"pytorch_model.bin[.index.json]")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) shard by shard, so peak memory is one shard, not the model."""
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from shard.items()
            del shard


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
MADV_DONTNEED = 4


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the pages of a checkpoint tensor that has been copied (to another dtype, device or quantized)
    from this process. Shards are read through mmap, and every page read stays resident, counted in RSS,
    as long as the shard is mapped (a 10 GB shard of the release, or the whole file while any tensor of
    it is kept): loading 7B in 4 bits would peak at the bf16 size. Pages read again come back from the
    file. Only whole pages inside the tensor; Linux only (elsewhere nothing is done)."""
    if _LIBC is None or tensor.device.type != "cpu":
        return
    start = tensor.data_ptr()
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, (start + tensor.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED)


def _set_tensor(root: nn.Module, key: str, value: torch.Tensor) -> None:
    *path, name = key.split(".")
    module = root.get_submodule(".".join(path))
    if name in module._parameters:  # a quantized weight arrives as its own Parameter subclass: kept
        module._parameters[name] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        raise KeyError(key)


def load_into(module: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], device, dtype,
              ignore: re.Pattern | None = None, what: str = "checkpoint", quantize: Quantizer | None = None) -> None:
    """Assign checkpoint tensors into a (meta-device) module; any missing or unexpected key is an error.
    `tensors` come from iter_tensors (file-mapped): the pages of those copied into the module are released.
    `quantize` (see quantize.py) turns the tensors it takes into quantized weights as they are read."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    seen, unexpected, bad_shape = set(), [], []
    for key, tensor in tensors:
        if key not in expected:
            if ignore is None or not ignore.search(key):
                unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected[key]):
            bad_shape.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key])}")
            continue
        value = quantize(key, tensor) if quantize is not None else None
        if value is None:
            value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        _set_tensor(module, key, value)
        if value.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            release_pages(tensor)  # the model holds a copy
        seen.add(key)
    missing = sorted(set(expected) - seen)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatches: {bad_shape[:10]}")
    if problems:
        raise CheckpointError(f"{what} does not match the model config: " + "; ".join(problems))


def resolve_vision_tower(model_dir: Path, config: PixelLMConfig, override: str | Path | None) -> Path:
    """The vision tower folder: the argument, else config.json's `vision_tower` as an absolute path, or
    relative to the model folder, its parent (the release's layout of relative names) or the cwd."""
    if override is not None:
        candidates = [Path(override)]
    else:
        name = Path(config.vision_tower)
        candidates = [name] if name.is_absolute() else [model_dir / name, model_dir.parent / name, Path.cwd() / name]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise FileNotFoundError(
        f"vision tower {config.vision_tower!r} not found (looked in {[str(c) for c in candidates]}). "
        f"Download it (e.g. openai/clip-vit-large-patch14-336) and pass its folder as vision_tower / "
        f"--vision-tower; nothing is fetched from a hub at run time.")


def load_vision_tower(folder: str | Path, select_layer: int, image_size: int, device="cpu",
                      dtype=torch.float32) -> CLIPVisionTower:
    folder = Path(folder)
    cfg = VisionConfig.from_folder(folder)
    with torch.device("meta"):
        tower = CLIPVisionTower(cfg, select_layer)
    built = len(tower.vision_model.encoder.layers)

    def relevant() -> Iterator[tuple[str, torch.Tensor]]:
        for key, t in iter_tensors(weight_files(folder)):
            m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.", key)
            if (m and int(m.group(1)) >= built) or VISION_UNUSED.search(key):
                continue  # layers after the selected hidden state are never run
            yield key, t

    load_into(tower, relevant(), device, dtype, what=f"vision tower {folder}")
    tower.resize_position_table(image_size)
    return tower.eval().requires_grad_(False)


def load_pixellm(folder: str | Path, vision_tower: str | Path | None = None, device="cpu",
                 dtype=torch.float32, quantization: str = "none") -> tuple[PixelLMForCausalLM, PixelLMTokenizer]:
    """Load an hf_model folder (official or ours) and its vision tower; returns (model, tokenizer).
    `quantization` "8bit" / "4bit" quantizes the decoder linears as they are read (see quantize.py)."""
    folder = Path(folder)
    device = torch.device(device)
    check_quantization(quantization, device, dtype)  # before any weight is read: a refusal costs nothing
    config = PixelLMConfig.from_folder(folder)
    tokenizer = PixelLMTokenizer.from_folder(folder)
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"tokenizer has {len(tokenizer)} tokens but vocab_size is {config.vocab_size}")
    tower_dir = resolve_vision_tower(folder, config, vision_tower)
    config.vision = VisionConfig.from_folder(tower_dir)
    if config.vision.hidden_size != config.mm_hidden_size:
        raise CheckpointError(f"vision tower {tower_dir} has width {config.vision.hidden_size}, "
                              f"but the model expects mm_hidden_size {config.mm_hidden_size}")
    with torch.device("meta"):
        model = PixelLMForCausalLM(config)
    quantize = prepare_quantized(model, quantization, device, dtype) if quantization != "none" else None
    load_into(model, iter_tensors(weight_files(folder)), device, dtype, ignore=IGNORED_KEYS, what=str(folder),
              quantize=quantize)
    model.model.rotary = Rotary(config.head_dim, config.rope_theta).to(device)
    model.attach_vision_tower(load_vision_tower(tower_dir, config.mm_vision_select_layer,
                                                config.resize_vision_tower_size, device, dtype))
    log.info("loaded %s (%d layers, hidden %d%s) with vision tower %s on %s/%s", folder, config.num_hidden_layers,
             config.hidden_size, f", {quantization} decoder" if quantize else "", tower_dir, device, dtype)
    return model.eval().requires_grad_(False), tokenizer


def _save_safetensors(state: dict[str, torch.Tensor], folder: Path, stem: str = "model") -> None:
    """Write safetensors shards (atomically: temp name then rename) plus an index when sharded."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = t.detach().contiguous().cpu()
        size += nbytes
    names = ([f"{stem}.safetensors"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        tmp = folder / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / name)
    if len(shards) > 1:
        weight_map = {k: n for n, s in zip(names, shards) for k in s}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=1))


def save_pixellm(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, folder: str | Path,
                 include_vision_tower: bool = True) -> Path:
    """Write config.json, safetensors weights and tokenizer files; optionally the vision tower in
    ``vision_tower/`` so the folder is self-contained."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    cfg = config.to_dict()
    if include_vision_tower:
        tower = model.vision_tower
        (folder / "vision_tower").mkdir(exist_ok=True)
        (folder / "vision_tower" / "config.json").write_text(json.dumps(tower.config.to_dict(), indent=2))
        # Saved at its run-time size (table already resized, config.image_size updated), so loading
        # it again resizes nothing.
        _save_safetensors(tower.state_dict(), folder / "vision_tower")
        cfg["vision_tower"] = cfg["mm_vision_tower"] = "vision_tower"
    _save_safetensors(model.state_dict(), folder)
    cfg["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
         "pad_token_id": config.pad_token_id}, indent=2))
    tokenizer.save(folder)
    return folder

