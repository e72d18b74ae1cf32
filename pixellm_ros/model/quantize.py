"""Optional 8-bit / 4-bit weights for the LLM (bitsandbytes, CUDA only), for Jetson-size memory.

Only the LLaMA decoder layers are quantized, as the release's chat.py does (its skip list keeps the
vision and mask-decoder parts in full precision); embeddings, lm_head and the pixel decoder stay as
they are so masks keep their precision.
"""
from __future__ import annotations

import torch
from torch import nn

from .pixellm import PixelLMForCausalLM


def quantize_llm(model: PixelLMForCausalLM, mode: str) -> None:
    if mode not in ("8bit", "4bit"):
        raise ValueError(f"quantization must be 'none', '8bit' or '4bit', not {mode!r}")
    if model.device.type != "cuda":
        raise RuntimeError(f"{mode} quantization needs a CUDA device (bitsandbytes); the model is on {model.device}")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise RuntimeError(f"{mode} quantization needs bitsandbytes: pip install bitsandbytes") from e
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, nn.Linear):
                    continue
                weight = linear.weight.data.to(torch.float16).cpu()
                if mode == "8bit":
                    q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=False,
                                            has_fp16_weights=False, threshold=6.0)
                    q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                else:
                    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                          compute_dtype=model.dtype, quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
                setattr(parent, name, q.to(model.device))  # moving to CUDA quantizes the weights
    torch.cuda.empty_cache()
