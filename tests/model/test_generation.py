"""Generation on the tiny checkpoint: KV-cached decoding vs the release's recompute-everything algorithm,
targets, batching, streaming, cancellation, limits, sampling, target phrases."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tests.support.tiny_checkpoint import PLANNED, Q_ONE, Q_SEVEN, Q_THREE
from pixellm_ros.model import (SamplingConfig, TargetEvent, TextEvent, generate, generate_batch,
                               generate_recompute, prefill_image, stream)
from pixellm_ros.model.answer_text import target_phrase
from pixellm_ros.model.generation import split_prompt


def recompute(t, question, sampling=None):
    img = t.image
    return generate_recompute(t.model, t.tok, img.pixels, img.input_size, img.original_size, question, sampling)


def run_stream(t, question, sampling=None, cancel=None, on_event=None):
    events = []
    s = stream(t.model, t.tok, t.feats, t.prefix, question, sampling, cancel)
    for ev in s:
        events.append(ev)
        if on_event is not None:
            on_event(ev)
    return events, s.result


def test_teaching_converged(taught):
    assert taught.loss < 5e-2, f"teacher forcing did not converge (loss {taught.loss})"
    seg = set(taught.tok.seg_token_ids)
    assert sum(i in seg for i in taught.plans[Q_ONE]) == 6
    assert sum(i in seg for i in taught.plans[Q_THREE]) == 18
    assert sum(i in seg for i in taught.plans[Q_SEVEN]) == 7


@pytest.mark.parametrize("question", [Q_ONE, Q_SEVEN])
def test_cached_generate_equals_recompute(taught, question):
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, question)
    r = recompute(taught, question)
    assert g.token_ids == taught.plans[question]
    assert r.token_ids == g.token_ids
    assert g.prompt_ids == r.prompt_ids
    assert g.codebook_hidden.shape == r.codebook_hidden.shape == (sum(
        i in taught.tok.seg_token_ids for i in g.token_ids), taught.model.config.hidden_size)
    torch.testing.assert_close(g.codebook_hidden, r.codebook_hidden, atol=1e-4, rtol=0)
    assert g.raw_text == r.raw_text and g.answer == r.answer
    assert g.stop_reason == r.stop_reason == "eos"
    assert len(g.targets) == len(r.targets)
    for a, b in zip(g.targets, r.targets):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
        assert a.phrase == b.phrase and a.token_span == b.token_span


def test_prompt_ids_are_the_release_tokenization(taught):
    from pixellm_ros.model import build_prompt

    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_ONE, SamplingConfig(max_new_tokens=1))
    assert g.prompt_ids == taught.tok.encode_with_image(build_prompt(Q_ONE))
    assert g.prompt_ids[0] == taught.tok.bos_id and g.prompt_ids.count(-200) == 1
    assert g.prompt_ids.count(taught.tok.bos_id) == 1
    head, tail = split_prompt(taught.tok, Q_ONE)
    assert head[-1] == taught.tok.added_tokens["<im_start>"]
    assert tail[0] == taught.tok.added_tokens["<im_end>"]  # the "\n" after <im_end> is stripped


def test_targets_and_masks(taught):
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE)
    assert g.token_ids == taught.plans[Q_THREE]
    assert g.stop_reason == "eos" and g.incomplete_codebook_tokens == 0
    assert [t.index for t in g.targets] == [0, 1, 2]
    assert [t.phrase for t in g.targets] == ["the rocket", "the tower", "the sky"]
    assert g.answer == "Here they are: the rocket, the tower and the sky."
    assert g.raw_text == taught.tok.decode(g.token_ids)
    assert "[SEG0]" in g.raw_text and "[SEG" not in g.answer and "</s>" not in g.answer
    seg = set(taught.tok.seg_token_ids)
    for t in g.targets:
        assert t.logits.shape == taught.image.original_size  # original image size, not 448
        assert t.logits.dtype == np.float32 and np.isfinite(t.logits).all()
        assert t.mask.shape == taught.image.original_size and t.mask.dtype == bool
        start, end = t.token_span
        assert end - start == 6 and all(i in seg for i in g.token_ids[start:end])
        assert 0.0 <= t.score <= 1.0
        pos = t.logits > 0
        if pos.any():
            expected = 1 / (1 + np.exp(-t.logits[pos].astype(np.float64)))
            assert t.score == pytest.approx(expected.mean(), abs=1e-4)
            x, y, w, h = t.bbox
            ys, xs = np.nonzero(pos)
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        else:
            assert t.score == 0.0 and t.bbox == (0, 0, 0, 0)
        assert t.pixel_count == int(pos.sum())
    # three different codebook groups -> three different prompts -> different mask logits
    assert not np.allclose(g.targets[0].logits, g.targets[1].logits)


def test_masks_follow_the_codebook_path(taught):
    """Mask logits are decode_masks(codebook_embeddings(states)), with the release's 1/6 fusion."""
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_ONE)
    m = taught.model
    with torch.no_grad():
        emb = m.model.text_hidden_fcs[0](g.codebook_hidden)  # (6, 256)
        fused = torch.stack([emb[0:3].sum(0) / 6, emb[3:6].sum(0) / 6])[None]
        torch.testing.assert_close(m.codebook_embeddings(g.codebook_hidden), fused)
        logits = m.decode_masks(taught.feats, fused)[0].numpy()
    np.testing.assert_allclose(g.targets[0].logits, logits, atol=1e-5)


