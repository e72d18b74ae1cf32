"""Answer generation: one prefill and a KV-cached decode, collecting codebook states on the way.

The release re-runs the whole sequence (image included) for every new token and reads the codebook
states from the last step. Here the image prefix (system prompt + image tokens) is prefilled once per
frame and shared by every question on it; each question prefills only its own tokens; each new
token costs one position. The state that produced a codebook token is kept when the token is
chosen, so a target's mask is decoded as soon as its group of 6 codebook tokens is complete.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from .compiled import CompiledDecoder
from .config import CODEBOOK_SIZE, IMAGE_TOKEN_INDEX
from .answer_text import ends_in_word_run, readable_answer, tail_repeats, target_phrase
from .drafts import usable_draft, verify_draft
from .llama import KVCache
from .pixellm import ImageFeatures, PixelLMForCausalLM
from .processing import build_prompt
from .stream import streaming
from .tokenizer import IMAGE_PLACEHOLDER, PixelLMTokenizer


@dataclass
class SamplingConfig:
    max_new_tokens: int = 512  # the release's value
    do_sample: bool = False  # greedy by default, as the release
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    # (generated ids so far, logits (V,)) -> logits: constrained decoding, banned tokens, scripted runs
    logits_processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None
    # Guards against answers that run away (both off, as the release; generate_recompute ignores them):
    max_targets: int = 0  # stop once this many complete targets exist; 0 = no limit
    # Stop when the answer's text tokens (codebook tokens left out: they repeat by design in every
    # multi-target answer) end in an n-gram, n = 1..repetition_ngram, repeated repetition_count times in a row,
    # or its text ends in one word repeated repetition_count times (case and punctuation ignored).
    repetition_ngram: int = 0  # 0 = off
    repetition_count: int = 4


@dataclass
class Target:
    """One target named in the answer: a complete group of 6 codebook tokens."""

    index: int
    phrase: str  # words of the answer that name it
    logits: np.ndarray  # (H, W) float32 mask logits at the original image size
    score: float  # mean sigmoid over the mask's pixels (the release's mask score)
    token_span: tuple[int, int]  # [start, end) of its codebook tokens in the generated ids

    @property
    def mask(self) -> np.ndarray:
        return self.logits > 0

    @property
    def pixel_count(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) in pixels; all zero for an empty mask."""
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


@dataclass
class TextEvent:
    """One generated token. `text` only grows: codebook and special tokens add nothing to it."""

    token_id: int
    text: str  # readable answer so far
    delta: str  # what this token added


@dataclass
class TargetEvent:
    target: Target


@dataclass
class Generation:
    token_ids: list[int]
    raw_text: str  # decode with special tokens kept, as the release prints it
    answer: str  # human-readable: codebook tokens and </s> removed
    targets: list[Target]
    incomplete_codebook_tokens: int  # codebook tokens after the last complete group of 6
    stop_reason: str  # "eos", "max_new_tokens", "max_targets", "repetition" or "cancelled"
    codebook_hidden: torch.Tensor = field(repr=False)  # (n_codebook_tokens, H) producing states
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    draft_tokens: int = 0  # draft ids verified (after trimming: nothing when sampling, none after EOS)
    accepted_draft_tokens: int = 0  # leading answer tokens taken from the draft's one-pass verification


@dataclass
class ImagePrefix:
    """KV cache of `<s>system USER: <im_start>` + image tokens, shared by all questions on one image."""

    cache: KVCache
    key_valid: torch.Tensor  # (1, P) bool
    ids: list[int]  # the prompt ids it covers, with IMAGE_TOKEN_INDEX for the image

    @property
    def length(self) -> int:
        return self.cache.length


def split_prompt(tokenizer: PixelLMTokenizer, question: str, use_im_start_end: bool = True) -> tuple[list[int], list[int]]:
    """Prompt ids before the image (with BOS) and after it, as the release tokenizes them."""
    if IMAGE_PLACEHOLDER in question:
        raise ValueError(f"the question must not contain {IMAGE_PLACEHOLDER}")
    ids = tokenizer.encode_with_image(build_prompt(question, use_im_start_end))
    cut = ids.index(IMAGE_TOKEN_INDEX)
    return ids[:cut], ids[cut + 1:]


