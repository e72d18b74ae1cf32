"""LLaMA decoder (HF naming) with a preallocated KV cache and per-row position ids.

Numerically the same as transformers' LlamaModel of the release (RMSNorm in fp32, rotate-half RoPE
with theta 10000, softmax attention), written small so generation can run ONE prefill and then one
token per step, and so several questions can share one cached image prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import PixelLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for rotate-half RoPE (not saved: the release's `inv_freq` buffers are ignored)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (B, T) -> cos, sin: (B, 1, T, head_dim)."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


@dataclass
class KVCache:
    """Preallocated keys/values for every layer: (layers, B, kv_heads, capacity, head_dim)."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @classmethod
    def allocate(cls, cfg: PixelLMConfig, batch: int, capacity: int, device, dtype) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def expand(self, batch: int, capacity: int) -> "KVCache":
        """A new cache of `batch` rows, each holding a copy of this cache's filled prefix (row 0)."""
        layers, _, heads, _, dim = self.keys.shape
        shape = (layers, batch, heads, capacity, dim)
        return KVCache(self.keys.new_empty(shape), self.values.new_empty(shape)).fill_from(self)

    def fill_from(self, prefix: "KVCache") -> "KVCache":
        """Copy `prefix`'s filled part (its row 0) into every row of this cache; returns self."""
        self.keys[:, :, :, : prefix.length] = prefix.keys[:, :1, :, : prefix.length]
        self.values[:, :, :, : prefix.length] = prefix.values[:, :1, :, : prefix.length]
        self.length = prefix.length
        return self

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, kv_heads, T, head_dim) after the filled prefix; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class SlotWriter:
    """A KVCache's full capacity, written at a position given as a tensor: static shapes for compiled decode.

    keys/values: (layers, B, kv_heads, capacity, head_dim); slot: (1,) long. `update` returns the whole
    capacity, so unfilled slots must be hidden by the attention mask (and hold finite values).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor) -> None:
        self.keys, self.values, self.slot = keys, values, slot

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer].index_copy_(2, self.slot, k)
        self.values[layer].index_copy_(2, self.slot, v)
        return self.keys[layer], self.values[layer]


class LlamaAttention(nn.Module):
    def __init__(self, cfg: PixelLMConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | SlotWriter | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: PixelLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: PixelLMConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, layer) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask(key_valid: torch.Tensor, query_len: int) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, T, S): causal over the last T of S keys, and invalid keys hidden.

    key_valid: (B, S) bool, False for padded image tokens and padding slots.
    """
    s = key_valid.shape[1]
    q_pos = torch.arange(s - query_len, s, device=key_valid.device)[:, None]
    causal = torch.arange(s, device=key_valid.device)[None, :] <= q_pos  # (T, S)
    return causal[None, None] & key_valid[:, None, None, :]


class LlamaModel(nn.Module):
    """Embeddings + decoder layers + final norm. PixelLM's extra modules are attached by a subclass."""

    def __init__(self, cfg: PixelLMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """embeds: (B, T, H); positions: (B, T); key_valid: (B, S) for all keys so far incl. these T.

        Returns the final-norm hidden states (B, T, H); advances `cache` by T when given.
        """
        cos, sin = self.rotary(positions, embeds.dtype)
        mask = attention_mask(key_valid, embeds.shape[1])
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length += embeds.shape[1]
        return self.norm(x)

    def decode_step(self, embeds: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                    key_valid: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One new position per row with static shapes, for compiled decode (no Python int changes per step).

        embeds: (B, 1, H); positions: (B, 1) RoPE positions; slot: (1,) long, the cache slot written;
        key_valid: (B, capacity) bool; keys/values: a KVCache's tensors. Queries attend over the whole
        capacity, slots after `slot` and invalid ones masked. Returns final-norm hidden states (B, 1, H).
        """
        cos, sin = self.rotary(positions, embeds.dtype)
        written = torch.arange(keys.shape[3], device=slot.device) <= slot
        mask = (key_valid & written)[:, None, None, :]
        writer = SlotWriter(keys, values, slot)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, writer, i)
        return self.norm(x)
