"""benchmarks/bench_scale.py at a tiny shape (same code path as 7B/13B): the weight writer produces an
official-layout folder that load_pixellm loads, the cache is reused, and a row has the required keys.
Also: config/pixellm_jetson.yaml only sets parameters the node has, with the right types."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from pixellm_ros.model import load_pixellm
from tests.support.tiny_checkpoint import official_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(bench, tmp_path_factory):
    cache = tmp_path_factory.mktemp("scale")
    return cache, *bench.ensure_checkpoint("tiny", cache, tokenizer="train")


def test_writer_makes_an_official_layout_folder(bench, written):
    cache, hf, clip, info = written
    index = json.loads((hf / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 1 and shards == [f"pytorch_model-{i:05d}-of-{n:05d}.bin" for i in range(1, n + 1)]
    assert sorted(p.name for p in hf.glob("*.bin")) == shards
    keys = set(index["weight_map"])
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.mask_decoder.pe1.positional_encoding_gaussian_matrix",
            "model.text_hidden_fcs.0.0.weight", "model.layers.1.self_attn.rotary_emb.inv_freq"} <= keys
    assert not any("vision_tower" in k for k in keys)
    shard = torch.load(hf / shards[0], weights_only=True, mmap=True)
    assert all(t.dtype == torch.bfloat16 for k, t in shard.items() if not k.endswith("inv_freq"))
    config = json.loads((hf / "config.json").read_text())
    assert set(config) == set(official_config(300))  # the release's field set
    assert config["vocab_size"] == 32008 and config["vision_tower"] == bench.CLIP_FOLDER
    assert {"tokenizer.model", "added_tokens.json", "generation_config.json"} <= {p.name for p in hf.iterdir()}
    clip_keys = torch.load(clip / "pytorch_model.bin", weights_only=True, mmap=True)
    assert "vision_model.encoder.layers.11.mlp.fc2.weight" in clip_keys  # all layers, as transformers saves
    model, tok = load_pixellm(hf, clip, dtype=torch.bfloat16)
    assert model.config.vocab_size == 32008 and len(tok.seg_token_ids) == 6
    assert info["disk_bytes"] == sum(p.stat().st_size for p in (cache / "tiny").rglob("*") if p.is_file()
                                     and p.name != "bench_scale.json")


def test_cache_is_reused(bench, written):
    cache, hf, _, _ = written
    before = {p: p.stat().st_mtime_ns for p in hf.iterdir()}
    again = bench.ensure_checkpoint("tiny", cache, tokenizer="train")
    assert again[0] == hf and {p: p.stat().st_mtime_ns for p in hf.iterdir()} == before


def test_a_row_has_the_required_keys(bench, written):
    _, hf, clip, info = written
    spec = {"size": "tiny", "device": "cpu", "precision": "bf16", "path": "eager", "hf_model": str(hf),
            "clip": str(clip), "tokens": 20, "release_tokens": 8, "threads": 1, "tokenizer": info["tokenizer"]}
    row = bench.run_row(spec)
    assert row.get("error") is None, row.get("error")
    assert set(bench.REQUIRED_KEYS) <= set(row)
    assert row["answered"] is True and row["targets"] == 2 and row["new_tokens"] == 20
    assert 0 < row["ttft_s"] <= row["first_mask_s"] <= row["total_s"] and row["decode_tok_s"] > 0
    assert row["load_peak_rss_bytes"] <= row["peak_rss_bytes"] and row["peak_device_bytes"] is None
    assert re.fullmatch(r".+\(\d+ cpus, 1 threads\)", row["device_name"])
    line = bench.row_line(row)
    assert line.startswith("tiny  bf16  eager") and "yes" in line
    assert bench.markdown_rows([row]).startswith("| bf16 eager | ")


def test_planned_answer_has_its_targets(bench, written):
    from pixellm_ros.model import PixelLMTokenizer
    tok = PixelLMTokenizer.from_folder(written[1])
    ids = bench.planned_answer(tok, 40, 2)
    assert len(ids) == 40 and ids[-1] == tok.eos_id and sum(i in tok.seg_token_ids for i in ids) == 12
    short = bench.planned_answer(tok, 8, 1)
    assert len(short) == 8 and sum(i in tok.seg_token_ids for i in short) == 6


def test_jetson_params_file_sets_known_parameters():
    from pixellm_ros.params import load_defaults
    defaults = load_defaults(REPO / "config" / "pixellm.yaml")
    jetson = load_defaults(REPO / "config" / "pixellm_jetson.yaml")
    assert set(jetson) <= set(defaults), f"unknown parameters: {set(jetson) - set(defaults)}"
    for name, value in jetson.items():
        assert type(value) is type(defaults[name]), f"{name}: {value!r} vs default {defaults[name]!r}"
    assert jetson["quantization"] == "4bit"
