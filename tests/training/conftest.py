"""Fixtures the training tests share."""
import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, tokenizer) of a saved tiny PixelLM with random weights: the evaluations' subject."""
    from pixellm_ros.model import save_pixellm
    from pixellm_ros.model.scratch import tiny_random_pixellm

    model, tok = tiny_random_pixellm(0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pixellm(model, tok, path)
    return path, tok