def test_incomplete_codebook_group(taught):
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_SEVEN)
    assert g.token_ids == taught.plans[Q_SEVEN]
    assert len(g.targets) == 1
    assert g.incomplete_codebook_tokens == 1
    assert g.codebook_hidden.shape[0] == 7
    assert g.targets[0].phrase == "The dog"


def test_no_target_answer(taught):
    def no_seg(ids, logits):
        logits = logits.clone()
        logits[taught.tok.seg_token_ids] = -1e9
        return logits

    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_ONE,
                 SamplingConfig(max_new_tokens=12, logits_processor=no_seg))
    assert not any(i in taught.tok.seg_token_ids for i in g.token_ids)
    assert g.targets == [] and g.incomplete_codebook_tokens == 0
    assert g.codebook_hidden.shape == (0, taught.model.config.hidden_size)


def test_generate_batch_equals_single(taught):
    questions = [Q_THREE, Q_ONE, Q_SEVEN]  # different prompt lengths: left padding in the batch
    lengths = {len(split_prompt(taught.tok, q)[1]) for q in questions}
    assert len(lengths) > 1
    batch = generate_batch(taught.model, taught.tok, taught.feats, taught.prefix, questions)
    assert len(batch) == 3
    for q, b in zip(questions, batch):
        single = generate(taught.model, taught.tok, taught.feats, taught.prefix, q)
        assert b.token_ids == single.token_ids == taught.plans[q]
        assert b.prompt_ids == single.prompt_ids
        assert b.stop_reason == single.stop_reason == "eos"
        assert b.incomplete_codebook_tokens == single.incomplete_codebook_tokens
        torch.testing.assert_close(b.codebook_hidden, single.codebook_hidden, atol=1e-4, rtol=0)
        assert [t.phrase for t in b.targets] == [t.phrase for t in single.targets]
        for x, y in zip(b.targets, single.targets):
            np.testing.assert_allclose(x.logits, y.logits, atol=1e-4)


def test_generate_batch_on_random_model(tiny_model, test_image):
    """Untrained weights (long, arbitrary answers): batch rows still match single runs."""
    model, tok = tiny_model
    with torch.no_grad():
        feats = model.encode_image(test_image.pixels, test_image.input_size, test_image.original_size)
    prefix = prefill_image(model, tok, feats)
    questions = ["Where is the cat?", "Please segment the cup and the bowl behind it.", "Hi"]
    sampling = SamplingConfig(max_new_tokens=8)
    batch = generate_batch(model, tok, feats, prefix, questions, sampling)
    for q, b in zip(questions, batch):
        single = generate(model, tok, feats, prefix, q, sampling)
        assert b.token_ids == single.token_ids
        assert len(b.token_ids) <= 8


def test_stream_events(taught):
    events, result = run_stream(taught, Q_THREE)
    assert result.token_ids == taught.plans[Q_THREE]
    text_events = [e for e in events if isinstance(e, TextEvent)]
    target_events = [e for e in events if isinstance(e, TargetEvent)]
    assert [e.token_id for e in text_events] == result.token_ids
    assert [e.target.index for e in target_events] == [0, 1, 2]
    # each target is announced as soon as its 6th codebook token is generated, before the final text
    first_target = events.index(target_events[0])
    assert first_target < events.index(text_events[-1])
    sixth_seg = [i for i, t in enumerate(result.token_ids) if t in taught.tok.seg_token_ids][5]
    assert events[first_target - 1] is text_events[sixth_seg]
    assert isinstance(events[-1], TextEvent) and events[-1].token_id == taught.tok.eos_id
    # streamed text only grows and is the concatenation of the deltas
    text = ""
    for e in text_events:
        assert e.text == text + e.delta
        text = e.text
    assert "[SEG" not in text and "</s>" not in text
    for ev, t in zip(target_events, result.targets):
        assert ev.target is t


def test_cancel(taught):
    cancel = threading.Event()
    events, result = run_stream(taught, Q_THREE, cancel=cancel, on_event=lambda ev: cancel.set())
    assert result.stop_reason == "cancelled"
    assert len(result.token_ids) == 1 and len(events) == 1
    cancel_before = threading.Event()
    cancel_before.set()
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_ONE, cancel=cancel_before)
    assert g.stop_reason == "cancelled" and g.token_ids == [] and g.targets == []


