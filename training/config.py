"""One training run = one YAML file mapped onto these dataclasses (every default lives here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8  # the release's LoRA: r 8, alpha 16, dropout 0.05 on q_proj, v_proj
    alpha: int = 16
    dropout: float = 0.05
    # Only the LLM's attention projections (the decoder and CLIP have q_proj/v_proj too).
    target_modules: str = r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    overlap_weight: float = 0.0  # target refinement: extra BCE on pixels claimed by >= 2 targets (0 = off)
    # Training-only head: each target's fused codebook prompt must name its target (the tokens of its name).
    # For LLMs trained from scratch, whose codebook states start target-agnostic (see training/modeling.py).
    naming_weight: float = 0.0


@dataclass
class SourceConfig:
    """One data source of the mixture. kind: synthetic | randomized | negative | muse | labelme | coco.

    randomized / negative (training/data/randomize.py): the synthetic objects over photographs and textures /
    those backgrounds with no domain object; they take the synthetic fields below."""

    kind: str = "synthetic"
    ratio: float = 1.0
    path: str = ""  # file or folder for muse / labelme / coco
    image_root: str = ""  # where muse / coco images live
    seed: int = 0  # synthetic: the stream is a function of (seed, index)
    size: int = 0  # synthetic: 0 = endless stream, N = cycle over its first N samples
    questions_per_scene: int = 1  # synthetic: > 1 asks several questions about each scene (see synthetic.py)
    style: str = "default"  # synthetic: camera look ("default" or "dim")
    kinds: list[str] = field(default_factory=list)  # synthetic: restrict object kinds (empty = all)
    question_mix: dict[str, float] = field(default_factory=dict)  # synthetic: ratio per synthetic.QUESTION_KINDS (empty = default)
    objects: list[int] = field(default_factory=list)  # synthetic: [min, max] objects per scene (empty = default)
    phrasing: str = "template"  # synthetic: question phrasings, "template" or "varied" (see synthetic.py)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    on_bad_record: str = "skip"  # "skip" (log it, take the next one) or "stop"
    max_question_tokens: int = 64
    max_answer_tokens: int = 96


@dataclass
class TrainConfig:
    base_model: str = ""  # hf_model folder to start from
    vision_tower: str | None = None
    output_dir: str = "runs/run"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 2  # per process
    grad_accum: int = 10
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (accelerate)
    # Fully trained parts besides LoRA (the release's list); "all" trains every parameter.
    trainable: list[str] = field(default_factory=lambda: [
        "lm_head", "model.embed_tokens", "model.mask_decoder", "model.text_hidden_fcs", "model.mm_projector",
        "model.out_mm_projector"])
    train_vision_tower: bool = False
    # Modules drawn afresh (seeded) before training, e.g. a pixel decoder that learned to ignore its prompts
    # while they were still uninformative (see training/configs/embedded_default.yaml).
    reinit_modules: list[str] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    num_threads: int = 0  # torch CPU threads per process (0 = torch default)
    data_workers: int = 0  # processes rendering/loading batches ahead (0 = in the training process)
    export_dtype: str = "bfloat16"  # dtype of the exported model folder (the release ships bf16)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict({**raw, **(overrides or {})})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        return _build(cls, raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, raw: dict[str, Any]):
    """Nested dataclass from a dict; unknown keys are errors (a typo must not silently train)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        sub = {TrainConfig: {"lora": LoraConfig, "loss": LossConfig, "data": DataConfig},
               DataConfig: {}}.get(cls, {}).get(name)
        if sub is not None and isinstance(value, dict):
            value = _build(sub, value)
        elif cls is DataConfig and name == "sources":
            value = [_build(SourceConfig, v) for v in value]
        elif name == "betas":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
