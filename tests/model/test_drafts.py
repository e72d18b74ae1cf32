"""Drafts (pixellm_ros/model/drafts.py): an answer with a draft equals the answer without one (token ids, stop
reason, text, targets, mask logits within rtol 1e-6 + atol 1e-5), and exactly the agreeing prefix is accepted.

Models: the taught tiny checkpoint (planned answers with 1 and 3 targets), a tiny random model, the shared
official fixture, and the embedded default model over changing demo-camera frames (an object sliding in, an
object appearing and disappearing, scene cuts). Drafts are rejected at the first token, in the middle, at a
codebook token, after a tie; accepted in full; longer than max_new_tokens; with tokens after EOS.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.tiny_checkpoint import Q_ONE, Q_SEVEN, Q_THREE
from pixellm_ros.model import SamplingConfig, generate, load_pixellm, prefill_image, preprocess_image
from pixellm_ros.model import drafts
from pixellm_ros.model.compiled import CompiledDecoder
from pixellm_ros.model.scratch import tiny_random_pixellm
from tests.support.tiny_checkpoint import synthetic_image

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "pixellm_official_tiny"
EMBEDDED = REPO / "models" / "pixellm_tabletop"
RTOL, ATOL = 1e-6, 1e-5


def assert_same(ref, got) -> None:
    """ref/got: Generation or engine Result. Same ids, text, stop reason, targets; mask logits within tolerance."""
    assert got.token_ids == ref.token_ids
    assert got.stop_reason == ref.stop_reason
    assert got.answer == ref.answer and got.raw_text == ref.raw_text
    assert got.incomplete_codebook_tokens == ref.incomplete_codebook_tokens
    assert len(got.targets) == len(ref.targets)
    for a, b in zip(ref.targets, got.targets):
        assert (a.index, a.phrase, a.token_span) == (b.index, b.phrase, b.token_span)
        np.testing.assert_allclose(b.logits, a.logits, rtol=RTOL, atol=ATOL)
        assert a.score == pytest.approx(b.score, abs=1e-5)
    if hasattr(ref, "codebook_hidden"):
        torch.testing.assert_close(got.codebook_hidden, ref.codebook_hidden, rtol=RTOL, atol=ATOL)


def changed(ids: list[int], j: int, seg_ids: list[int], vocab: int) -> list[int]:
    """ids with token j replaced by another one (a codebook token by another codebook token)."""
    out = list(ids)
    if out[j] in seg_ids:
        out[j] = seg_ids[(seg_ids.index(out[j]) + 1) % len(seg_ids)]
    else:
        out[j] = (out[j] + 7) % vocab
    return out


def draft_cases(ref_ids: list[int], seg_ids: list[int], vocab: int) -> dict[str, tuple[list[int], int]]:
    """case -> (draft, tokens a draft of this kind must have accepted)."""
    n = len(ref_ids)
    seg_at = [i for i, t in enumerate(ref_ids) if t in seg_ids]
    cases = {"first": (changed(ref_ids, 0, seg_ids, vocab), 0),
             "middle": (changed(ref_ids, n // 2, seg_ids, vocab), n // 2), "full": (ref_ids, n), "after_eos": (ref_ids + ref_ids[:3], n), "prefix": (ref_ids[: n // 3], n // 3)}
    if seg_at:
        cases["codebook"] = (changed(ref_ids, seg_at[len(seg_at) // 2], seg_ids, vocab), seg_at[len(seg_at) // 2])
    return cases


def check_drafts(model, tok, feats, prefix, question, sampling=None, decoder=None, exact_accepts=True) -> dict:
    ref = generate(model, tok, feats, prefix, question, sampling, decoder=decoder)
    assert ref.accepted_draft_tokens == 0 and ref.draft_tokens == 0
    accepted = {}
    for case, (draft, expected) in draft_cases(ref.token_ids, tok.seg_token_ids, model.config.vocab_size).items():
        got = generate(model, tok, feats, prefix, question, sampling, decoder=decoder, draft=draft)
        assert_same(ref, got)
        usable = drafts.usable_draft(draft, sampling or SamplingConfig(), tok.eos_id, model.config.vocab_size)
        assert got.draft_tokens == len(usable) <= len(draft)
        if exact_accepts:
            assert got.accepted_draft_tokens == expected, case
        else:  # near-ties (margin < TIE_MARGIN) accept one token less
            assert expected - 1 <= got.accepted_draft_tokens <= expected, case
        accepted[case] = got.accepted_draft_tokens
    return accepted


# ------------------------------------------------------------------------------------ taught tiny model
@pytest.mark.parametrize("question", [Q_ONE, Q_THREE, Q_SEVEN])
def test_taught_drafts_exact(taught, question):
    accepted = check_drafts(taught.model, taught.tok, taught.feats, taught.prefix, question)
    assert accepted["full"] == len(taught.plans[question])


def test_compiled_decoder_with_drafts(taught):
    decoder = CompiledDecoder(taught.model, backend="eager")  # the static-shape step, traced but not inductor-built
    accepted = check_drafts(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE, decoder=decoder)
    ref = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE)  # eager, no draft
    middle = draft_cases(ref.token_ids, taught.tok.seg_token_ids, taught.model.config.vocab_size)["middle"][0]
    got = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE, decoder=decoder, draft=middle)
    assert_same(ref, got)
    assert decoder.fallback_reason is None and accepted["codebook"] > 0


def test_guards_stop_at_the_same_token(taught):
    t = taught
    full = t.plans[Q_THREE]
    for sampling in (SamplingConfig(max_targets=1), SamplingConfig(max_targets=2), SamplingConfig(max_new_tokens=5),
                     SamplingConfig(max_new_tokens=len(full) - 1)):
        ref = generate(t.model, t.tok, t.feats, t.prefix, Q_THREE, sampling)
        assert ref.stop_reason in ("max_targets", "max_new_tokens")
        last_changed = changed(full, len(ref.token_ids) - 1, t.tok.seg_token_ids, t.model.config.vocab_size)
        for draft in (full, full[:3], last_changed):
            got = generate(t.model, t.tok, t.feats, t.prefix, Q_THREE, sampling, draft=draft)
            assert_same(ref, got)
        assert got.draft_tokens <= sampling.max_new_tokens


def test_repetition_guard_and_logits_processor(taught):
    t = taught
    word = t.tok.sp.encode("the")[-1]

    def always_the(ids, logits):  # scripted: the same word forever
        out = torch.full_like(logits, float("-inf"))
        out[word] = 0.0
        return out

    sampling = SamplingConfig(max_new_tokens=30, logits_processor=always_the, repetition_ngram=2, repetition_count=4)
    ref = generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, sampling)
    assert ref.stop_reason == "repetition" and len(ref.token_ids) == 4
    got = generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, sampling, draft=[word] * 20)
    assert_same(ref, got)
    assert got.accepted_draft_tokens == 4


def test_cancel_sampling_and_bad_ids(taught):
    t = taught
    cancel = threading.Event()
    cancel.set()
    ref = generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, cancel=cancel)
    got = generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, cancel=cancel, draft=t.plans[Q_ONE])
    assert ref.stop_reason == got.stop_reason == "cancelled" and ref.token_ids == got.token_ids == []
    sampled = SamplingConfig(do_sample=True, temperature=2.0, seed=3, max_new_tokens=12)
    ref = generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, sampled)
    got = generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, sampled, draft=t.plans[Q_ONE])
    assert got.token_ids == ref.token_ids and got.draft_tokens == got.accepted_draft_tokens == 0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(t.model, t.tok, t.feats, t.prefix, Q_ONE, draft=[5, t.model.config.vocab_size])


def test_ties_are_decoded_step_by_step(taught, monkeypatch):
    """A row whose top-two margin is below TIE_MARGIN is not trusted: acceptance stops one token before it and
    that token is decoded by a step (at the question's own row: its prefill runs again alone)."""
    t = taught
    plan = t.plans[Q_THREE]
    j = 9

    def tie_at_j(ids, logits):  # the runner-up is lifted to the top logit at row j: an exact tie
        if len(ids) == j:
            logits = logits.clone()
            logits[(int(logits.argmax()) + 1) % logits.numel()] = logits.max()
        return logits

    sampling = SamplingConfig(logits_processor=tie_at_j)
    ref = generate(t.model, t.tok, t.feats, t.prefix, Q_THREE, sampling)
    got = generate(t.model, t.tok, t.feats, t.prefix, Q_THREE, sampling, draft=ref.token_ids)
    assert_same(ref, got)
    assert got.accepted_draft_tokens == j - 1
    monkeypatch.setitem(drafts.TIE_MARGIN, torch.float32, float("inf"))  # every row is a tie
    ref = generate(t.model, t.tok, t.feats, t.prefix, Q_THREE)
    got = generate(t.model, t.tok, t.feats, t.prefix, Q_THREE, draft=plan)
    assert_same(ref, got)
    assert got.accepted_draft_tokens == 0


def logits_per_row(model, tok, feats, prefix, question, draft=None) -> dict[int, torch.Tensor]:
    """Answer position -> the logits that chose it (the first time it was chosen: the verification pass's row)."""
    rows: dict[int, torch.Tensor] = {}

    def capture(ids, logits):
        rows.setdefault(len(ids), logits.clone())
        return logits

    generate(model, tok, feats, prefix, question, SamplingConfig(logits_processor=capture), draft=draft)
    return rows


def test_batched_pass_vs_steps_below_tie_margin(taught):
    """The guarantee's premise, measured: the verification pass's logits differ from step-by-step decoding's
    by far less than TIE_MARGIN / 2 (fp32), so no trusted row's argmax can flip."""
    t = taught
    steps = logits_per_row(t.model, t.tok, t.feats, t.prefix, Q_THREE)
    batched = logits_per_row(t.model, t.tok, t.feats, t.prefix, Q_THREE, draft=t.plans[Q_THREE])
    n = len(t.plans[Q_THREE])  # the pass also scores the row after the draft's EOS (never used)
    assert sorted(steps) == list(range(n)) and sorted(batched) == list(range(n + 1))
    diff = max(float((steps[j] - batched[j]).abs().max()) for j in steps)
    assert 0 < diff < drafts.TIE_MARGIN[torch.float32] / 20, diff  # measured ~1e-6: different sums, same argmax


# ------------------------------------------------------------------------------------ tiny random model
@pytest.mark.parametrize("seed", [0, 1])
def test_random_model_drafts_exact(seed):
    model, tok = tiny_random_pixellm(seed)
    p = preprocess_image(synthetic_image(120, 160, seed=seed), model.config.resize_vision_tower_size)
    with torch.no_grad():
        feats = model.encode_image(p.pixels, p.input_size, p.original_size)
    prefix = prefill_image(model, tok, feats)
    sampling = SamplingConfig(max_new_tokens=24)
    for question in ("where is the red cup?", "which objects could hold water?"):
        check_drafts(model, tok, feats, prefix, question, sampling, exact_accepts=False)


# ------------------------------------------------------------------------------------ official fixture
@pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"official fixture not available at {FIXTURE}")
def test_official_fixture_drafts_exact():
    cv2 = pytest.importorskip("cv2")
    import json

    model, tok = load_pixellm(FIXTURE / "checkpoint")
    for case in ("rocket_three", "chelsea_two"):
        ref = json.loads((FIXTURE / "reference" / case / "ids.json").read_text())
        question = ref["prompt"].split("<im_end>\n", 1)[1].rsplit(" ASSISTANT:", 1)[0]
        rgb = cv2.cvtColor(cv2.imread(str(FIXTURE / "inputs" / f"{case.split('_')[0]}.png")), cv2.COLOR_BGR2RGB)
        p = preprocess_image(rgb)
        with torch.no_grad():
            feats = model.encode_image(p.pixels, p.input_size, p.original_size)
        prefix = prefill_image(model, tok, feats)
        accepted = check_drafts(model, tok, feats, prefix, question)
        assert accepted["full"] == len(ref["generated_ids"])


