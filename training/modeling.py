"""The training forward pass (teacher forcing), LoRA, and which parameters train.

`TrainingModel.forward(batch)` returns the loss terms; it is an nn.Module forward so DDP / FSDP /
DeepSpeed (through accelerate) see every trainable parameter, the vision tower included when it trains.
"""
from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F
from torch import nn

from pixellm_ros.model import PixelLMForCausalLM

from .config import AUTO_CHECKPOINT_MIN_HIDDEN, DTYPE_NAMES, LoraConfig, LossConfig, ModelConfig, TrainConfig
from .losses import CE, LOSS_TERMS, MASKS, NAMING, TOKENS, TOTAL, LossTerm


NAMING_TEMPERATURE = 16.0
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
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
        # decoder still sees one prompt for every target. Not part of PixelLM and not exported.
        self.naming_head = (nn.Linear(model.config.out_dim, model.config.vocab_size, bias=False)
                            if loss.naming_weight > 0 else None)

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
        return {CE.sum_key: ce_sum, TOKENS: (target[:, 1:] != -100).sum(),
                **{t.sum_key: torch.cat(v).sum() if v else zero for t, v in per_mask.items()},
                MASKS: torch.tensor(sum(len(p) for p in seg_pos) // 6, device=device)}

    def _naming(self, prompts: torch.Tensor, names: list[list[int]]) -> torch.Tensor:
        """(N, scales, C) prompts -> (N,) mean NLL of each target's name tokens read off each scale's prompt."""
        cosine = F.normalize(prompts.float(), dim=-1) @ F.normalize(self.naming_head.weight.float(), dim=-1).T
        logp = torch.log_softmax(NAMING_TEMPERATURE * cosine, dim=-1)  # (N, scales, V)
        return torch.stack([-logp[j][:, ids].mean() if ids else logp[j].sum() * 0 for j, ids in enumerate(names)])


def combine_losses(parts: dict[str, torch.Tensor], tokens: torch.Tensor, masks: torch.Tensor, cfg: LossConfig,
                   world: int = 1) -> dict[str, torch.Tensor]:
    """Normalise summed terms by the GLOBAL token and mask counts of the step's batch (all processes),
    times `world` because DDP averages gradients over processes. With one process this is the release's
    token-mean CE and mask-mean BCE / DICE; with several it gives the same gradient as one process
    with the whole batch.
    """
    counts = {TOKENS: tokens.clamp(min=1).float(), MASKS: masks.clamp(min=1).float()}
    # times world: the mean over processes is the global value
    terms = {t.key: parts[t.sum_key] / counts[t.per] * world for t in LOSS_TERMS}
    loss = sum(t.weight(cfg) * terms[t.key] for t in LOSS_TERMS)
    return {TOTAL: loss, **terms}


def select_trainable(model: TrainingModel, cfg: TrainConfig) -> list[str]:
    """Freeze everything, then unfreeze the configured parts and LoRA weights. Returns trained names."""
    model.requires_grad_(False)
    names = []
    for name, p in model.pixellm.named_parameters():
        if "all" in cfg.trainable or "lora_" in name or any(name == t or name.startswith(t + ".") for t in cfg.trainable):
            p.requires_grad_(True)
            names.append(name)
    if cfg.train_vision_tower:
        model.vision_tower.requires_grad_(True)
        names += [f"vision_tower.{n}" for n, _ in model.vision_tower.named_parameters()]
    return names


def lora_target_names(model: PixelLMForCausalLM, cfg: LoraConfig) -> list[str]:
    pattern = re.compile(cfg.target_modules)
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and pattern.fullmatch(n)]


def add_lora(model: PixelLMForCausalLM, cfg: LoraConfig, adapter: str = "default") -> list[str]:
    """Inject peft LoRA layers into the LLM's target linears (in place). Returns the wrapped names."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model
    targets = lora_target_names(model, cfg)
    if not targets:
        raise ValueError(f"LoRA target pattern {cfg.target_modules!r} matches no linear layer")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none")
    inject_adapter_in_model(peft_cfg, model, adapter_name=adapter)
    return targets


def merge_lora(model: PixelLMForCausalLM) -> int:
    """Fold every LoRA layer into its base linear and remove it (the release's merge). Returns count."""
    from peft.tuners.lora import LoraLayer
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], module.get_base_layer())
            merged += 1
    return merged


