"""Turn samples into model inputs, mix sources by ratio, and batch them.

The stream is indexed: sample i of the mixture is a pure function of (seed, i), so a resumed run
continues with exactly the samples an uninterrupted run would have seen, and process r of W takes
samples r, r + W, r + 2W, ...
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from pixellm_ros.model.config import CODEBOOK_SIZE
from pixellm_ros.model.generation import split_prompt
from pixellm_ros.model.processing import preprocess_image
from pixellm_ros.model.tokenizer import SEG_TOKENS, PixelLMTokenizer

from ..config import DataConfig, SourceConfig
from .patch_labels import patch_targets
from .sample import SEG_PLACEHOLDER, DataError, Sample
from .synthetic import SyntheticConfig, synthetic_sample

log = logging.getLogger(__name__)
SEG_TEXT = " ".join(SEG_TOKENS)


@dataclass
class Encoded:
    """One sample as the model consumes it."""

    pixels: torch.Tensor  # (3, S, S)
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    head_ids: list[int]  # prompt before the image (with BOS)
    tail_ids: list[int]  # prompt after the image, ending with "ASSISTANT:"
    answer_ids: list[int]  # answer with codebook tokens, then EOS
    masks: torch.Tensor  # (N, H, W) float {0, 1}
    source: str
    target_name_ids: list[list[int]] = field(default_factory=list)  # tokens of each target's name (may be empty)
    patch_classes: torch.Tensor | None = None  # (g*g, NUM_CLASSES) class mix per vision patch (loss.patch_weight)


def answer_with_codebook(answer: str) -> str:
    return answer.replace(SEG_PLACEHOLDER, SEG_TEXT)


def answer_ids(tokenizer: PixelLMTokenizer, answer: str) -> list[int]:
    """The training target of an answer with one "{seg}" per target: its tokens with codebook groups, then EOS."""
    return tokenizer.encode(answer_with_codebook(answer), add_bos=False) + [tokenizer.eos_id]


def encode_sample(sample: Sample, tokenizer: PixelLMTokenizer, image_size: int, cfg: DataConfig,
                  patch_grid: int = 0) -> Encoded:
    """`patch_grid` > 0: also the sample's per-patch class mix on the vision tower's grid, where it has a
    class map (only the auxiliary patch loss reads it; building it costs a one-hot of the padded image)."""
    sample.validate()
    head, tail = split_prompt(tokenizer, sample.question)
    answer = answer_ids(tokenizer, sample.answer)
    if len(tail) > cfg.max_question_tokens + 8:
        raise DataError(f"{sample.source}: question is {len(tail)} tokens (limit {cfg.max_question_tokens})")
    if len(answer) > cfg.max_answer_tokens:
        raise DataError(f"{sample.source}: answer is {len(answer)} tokens (limit {cfg.max_answer_tokens})")
    seg = set(tokenizer.seg_token_ids)
    if sum(i in seg for i in answer) != CODEBOOK_SIZE * len(sample.masks):
        raise DataError(f"{sample.source}: answer does not tokenize to {len(sample.masks)} codebook groups")
    p = preprocess_image(sample.image, image_size)
    names = sample.names if len(sample.names) == len(sample.masks) else []
    patches = None
    if patch_grid and sample.class_map is not None:
        patches = patch_targets(sample.class_map, p.input_size, p.pixels.shape[-1], patch_grid)
    return Encoded(p.pixels[0], p.input_size, p.original_size, head, tail, answer,
                   torch.from_numpy(sample.masks.astype(np.float32)), sample.source,
                   [tokenizer.encode(n, add_bos=False) for n in names], patches)


def source_reader(src: SourceConfig) -> tuple[Callable[[int], Sample], int | None]:
    """(index -> Sample, length or None for an endless stream)."""
    if src.kind in ("synthetic", "randomized", "negative"):
        if src.objects and len(src.objects) != 2:
            raise ValueError(f"{src.kind} source: objects must be [min, max], got {src.objects}")
        cfg = SyntheticConfig(style=src.style, questions_per_scene=src.questions_per_scene, phrasing=src.phrasing,
                              distinct=src.distinct,
                              **({"kinds": tuple(src.kinds)} if src.kinds else {}),
                              **({"colors": tuple(src.colors)} if src.colors else {}),
                              **({"question_mix": dict(src.question_mix)} if src.question_mix else {}),
                              **(dict(zip(("min_objects", "max_objects"), src.objects)) if src.objects else {}))
        make: Callable[[int, int, SyntheticConfig], Sample] = synthetic_sample
        if src.kind != "synthetic":  # domain randomization / negatives (randomize.py; needs scikit-image)
            from .randomize import RandomizeConfig, negative_sample, randomized_sample
            rcfg = RandomizeConfig(scene=cfg)
            fn = randomized_sample if src.kind == "randomized" else negative_sample
            make = lambda seed, i, _cfg: fn(seed, i, rcfg)  # noqa: E731
        if src.size:
            return (lambda i: make(src.seed, i % src.size, cfg)), src.size
        return (lambda i: make(src.seed, i, cfg)), None
    if src.kind == "muse":
        from .muse import MuseDataset
        ds = MuseDataset(src.path, src.image_root)
    elif src.kind == "labelme":
        from .labelme import LabelmeDataset
        ds = LabelmeDataset(src.path)
    elif src.kind == "coco":
        from .coco import CocoDataset
        ds = CocoDataset(src.path, src.image_root)
    else:
        raise ValueError(f"unknown data source kind {src.kind!r}")
    return ds.__getitem__, len(ds)


class MixtureStream:
    """Sample i of the mixture: a source chosen by ratio from (seed, i), then that source's next item."""

    def __init__(self, cfg: DataConfig, tokenizer: PixelLMTokenizer, image_size: int, seed: int,
                 patch_grid: int = 0) -> None:
        self.cfg, self.tokenizer, self.image_size, self.seed = cfg, tokenizer, image_size, seed
        self.patch_grid = patch_grid  # > 0: items carry per-patch class labels (encode_sample)
        self.readers = [source_reader(s) for s in cfg.sources]
        ratios = np.array([s.ratio for s in cfg.sources], float)
        if (ratios <= 0).any():
            raise ValueError("every data source needs a ratio > 0")
        self.cum = np.cumsum(ratios / ratios.sum())
        self.skipped: list[str] = []

    def _pick(self, i: int) -> tuple[int, int]:
        u = np.random.default_rng([self.seed, i, 7]).random()
        k = int(np.searchsorted(self.cum, u, side="right").clip(max=len(self.cum) - 1))
        reader, length = self.readers[k]
        j = i if length is None else int(np.random.default_rng([self.seed, i, 11]).integers(length))
        return k, j

    def __getitem__(self, i: int) -> Encoded:
        for attempt in range(100):
            k, j = self._pick(i if attempt == 0 else i * 1000 + attempt)
            try:
                return encode_sample(self.readers[k][0](j), self.tokenizer, self.image_size, self.cfg, self.patch_grid)
            except DataError as e:
                if self.cfg.on_bad_record == "stop":
                    raise
                log.warning("skipping bad record: %s", e)
                self.skipped.append(str(e))
        raise DataError(f"100 bad records in a row around sample {i}: check the data sources")


