"""PixelLM's light pixel decoder: SAM-style two-way transformers, one per feature scale.

Module and parameter names follow the release (``prompt_encoder``, ``mask_decoder``,
``image_feature_neck``) so its checkpoints load unchanged. Widths are fixed by the release
(256 channels, MLP 2048, 8 heads, attention downsample 2). Parts present in the checkpoint but never
used at inference (point/box/mask-input embeddings, IoU head) are kept so keys match, and skipped.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DECODER_DIM, FEATURE_SCALES


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) map (eps 1e-6, as in SAM)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class RandomPositionEmbedding(nn.Module):
    """Fourier features of (x, y) with a fixed random Gaussian matrix (a saved buffer)."""

    def __init__(self, num_feats: int = DECODER_DIM // 2) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """-> (C, H, W) encoding of a grid of pixel centres."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=matrix.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        coords = (2 * torch.stack([x, y], dim=-1) - 1) @ matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Only `no_mask_embed` and the dense positional encoding are used by PixelLM."""

    def __init__(self, grid: int, dim: int = DECODER_DIM, mask_in_chans: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.pe_layer = RandomPositionEmbedding(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))  # unused, in checkpoint
        self.not_a_point_embed = nn.Embedding(1, dim)  # unused, in checkpoint
        self.mask_downscaling = nn.Sequential(  # unused, in checkpoint
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans),
            nn.GELU(), nn.Conv2d(mask_in_chans, dim, kernel_size=1))
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        """(1, C, grid, grid)"""
        return self.pe_layer((self.grid, self.grid))[None]

    def dense_embedding(self) -> torch.Tensor:
        """(1, C, grid, grid): the no-mask embedding broadcast over the grid."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, self.grid, self.grid)


class Attention(nn.Module):
    """Multi-head attention with optional down-projection of the internal width (SAM)."""

    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:
            b, n, c = t.shape
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v)))
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, token->image, MLP, image->token (SAM's TwoWayAttentionBlock)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample=2)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = DECODER_DIM, heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, skip_first_pe=(i == 0)) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, downsample=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image, image_pe: (B, C, H, W); tokens: (B, N, C) -> tokens (B, N, C), image (B, HW, C)."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, depth: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [dim_out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MultiScaleMaskDecoder(nn.Module):
    """One two-way transformer per scale; scale 1 refines at 2x resolution, gated by scale 0's mask."""

    num_mask_tokens = 4  # iou head and 3 multimask tokens exist in the checkpoint; only token 0 is used

    def __init__(self, dim: int = DECODER_DIM, scales: int = FEATURE_SCALES) -> None:
        super().__init__()
        self.transformer = nn.ModuleList(TwoWayTransformer(dim=dim) for _ in range(scales))
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2), LayerNorm2d(dim // 8), nn.GELU())
        self.upsample_2x = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim), nn.GELU())
        self.pe1 = RandomPositionEmbedding(dim // 2)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)  # unused at inference, in checkpoint
        self.level_embed = nn.Embedding(scales, dim)

    def predict(self, level: int, image: torch.Tensor, image_pe: torch.Tensor, prompts: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        """Mask logits of mask token 0 for N prompts at one scale.

        image: (N or 1, C, h, w) features already gated for this level; image_pe: (1, C, h, w);
        prompts: (N, C); dense: (1, C, h, w). Returns (N, 1, 2h, 2w).
        """
        n = prompts.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.expand(n, -1, -1), prompts[:, None]], dim=1) + self.level_embed.weight[level]
        src = (image + dense).expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer[level](src, image_pe.expand(n, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = self.output_hypernetworks_mlps[0](hs[:, 1])  # (N, C/8)
        return torch.einsum("nc,nchw->nhw", hyper, upscaled)[:, None]