def checkpointing_wanted(cfg: ModelConfig, hidden_size: int) -> bool:
    """Resolve model.gradient_checkpointing ("auto": on for LLMs of 7B width, see config.py)."""
    if cfg.gradient_checkpointing == "auto":
        return hidden_size >= AUTO_CHECKPOINT_MIN_HIDDEN
    return bool(cfg.gradient_checkpointing)


def _checkpointed(forward, *args, **kwargs):
    # Only while autograd records: evaluation / no_grad forwards run the layer plainly. Non-reentrant
    # checkpointing handles inputs that need no grad (a frozen layer before any trained one) and keyword
    # arguments; the RNG state is restored for the recompute, so LoRA dropout draws the same mask.
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: TrainingModel, modules: list[str]) -> int:
    """Keep only each layer's input for backward and recompute the layer there (activation memory
    O(layers x sequence x hidden) instead of every intermediate of every layer). `modules`: of
    config.CHECKPOINTABLE. Patches the layers' forward in place, so parameter names (checkpoints,
    adapters) do not change. Returns the number of layers."""
    import torch.utils.checkpoint  # noqa: F401  (torch.utils.checkpoint is not imported by `import torch`)
    layers: list[nn.Module] = []
    if "llm" in modules:
        layers += list(model.pixellm.model.layers)
    if "vision_tower" in modules:
        layers += list(model.vision_tower.vision_model.encoder.layers)
    for layer in layers:
        if not isinstance(layer.forward, functools.partial):
            layer.forward = functools.partial(_checkpointed, type(layer).forward.__get__(layer))
    return len(layers)


def cast_trainable(model: TrainingModel, dtype: torch.dtype) -> int:
    """Hold every parameter that trains in `dtype` (full precision master weights on a bf16 / quantized
    base, as peft's k-bit preparation does); frozen ones keep the base dtype. Returns the count cast."""
    from pixellm_ros.model.checkpoint import release_pages
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            old = p.data
            p.data = old.to(dtype)
            release_pages(old)  # a bf16 base is memory-mapped: drop the copied pages (see checkpoint.py)
            n += 1
    return n


class _NewRows(nn.Module):
    """An embedding / output matrix whose rows >= `first` train (`new_rows`, in the trained dtype) while the
    others stay in the frozen `weight`. `weight` keeps its name, so the module reads like the one it replaces."""

    def __init__(self, base: nn.Module, first: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.first = first
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.new_rows = nn.Parameter(base.weight[first:].detach().to(dtype).clone())

    def folded(self) -> torch.Tensor:
        """`weight` with the trained rows written back (in its dtype)."""
        with torch.no_grad():
            self.weight[self.first:] = self.new_rows.to(self.weight.dtype)
        return self.weight


class NewRowsEmbedding(_NewRows):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        base = F.embedding(ids, self.weight).to(self.new_rows.dtype)
        new = F.embedding((ids - self.first).clamp(min=0), self.new_rows)
        return torch.where((ids >= self.first)[..., None], new, base)


class NewRowsHead(_NewRows):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.linear(x, self.weight[: self.first]), F.linear(x, self.new_rows)], dim=-1)


def train_new_token_rows(model: PixelLMForCausalLM, first: int, dtype: torch.dtype) -> None:
    """Swap embed_tokens and lm_head for modules training only rows >= `first` (config model.token_rows "new")."""
    model.model.embed_tokens = NewRowsEmbedding(model.model.embed_tokens, first, dtype)
    model.lm_head = NewRowsHead(model.lm_head, first, dtype)


def fold_token_rows(model: PixelLMForCausalLM) -> None:
    """Undo train_new_token_rows, the trained rows written into plain nn.Embedding / nn.Linear (for export)."""
    for parent, name, cls in ((model.model, "embed_tokens", nn.Embedding), (model, "lm_head", nn.Linear)):
        module = getattr(parent, name)
        if isinstance(module, _NewRows):
            weight = module.folded()
            with torch.device("meta"):
                plain = cls(weight.shape[1], weight.shape[0], bias=False) if cls is nn.Linear else cls(*weight.shape)
            plain.weight = nn.Parameter(weight, requires_grad=False)
            setattr(parent, name, plain)
