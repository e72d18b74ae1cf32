"""Parity with the OFFICIAL PixelLM code on the pixellm_official_tiny fixture (fp32, CPU): prompt ids,
generated ids, decoded text, mask logits, scores and intermediates; plus the fixture's own checker."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixellm_ros.model import SamplingConfig, generate, load_pixellm, prefill_image, preprocess_image

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared/fixtures/pixellm_official_tiny"
CASES = ["chelsea_where", "chelsea_two", "rocket_where", "rocket_three", "rocket_text"]

pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"official fixture not available at {FIXTURE}")


def image_of(case: str) -> str:
    return case.split("_")[0]


def question_of(prompt: str) -> str:
    return prompt.split("<im_end>\n", 1)[1].rsplit(" ASSISTANT:", 1)[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def official():
    # vision tower named relatively in config.json: resolved next to the checkpoint folder
    return load_pixellm(FIXTURE / "checkpoint")


@pytest.fixture(scope="module")
def images(official):
    cv2 = pytest.importorskip("cv2")
    model, tok = official
    out = {}
    for name in ("chelsea", "rocket"):
        rgb = cv2.cvtColor(cv2.imread(str(FIXTURE / "inputs" / f"{name}.png")), cv2.COLOR_BGR2RGB)
        p = preprocess_image(rgb)
        with torch.no_grad():
            feats = model.encode_image(p.pixels, p.input_size, p.original_size)
        out[name] = (p, feats, prefill_image(model, tok, feats))
    return out


@pytest.fixture(scope="module")
def results(official, images):
    """case -> (Generation, step-0 logits)"""
    model, tok = official
    out = {}
    for case in CASES:
        ref = json.loads((FIXTURE / "reference" / case / "ids.json").read_text())
        _, feats, prefix = images[image_of(case)]
        first = []

        def capture(ids, logits):
            if not ids:
                first.append(logits.clone())
            return logits

        g = generate(model, tok, feats, prefix, question_of(ref["prompt"]), SamplingConfig(logits_processor=capture))
        out[case] = (g, first[0])
    return out


def test_tokenizer_ids(official):
    _, tok = official
    build = json.loads((FIXTURE / "inputs" / "build_info.json").read_text())
    assert len(tok) == build["len_tokenizer"] == 32008
    assert tok.seg_token_ids == build["seg_token_idx"]
    assert tok.added_tokens["<im_start>"] == 32006 and tok.added_tokens["<im_end>"] == 32007


@pytest.mark.parametrize("name", ["chelsea", "rocket"])
def test_image_intermediates(images, name):
    p, feats, _ = images[name]
    ref = np.load(FIXTURE / "reference" / "_images" / f"{name}.npz")
    np.testing.assert_allclose(p.pixels.numpy(), ref["images_clip"], atol=1e-6, rtol=0)
    assert p.input_size == tuple(ref["clip_resize"]) and p.original_size == tuple(ref["original_size"])
    np.testing.assert_array_equal(feats.llm_valid.numpy().astype(np.float32),
                                  ref["vit_attention_mask_for_llm"].astype(np.float32))
    np.testing.assert_allclose(feats.llm_tokens.numpy(), ref["llm_image_tokens"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(feats.mask_features.numpy(), ref["neck_out"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_case(official, results, case):
    model, tok = official
    ref_dir = FIXTURE / "reference" / case
    ref = json.loads((ref_dir / "ids.json").read_text())
    inter = np.load(ref_dir / "intermediates.npz")
    g, step0 = results[case]

    assert g.prompt_ids == ref["input_ids"]
    assert g.token_ids == ref["generated_ids"]
    assert g.stop_reason == "eos"
    assert tok.decode(g.token_ids) == (ref_dir / "answer.txt").read_text()
    assert g.raw_text == (ref_dir / "answer.txt").read_text()
    # chat.py's printed text: decode of output ids without -200, "\n" removed, "  " -> " "
    full = tok.decode([i for i in ref["input_ids"] if i != -200] + g.token_ids)
    assert full.replace("\n", "").replace("  ", " ") == (ref_dir / "text.txt").read_text()

    step0_ref = inter["step0_logits_last"]
    np.testing.assert_allclose(step0.numpy(), step0_ref, atol=1e-4 * max(1.0, np.abs(step0_ref).max()), rtol=0)

    n = ref["num_targets"]
    assert len(g.targets) == n and g.incomplete_codebook_tokens == 0
    masks = sorted(ref_dir.glob("masks_*.npy"))
    assert len(masks) == n
    for k, t in enumerate(g.targets):
        want = np.load(ref_dir / f"masks_{k}.npy")
        assert t.logits.shape == want.shape
        assert np.abs(t.logits.astype(np.float64) - want).max() <= 1e-3
        assert iou(t.logits > 0, want > 0) >= 0.999
        assert t.score == pytest.approx(float(inter["mask_scores"][k]), abs=1e-4)
    if n:
        # codebook states = last-step hidden states at the positions before each [SEGi]
        states = inter["last_step_hidden"][0, inter["seg_token_positions"]]
        np.testing.assert_allclose(g.codebook_hidden.numpy(), states, atol=1e-4, rtol=0)
        with torch.no_grad():
            emb = model.model.text_hidden_fcs[0](g.codebook_hidden).numpy()
            sparse = model.codebook_embeddings(g.codebook_hidden).numpy()
        scale = max(1.0, np.abs(inter["seg_token_embeddings"]).max())
        np.testing.assert_allclose(emb, inter["seg_token_embeddings"], atol=1e-4 * scale, rtol=0)
        np.testing.assert_allclose(sparse, inter["sparse_embeddings"], atol=1e-4 * scale, rtol=0)
    else:
        assert g.codebook_hidden.shape[0] == 0


def test_fixture_checker(official, results, tmp_path):
    """The fixture's compare.py (numpy only) accepts our outputs."""
    _, tok = official
    cand = tmp_path / "candidate"
    for case in CASES:
        g, _ = results[case]
        d = cand / case
        d.mkdir(parents=True)
        (d / "ids.json").write_text(json.dumps({"generated_ids": g.token_ids}))
        (d / "answer.txt").write_text(g.raw_text)
        ref = json.loads((FIXTURE / "reference" / case / "ids.json").read_text())
        full = results[case][0].prompt_ids
        text = tok.decode([i for i in full if i != -200] + g.token_ids)
        (d / "text.txt").write_text(text.replace("\n", "").replace("  ", " "))
        assert ref["input_ids"] == full
        for k, t in enumerate(g.targets):
            np.save(d / f"masks_{k}.npy", t.logits.astype(np.float32))
    proc = subprocess.run([sys.executable, "compare.py", "reference", str(cand)], cwd=FIXTURE,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
