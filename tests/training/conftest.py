"""Fixtures the training tests share."""
from pathlib import Path

import pytest

from training.init_model import init_model


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny PixelLM as `training.init_model` makes it: the trainer's starting point."""
    return init_model("tiny", tmp_path_factory.mktemp("base") / "model", seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, tokenizer) of a saved tiny PixelLM with random weights: the evaluations' subject."""
    from pixellm_ros.model import save_pixellm
    from pixellm_ros.model.scratch import tiny_random_pixellm

    model, tok = tiny_random_pixellm(0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pixellm(model, tok, path)
    return path, tok
