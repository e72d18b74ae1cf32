"""8-bit / 4-bit LLM weights (bitsandbytes), quantized while the checkpoint is read, for Jetson-size memory.

Only the LLaMA decoder linears are quantized, as the release's chat.py does (its skip list keeps the
vision and mask-decoder parts in full precision); embeddings, lm_head, norms, the vision tower, the
projectors and the pixel decoder stay as they are, so masks keep their precision. ``load_pixellm(...,
quantization=...)`` swaps those linears for empty bitsandbytes layers before any weight is read, then
quantizes each weight as it comes out of the shard (and releases its pages, see checkpoint.release_pages):
the full-precision LLM never exists in memory, so the peak is the quantized model plus one weight matrix
and bitsandbytes' temporaries for it (on CPU ~17 bytes per weight). 4-bit is nf4 with double-quantized
scales (the release's settings), 8-bit is LLM.int8(). bitsandbytes runs both on CUDA and on the CPU.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from .pixellm import PixelLMForCausalLM

MODES = ("none", "8bit", "4bit")
DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Hook for checkpoint.load_into: (key, CPU tensor) -> the quantized parameter, or None for keys it keeps.
Quantizer = Callable[[str, torch.Tensor], "nn.Parameter | None"]


def import_bitsandbytes(mode: str):
    # Two known warnings, silenced: on import, that the optional `kernels` package is missing (it would
    # download a CPU kernel from the Hugging Face hub at run time, which this project never does); and on
    # every 8-bit forward, that bf16/fp32 inputs are cast to fp16 (LLM.int8() always computes in fp16).
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as e:
        raise RuntimeError(f"quantization {mode!r} needs bitsandbytes: `pip install -r requirements.txt` "
                           f"(bitsandbytes==0.50.2), or set quantization to 'none'") from e
    return bitsandbytes


def empty_layer(bnb, in_features: int, out_features: int, mode: str, dtype: torch.dtype) -> nn.Module:
    """A bias-free bitsandbytes linear with its weight still on the meta device (nothing allocated)."""
    with torch.device("meta"):
        if mode == "8bit":
            return bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0)
        return bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype, quant_type="nf4")


def quantized_weight(bnb, layer: nn.Module, weight: torch.Tensor, device: torch.device) -> nn.Parameter:
    """`layer`'s weight parameter on `device`, from a full-precision CPU tensor (bitsandbytes quantizes
    a parameter as it moves it to a device, CPU included)."""
    if isinstance(layer, bnb.nn.Linear8bitLt):
        return bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
    return bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", module=layer).to(device)


def prepare_quantized(model: PixelLMForCausalLM, mode: str, device: torch.device, dtype: torch.dtype) -> Quantizer:
    """Swap the decoder linears of a meta-device model for empty bitsandbytes layers; return the hook
    that quantizes their weights, one tensor at a time, as load_into reads them."""
    bnb = import_bitsandbytes(mode)
    layers: dict[str, nn.Module] = {}
    for i, block in enumerate(model.model.layers):
        for name in DECODER_LINEARS:
            parent, attr = block.get_submodule(name.split(".")[0]), name.split(".")[1]
            linear = getattr(parent, attr)
            layer = empty_layer(bnb, linear.in_features, linear.out_features, mode, dtype)
            setattr(parent, attr, layer)
            layers[f"model.layers.{i}.{name}.weight"] = layer

    def quantize(key: str, tensor: torch.Tensor) -> nn.Parameter | None:
        layer = layers.get(key)
        # Cast to the model dtype first, as a full-precision model would hold it: same bits as
        # quantizing a loaded model.
        return None if layer is None else quantized_weight(bnb, layer, tensor.to(dtype), device)

    return quantize


def check_quantization(mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise, saying what to do, unless `mode` can run on `device` in `dtype`. What bitsandbytes supports
    depends on its build, the device and the dtype, so a small layer is quantized and run there."""
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {MODES}, not {mode!r}")
    if mode == "none":
        return
    bnb = import_bitsandbytes(mode)
    try:
        layer = empty_layer(bnb, 64, 64, mode, dtype)
        layer.weight = quantized_weight(bnb, layer, torch.randn(64, 64, dtype=dtype), device)
        with torch.no_grad():
            out = layer(torch.randn(1, 2, 64, device=device, dtype=dtype))
        if not torch.isfinite(out).all():
            raise RuntimeError("the test layer returned inf/nan")
    except Exception as e:
        raise RuntimeError(f"bitsandbytes {bnb.__version__} cannot run {mode} layers on {device} in {dtype} "
                           f"({type(e).__name__}: {e}); choose another dtype or device, or quantization "
                           f"'none'") from e
