"""Configuration of a PixelLM model, read from (and written to) an ``hf_model`` folder's config.json.

The official constructor overwrites several config.json fields with hard-coded values ("forced by
code"); we model those as constants of the release instead of reading them, so a checkpoint whose
config disagrees still loads the way the official code would load it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Release constants (not written in config.json, or overwritten by the official constructor).
SEG_TOKENS_PER_SCALE = 3  # `seg_token_num` of the release CLI
FEATURE_SCALES = 2  # `image_feature_scale_num`
CODEBOOK_SIZE = SEG_TOKENS_PER_SCALE * FEATURE_SCALES  # codebook tokens per target: [SEG0]..[SEG5]
DECODER_DIM = 256  # prompt / mask-decoder width, fixed in the official code
IMAGE_TOKEN_INDEX = -200  # placeholder id of <image> in a tokenized prompt
LLM_IMAGE_GRID = 16  # CLIP patches are resized to 16x16 = 256 LLM image tokens
# hidden_states index (of the CLIP encoder's num_layers + 1 states) of the second mask-feature scale
SECOND_SCALE_LAYER = -11


@dataclass
class VisionConfig:
    """CLIP ViT vision tower (loaded from its own folder, e.g. openai/clip-vit-large-patch14-336)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 336  # size the position table was trained for
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        d = d.get("vision_config", d)  # a full CLIPModel config nests the vision part
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_folder(cls, folder: str | Path) -> "VisionConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"vision tower folder {folder} has no config.json")
        return cls.from_dict(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"], **dataclasses.asdict(self)}


@dataclass
class PixelLMConfig:
    """LLaMA + PixelLM fields of config.json; defaults are PixelLM-7B's."""

    vocab_size: int = 32008
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    mm_hidden_size: int = 1024
    mm_vision_select_layer: int = -2
    mm_use_im_start_end: bool = True
    out_dim: int = DECODER_DIM
    resize_vision_tower_size: int = 448
    vision_tower: str = "openai/clip-vit-large-patch14-336"
    torch_dtype: str = "bfloat16"
    vision: VisionConfig | None = None  # filled by the loader from the vision tower folder
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other config.json fields, kept on save

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def vision_grid(self) -> int:
        """Patches per side at the run-time input size (448 / 14 = 32)."""
        patch = self.vision.patch_size if self.vision else 14
        return self.resize_vision_tower_size // patch

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PixelLMConfig":
        if d.get("pretraining_tp", 1) != 1:
            raise ValueError("pretraining_tp != 1 is not supported (the release uses 1)")
        if d.get("rope_scaling"):
            raise ValueError(f"rope_scaling {d['rope_scaling']!r} is not supported (the release uses none)")
        names = {f.name for f in dataclasses.fields(cls)} - {"vision", "extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "PixelLMConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a PixelLM model folder: no config.json")
        return cls.from_dict(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        d = {**self.extra, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("vision", "extra")}}
        d.setdefault("model_type", "llava")
        d.setdefault("architectures", ["PixelLMForCausalLM"])
        # Fields the official loader needs to treat the folder as a finished PixelLM model.
        d.update(train_mask_decoder=True, mm_vision_tower=self.vision_tower, tie_word_embeddings=False,
                 hidden_act="silu", pretraining_tp=1, rope_scaling=None, use_cache=False,
                 separate_mm_projector=True, mm_projector_hidden_dim=2, mm_projector_out_dim=1,
                 image_feature_scale_num=FEATURE_SCALES, resize_vision_tower=True, pad_train_clip_images=True,
                 vision_tower_for_mask=True, mm_vision_select_feature="patch")
        return d
