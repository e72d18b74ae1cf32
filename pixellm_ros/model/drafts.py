"""Drafts: the previous answer fed in one pass after the question and kept as far as greedy decoding agrees.

A standing query asks the same question on every frame and the answer rarely changes. Greedy decoding
allows an exact shortcut (speculative decoding with the last answer as the draft): run the question's
tokens AND the draft d_0..d_{n-1} through the LLM in ONE forward pass (teacher forcing). Row j of that pass
is the state that produces answer token j given d_0..d_{j-1}; while its argmax equals d_j, greedy decoding
on this frame would have chosen d_j too. The longest agreeing prefix d_0..d_{k-1} is accepted, its
codebook tokens keep the states of that pass (the masks come from them), the KV cache is cut back to the
question + k tokens (the rejected tail is overwritten later), and the ordinary decode loop continues from
row k, whose argmax is the next token. A steady scene costs one pass instead of one step per token; a
changed one costs that pass and then exactly the steps it would have cost anyway.

Floating point: the batched pass and step-by-step decoding sum in different orders, so their logits differ
by a few 1e-6 in fp32 (measured in tests/model/test_drafts.py). An argmax can only flip between the two when
the top two logits are closer than that. Rows whose top-two margin is below TIE_MARGIN[dtype] are therefore
not trusted: acceptance stops one token earlier and that token is decoded step by step, as regenerating would
(a tie at the question's last row re-runs the question's prefill alone). So: if the two paths' logits differ
by less than TIE_MARGIN / 2, the accepted tokens are exactly the ones regenerating gives.

Sampling (do_sample) ignores the draft: drafts are a greedy-only shortcut here (no speculative-sampling
acceptance rule), so a sampled answer is distributed exactly as without one. Guards (eos, max_targets,
repetition, max_new_tokens, cancel) are checked after every accepted token in the order of the decode loop,
so they stop at the same token with the same stop_reason.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generator, Sequence

import torch

from .llama import KVCache

if TYPE_CHECKING:  # generation imports this module
    from .generation import SamplingConfig, TargetEvent, TextEvent, _Collector
    from .pixellm import PixelLMForCausalLM

# Smallest top-two logit margin trusted from the batched pass, per dtype. fp32: the two paths differ by
# ~1e-6 (tests measure it), so 1e-3 is a wide safety factor; half precisions round to 2^-8 (bf16) / 2^-11
# (fp16) relative, i.e. ~0.1 on logits of ~20, so they need wide margins.
TIE_MARGIN = {torch.float32: 1e-3, torch.float64: 1e-9, torch.float16: 0.1, torch.bfloat16: 0.5}


@dataclass
class DraftOutcome:
    accepted: int  # draft tokens accepted (already added to the collector)
    hidden: torch.Tensor | None  # (1, H) state producing the next token; None: prefill the question again
    stop: str | None  # the answer ended inside the accepted prefix (eos, guard, max_new_tokens, cancelled)


def usable_draft(draft: Sequence[int] | None, sampling: "SamplingConfig", eos_id: int, vocab_size: int) -> list[int]:
    """The part of `draft` worth verifying: nothing when sampling, at most max_new_tokens, nothing after EOS."""
    if not draft or sampling.do_sample:
        return []
    ids = [int(i) for i in draft][: sampling.max_new_tokens]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"draft token ids outside the vocabulary (0..{vocab_size - 1}): {bad[:5]}")
    if eos_id in ids:
        ids = ids[: ids.index(eos_id) + 1]
    return ids


def _first_untrusted(logits: torch.Tensor, draft: list[int], tie_margin: float) -> tuple[int, bool]:
    """(j, tie): row j is the first whose argmax is not draft[j] (or j = len(draft)); tie=True when row j's
    top-two margin is below tie_margin, i.e. row j cannot be trusted to agree with step-by-step decoding."""
    top = logits.float().topk(2, dim=-1)
    preds = top.indices[:, 0].tolist()
    margins = (top.values[:, 0] - top.values[:, 1]).tolist()  # one host sync for the whole draft
    for j, (pred, margin) in enumerate(zip(preds, margins)):
        if margin < tie_margin:
            return j, True
        if j == len(draft) or pred != draft[j]:
            return j, False
    raise AssertionError("unreachable: the last row has no draft token")


@torch.no_grad()
def verify_draft(model: "PixelLMForCausalLM", cache: KVCache, key_valid: torch.Tensor, tail: list[int],
                 draft: list[int], sampling: "SamplingConfig", collector: "_Collector", eos_id: int,
                 cancel: threading.Event | None) -> Generator["TextEvent | TargetEvent", None, DraftOutcome]:
    """Prefill the question `tail` with `draft` after it in one pass (cache holds the image prefix), add the
    accepted tokens to `collector` (yielding their events) and cut the cache back to what is kept.

    key_valid: (1, >= cache.length + len(tail) + len(draft)), the prefix's validity and True after it.
    """
    device, p = model.device, cache.length
    seq = tail + draft
    hidden = model.model(model.model.embed_tokens(torch.tensor([seq], device=device)),
                         torch.arange(p, p + len(seq), device=device)[None], key_valid[:, : p + len(seq)],
                         cache)[0, len(tail) - 1:]  # row j produces answer token j
    logits = model.logits(hidden)
    if sampling.logits_processor is not None:  # each row sees the ids before it, as in the decode loop
        logits = torch.stack([sampling.logits_processor(draft[:j], row) for j, row in enumerate(logits)])
    j, tie = _first_untrusted(logits, draft, TIE_MARGIN.get(hidden.dtype, 1e-3))
    if tie and j == 0:  # the question's own last row is in doubt: prefill the question alone, as without a draft
        cache.length = p
        return DraftOutcome(0, None, None)
    accepted = j - 1 if tie else j  # on a tie, token j-1 (trusted) is decoded again by a step
    for i in range(accepted):
        if cancel is not None and cancel.is_set():
            return DraftOutcome(i, None, "cancelled")
        for event in collector.add(draft[i], hidden[i]):
            yield event
        if draft[i] == eos_id:
            return DraftOutcome(i + 1, None, "eos")
        guard = collector.guard(sampling)
        if guard:
            return DraftOutcome(i + 1, None, guard)
        if len(collector.ids) == sampling.max_new_tokens:
            return DraftOutcome(i + 1, None, "max_new_tokens")
    cache.length = p + len(tail) + accepted  # the rejected tail's k/v are overwritten by the next steps
    return DraftOutcome(accepted, hidden[accepted: accepted + 1], None)
