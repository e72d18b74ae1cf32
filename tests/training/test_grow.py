"""training.grow: a deeper LLM that answers exactly as the model it grew from, and whose new layers train."""
import json

import numpy as np
import pytest
import torch

from pixellm_ros.engine import Engine
from pixellm_ros.model import load_pixellm
from pixellm_ros.model.generation import SamplingConfig
from training.grow import GROWN_FILE, grow, grow_llm, insertion_points


def test_insertion_points_spread_new_layers_over_the_original_ones():
    assert insertion_points(3, 3) == [0, 1, 2]
    assert insertion_points(4, 2) == [1, 3]
    assert insertion_points(3, 1) == [2]
    for bad in (0, 4):
        with pytest.raises(ValueError, match="can add 1 to 3 layers"):
            insertion_points(3, bad)


def _hidden(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(2, 7, model.config.hidden_size, generator=g)
    positions = torch.arange(7).expand(2, 7)
    return model.model(embeds, positions, torch.ones(2, 7, dtype=torch.bool))


def test_grown_llm_computes_the_same_and_its_new_layers_learn(tiny):
    folder, _ = tiny
    model, _ = load_pixellm(folder)
    before = _hidden(model)
    layers = model.config.num_hidden_layers
    grow_llm(model, 2 * layers)
    assert len(model.model.layers) == model.config.num_hidden_layers == 2 * layers
    assert torch.equal(_hidden(model), before)  # a new layer adds exactly zero to the residual stream
    new = model.model.layers[1]
    assert new is not model.model.layers[0] and torch.equal(new.self_attn.q_proj.weight,
                                                            model.model.layers[0].self_attn.q_proj.weight)
    model.requires_grad_(True)
    _hidden(model).square().sum().backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0


def test_grown_folder_answers_like_its_source(tiny, tmp_path):
    folder, _ = tiny
    out = grow(folder, 3, tmp_path / "grown")
    record = json.loads((out / GROWN_FILE).read_text())
    assert record["layers"] == 3 and record["source"] == str(folder)
    sampling = SamplingConfig(max_new_tokens=12)
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
    results = []
    for path in (folder, out):
        engine = Engine.from_pretrained(path, device="cpu", dtype="float32", sampling=sampling)
        assert engine.model.config.num_hidden_layers == (3 if path == out else record["layers_before"])
        engine.set_image(rgb)
        results.append(engine.ask("Where is the red cup?"))
    a, b = results
    assert a.token_ids == b.token_ids and len(a.targets) == len(b.targets)
    for t, u in zip(a.targets, b.targets):
        assert np.array_equal(t.mask, u.mask)
