"""PixelLM model: pure torch, no ROS. See `load_pixellm` to load an hf_model folder."""
from .checkpoint import CheckpointError, load_pixellm, load_vision_tower, save_pixellm
from .config import CODEBOOK_SIZE, PixelLMConfig, VisionConfig
from .generation import (Generation, ImagePrefix, SamplingConfig, Target, TargetEvent, TextEvent, generate,
                         generate_batch, generate_recompute, prefill_image, stream)
from .pixellm import ImageFeatures, PixelLMForCausalLM
from .processing import ProcessedImage, build_prompt, preprocess_image
from .stream import Stream, streaming
from .tokenizer import PixelLMTokenizer

__all__ = [
    "CODEBOOK_SIZE", "CheckpointError", "Generation", "ImageFeatures", "ImagePrefix", "PixelLMConfig",
    "PixelLMForCausalLM", "PixelLMTokenizer", "ProcessedImage", "SamplingConfig", "Stream", "Target",
    "TargetEvent", "TextEvent", "VisionConfig", "build_prompt", "generate", "generate_batch", "generate_recompute",
    "load_pixellm", "load_vision_tower", "prefill_image", "preprocess_image", "save_pixellm", "stream",
    "streaming",
]