def collate(items: Sequence[Encoded]) -> dict:
    return {"pixels": torch.stack([it.pixels for it in items]), "items": list(items)}


class IndexedBatches:
    """Batches for process `rank` of `world`, starting at global sample `start` (for resume).

    With `workers` > 0 the next batches are built ahead in worker processes (a GPU would otherwise
    wait for the CPU to render them). Sample i is a pure function of i, so the batches are the same
    either way, and `position` counts only the batches handed out, which is what a checkpoint needs.
    """

    def __init__(self, stream: MixtureStream, batch_size: int, rank: int = 0, world: int = 1, start: int = 0,
                 workers: int = 0):
        self.stream, self.batch_size, self.rank, self.world, self.position = stream, batch_size, rank, world, start
        self._loader = None
        if workers > 0:
            from torch.utils.data import DataLoader
            self._loader = iter(DataLoader(_Indexed(stream), batch_sampler=self._index_lists(start),
                                           collate_fn=collate, num_workers=workers, prefetch_factor=4,
                                           persistent_workers=True))

    def _indices(self, base: int) -> list[int]:
        return [base + k * self.world + self.rank for k in range(self.batch_size)]

    def _index_lists(self, start: int):
        base = start
        while True:
            yield self._indices(base)
            base += self.batch_size * self.world

    def next_batch(self) -> dict:
        """The next `batch_size` samples of this process; advances the global position by batch*world."""
        idx = self._indices(self.position)
        self.position += self.batch_size * self.world
        if self._loader is not None:  # the loader's sampler yields the same index lists
            return next(self._loader)
        return collate([self.stream[i] for i in idx])


class _Indexed:
    """Map-style view of the stream for torch's DataLoader."""

    def __init__(self, stream: MixtureStream) -> None:
        self.stream = stream

    def __getitem__(self, i: int) -> Encoded:
        return self.stream[i]