@torch.no_grad()
def prefill_image(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, image: ImageFeatures) -> ImagePrefix:
    head, _ = split_prompt(tokenizer, "", model.config.mm_use_im_start_end)
    head_ids = torch.tensor([head], device=model.device)
    embeds = torch.cat([model.model.embed_tokens(head_ids), image.llm_tokens], dim=1)
    valid = torch.cat([torch.ones_like(head_ids, dtype=torch.bool), image.llm_valid], dim=1)
    cache = KVCache.allocate(model.config, 1, embeds.shape[1], model.device, model.dtype)
    positions = torch.arange(embeds.shape[1], device=model.device)[None]
    model.model(embeds, positions, valid, cache)
    return ImagePrefix(cache, valid, head + [IMAGE_TOKEN_INDEX])


class _Sampler:
    def __init__(self, cfg: SamplingConfig, device) -> None:
        self.cfg = cfg
        self.gen = None
        if cfg.do_sample:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, generated: Sequence[list[int]]) -> torch.Tensor:
        """logits: (B, V); generated: ids so far per row -> (B,) token ids."""
        if self.cfg.logits_processor is not None:
            logits = torch.stack([self.cfg.logits_processor(ids, row) for ids, row in zip(generated, logits)])
        if not self.cfg.do_sample:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / max(self.cfg.temperature, 1e-5), dim=-1)
        if self.cfg.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.cfg.top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=self.gen)[:, 0]


class _Collector:
    """Turns a stream of (token, producing hidden state) into text and target events."""

    def __init__(self, model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, image: ImageFeatures) -> None:
        self.model, self.tok, self.image = model, tokenizer, image
        self.seg_ids = set(tokenizer.seg_token_ids)
        self.ids: list[int] = []
        self.seg_positions: list[int] = []
        self.seg_hidden: list[torch.Tensor] = []
        self.targets: list[Target] = []
        self.text_ids: list[int] = []  # self.ids without codebook tokens: what the repetition stop reads
        self.text = ""
        self.pending = b""

    def add(self, token: int, hidden: torch.Tensor) -> list[TextEvent | TargetEvent]:
        events: list[TextEvent | TargetEvent] = []
        if token in self.seg_ids:
            self.seg_positions.append(len(self.ids))
            self.seg_hidden.append(hidden)
        else:
            self.text_ids.append(token)
        self.ids.append(token)
        piece = self.tok.stream_piece(token)
        if isinstance(piece, bytes):  # gather the bytes of a multi-byte character
            self.pending += piece
            try:
                piece, self.pending = self.pending.decode("utf-8"), b""
            except UnicodeDecodeError:
                piece = ""
                if len(self.pending) >= 4:  # not UTF-8 at all: show it as replacement characters
                    piece, self.pending = self.pending.decode("utf-8", "replace"), b""
        delta = piece
        if not self.text:
            delta = delta.lstrip()
        self.text += delta
        events.append(TextEvent(token, self.text, delta))
        if token in self.seg_ids and len(self.seg_hidden) % CODEBOOK_SIZE == 0:
            events.append(TargetEvent(self._decode_target()))
        return events

    def guard(self, sampling: SamplingConfig) -> str | None:
        """The guard that stops the answer after the token just added ("max_targets", "repetition"), or None."""
        if sampling.max_targets and len(self.targets) >= sampling.max_targets:
            return "max_targets"
        if sampling.repetition_ngram and self.ids[-1] not in self.seg_ids:
            if any(tail_repeats(self.text_ids, n) >= sampling.repetition_count
                   for n in range(1, sampling.repetition_ngram + 1)) \
                    or ends_in_word_run(self.text, sampling.repetition_count):
                return "repetition"
        return None

    def _decode_target(self) -> Target:
        k = len(self.targets)
        group = slice(k * CODEBOOK_SIZE, (k + 1) * CODEBOOK_SIZE)
        start, end = self.seg_positions[group][0], self.seg_positions[group][-1] + 1
        prev_end = self.targets[-1].token_span[1] if self.targets else 0
        phrase = target_phrase(readable_answer(self.tok, self.ids[prev_end:start]))
        prompts = self.model.codebook_embeddings(torch.stack(self.seg_hidden[group]))
        logits = self.model.decode_masks(self.image, prompts)[0]
        positive = logits > 0
        score = float(logits.sigmoid()[positive].sum() / (positive.sum() + 1e-6))
        target = Target(k, phrase, logits.float().cpu().numpy(), score, (start, end))
        self.targets.append(target)
        return target

    def result(self, stop_reason: str, prompt_ids: list[int], draft_tokens: int = 0, accepted: int = 0) -> Generation:
        hidden = torch.stack(self.seg_hidden) if self.seg_hidden else torch.zeros((0, self.model.config.hidden_size))
        return Generation(self.ids, self.tok.decode(self.ids), readable_answer(self.tok, self.ids), self.targets,
                          len(self.seg_hidden) % CODEBOOK_SIZE, stop_reason, hidden, prompt_ids, draft_tokens, accepted)


