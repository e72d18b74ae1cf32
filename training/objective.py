"""The training objective: the forward pass with teacher forcing (`TrainingModel`) and the weighted loss
(`combine_losses`) over the terms of `losses.LOSS_TERMS`.

`TrainingModel.forward(batch)` returns the loss terms' sums; it is an nn.Module forward so DDP / FSDP /
DeepSpeed (through accelerate) see every trainable parameter, the vision tower included when it trains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixellm_ros.model import PixelLMForCausalLM

from .config import LossConfig
from .data.patch_labels import NUM_CLASSES, balanced_weights, labelled_patches, patch_cross_entropy
from .losses import CE, LOSS_TERMS, MASKS, NAMING, PATCH, PATCHES, TOKENS, TOTAL, LossTerm

NAMING_TEMPERATURE = 16.0
PIXEL_TERMS = tuple(t for t in LOSS_TERMS if t.of_masks is not None)  # computed from each answer's masks


class TrainingModel(nn.Module):
    def __init__(self, model: PixelLMForCausalLM, loss: LossConfig) -> None:
        super().__init__()
        self.pixellm = model
        self.vision_tower = model.vision_tower  # registered here so optimizers and DDP see it
        self.loss_cfg = loss
        # Why a naming head: a from-scratch LLM's codebook states are nearly the same for every target
        # (they sit on the same [SEG] tokens), so the prompts differ by a few percent, the pixel decoder
        # learns "segment every object", and from then on nothing pushes the states apart. Asking a
        # linear probe to read the target's name off its prompt makes the prompts differ from the first
        # steps. It is a cosine classifier with a fixed temperature, so the name must be in the prompt's
        # DIRECTION: a plain linear probe reads a 0.4 % difference by growing its weights, and the
        # decoder still sees one prompt for every target. The head itself stays at its random init (memory.
        # select_trainable trains only `trained_heads`): fixed, nearly orthogonal name directions the prompts
        # must turn towards, which no step can collapse. Not part of PixelLM and not exported.
        self.naming_head = (nn.Linear(model.config.out_dim, model.config.vocab_size, bias=False)
                            if loss.naming_weight > 0 else None)
        # Why patch heads: with the tower unfrozen, the PixelLM losses reach it only through what the LLM and the
        # decoder read, which never asks it to tell a cup from a ball (the embedded model's commonest confusion).
        # Linear probes on both features it hands PixelLM ask exactly that of every patch, as
        # training.pretrain_vision does. Trained (they must follow the moving features); not exported.
        self.patch_heads = None
        self._tower_features: tuple[torch.Tensor, ...] | None = None
        if loss.patch_weight > 0:
            width = model.vision_tower.config.hidden_size
            self.patch_heads = nn.ModuleList(nn.Linear(width, NUM_CLASSES) for _ in range(2))
            self.vision_tower.register_forward_hook(self._keep_tower_features)

    @property
    def trained_heads(self) -> list[nn.Module]:
        """Training-only modules whose weights train with the run (select_trainable)."""
        return [self.patch_heads] if self.patch_heads is not None else []

    def _keep_tower_features(self, module: nn.Module, args, output) -> None:
        self._tower_features = output  # (features, deep features), each (B, g*g, width)

    def forward(self, pixels: torch.Tensor, items: list, seg_ids: list[int]) -> dict[str, torch.Tensor]:
        """Summed loss terms and their counts for this process's batch (see `combine_losses`)."""
        m = self.pixellm
        device = m.device
        feats = m.encode_images(pixels.to(device), [it.input_size for it in items], [it.original_size for it in items])
        embed = m.model.embed_tokens
        rows, labels, seg_pos = [], [], []
        for it, f in zip(items, feats):
            ids_after = torch.tensor(it.tail_ids + it.answer_ids, device=device)
            head = embed(torch.tensor(it.head_ids, device=device))
            rows.append(torch.cat([head, f.llm_tokens[0], embed(ids_after)], dim=0))
            n_prompt = len(it.head_ids) + f.llm_tokens.shape[1] + len(it.tail_ids)
            lab = torch.full((rows[-1].shape[0],), -100, dtype=torch.long, device=device)
            lab[n_prompt:] = torch.tensor(it.answer_ids, device=device)
            labels.append(lab)
            seg_pos.append([n_prompt + j for j, t in enumerate(it.answer_ids) if t in seg_ids])
        length = max(r.shape[0] for r in rows)
        embeds = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])
        key_valid = torch.zeros((len(rows), length), dtype=torch.bool, device=device)
        for i, (it, f, r) in enumerate(zip(items, feats, rows)):
            key_valid[i, : r.shape[0]] = True
            start = len(it.head_ids)
            key_valid[i, start: start + f.llm_valid.shape[1]] = f.llm_valid[0]
        positions = torch.arange(length, device=device)[None].expand(len(rows), -1)
        hidden = m.model(embeds, positions, key_valid)
        logits = m.logits(hidden)
        target = torch.stack([F.pad(lab, (0, length - lab.shape[0]), value=-100) for lab in labels])
        ce_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target[:, 1:].flatten(), ignore_index=-100,
                                 reduction="sum")
        per_mask: dict[LossTerm, list[torch.Tensor]] = {t: [] for t in LOSS_TERMS if t.per == MASKS}
        for i, (it, f) in enumerate(zip(items, feats)):
            if not seg_pos[i]:
                continue
            states = hidden[i, torch.tensor(seg_pos[i], device=device) - 1]  # the states that produced them
            prompts = m.codebook_embeddings(states)
            pred = m.decode_masks(f, prompts).float()
            gt = it.masks.to(device)
            for term in PIXEL_TERMS:
                per_mask[term].append(term.of_masks(pred, gt))
            if self.naming_head is not None and it.target_name_ids:
                per_mask[NAMING].append(self._naming(prompts, it.target_name_ids))
        zero = hidden.sum() * 0
        patch_sum, patches = self._patch_loss(items) if self.patch_heads is not None else (zero, 0)
        return {CE.sum_key: ce_sum, TOKENS: (target[:, 1:] != -100).sum(),
                **{t.sum_key: torch.cat(v).sum() if v else zero for t, v in per_mask.items()},
                MASKS: torch.tensor(sum(len(p) for p in seg_pos) // 6, device=device),
                PATCH.sum_key: patch_sum, PATCHES: torch.tensor(patches, device=device)}

    def _patch_loss(self, items: list) -> tuple[torch.Tensor, int]:
        """(sum over labelled patches of the two heads' mean cross-entropy, labelled patch count) of the batch
        just encoded, object and background patches of each image weighing half each (balanced_weights);
        items without a class map (MUSE, COCO, labelme) add nothing."""
        features, self._tower_features = self._tower_features, None
        total, count = features[0].sum() * 0, 0
        for i, it in enumerate(items):
            if it.patch_classes is None:
                continue
            target = it.patch_classes.to(features[0].device)
            valid = labelled_patches(target)
            weights = balanced_weights(target[valid])
            for head, f in zip(self.patch_heads, features):
                ce = patch_cross_entropy(head(f[i][valid].to(head.weight.dtype)), target[valid])
                total = total + (weights * ce).sum() / 2
            count += int(valid.sum())
        return total, count

    def _naming(self, prompts: torch.Tensor, names: list[list[int]]) -> torch.Tensor:
        """(N, scales, C) prompts -> (N,) mean NLL of each target's name tokens read off each scale's prompt."""
        cosine = F.normalize(prompts.float(), dim=-1) @ F.normalize(self.naming_head.weight.float(), dim=-1).T
        logp = torch.log_softmax(NAMING_TEMPERATURE * cosine, dim=-1)  # (N, scales, V)
        return torch.stack([-logp[j][:, ids].mean() if ids else logp[j].sum() * 0 for j, ids in enumerate(names)])


def combine_losses(parts: dict[str, torch.Tensor], tokens: torch.Tensor, masks: torch.Tensor, cfg: LossConfig,
                   world: int = 1, patches: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Normalise summed terms by the GLOBAL token and mask counts of the step's batch (all processes),
    times `world` because DDP averages gradients over processes. With one process this is the release's
    token-mean CE and mask-mean BCE / DICE; with several it gives the same gradient as one process
    with the whole batch.
    """
    counts = {TOKENS: tokens.clamp(min=1).float(), MASKS: masks.clamp(min=1).float(),
              PATCHES: (parts[PATCHES] if patches is None else patches).clamp(min=1).float()}
    # times world: the mean over processes is the global value
    terms = {t.key: parts[t.sum_key] / counts[t.per] * world for t in LOSS_TERMS}
    loss = sum(t.weight(cfg) * terms[t.key] for t in LOSS_TERMS)
    return {TOTAL: loss, **terms}
