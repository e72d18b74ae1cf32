"""CLIP ViT vision tower as PixelLM runs it: 448 px input, resized position table, padded patches masked.

State-dict names follow transformers' ``CLIPVisionModel`` (``vision_model.…``) so the tower loads
from an unmodified openai/clip-vit-large-patch14-336 folder. Only the layers needed for the selected
hidden states are built: the release reads hidden_states[-2] and [-11], so the last encoder layer and
``post_layernorm`` are never used and never computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SECOND_SCALE_LAYER, VisionConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        """x: (B, N, C); key_bias: additive (B, 1, 1, N) or None."""
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             attn_mask=key_bias)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), key_bias)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        # The checkpoint's table (trained grid + 1 rows); resized by `resize_position_table` after loading.
        self.position_embedding = nn.Embedding((cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, S, S) -> (B, 1 + (S/p)^2, C)."""
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1)
        if x.shape[1] != self.position_embedding.num_embeddings:
            raise ValueError(f"input gives {x.shape[1] - 1} patches but the position table has "
                             f"{self.position_embedding.num_embeddings - 1} rows: resize it for this input size")
        return x + self.position_embedding.weight


class CLIPVisionTower(nn.Module):
    """Masked CLIP ViT returning the two hidden states PixelLM uses."""

    def __init__(self, cfg: VisionConfig, select_layer: int = -2) -> None:
        super().__init__()
        self.config = cfg
        self.select_layer = select_layer
        states = cfg.num_hidden_layers + 1  # embeddings + one per layer
        self.state_indices = (select_layer % states, SECOND_SCALE_LAYER % states)
        self.vision_model = nn.Module()
        self.vision_model.embeddings = CLIPEmbeddings(cfg)
        self.vision_model.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.vision_model.encoder = nn.Module()
        self.vision_model.encoder.layers = nn.ModuleList(
            CLIPEncoderLayer(cfg) for _ in range(max(self.state_indices)))

    def resize_position_table(self, image_size: int) -> None:
        """Resize the position table to `image_size` exactly as the release does.

        Quirk kept on purpose (the weights were trained with it): the LAST of the N*N+1 rows is treated
        as the class row, rows 0..N*N-1 as the N x N grid; the grid is resized bilinearly
        (align_corners=False) and the old last row appended. Positions then index the new table in order.
        """
        emb = self.vision_model.embeddings
        old = emb.position_embedding.weight.data
        old_side = int(round((old.shape[0] - 1) ** 0.5))
        new_side = image_size // self.config.patch_size
        self.config.image_size = new_side * self.config.patch_size
        if new_side == old_side:
            return
        grid = old[:-1].float().t().reshape(1, -1, old_side, old_side)
        grid = F.interpolate(grid, (new_side, new_side), mode="bilinear", align_corners=False)[0]
        table = torch.cat([grid.flatten(1).t(), old[-1:].float()], dim=0).to(old.dtype)
        emb.position_embedding = nn.Embedding.from_pretrained(table, freeze=False).to(old.device)

    def forward(self, pixels: torch.Tensor, patch_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels: (B, 3, S, S); patch_valid: (B, (S/p)^2) with 1 for patches holding image pixels.

        Returns the patch tokens (class token dropped) of hidden_states[select_layer] and
        hidden_states[-11], each (B, (S/p)^2, C).
        """
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))
        key_bias = None
        if patch_valid is not None:
            valid = torch.cat([torch.ones_like(patch_valid[:, :1]), patch_valid], dim=1).bool()
            key_bias = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            key_bias = key_bias.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        states = {0: x}
        for i, layer in enumerate(vm.encoder.layers, start=1):
            x = layer(x, key_bias)
            if i in self.state_indices:
                states[i] = x
        first, second = self.state_indices
        return states[first][:, 1:], states[second][:, 1:]