@streaming
@torch.no_grad()
def stream(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, image: ImageFeatures, prefix: ImagePrefix,
           question: str, sampling: SamplingConfig | None = None, cancel: threading.Event | None = None,
           decoder: CompiledDecoder | None = None,
           draft: Sequence[int] | None = None) -> Generator[TextEvent | TargetEvent, None, Generation]:
    """A Stream (model/stream.py) of text and target events while answering; its result is the Generation.

    With a `decoder`, tokens after the first come from its compiled static-shape step (same ids).
    With a `draft` (e.g. the previous frame's answer ids), the question and the draft run in one pass and
    the draft's longest prefix that greedy decoding agrees with is kept (model/drafts.py): same answer,
    fewer steps. Ignored when sampling."""
    sampling = sampling or SamplingConfig()
    _, tail = split_prompt(tokenizer, question, model.config.mm_use_im_start_end)
    draft = usable_draft(draft, sampling, tokenizer.eos_id, model.config.vocab_size)
    if decoder is not None:
        return (yield from _stream_compiled(model, tokenizer, image, prefix, tail, sampling, cancel, decoder, draft))
    device, p = model.device, prefix.length
    cache = prefix.cache.expand(1, p + len(tail) + sampling.max_new_tokens)
    key_valid = torch.ones((1, cache.capacity), dtype=torch.bool, device=device)
    key_valid[:, :p] = prefix.key_valid
    sample = _Sampler(sampling, device)
    collector = _Collector(model, tokenizer, image)
    hidden, accepted, stop = yield from _prefill_question(model, cache, key_valid, p, tail, draft, sampling,
                                                          collector, tokenizer.eos_id, cancel)
    if stop:
        return collector.result(stop, prefix.ids + tail, len(draft), accepted)
    stop = "max_new_tokens"
    for _ in range(sampling.max_new_tokens - accepted):
        if cancel is not None and cancel.is_set():
            stop = "cancelled"
            break
        token = int(sample(model.logits(hidden), [collector.ids])[0])
        for event in collector.add(token, hidden[0]):
            yield event
        if token == tokenizer.eos_id:
            stop = "eos"
            break
        guard = collector.guard(sampling)
        if guard:
            stop = guard
            break
        if len(collector.ids) == sampling.max_new_tokens:
            break
        pos = cache.length
        hidden = model.model(model.model.embed_tokens(torch.tensor([[token]], device=device)),
                             torch.tensor([[pos]], device=device), key_valid[:, : pos + 1], cache)[:, -1]
    return collector.result(stop, prefix.ids + tail, len(draft), accepted)


def _prefill_question(model: PixelLMForCausalLM, cache, key_valid: torch.Tensor, p: int, tail: list[int],
                      draft: list[int], sampling: SamplingConfig, collector: _Collector, eos_id: int,
                      cancel: threading.Event | None):
    """Prefill the question after the image prefix (p positions), with the draft verified on top of it when
    there is one: (hidden state of the last kept position, draft tokens accepted, stop reason or None)."""
    hidden, accepted = None, 0
    if draft:
        kept = yield from verify_draft(model, cache, key_valid, tail, draft, sampling, collector, eos_id, cancel)
        if kept.stop:
            return None, kept.accepted, kept.stop
        hidden, accepted = kept.hidden, kept.accepted
    if hidden is None:
        tail_ids = torch.tensor([tail], device=model.device)
        positions = torch.arange(p, p + len(tail), device=model.device)[None]
        hidden = model.model(model.model.embed_tokens(tail_ids), positions, key_valid[:, : p + len(tail)], cache)[:, -1]
    return hidden, accepted, None