def test_cancel_from_another_thread(taught):
    cancel = threading.Event()
    started = threading.Event()
    out = {}

    def worker():
        out["g"] = stream(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE,
                          SamplingConfig(logits_processor=slow_down), cancel).run()

    def slow_down(ids, logits):
        if len(ids) == 3:
            started.set()
            cancel.wait(5)
        return logits

    th = threading.Thread(target=worker)
    th.start()
    assert started.wait(10)
    cancel.set()
    th.join(30)
    assert not th.is_alive()
    assert out["g"].stop_reason == "cancelled"
    assert len(out["g"].token_ids) == 4  # the token being chosen when cancelled is still delivered


@pytest.mark.parametrize("n", [0, 1, 7])
def test_max_new_tokens(taught, n):
    sampling = SamplingConfig(max_new_tokens=n)
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE, sampling)
    assert g.token_ids == taught.plans[Q_THREE][:n]
    assert g.stop_reason == "max_new_tokens"
    assert len(g.targets) == (1 if n >= 8 else 0)
    b = generate_batch(taught.model, taught.tok, taught.feats, taught.prefix, [Q_THREE, Q_ONE], sampling) if n else None
    if b is not None:
        assert [x.token_ids for x in b] == [taught.plans[Q_THREE][:n], taught.plans[Q_ONE][:n]]
        assert all(x.stop_reason == "max_new_tokens" for x in b)


def test_max_new_tokens_stops_at_eos_first(taught):
    n = len(taught.plans[Q_ONE])
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_ONE, SamplingConfig(max_new_tokens=n))
    assert g.token_ids == taught.plans[Q_ONE] and g.stop_reason == "eos"


def test_recompute_max_new_tokens(taught):
    g = recompute(taught, Q_ONE, SamplingConfig(max_new_tokens=3))
    assert g.token_ids == taught.plans[Q_ONE][:3] and g.stop_reason == "max_new_tokens"


def test_recompute_zero_new_tokens(taught):
    """max_new_tokens=0 must give an empty answer (generate does), not crash."""
    g = recompute(taught, Q_ONE, SamplingConfig(max_new_tokens=0))
    assert g.token_ids == [] and g.stop_reason == "max_new_tokens"


def test_question_with_image_placeholder_rejected(taught):
    with pytest.raises(ValueError):
        generate(taught.model, taught.tok, taught.feats, taught.prefix, "What is <image> here?")


@pytest.mark.parametrize("span, phrase", [
    ("Here they are: the rocket", "the rocket"),
    (", the tower", "the tower"),
    ("and the sky", "the sky"),
    ("The cat is", "The cat"),
    ("Sure, the cup and the bowl are", "the cup and the bowl"),
    ("It is", "It"),
    ("Sure, it is", "it"),
])
def test_target_phrase(span, phrase):
    assert target_phrase(span) == phrase


def test_sampling_reproducible_with_seed(tiny_model, test_image):
    model, tok = tiny_model
    with torch.no_grad():
        feats = model.encode_image(test_image.pixels, test_image.input_size, test_image.original_size)
    prefix = prefill_image(model, tok, feats)

    def run(seed, **kw):
        cfg = SamplingConfig(max_new_tokens=12, do_sample=True, temperature=1.5, seed=seed, **kw)
        return generate(model, tok, feats, prefix, "Describe this photo.", cfg).token_ids

    a, b = run(1234), run(1234)
    assert a == b and len(a) >= 1
    others = [run(s) for s in (1, 2, 3)]
    assert any(o != a for o in others), "different seeds should give different samples"
    assert run(7, top_p=0.9) == run(7, top_p=0.9)
    greedy = generate(model, tok, feats, prefix, "Describe this photo.", SamplingConfig(max_new_tokens=12)).token_ids
    assert generate(model, tok, feats, prefix, "Describe this photo.",
                    SamplingConfig(max_new_tokens=12)).token_ids == greedy


def test_sampling_tiny_top_p_is_greedy(taught):
    cfg = SamplingConfig(do_sample=True, top_p=1e-6, seed=3)
    g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_ONE, cfg)
    assert g.token_ids == taught.plans[Q_ONE]


def test_prefix_shared_between_questions(taught):
    """One prefill serves several questions without being modified."""
    before = taught.prefix.cache.keys[:, :, :, : taught.prefix.length].clone()
    for q in PLANNED:
        assert generate(taught.model, taught.tok, taught.feats, taught.prefix, q).token_ids == taught.plans[q]
    assert torch.equal(taught.prefix.cache.keys[:, :, :, : taught.prefix.length], before)
    assert taught.prefix.length == len(split_prompt(taught.tok, Q_ONE)[0]) + 256
