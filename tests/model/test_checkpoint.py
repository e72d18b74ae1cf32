"""Loading the official hf_model layout, strict key checking, safetensors round trip, tokenizer files."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.tiny_checkpoint import Q_ONE, Q_THREE
from pixellm_ros.model import (CheckpointError, PixelLMTokenizer, generate, load_pixellm,
                               prefill_image, save_pixellm)
from tests.support.tiny_checkpoint import ADDED_TOKENS, VISION_FOLDER


def copy_checkpoint(tiny_ckpt, dst: Path) -> Path:
    """Copy checkpoint + CLIP folder side by side under dst; returns the checkpoint folder."""
    shutil.copytree(tiny_ckpt.checkpoint, dst / "checkpoint")
    shutil.copytree(tiny_ckpt.vision, dst / VISION_FOLDER)
    return dst / "checkpoint"


def edit_shard(ckpt: Path, edit) -> None:
    """Apply `edit(shard_dict, file_name)` to every shard, rewriting shards and index."""
    index_path = ckpt / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    files = sorted(set(index["weight_map"].values()))
    weight_map = {}
    for name in files:
        shard = torch.load(ckpt / name, weights_only=True)
        edit(shard, name)
        torch.save(shard, ckpt / name)
        weight_map.update({k: name for k in shard})
    index["weight_map"] = weight_map
    index_path.write_text(json.dumps(index))


# ------------------------------------------------------------------------------------------ layout
def test_fixture_is_in_official_layout(tiny_ckpt):
    ckpt = tiny_ckpt.checkpoint
    shards = sorted(p.name for p in ckpt.glob("pytorch_model-*.bin"))
    assert len(shards) >= 2, "the tiny checkpoint should be sharded like a released one"
    assert set(tiny_ckpt.shard_of.values()) == set(shards)
    assert not list(ckpt.glob("*.safetensors"))
    assert all(t.dtype == torch.bfloat16 for k, t in tiny_ckpt.state_dict.items() if "inv_freq" not in k)
    assert any(k.endswith("rotary_emb.inv_freq") for k in tiny_ckpt.shard_of)
    assert not any("vision_tower" in k for k in tiny_ckpt.shard_of)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["vision_tower"] == cfg["mm_vision_tower"] == VISION_FOLDER  # relative, as released
    assert cfg["vocab_size"] == tiny_ckpt.base_vocab + 8
    fixture_cfg = Path(__file__).resolve().parents[2].parent / "shared/fixtures/pixellm_official_tiny/checkpoint/config.json"
    if fixture_cfg.is_file():  # same field set as the official fixture's config
        assert set(cfg) == set(json.loads(fixture_cfg.read_text()))


def test_load_official_layout(tiny_ckpt, tiny_model):
    model, tok = tiny_model
    state = model.state_dict()
    written = {k: v for k, v in tiny_ckpt.state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    assert set(state) == set(written)
    for key, value in written.items():
        assert state[key].dtype == torch.float32, key
        assert torch.equal(state[key], value.float()), key  # bf16 -> fp32 is exact
    assert model.config.vocab_size == len(tok) == tiny_ckpt.base_vocab + 8
    assert model.config.rms_norm_eps == 1e-6  # read from config.json, not hard-coded
    # vision tower: from its own folder, only the layers needed (hidden_states[-2] and [-11] of 12)
    tower = model.vision_tower
    assert len(tower.vision_model.encoder.layers) == 11
    assert tower.vision_model.embeddings.position_embedding.weight.shape == (32 * 32 + 1, 32)
    raw = torch.load(tiny_ckpt.vision / "pytorch_model.bin", weights_only=True)
    tstate = tower.state_dict()
    for key in ("vision_model.pre_layrnorm.weight", "vision_model.encoder.layers.10.mlp.fc2.weight",
                "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.class_embedding"):
        assert torch.equal(tstate[key], raw[key]), key
    # the resized table keeps the old last row as its last row (release quirk)
    assert torch.equal(tstate["vision_model.embeddings.position_embedding.weight"][-1],
                       raw["vision_model.embeddings.position_embedding.weight"][-1])


def test_inv_freq_ignored_and_rope_recomputed(tiny_ckpt, tiny_model):
    model, _ = tiny_model
    assert not any("inv_freq" in k for k in model.state_dict())
    head_dim = model.config.head_dim
    expected = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    torch.testing.assert_close(model.model.rotary.inv_freq, expected)


def test_load_bf16(tiny_ckpt):
    model, _ = load_pixellm(tiny_ckpt.checkpoint, dtype=torch.bfloat16)
    state = model.state_dict()
    for key, value in tiny_ckpt.state_dict.items():
        if not key.endswith("inv_freq"):
            assert state[key].dtype == torch.bfloat16 and torch.equal(state[key], value), key


def test_single_file_checkpoint(tiny_ckpt, tmp_path, tiny_model):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    merged = {}
    for name in sorted(set(tiny_ckpt.shard_of.values())):
        merged.update(torch.load(ckpt / name, weights_only=True))
        (ckpt / name).unlink()
    (ckpt / "pytorch_model.bin.index.json").unlink()
    torch.save(merged, ckpt / "pytorch_model.bin")
    model, _ = load_pixellm(ckpt)
    ref = tiny_model[0].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_explicit_vision_tower_argument(tiny_ckpt, tmp_path):
    shutil.copytree(tiny_ckpt.checkpoint, tmp_path / "alone")  # no CLIP folder next to it
    with pytest.raises(FileNotFoundError, match=VISION_FOLDER):
        load_pixellm(tmp_path / "alone")
    model, _ = load_pixellm(tmp_path / "alone", vision_tower=tiny_ckpt.vision)
    assert len(model.vision_tower.vision_model.encoder.layers) == 11


# ------------------------------------------------------------------------------------ strictness
def test_unknown_key_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    extra = "model.mask_decoder.some_new_head.weight"

    def add(shard, name):
        if name.startswith("pytorch_model-00001"):
            shard[extra] = torch.zeros(3, dtype=torch.bfloat16)

    edit_shard(ckpt, add)
    with pytest.raises(CheckpointError, match=extra.replace(".", r"\.")):
        load_pixellm(ckpt)


def test_vision_tower_key_in_checkpoint_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    key = "model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight"

    def add(shard, name):
        if name.startswith("pytorch_model-00001"):
            shard[key] = torch.ones(32, dtype=torch.bfloat16)

    edit_shard(ckpt, add)
    with pytest.raises(CheckpointError, match="vision_tower"):
        load_pixellm(ckpt)


def test_missing_key_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    gone = "model.mask_decoder.pe1.positional_encoding_gaussian_matrix"  # a buffer: must be loaded too

    def drop(shard, name):
        shard.pop(gone, None)

    edit_shard(ckpt, drop)
    with pytest.raises(CheckpointError, match=gone.replace(".", r"\.")):
        load_pixellm(ckpt)


def test_wrong_shape_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    key = "model.layers.1.mlp.up_proj.weight"

    def reshape(shard, name):
        if key in shard:
            shard[key] = torch.zeros(64, 64, dtype=torch.bfloat16)

    edit_shard(ckpt, reshape)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_pixellm(ckpt)


def test_missing_shard_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    (ckpt / sorted(set(tiny_ckpt.shard_of.values()))[-1]).unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002"):
        load_pixellm(ckpt)


def test_vision_width_mismatch_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_hidden_size"] = 48
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mm_hidden_size"):
        load_pixellm(ckpt)


def test_no_weights_is_an_error(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    for p in ckpt.glob("pytorch_model*"):
        p.unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_pixellm(ckpt)


def test_loading_never_unpickles_code(tiny_ckpt, monkeypatch):
    calls = []
    real_load = torch.load

    def guarded_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, f"torch.load without weights_only=True: {args} {kwargs}"
        calls.append(args[0] if args else kwargs.get("f"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded_load)
    load_pixellm(tiny_ckpt.checkpoint)
    names = {Path(c).name for c in calls}
    assert set(tiny_ckpt.shard_of.values()) <= names  # the .bin shards really went through torch.load
    assert "pytorch_model.bin" in names  # and the CLIP pickle


def test_malicious_pickle_is_refused(tiny_ckpt, tmp_path):
    """A .bin holding a pickled callable must not run it (weights_only refuses it)."""
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    first = sorted(set(tiny_ckpt.shard_of.values()))[0]
    shard = torch.load(ckpt / first, weights_only=True)
    shard["evil"] = Evil()
    torch.save(shard, ckpt / first)
    with pytest.raises(Exception):
        load_pixellm(ckpt)
    assert not marker.exists()


# --------------------------------------------------------------------------------- save round trip
def test_save_safetensors_round_trip(taught, tmp_path):
    model = copy.deepcopy(taught.model)  # save_pixellm may touch model.config
    out = save_pixellm(model, taught.tok, tmp_path / "saved")
    files = {p.name for p in out.iterdir()}
    assert not any(name.endswith(".bin") for name in files)
    assert any(name.endswith(".safetensors") for name in files)
    assert {"config.json", "tokenizer.model", "added_tokens.json", "vision_tower"} <= files
    assert (out / "vision_tower" / "config.json").is_file()
    assert list((out / "vision_tower").glob("*.safetensors"))

    # self-contained: moved elsewhere, with no CLIP folder anywhere near it, it still loads
    moved = tmp_path / "elsewhere" / "deep" / "model"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    loaded, tok = load_pixellm(moved)

    a, b = taught.model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ta, tb = taught.model.vision_tower.state_dict(), loaded.vision_tower.state_dict()
    assert set(ta) == set(tb)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert tok.added_tokens == taught.tok.added_tokens
    assert tok.encode("Where is the cat? [SEG0]") == taught.tok.encode("Where is the cat? [SEG0]")

    img = taught.image
    with torch.no_grad():
        feats = loaded.encode_image(img.pixels, img.input_size, img.original_size)
    prefix = prefill_image(loaded, tok, feats)
    for q in (Q_ONE, Q_THREE):
        ref = generate(taught.model, taught.tok, taught.feats, taught.prefix, q)
        new = generate(loaded, tok, feats, prefix, q)
        assert new.token_ids == ref.token_ids == taught.plans[q]
        assert len(new.targets) == len(ref.targets) >= 1
        for t0, t1 in zip(ref.targets, new.targets):
            np.testing.assert_allclose(t1.logits, t0.logits, atol=1e-6)
            assert t1.logits.shape == img.original_size


def test_save_does_not_change_the_model_config(taught, tmp_path):
    """save_pixellm must not rewrite the caller's model.config (vision_tower -> "vision_tower"), or a later
    save_pixellm(..., include_vision_tower=False) writes a config pointing at a folder that is not there."""
    model = copy.deepcopy(taught.model)
    before = model.config.vision_tower
    save_pixellm(model, taught.tok, tmp_path / "a")
    assert model.config.vision_tower == before


def test_saved_without_vision_tower_keeps_its_reference(taught, tiny_ckpt, tmp_path):
    model = copy.deepcopy(taught.model)
    out = save_pixellm(model, taught.tok, tmp_path / "b", include_vision_tower=False)
    assert not (out / "vision_tower").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vision_tower"] == VISION_FOLDER
    loaded, _ = load_pixellm(out, vision_tower=tiny_ckpt.vision)
    assert all(torch.equal(v, taught.model.state_dict()[k]) for k, v in loaded.state_dict().items())


# ------------------------------------------------------------------------------------- tokenizer
def test_added_tokens_distinct(tiny_ckpt, tiny_model):
    _, tok = tiny_model
    ids = [tok.added_tokens[t] for t in ADDED_TOKENS]
    assert ids == list(range(tiny_ckpt.base_vocab, tiny_ckpt.base_vocab + 8))
    assert len(set(tok.seg_token_ids)) == 6
    assert tok.seg_token_ids == ids[:6]
    # each added token encodes to its own single id, whitespace around it stripped (slow LLaMA tokenizer)
    for t, i in tok.added_tokens.items():
        assert tok.encode(f"a {t} b", add_bos=False) == tok.encode("a", add_bos=False) + [i] + tok.encode("b", add_bos=False)
    assert tok.decode(tok.seg_token_ids) == " ".join(ADDED_TOKENS[:6])


def test_duplicate_added_token_ids_raise(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    added = json.loads((ckpt / "added_tokens.json").read_text())
    added["[SEG1]"] = added["[SEG0]"]  # the bug users hit: several codebook tokens sharing one id
    (ckpt / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(ValueError, match="share ids"):
        PixelLMTokenizer.from_folder(ckpt)
    with pytest.raises(ValueError):
        load_pixellm(ckpt)


def test_added_token_inside_base_vocab_raises(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    added = json.loads((ckpt / "added_tokens.json").read_text())
    added["[SEG3]"] = 5
    (ckpt / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(ValueError, match="base vocabulary"):
        PixelLMTokenizer.from_folder(ckpt)


def test_missing_codebook_token_raises(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    added = json.loads((ckpt / "added_tokens.json").read_text())
    del added["[SEG5]"]
    (ckpt / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(ValueError, match=r"\[SEG5\]"):
        PixelLMTokenizer.from_folder(ckpt)


def test_tokenizer_larger_than_vocab_raises(tiny_ckpt, tmp_path):
    ckpt = copy_checkpoint(tiny_ckpt, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vocab_size"] -= 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_pixellm(ckpt)


def test_tokenizer_save_round_trip(tiny_model, tmp_path):
    _, tok = tiny_model
    tok.save(tmp_path)
    again = PixelLMTokenizer.from_folder(tmp_path)
    text = "A chat USER: <im_start><image><im_end>\nWhere is the cat? ASSISTANT: It is [SEG0] [SEG5] .</s>"
    assert again.encode(text) == tok.encode(text)
    assert again.added_tokens == tok.added_tokens