def _stream_compiled(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, image: ImageFeatures,
                     prefix: ImagePrefix, tail: list[int], sampling: SamplingConfig, cancel: threading.Event | None,
                     decoder: CompiledDecoder,
                     draft: list[int]) -> Generator[TextEvent | TargetEvent, None, Generation]:
    """`stream` with the decode step of `decoder`. The question is prefilled eagerly into the decoder's
    cache; the token id is the only host sync per token. On CUDA the next step is launched before this
    token's events (and a mask it completes) are handled, so the GPU never waits for them."""
    device, p = model.device, prefix.length
    needed = p + len(tail) + sampling.max_new_tokens
    with decoder.cache(prefix.cache, prefix.key_valid, 1, needed) as (cache, key_valid):
        sample = _Sampler(sampling, device)
        collector = _Collector(model, tokenizer, image)
        # a draft is verified eagerly in the decoder's cache; the compiled steps continue after the kept prefix
        hidden, accepted, stop = yield from _prefill_question(model, cache, key_valid, p, tail, draft, sampling,
                                                              collector, tokenizer.eos_id, cancel)
        if stop:
            return collector.result(stop, prefix.ids + tail, len(draft), accepted)
        logits = model.logits(hidden)
        pos = torch.tensor([cache.length], device=device)
        ahead = device.type == "cuda"
        stop = "max_new_tokens"
        for _ in range(sampling.max_new_tokens - accepted):
            if cancel is not None and cancel.is_set():
                stop = "cancelled"
                break
            tokens = sample(logits, [collector.ids])
            token = int(tokens[0])
            state = hidden[0].clone()  # a CUDA graph's outputs are overwritten by its next replay
            last = token == tokenizer.eos_id or len(collector.ids) + 1 == sampling.max_new_tokens
            if ahead and not last:
                hidden, logits = decoder.step(tokens, pos, pos, key_valid, cache)
                pos += 1
            for event in collector.add(token, state):
                yield event
            guard = None if token == tokenizer.eos_id else collector.guard(sampling)
            if last or guard:  # a guard may stop after the next step was launched: that step is just unused
                stop = "eos" if token == tokenizer.eos_id else guard or stop
                break
            if not ahead:
                hidden, logits = decoder.step(tokens, pos, pos, key_valid, cache)
                pos += 1
    return collector.result(stop, prefix.ids + tail, len(draft), accepted)


def generate(model, tokenizer, image, prefix, question, sampling=None, cancel=None, decoder=None,
             draft=None) -> Generation:
    """`stream` without the events."""
    return stream(model, tokenizer, image, prefix, question, sampling, cancel, decoder, draft).run()


@torch.no_grad()
def generate_batch(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, image: ImageFeatures,
                   prefix: ImagePrefix, questions: Sequence[str], sampling: SamplingConfig | None = None,
                   decoder: CompiledDecoder | None = None) -> list[Generation]:
    """Answer several questions on one image in one batch (greedy or sampled, no streaming).

    Question tokens are left-padded after the shared image prefix; padding slots are masked as keys
    and each row keeps its own contiguous positions, so every row sees what it would see alone.
    With a `decoder`, tokens after the first come from its compiled static-shape step (same ids).
    """
    sampling = sampling or SamplingConfig()
    tails = [split_prompt(tokenizer, q, model.config.mm_use_im_start_end)[1] for q in questions]
    b, p, s = len(tails), prefix.length, max(len(t) for t in tails)
    if decoder is None:
        cache = prefix.cache.expand(b, p + s + sampling.max_new_tokens)
        key_valid = torch.ones((b, cache.capacity), dtype=torch.bool, device=model.device)
        key_valid[:, :p] = prefix.key_valid
        return _generate_batch(model, tokenizer, image, prefix, tails, sampling, cache, key_valid, None)
    with decoder.cache(prefix.cache, prefix.key_valid, b, p + s + sampling.max_new_tokens) as (cache, key_valid):
        return _generate_batch(model, tokenizer, image, prefix, tails, sampling, cache, key_valid, decoder)


