"""The module tree's state dict matches the released PixelLM-7B / 13B checkpoints key for key, shape for
shape (from the key list in /work/shared/design/pixellm_checkpoint_keys.md), built on the meta device."""
from __future__ import annotations

import itertools
import re

import pytest
import torch

from tests.support.tiny_checkpoint import KEYS_DOC
from pixellm_ros.model import PixelLMConfig, PixelLMForCausalLM

SIZES = {
    "7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    "13B": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824),
}
NON_LLAMA_PARAMS = {"7B": 110_958_896, "13B": 162_870_576}
PLACEHOLDERS = {"T": range(2), "L": range(2), "M": range(4), "P": range(4)}


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def documented_keys(size: str) -> dict[str, tuple[int, ...]]:
    if not KEYS_DOC.is_file():
        pytest.skip(f"{KEYS_DOC} not available")
    keys: dict[str, tuple[int, ...]] = {}
    for line in KEYS_DOC.read_text().splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|\s*$", line)
        if not m:
            continue
        key, shape7, shape13 = m.groups()
        if not key.startswith(("model.", "lm_head.")):
            continue  # the config.json field table has the same row format
        shape7 = parse_shape(shape7)
        shape = shape7 if size == "7B" or shape13.strip() == "same" else parse_shape(shape13)
        names = re.findall(r"\{([A-Z])\}", key)
        for values in itertools.product(*(PLACEHOLDERS[n] for n in names)):
            concrete = key
            for n, v in zip(names, values):
                concrete = concrete.replace("{" + n + "}", str(v), 1)
            keys[concrete] = shape
    assert len(keys) > 100, "could not parse the key table"
    # LLaMA layer keys, described in prose in the document (rotary inv_freq excluded: ignored on load)
    s = SIZES[size]
    h, inter = s["hidden_size"], s["intermediate_size"]
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj in "qkvo":
            keys[p + f"self_attn.{proj}_proj.weight"] = (h, h)
        keys[p + "mlp.gate_proj.weight"] = (inter, h)
        keys[p + "mlp.up_proj.weight"] = (inter, h)
        keys[p + "mlp.down_proj.weight"] = (h, inter)
        keys[p + "input_layernorm.weight"] = (h,)
        keys[p + "post_attention_layernorm.weight"] = (h,)
    return keys


def meta_model(size: str) -> PixelLMForCausalLM:
    cfg = PixelLMConfig(vocab_size=32008, mm_hidden_size=1024, **SIZES[size])
    with torch.device("meta"):
        return PixelLMForCausalLM(cfg)


@pytest.mark.parametrize("size", ["7B", "13B"])
def test_state_dict_matches_release(size):
    expected = documented_keys(size)
    state = meta_model(size).state_dict()
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing, f"{len(missing)} released keys missing from the model: {missing[:10]}"
    assert not unexpected, f"{len(unexpected)} model keys not in the release: {unexpected[:10]}"
    wrong = [(k, got[k], expected[k]) for k in expected if got[k] != expected[k]]
    assert not wrong, f"shape mismatches: {wrong[:10]}"
    assert not any("vision_tower" in k or "inv_freq" in k for k in got)


@pytest.mark.parametrize("size", ["7B", "13B"])
def test_non_llama_parameter_count(size):
    if not KEYS_DOC.is_file():
        pytest.skip(f"{KEYS_DOC} not available")
    state = meta_model(size).state_dict()
    llama = re.compile(r"^(model\.layers\.|model\.embed_tokens\.|model\.norm\.|lm_head\.)")
    count = sum(v.numel() for k, v in state.items() if not llama.match(k))
    assert count == NON_LLAMA_PARAMS[size]
    doc = KEYS_DOC.read_text().replace(",", "")
    assert str(NON_LLAMA_PARAMS[size]) in doc
