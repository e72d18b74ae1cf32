"""Inference engine: load PixelLM once, pay for each image once, answer many questions on it.

Like segment-anything's predictor: ``set_image`` encodes a frame (CLIP, projectors, neck, and the KV
cache of the prompt up to the image); ``ask`` / ``stream`` / ``ask_many`` reuse all of it. Pure
Python + torch: the ROS node, the chat CLI and the benchmarks all sit on top of this class.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from .model import (Generation, ImageFeatures, ImagePrefix, SamplingConfig, Target, TargetEvent, TextEvent,
                    generate_batch, load_pixellm, prefill_image, preprocess_image, stream, streaming)
from .model.compiled import CompiledDecoder
from .model.config import LLM_IMAGE_GRID
from .model.generation import split_prompt

log = logging.getLogger(__name__)
WARMUP_QUESTION_TOKENS = 32  # the compiled decoder is warmed up for a question this long (longer ones may recompile)


@dataclass
class EngineConfig:
    """Everything that decides how the engine runs; the node fills it from its parameters."""

    model_path: str
    vision_tower: str | None = None  # folder of the CLIP tower; None = from the model's config.json
    device: str = "auto"  # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available)
    dtype: str = "auto"  # "float32", "bfloat16", "float16" or "auto" (fp32 on CPU, bf16/fp16 on CUDA)
    quantization: str = "none"  # "none", "8bit", "4bit": decoder linears via bitsandbytes (CUDA or CPU)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_question_chars: int = 2000
    max_image_pixels: int = 16_777_216  # = config/pixellm.yaml and conversions.DEFAULT_MAX_PIXELS (a test checks)
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    compile: str = "auto"  # "true", "false", "auto": torch.compile the decode step (auto: CUDA yes, CPU no)


@dataclass
class Timings:
    """Seconds per stage of one answer. Image stages are 0 when the frame was already encoded."""

    preprocess: float = 0.0
    encode_image: float = 0.0
    prefill_image: float = 0.0
    generate: float = 0.0  # question prefill + decode + mask decoding
    first_token: float = 0.0  # from ask() until the first answer token
    first_mask: float = 0.0  # from ask() until the first target's mask (0 = no target)
    total: float = 0.0
    decode: float = 0.0  # from the first answer token to the last (decode tok/s = (new_tokens - 1) / decode)
    new_tokens: int = 0  # answer tokens generated


@dataclass
class Result:
    question: str
    answer: str  # readable answer: codebook tokens and </s> removed
    raw_text: str  # decoded ids with special tokens, as the release prints them
    token_ids: list[int]
    targets: list[Target]
    incomplete_codebook_tokens: int
    stop_reason: str
    image_size: tuple[int, int]  # (H, W) of the image the masks refer to
    image_cached: bool  # the image features were reused from an earlier question
    timings: Timings
    draft_tokens: int = 0  # ids of the draft (a previous answer) verified; 0 = no draft
    accepted_draft_tokens: int = 0  # leading tokens of this answer taken from the draft in one pass

    def label_image(self) -> np.ndarray:
        """(H, W) uint8: 0 background, k for target k (1-based); later targets win overlaps."""
        label = np.zeros(self.image_size, dtype=np.uint8)
        for t in self.targets:
            label[t.mask] = min(t.index + 1, 255)
        return label


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device 'cpu' or 'auto'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)} or 'auto'")
    return table[dtype]


COMPILE_CHOICES = ("auto", "true", "false")


def resolve_compile(choice: str | bool, device: torch.device) -> bool:
    """Whether to compile the decode step. auto: on CUDA (CUDA graphs); not on CPU, where inductor was
    measured slower than eager on the default model (benchmarks/figures/compile_cpu.json)."""
    if isinstance(choice, bool):
        choice = "true" if choice else "false"
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"unknown compile {choice!r}; use one of {COMPILE_CHOICES}")
    return device.type == "cuda" if choice == "auto" else choice == "true"


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        compiled = resolve_compile(config.compile, self.device)
        t0 = time.perf_counter()
        self.model, self.tokenizer = load_pixellm(config.model_path, config.vision_tower, self.device, self.dtype,
                                                  quantization=config.quantization)
        self.decoder = None
        if compiled:
            self.decoder = CompiledDecoder(self.model, mode="reduce-overhead" if self.device.type == "cuda" else None)
            self._warm_decoder()
        self.load_seconds = time.perf_counter() - t0
        self.model_id = Path(config.model_path).resolve().name
        self.adapter_id = ""
        self._adapter_config: dict | None = None
        self._lock = threading.RLock()
        self._image_key: str | None = None
        self._image: ImageFeatures | None = None
        self._prefix: ImagePrefix | None = None
        self._image_timings = Timings()
        log.info("engine ready: %s on %s/%s in %.1f s", self.model_id, self.device, self.dtype, self.load_seconds)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto", **kwargs) -> "Engine":
        return cls(EngineConfig(model_path=str(path), device=device, dtype=dtype, **kwargs))

    # ---------------------------------------------------------------------------------- image
    def set_image(self, rgb: np.ndarray, image_key: str | None = None) -> bool:
        """Encode an (H, W, 3) uint8 RGB frame unless it is the one already encoded.

        `image_key` identifies the frame (e.g. camera + stamp); without it the pixels are hashed.
        Returns True when the cached features were reused.
        """
        self._check_image(rgb)
        key = image_key if image_key is not None else _pixel_hash(rgb)
        with self._lock:
            if key == self._image_key and self._image is not None:
                return True
            self._drop_image()
            t0 = time.perf_counter()
            processed = preprocess_image(rgb, self.model.config.resize_vision_tower_size)
            t1 = time.perf_counter()
            with torch.no_grad():
                image = self.model.encode_image(processed.pixels.to(self.device), processed.input_size,
                                                processed.original_size)
            self._sync()
            t2 = time.perf_counter()
            prefix = prefill_image(self.model, self.tokenizer, image)
            self._sync()
            t3 = time.perf_counter()
            self._image, self._prefix, self._image_key = image, prefix, key
            self._image_timings = Timings(preprocess=t1 - t0, encode_image=t2 - t1, prefill_image=t3 - t2)
            return False

    def _check_image(self, rgb: np.ndarray) -> None:
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got "
                             f"{getattr(rgb, 'shape', type(rgb))} {getattr(rgb, 'dtype', '')}")
        h, w = rgb.shape[:2]
        if h < 1 or w < 1:
            raise ValueError(f"empty image {h}x{w}")
        if h * w > self.config.max_image_pixels:
            raise ValueError(f"image {w}x{h} exceeds the limit of {self.config.max_image_pixels} pixels")

    # ------------------------------------------------------------------------------ questions
    def _check_question(self, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        if len(question) > self.config.max_question_chars:
            raise ValueError(f"the question has {len(question)} characters; the limit is "
                             f"{self.config.max_question_chars}")
        return question.strip()

    @streaming
    def stream(self, question: str, sampling: SamplingConfig | None = None, cancel: threading.Event | None = None,
               draft: Result | Sequence[int] | None = None) -> Generator[TextEvent | TargetEvent, None, Result]:
        """A Stream (model/stream.py) of text pieces and each target as soon as its mask is decoded; its result
        is the Result. Lazy: the question is checked and the engine taken when the first event is asked for.

        `draft`: a previous Result (or its token ids) for the same question, e.g. on the previous frame of a
        standing query. It is verified in one pass and kept as far as greedy decoding agrees: the answer is
        the one without a draft (model/drafts.py), usually for one pass instead of one step per token.
        `Result.accepted_draft_tokens` says how much was kept. Ignored when sampling."""
        question = self._check_question(question)
        draft_ids = draft.token_ids if isinstance(draft, Result) else draft
        with self._lock:
            if self._image is None or self._prefix is None:
                raise RuntimeError("no image set: call set_image() first")
            image, prefix = self._image, self._prefix
            image_timings, image_s = self._take_image_timings()
            t0 = time.perf_counter()
            first_token = first_mask = last_token = 0.0
            events = stream(self.model, self.tokenizer, image, prefix, question, sampling or self.config.sampling,
                            cancel, self.decoder, draft_ids)
            for event in events:
                now = time.perf_counter() - t0
                if isinstance(event, TextEvent):
                    first_token, last_token = first_token or now, now
                if isinstance(event, TargetEvent) and not first_mask:
                    first_mask = now
                yield event
            generation: Generation = events.result
            self._sync()
            elapsed = time.perf_counter() - t0
            timings = replace(image_timings, generate=elapsed, first_token=first_token + image_s,
                              first_mask=(first_mask + image_s) if first_mask else 0.0, total=elapsed + image_s,
                              decode=last_token - first_token, new_tokens=len(generation.token_ids))
            return self._result(question, generation, image, timings, cached=image_s == 0)

    def ask(self, question: str, sampling: SamplingConfig | None = None, cancel: threading.Event | None = None,
            draft: Result | Sequence[int] | None = None) -> Result:
        return self.stream(question, sampling, cancel, draft).run()

    def ask_many(self, questions: Sequence[str], sampling: SamplingConfig | None = None) -> list[Result]:
        """Answer several questions on the current image in one batch."""
        questions = [self._check_question(q) for q in questions]
        with self._lock:
            if self._image is None or self._prefix is None:
                raise RuntimeError("no image set: call set_image() first")
            image_timings, image_s = self._take_image_timings()
            t0 = time.perf_counter()
            gens = generate_batch(self.model, self.tokenizer, self._image, self._prefix, questions,
                                  sampling or self.config.sampling, self.decoder)
            self._sync()
            elapsed = time.perf_counter() - t0
            timings = replace(image_timings, generate=elapsed, total=elapsed + image_s)
            return [self._result(q, g, self._image, replace(timings, new_tokens=len(g.token_ids)), cached=image_s == 0)
                    for q, g in zip(questions, gens)]

    def _take_image_timings(self) -> tuple[Timings, float]:
        """The image stages' timings, charged to the first answer after set_image only (later: zeros)."""
        t, self._image_timings = self._image_timings, Timings()
        return t, t.preprocess + t.encode_image + t.prefill_image

    def _result(self, question: str, g: Generation, image: ImageFeatures, timings: Timings, cached: bool) -> Result:
        return Result(question=question, answer=g.answer, raw_text=g.raw_text, token_ids=g.token_ids,
                      targets=g.targets, incomplete_codebook_tokens=g.incomplete_codebook_tokens,
                      stop_reason=g.stop_reason, image_size=image.original_size, image_cached=cached,
                      timings=timings, draft_tokens=g.draft_tokens, accepted_draft_tokens=g.accepted_draft_tokens)

    # ------------------------------------------------------------------------------- adapters
    def load_adapter(self, folder: str | Path) -> str:
        """Apply a LoRA adapter made by training/ (replacing the active one). Returns its id.

        On failure the engine is left with no adapter (the base model), never half-applied.
        """
        from .model.adapters import apply_adapter
        folder = Path(folder)
        with self._lock:
            self._remove_adapter()
            self._drop_image()
            try:
                self._adapter_config = apply_adapter(self.model, folder)
            except Exception:
                self.unload_adapter()
                raise
            self.adapter_id = folder.name
            self._warm_decoder()
            log.info("adapter %s applied", self.adapter_id)
            return self.adapter_id

    def unload_adapter(self) -> None:
        """Back to the base model: LoRA layers removed, trained modules reloaded from the base folder."""
        with self._lock:
            if self._remove_adapter():
                self._warm_decoder()

    def _remove_adapter(self) -> bool:
        """unload_adapter without the decoder warm-up; False when there was nothing to remove."""
        from .model.adapters import lora_layers, remove_adapter
        if self._adapter_config is None and not lora_layers(self.model):
            return False
        saved = (self._adapter_config or {}).get("saved_modules", [])
        remove_adapter(self.model, self.config.model_path, saved)
        self.model.to(self.device, self.dtype)
        self._adapter_config, self.adapter_id = None, ""
        self._drop_image()
        return True

    def _warm_decoder(self) -> None:
        """Compile the decode step for batch 1 and a typical question now (at load, after an adapter change:
        the modules changed, so the graph is made again), not during the next answer."""
        if self.decoder is None:
            return
        head, _ = split_prompt(self.tokenizer, "", self.model.config.mm_use_im_start_end)
        prefix = len(head) + LLM_IMAGE_GRID ** 2
        self.decoder.warmup(prefix, prefix + WARMUP_QUESTION_TOKENS + self.config.sampling.max_new_tokens)

    def _drop_image(self) -> None:
        """Cached prefixes depend on the LLM weights: forget them when the weights change."""
        self._image_key = self._image = self._prefix = None

    # ------------------------------------------------------------------------------ lifecycle
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def memory_bytes(self) -> int:
        """Device memory held by torch on the engine's device (0 on CPU, where it is not tracked)."""
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def close(self) -> None:
        """Drop the model and caches and return device memory."""
        with self._lock:
            self._drop_image()
            if self.decoder is not None and self.decoder.cuda_graphs:
                torch._dynamo.reset()  # recorded CUDA graphs hold device memory (for every engine in the process)
            self.model = self.tokenizer = self.decoder = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pixel_hash(rgb: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()