def _generate_batch(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, image: ImageFeatures,
                    prefix: ImagePrefix, tails: list[list[int]], sampling: SamplingConfig, cache: KVCache,
                    key_valid: torch.Tensor, decoder: CompiledDecoder | None) -> list[Generation]:
    """generate_batch on a cache holding the prefix; key_valid (B, capacity): prefix validity, True after."""
    b, p, s = len(tails), prefix.length, max(len(t) for t in tails)
    device = model.device
    ids = torch.full((b, s), tokenizer.unk_id, device=device)
    positions = torch.empty((b, s), dtype=torch.long, device=device)
    for i, tail in enumerate(tails):
        pad = s - len(tail)
        ids[i, pad:] = torch.tensor(tail, device=device)
        key_valid[i, p: p + pad] = False
        positions[i] = torch.arange(p - pad, p + s - pad, device=device).clamp(min=p)
    next_pos = torch.tensor([p + len(t) for t in tails], device=device)
    hidden = model.model(model.model.embed_tokens(ids), positions, key_valid[:, : p + s], cache)[:, -1]
    sample = _Sampler(sampling, device)
    collectors = [_Collector(model, tokenizer, image) for _ in tails]
    stops = ["max_new_tokens"] * b
    active = [True] * b
    logits = model.logits(hidden)
    slot = torch.tensor([cache.length], device=device)
    for step in range(sampling.max_new_tokens):
        tokens = sample(logits, [c.ids for c in collectors])
        token_list = tokens.tolist()  # the one host sync per step
        for i in range(b):
            if active[i]:
                collectors[i].add(token_list[i], hidden[i] if decoder is None else hidden[i].clone())
                if token_list[i] == tokenizer.eos_id:
                    active[i], stops[i] = False, "eos"
                elif guard := collectors[i].guard(sampling):
                    active[i], stops[i] = False, guard
        if not any(active) or step + 1 == sampling.max_new_tokens:
            break
        if decoder is not None:
            hidden, logits = decoder.step(tokens, next_pos + step, slot, key_valid, cache)
            slot += 1
            continue
        pos = cache.length
        hidden = model.model(model.model.embed_tokens(tokens[:, None]), (next_pos + step)[:, None],
                             key_valid[:, : pos + 1], cache)[:, -1]
        logits = model.logits(hidden)
    return [c.result(stop, prefix.ids + t) for c, stop, t in zip(collectors, stops, tails)]


@torch.no_grad()
def generate_recompute(model: PixelLMForCausalLM, tokenizer: PixelLMTokenizer, pixels: torch.Tensor,
                       input_size, original_size, question: str, sampling: SamplingConfig | None = None,
                       ) -> Generation:
    """The release's algorithm, for parity tests and benchmarks: for every new token, encode the image
    again and run the whole sequence with no cache; codebook states come from the last step."""
    sampling = sampling or SamplingConfig()
    sample = _Sampler(sampling, model.device)
    head, tail = split_prompt(tokenizer, question, model.config.mm_use_im_start_end)
    generated: list[int] = []
    device = model.device
    for _ in range(sampling.max_new_tokens):
        image = model.encode_image(pixels, input_size, original_size)
        ids = torch.tensor([head], device=device), torch.tensor([tail + generated], device=device)
        embeds = torch.cat([model.model.embed_tokens(ids[0]), image.llm_tokens, model.model.embed_tokens(ids[1])], 1)
        valid = torch.ones(embeds.shape[:2], dtype=torch.bool, device=device)
        valid[:, len(head): len(head) + image.llm_tokens.shape[1]] = image.llm_valid
        hidden = model.model(embeds, torch.arange(embeds.shape[1], device=device)[None], valid)[0]
        token = int(sample(model.logits(hidden[-1:]), [generated])[0])
        generated.append(token)
        if token == tokenizer.eos_id:
            break
    if not generated:  # nothing generated, nothing encoded yet: the image is still needed for the result
        image = model.encode_image(pixels, input_size, original_size)
    # The producing state of generated token j sits at sequence position offset + j - 1.
    offset = len(head) + image.llm_tokens.shape[1] + len(tail)
    collector = _Collector(model, tokenizer, image)
    for j, token in enumerate(generated):
        collector.add(token, hidden[offset + j - 1])
    stop = "eos" if generated and generated[-1] == tokenizer.eos_id else "max_new_tokens"
    return collector.result(stop, head + [IMAGE_TOKEN_INDEX] + tail)
