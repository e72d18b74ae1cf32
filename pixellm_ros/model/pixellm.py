"""PixelLM: CLIP features -> LLaMA with codebook tokens -> light pixel decoder -> masks.

The module tree reproduces the release's state-dict names (``model.…``, ``lm_head``) so a released
``hf_model`` folder loads without conversion. The CLIP tower is kept outside the state dict (the
release does not save it) and loaded from its own folder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clip import CLIPVisionTower
from .config import CODEBOOK_SIZE, DECODER_DIM, FEATURE_SCALES, LLM_IMAGE_GRID, SEG_TOKENS_PER_SCALE, PixelLMConfig
from .decoder import LayerNorm2d, MultiScaleMaskDecoder, PromptEncoder
from .llama import LlamaModel

# The release's fixed (never saved, never trained) fusion weights. 1/6 per codebook token although
# only 3 tokens are summed per scale: the weights were trained with this, so keep it.
CODEBOOK_FUSION_WEIGHT = 1.0 / CODEBOOK_SIZE
SCALE_FUSION_WEIGHT = 1.0 / FEATURE_SCALES
LOW_RES_MASK_SIZE = 128


def projector(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


class PixelLMBackbone(LlamaModel):
    """``model.*`` of the release: LLaMA plus projectors, codebook head, neck and pixel decoder."""

    def __init__(self, cfg: PixelLMConfig) -> None:
        super().__init__(cfg)
        h = cfg.hidden_size
        self.mm_projector = projector(cfg.mm_hidden_size, 2 * h, h)
        self.out_mm_projector = projector(cfg.mm_hidden_size, 2 * h, h)
        self.text_hidden_fcs = nn.ModuleList([nn.Sequential(
            nn.Linear(h, h), nn.ReLU(), nn.Linear(h, cfg.out_dim), nn.Dropout(0.0))])
        self.image_feature_neck = nn.Sequential(
            nn.Conv2d(h, DECODER_DIM, kernel_size=1, bias=False), LayerNorm2d(DECODER_DIM),
            nn.Conv2d(DECODER_DIM, DECODER_DIM, kernel_size=3, padding=1, bias=False), LayerNorm2d(DECODER_DIM))
        self.prompt_encoder = PromptEncoder(cfg.vision_grid)
        self.mask_decoder = MultiScaleMaskDecoder()


@dataclass
class ImageFeatures:
    """Everything a question needs from one image; computed once per frame.

    llm_tokens: (1, 256, H) projected image tokens; llm_valid: (1, 256) bool (False = padding);
    mask_features: (2, 256, g, g) neck output per scale; input_size: (h, w) after the 448 resize;
    original_size: (H, W) of the input image.
    """

    llm_tokens: torch.Tensor
    llm_valid: torch.Tensor
    mask_features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class PixelLMForCausalLM(nn.Module):
    def __init__(self, cfg: PixelLMConfig, vision_tower: CLIPVisionTower | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.model = PixelLMBackbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # A plain attribute list keeps the tower out of state_dict(), as in the release.
        self._vision: list[CLIPVisionTower] = [vision_tower] if vision_tower is not None else []

    @property
    def vision_tower(self) -> CLIPVisionTower:
        if not self._vision:
            raise RuntimeError("no vision tower attached: load one with load_vision_tower()")
        return self._vision[0]

    def attach_vision_tower(self, tower: CLIPVisionTower) -> None:
        self._vision = [tower]

    def _apply(self, fn, recurse=True):  # keep the detached tower on the same device/dtype as the model
        super()._apply(fn, recurse)
        for tower in self._vision:
            tower._apply(fn, recurse)
        return self

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    # ----------------------------------------------------------------------------------- image
    def encode_images(self, pixels: torch.Tensor, input_sizes: list[tuple[int, int]],
                      original_sizes: list[tuple[int, int]]) -> list[ImageFeatures]:
        """pixels: (B, 3, S, S) normalised and zero-padded; input_sizes: unpadded (h, w) of each image.

        Differentiable (training runs through it); inference callers wrap it in no_grad.
        """
        b, side = pixels.shape[0], pixels.shape[-1]
        grid = self.config.vision_grid
        pixel_valid = torch.zeros((b, 1, side, side), device=pixels.device)
        for i, (h, w) in enumerate(input_sizes):
            pixel_valid[i, :, :h, :w] = 1
        patch_valid = F.interpolate(pixel_valid, size=(grid, grid), mode="nearest")
        llm_valid = F.interpolate(patch_valid, size=(LLM_IMAGE_GRID, LLM_IMAGE_GRID), mode="nearest")
        tower = self.vision_tower
        feats, deep_feats = tower(pixels.to(device=self.device, dtype=next(tower.parameters()).dtype),
                                  patch_valid.flatten(1))
        feats, deep_feats = feats.to(self.dtype), deep_feats.to(self.dtype)
        m = self.model
        c = feats.shape[-1]
        llm_grid = F.interpolate(feats.transpose(1, 2).reshape(b, c, grid, grid).float(),
                                 size=(LLM_IMAGE_GRID, LLM_IMAGE_GRID), mode="bilinear", align_corners=False)
        llm_tokens = m.mm_projector(llm_grid.to(self.dtype).flatten(2).transpose(1, 2))  # (B, 256, H)
        per_scale = m.out_mm_projector(torch.stack([feats, deep_feats], dim=1))  # (B, 2, g*g, H)
        per_scale = per_scale.transpose(2, 3).reshape(b * FEATURE_SCALES, -1, grid, grid)
        neck = m.image_feature_neck(per_scale).view(b, FEATURE_SCALES, -1, grid, grid)
        return [ImageFeatures(llm_tokens=llm_tokens[i: i + 1], llm_valid=llm_valid[i: i + 1].flatten(1).bool(),
                              mask_features=neck[i], input_size=tuple(input_sizes[i]),
                              original_size=tuple(original_sizes[i])) for i in range(b)]

    def encode_image(self, pixels: torch.Tensor, input_size: tuple[int, int],
                     original_size: tuple[int, int]) -> ImageFeatures:
        """One image: pixels (1, 3, S, S)."""
        return self.encode_images(pixels, [input_size], [original_size])[0]

    # ------------------------------------------------------------------------------------ text
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def codebook_embeddings(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (6N, H) final-norm states that produced [SEG0..5] of N targets -> (N, scales, 256)."""
        emb = self.model.text_hidden_fcs[0](hidden)
        emb = emb.view(-1, FEATURE_SCALES, SEG_TOKENS_PER_SCALE, emb.shape[-1])
        return CODEBOOK_FUSION_WEIGHT * emb.sum(dim=2)

    # ----------------------------------------------------------------------------------- masks
    def decode_masks(self, image: ImageFeatures, prompts: torch.Tensor) -> torch.Tensor:
        """prompts: (N, scales, 256) fused codebook embeddings -> mask logits (N, H, W) at original size."""
        if prompts.shape[0] == 0:
            return torch.zeros((0, *image.original_size), device=self.device)
        md, pe = self.model.mask_decoder, self.model.prompt_encoder
        dense = pe.dense_embedding().to(prompts.dtype)
        feats = image.mask_features
        level0 = md.predict(0, feats[0:1], pe.dense_pe().to(prompts.dtype), prompts[:, 0], dense)
        src1 = md.upsample_2x(feats[1:2]) * (level0.sigmoid() + 1)
        h, w = src1.shape[-2:]
        dense1 = F.interpolate(dense.float(), size=(h, w), mode="bilinear", align_corners=False).to(dense.dtype)
        level1 = md.predict(1, src1, md.pe1((h, w))[None].to(prompts.dtype), prompts[:, 1], dense1)
        size = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
        low_res = torch.zeros((prompts.shape[0], 1, *size), device=prompts.device, dtype=prompts.dtype)
        for level in (level0, level1):  # same summation order as the release
            low_res = low_res + SCALE_FUSION_WEIGHT * F.interpolate(
                level.float(), size, mode="bilinear", align_corners=False).to(level.dtype)
        return self.postprocess_masks(low_res, image.input_size, image.original_size)[:, 0]

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """(N, 1, 128, 128) -> (N, 1, H, W): up to the padded input, crop the padding, resize."""
        side = max(input_size)
        masks = F.interpolate(masks.float(), (side, side), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
