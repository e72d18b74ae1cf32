"""Fixtures for the PixelLM model-core tests: a tiny random checkpoint in the official release layout,
built once per session, and a copy of it taught (teacher forcing) to emit planned answers."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pixellm_ros.model import (ImageFeatures, ImagePrefix, PixelLMForCausalLM, PixelLMTokenizer, ProcessedImage,
                               load_pixellm, prefill_image, preprocess_image)
from tests.support.tiny_checkpoint import (PLANNED, TinyCheckpoint, answer_ids, build_tiny_official_checkpoint,
                                           synthetic_image, teach_answers)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    # One thread: these models are tiny, and OpenMP spin-waiting makes 2 threads on a busy 2-core
    # machine tens of times slower.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> TinyCheckpoint:
    """Tiny random checkpoint in the official layout (bf16 .bin shards + index, separate CLIP folder)."""
    return build_tiny_official_checkpoint(tmp_path_factory.mktemp("tiny_official"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt) -> tuple[PixelLMForCausalLM, PixelLMTokenizer]:
    """The tiny checkpoint loaded in fp32 (random weights). Do not modify it."""
    return load_pixellm(tiny_ckpt.checkpoint)


@pytest.fixture(scope="session")
def test_image() -> ProcessedImage:
    return preprocess_image(synthetic_image(150, 220))


@dataclass
class Taught:
    model: PixelLMForCausalLM
    tok: PixelLMTokenizer
    image: ProcessedImage
    feats: ImageFeatures
    prefix: ImagePrefix
    plans: dict[str, list[int]]  # question -> planned generated ids (ending with </s>)
    loss: float


@pytest.fixture(scope="session")
def taught(tiny_ckpt, test_image) -> Taught:
    """The tiny checkpoint fine-tuned in memory so that greedy decoding emits PLANNED on test_image.
    Shared by many tests: do not modify the model, features or prefix."""
    model, tok = load_pixellm(tiny_ckpt.checkpoint)
    img = test_image
    with torch.no_grad():
        feats = model.encode_image(img.pixels, img.input_size, img.original_size)
    plans = {q: answer_ids(tok, a) for q, a in PLANNED.items()}
    loss = teach_answers(model, tok, feats, plans, steps=200, lr=1e-2, target_loss=5e-3)
    with torch.no_grad():
        feats = model.encode_image(img.pixels, img.input_size, img.original_size)
    prefix = prefill_image(model, tok, feats)
    return Taught(model, tok, img, feats, prefix, plans, loss)
