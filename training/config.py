"""One training run = one YAML file mapped onto these dataclasses (every default lives here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pixellm_ros.model.adapters import LoraSpec


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8  # the release's LoRA: r 8, alpha 16, dropout 0.05 on q_proj, v_proj
    alpha: int = 16
    dropout: float = 0.05
    # Only the LLM's attention projections (the decoder and CLIP have q_proj/v_proj too).
    target_modules: str = r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"

    def spec(self) -> LoraSpec:
        """What `add_lora` injects (the model layer's type: pixellm_ros never imports training)."""
        from pixellm_ros.model.adapters import LoraSpec
        return LoraSpec(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=self.target_modules)


# Modules whose layers gradient checkpointing can recompute (see memory.enable_gradient_checkpointing).
CHECKPOINTABLE = ("llm", "vision_tower")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
TOKEN_ROWS = ("all", "new")
# "auto" checkpoints LLMs at least this wide (7B-class, where per-layer activations are GiBs); below it the
# recompute costs ~1/3 more time for memory a small model does not need.
AUTO_CHECKPOINT_MIN_HIDDEN = 2048


@dataclass
class ModelConfig:
    """How the base model is held while training (QLoRA, precision, gradient checkpointing)."""

    quantization: str = "none"  # "none", "8bit", "4bit" (pixellm_ros.model.quantize.MODES): the LLM's decoder linears
    dtype: str = "float32"  # the frozen base weights (and the quantized layers' compute dtype)
    # dtype of what trains (LoRA, lm_head, embed_tokens, projectors, text_hidden_fcs, mask decoder): full precision
    # master weights even on a bf16 / quantized base, as QLoRA's k-bit preparation does.
    trainable_dtype: str = "float32"
    # Rows of lm_head / embed_tokens that train: "all" (the release) or "new" (only the added tokens: the codebook
    # [SEG] tokens, <im_start>, <im_end>), which keeps the gradients and AdamW state of two vocab x hidden matrices
    # (4.2 GB in float32 at 7B) off a 16 GB board; the other rows stay frozen in the base dtype.
    token_rows: str = "all"
    gradient_checkpointing: bool | str = "auto"  # true / false / "auto" (AUTO_CHECKPOINT_MIN_HIDDEN)
    checkpoint_modules: list[str] = field(default_factory=lambda: ["llm"])  # of CHECKPOINTABLE


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    overlap_weight: float = 0.0  # target refinement: extra BCE on pixels claimed by >= 2 targets (0 = off)
    # Training-only head: each target's fused codebook prompt must name its target (the tokens of its name).
    # For LLMs trained from scratch, whose codebook states start target-agnostic (see training/objective.py).
    naming_weight: float = 0.0
    # Training-only heads on the vision tower: each patch must predict the kind/colour mix under it, the labels
    # training.pretrain_vision trains a from-scratch tower on, kept while PixelLM trains the tower (needs
    # train_vision_tower; only sources with a class map, synthetic / randomized / negative, give labels).
    patch_weight: float = 0.0


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
    colors: list[str] = field(default_factory=list)  # synthetic: restrict object colours (empty = all)
    distinct: bool = False  # synthetic: no two objects of one kind and colour in a scene
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
    model: ModelConfig = field(default_factory=ModelConfig)
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

    def check(self, distributed: str = "NO", zero_stage: int | None = None) -> None:
        """Refuse, before any weight is read, a configuration that cannot train; each message says what to do.
        `distributed`: accelerate's distributed_type name (NO, MULTI_GPU, MULTI_CPU, DEEPSPEED, FSDP)."""
        from pixellm_ros.model.quantize import MODES
        m, problems = self.model, []
        if m.quantization not in MODES:
            problems.append(f"model.quantization must be one of {list(MODES)}, not {m.quantization!r}")
        for key in ("dtype", "trainable_dtype"):
            if getattr(m, key) not in DTYPE_NAMES:
                problems.append(f"model.{key} must be one of {list(DTYPE_NAMES)}, not {getattr(m, key)!r}")
        if m.token_rows not in TOKEN_ROWS:
            problems.append(f"model.token_rows must be one of {list(TOKEN_ROWS)}, not {m.token_rows!r}")
        if m.gradient_checkpointing not in (True, False, "auto"):
            problems.append(f"model.gradient_checkpointing must be true, false or auto, not {m.gradient_checkpointing!r}")
        for name in m.checkpoint_modules:
            if name not in CHECKPOINTABLE:
                problems.append(f"model.checkpoint_modules: {name!r} has no checkpointable layers; "
                                f"choose from {list(CHECKPOINTABLE)}")
        if "vision_tower" in m.checkpoint_modules and m.gradient_checkpointing and not self.train_vision_tower:
            problems.append("model.checkpoint_modules names vision_tower, but it is frozen (train_vision_tower: false) "
                            "and keeps no activations for backward: remove it, or set train_vision_tower: true")
        if m.quantization != "none":
            if "all" in self.trainable:
                problems.append(f"model.quantization {m.quantization!r} freezes the LLM's quantized linears, but "
                                f"trainable is 'all': list the fully trained modules (the default list) and train "
                                f"the LLM through LoRA, or set quantization: none")
            if distributed == "FSDP":
                problems.append(f"model.quantization {m.quantization!r} cannot be sharded by FSDP here (bitsandbytes "
                                f"weights are not flat-parameter shardable in this trainer): use DDP "
                                f"(training/accelerate/ddp_gpu.yaml) or DeepSpeed ZeRO-2 "
                                f"(training/accelerate/deepspeed_zero2.yaml), or quantization: none with FSDP")
            if distributed == "DEEPSPEED" and (zero_stage or 0) >= 3:
                problems.append(f"model.quantization {m.quantization!r} cannot be partitioned by DeepSpeed ZeRO-3: "
                                f"use ZeRO-2 (training/accelerate/deepspeed_zero2.yaml) or quantization: none")
        if m.dtype != "float32" and self.mixed_precision == "no":
            problems.append(f"model.dtype {m.dtype!r} needs mixed_precision 'bf16' or 'fp16' (autocast runs the "
                            f"float32 trained parts with the {m.dtype} base); set mixed_precision, or dtype float32")
        if self.loss.patch_weight > 0 and not self.train_vision_tower:
            problems.append("loss.patch_weight trains the vision tower's features, but the tower is frozen: set "
                            "train_vision_tower: true, or patch_weight: 0")
        if problems:
            raise ValueError("training config refused:\n  - " + "\n  - ".join(problems))


def _build(cls, raw: dict[str, Any]):
    """Nested dataclass from a dict; unknown keys are errors (a typo must not silently train)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        sub = {TrainConfig: {"model": ModelConfig, "lora": LoraConfig, "loss": LossConfig, "data": DataConfig},
               DataConfig: {}}.get(cls, {}).get(name)
        if sub is not None and isinstance(value, dict):
            value = _build(sub, value)
        elif cls is DataConfig and name == "sources":
            value = [_build(SourceConfig, v) for v in value]
        elif name == "betas":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
