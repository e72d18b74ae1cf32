"""Compiled decode: one token per call with static shapes, for `torch.compile` (gpt-fast style).

The eager decode writes k/v at a Python-int position and attends over the filled prefix, so every
token has new shapes. Here the cache has a bucketed capacity (a multiple of CAPACITY_BUCKET), the step
takes the token ids, RoPE positions and the cache slot as tensors, writes k/v with `index_copy_` and
attends over the whole capacity with unfilled slots masked: one graph serves every token of every
question whose prompt + answer fits the bucket. On CUDA it runs as a CUDA graph (mode
"reduce-overhead"); the caller syncs once per token, to read the token id.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch

from .llama import KVCache

log = logging.getLogger(__name__)

CAPACITY_BUCKET = 256  # cache capacity is rounded up to this: question lengths share one compiled graph
SPARES = 2  # caches kept for reuse (e.g. batch 1 for ask and one batch size for ask_many)


def capacity_for(needed: int) -> int:
    return -(-needed // CAPACITY_BUCKET) * CAPACITY_BUCKET


class CompiledDecoder:
    """The decode step of a PixelLMForCausalLM, compiled, with a reusable full-capacity KV cache.

    backend/mode go to `torch.compile` (defaults: inductor; "reduce-overhead" = CUDA graphs on CUDA).
    If compiling fails (e.g. a layer dynamo cannot trace), the same step runs uncompiled and
    `fallback_reason` says why: results are the same, only slower.
    """

    def __init__(self, model, backend: str = "inductor", mode: str | None = None) -> None:
        self.model = model
        self.cuda_graphs = mode == "reduce-overhead"
        self._compiled = torch.compile(self._step, backend=backend, mode=mode, dynamic=False, fullgraph=True)
        self.fallback_reason: str | None = None
        # Released caches by (batch, capacity), reused by later questions: CUDA graphs (and the guards of
        # static addresses) need the same buffers again. At most SPARES are kept, the least recent dropped.
        self._spares: dict[tuple[int, int], tuple[KVCache, torch.Tensor]] = {}

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, key_valid: torch.Tensor,
              keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        hidden = m.model.decode_step(m.model.embed_tokens(tokens[:, None]), positions[:, None], slot, key_valid,
                                     keys, values)[:, 0]
        return hidden, m.logits(hidden)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, key_valid: torch.Tensor,
             cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens, positions: (B,) long; slot: (1,) long; key_valid: (B, capacity) -> hidden (B, H), logits (B, V).

        Outputs may be overwritten by the next call (CUDA graphs): clone what must outlive it.
        """
        args = (tokens, positions, slot, key_valid, cache.keys, cache.values)
        if self.fallback_reason is None:
            try:
                return self._compiled(*args)
            except Exception as exc:  # the step is idempotent (it rewrites one slot): rerunning it is safe
                self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning("torch.compile of the decode step failed, decoding uncompiled: %s", self.fallback_reason)
        return self._step(*args)

    @torch.no_grad()
    def warmup(self, prefix_length: int, needed: int, steps: int = 3) -> None:
        """Compile (and on CUDA record the graph) for batch 1 and capacity_for(needed) before the first
        question, so that its answer does not pay for it. One uncompiled step first: layers that change
        themselves on their first forward (bitsandbytes repacks 4-bit weights for the CPU) must not do it
        while being traced."""
        cfg, device = self.model.config, self.model.device
        prefix = KVCache.allocate(cfg, 1, prefix_length, device, self.model.dtype)
        prefix.keys.zero_(), prefix.values.zero_()
        prefix.length = prefix_length
        valid = torch.ones((1, prefix_length), dtype=torch.bool, device=device)
        with self.cache(prefix, valid, 1, needed) as (cache, key_valid):
            pos = torch.tensor([prefix_length], device=device)
            tokens = torch.zeros(1, dtype=torch.long, device=device)
            self._step(tokens, pos, pos, key_valid, cache.keys, cache.values)
            for _ in range(steps):
                self.step(tokens, pos, pos, key_valid, cache)

    @contextmanager
    def cache(self, prefix: KVCache, prefix_valid: torch.Tensor, batch: int,
              needed: int) -> Iterator[tuple[KVCache, torch.Tensor]]:
        """A (batch, capacity_for(needed)) cache holding `prefix`, and its key_valid (batch, capacity) with
        the prefix's validity and True after it. Reused across questions, so CUDA graphs see the same
        addresses; zero-filled when allocated, since masked slots must still be finite."""
        key = (batch, capacity_for(needed))
        spare = self._spares.pop(key, None)
        if spare is None:
            while len(self._spares) >= SPARES:  # free before allocating
                self._spares.pop(next(iter(self._spares)))
            layers, _, heads, _, dim = prefix.keys.shape
            shape = (layers, batch, heads, key[1], dim)
            cache = KVCache(prefix.keys.new_zeros(shape), prefix.values.new_zeros(shape))
            key_valid = torch.ones(key, dtype=torch.bool, device=prefix.keys.device)
            if self.cuda_graphs:
                for t in (cache.keys, cache.values, key_valid):
                    torch._dynamo.mark_static_address(t)
            spare = (cache, key_valid)
        cache, key_valid = spare
        cache.fill_from(prefix)
        key_valid.fill_(True)
        key_valid[:, : prefix.length] = prefix_valid
        try:
            yield cache, key_valid
        finally:
            self._spares[key] = spare