# ------------------------------------------------------------------------------------ embedded model, frames
@pytest.fixture(scope="module")
def bench_standing():
    spec = importlib.util.spec_from_file_location("bench_standing", REPO / "benchmarks" / "bench_standing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def embedded_engine():
    if not (EMBEDDED / "model.safetensors").is_file():
        pytest.skip("embedded model not available")
    from pixellm_ros.engine import Engine
    engine = Engine.from_pretrained(EMBEDDED, device="cpu")
    yield engine
    engine.close()


def test_embedded_model_over_changing_frames(embedded_engine, bench_standing):
    """A standing question over demo-camera frames that change, each frame's previous answer as its draft."""
    engine, question = embedded_engine, bench_standing.QUESTION
    kinds = set()
    for scenario in ("moving", "blink", "cut"):
        previous = None
        for frame in bench_standing.frame_stream(scenario, 8, cut_every=3):
            engine.set_image(frame.rgb)
            ref = engine.ask(question)
            got = engine.ask(question, draft=previous)
            assert_same(ref, got)
            np.testing.assert_array_equal(got.label_image(), ref.label_image())
            if previous is not None:
                n = got.accepted_draft_tokens
                assert got.draft_tokens == len(previous.token_ids)
                kinds.add("full" if n == len(got.token_ids) else "first" if n == 0 else "middle")
                if n < len(got.token_ids) and got.token_ids[n] in engine.tokenizer.seg_token_ids:
                    kinds.add("at_codebook")
            previous = got
    assert {"full", "middle"} <= kinds, kinds  # the frames exercise both acceptance and a mid-answer rejection
    ref = engine.ask(question)  # and forced rejections on the last frame
    for case, (draft, expected) in draft_cases(ref.token_ids, engine.tokenizer.seg_token_ids,
                                               engine.model.config.vocab_size).items():
        got = engine.ask(question, draft=draft)
        assert_same(ref, got)
        assert got.accepted_draft_tokens == expected, case
    got = engine.ask(question, draft=ref)  # a Result is a draft too
    assert got.accepted_draft_tokens == len(ref.token_ids)
