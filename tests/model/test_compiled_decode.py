"""Compiled decode (static-shape step, torch.compile) gives the eager path's answers: same token ids, mask
logits within 1e-3, on the tiny taught model (through the Engine, inductor as `compile=true` uses on CPU)
and on the official fixture; one compiled graph per capacity bucket, whatever the question length.

Compiling takes ~30 s per graph on CPU, so the tests share graphs: every taught-model answer fits one
capacity bucket (max_new_tokens 64), and batches are compiled once per model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch._dynamo
from tests.support.tiny_checkpoint import OFFICIAL_FIXTURE, PLANNED, Q_ONE, Q_SEVEN, Q_THREE, synthetic_image

from pixellm_ros.engine import Engine, resolve_compile
from pixellm_ros.model import (SamplingConfig, generate, generate_batch, load_pixellm, prefill_image,
                               preprocess_image, save_pixellm)
from pixellm_ros.model.compiled import CAPACITY_BUCKET, CompiledDecoder, capacity_for
from pixellm_ros.params import ConfigError, configure, load_defaults

QUESTIONS = list(PLANNED)


def same_answer(a, b) -> None:
    assert a.token_ids == b.token_ids
    assert a.stop_reason == b.stop_reason and a.answer == b.answer
    assert len(a.targets) == len(b.targets)
    for x, y in zip(a.targets, b.targets):
        assert np.abs(x.logits - y.logits).max() <= 1e-3
        assert x.token_span == y.token_span and x.phrase == y.phrase


SAMPLING = SamplingConfig(max_new_tokens=64)  # answers of 3..64 tokens share one capacity bucket


@pytest.fixture(scope="module")
def taught_folder(taught, tmp_path_factory):
    return save_pixellm(taught.model, taught.tok, tmp_path_factory.mktemp("taught_compiled") / "model")


def engine_pair(folder, **kwargs) -> tuple[Engine, Engine]:
    """(eager, compiled) engines with the current image set; the compiled one as compile=true (inductor)."""
    pair = tuple(Engine.from_pretrained(folder, device="cpu", dtype="float32", compile=c, sampling=SAMPLING, **kwargs)
                 for c in ("false", "true"))
    for engine in pair:
        engine.set_image(synthetic_image(150, 220))
    return pair


@pytest.fixture(scope="module")
def engines(taught_folder):
    eager, compiled = engine_pair(taught_folder)
    yield eager, compiled
    eager.close()
    compiled.close()


def test_compile_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cuda) is True and resolve_compile("auto", cpu) is False
    assert resolve_compile("true", cpu) is True and resolve_compile(False, cuda) is False
    with pytest.raises(ValueError, match="unknown compile 'yes'"):
        resolve_compile("yes", cpu)
    assert capacity_for(1) == capacity_for(CAPACITY_BUCKET) == CAPACITY_BUCKET
    assert capacity_for(CAPACITY_BUCKET + 1) == 2 * CAPACITY_BUCKET


def test_compile_parameter_checked_at_configure(taught, tmp_path):
    folder = save_pixellm(taught.model, taught.tok, tmp_path / "model")
    defaults = load_defaults()
    _, engine = configure({**defaults, "model_path": str(folder), "compile": "true"}, defaults)
    assert engine.compile == "true"
    with pytest.raises(ConfigError, match="compile must be one of"):
        configure({**defaults, "model_path": str(folder), "compile": "fast"}, defaults)


def test_engine_compiled_equals_eager(engines):
    eager, compiled = engines
    assert eager.decoder is None and compiled.decoder is not None
    assert compiled.decoder.fallback_reason is None  # really compiled (inductor), not the uncompiled fallback
    for q in QUESTIONS:
        a, b = eager.ask(q), compiled.ask(q)
        same_answer(a, b)
        assert b.timings.new_tokens == len(b.token_ids) and b.timings.decode > 0
    for a, b in zip(eager.ask_many(QUESTIONS), compiled.ask_many(QUESTIONS)):
        same_answer(a, b)


def test_engine_compiled_limits_and_cancel(engines):
    eager, compiled = engines
    short = SamplingConfig(max_new_tokens=3)
    a, b = eager.ask(Q_THREE, short), compiled.ask(Q_THREE, short)
    assert b.stop_reason == "max_new_tokens" and len(b.token_ids) == 3
    same_answer(a, b)
    events, gen = [], compiled.stream(Q_THREE)
    for event in gen:
        events.append(event)
        if len(events) == 4:
            gen.close()  # an abandoned stream gives its cache back
    assert compiled.ask(Q_ONE).token_ids == eager.ask(Q_ONE).token_ids


def test_no_recompile_per_token_or_question_length(engines):
    """Within one capacity bucket, questions of different lengths and every token reuse one graph."""
    _, compiled = engines
    compiled.ask(Q_ONE)  # the warm-up compiled for this bucket; make sure the question ran once
    with torch._dynamo.config.patch(error_on_recompile=True):
        for q in (Q_THREE, Q_SEVEN, Q_ONE + " Please answer now.", Q_ONE):
            compiled.ask(q)


def test_bitsandbytes_layers_compile(taught_folder):
    """bitsandbytes Linear4bit (CPU backend, which repacks its weight on the first forward) traces into the
    compiled step: no fallback, same answers. (Linear8bitLt compiles too; left out to save ~25 s.)"""
    pytest.importorskip("bitsandbytes")
    eager, compiled = engine_pair(taught_folder, quantization="4bit")
    assert compiled.decoder.fallback_reason is None
    for q in (Q_ONE, Q_THREE):
        same_answer(eager.ask(q), compiled.ask(q))
    eager.close()
    compiled.close()


@pytest.mark.skipif(not OFFICIAL_FIXTURE.is_dir(), reason="official fixture not available")
def test_official_fixture_compiled_equals_eager_and_reference():
    import cv2
    model, tok = load_pixellm(OFFICIAL_FIXTURE / "checkpoint")
    decoder = CompiledDecoder(model)  # inductor, as compile=true on CPU
    batch_decoder = CompiledDecoder(model, backend="aot_eager")  # batches: the same graph, compiled faster
    sampling = SamplingConfig(max_new_tokens=64)  # the reference answers have 10..33 tokens
    cases = {"chelsea": ["chelsea_where", "chelsea_two"], "rocket": ["rocket_three", "rocket_text"]}
    for name, names in cases.items():
        rgb = cv2.cvtColor(cv2.imread(str(OFFICIAL_FIXTURE / "inputs" / f"{name}.png")), cv2.COLOR_BGR2RGB)
        p = preprocess_image(rgb)
        with torch.no_grad():
            feats = model.encode_image(p.pixels, p.input_size, p.original_size)
        prefix = prefill_image(model, tok, feats)
        questions = []
        for case in names:
            ref_dir = OFFICIAL_FIXTURE / "reference" / case
            ref = json.loads((ref_dir / "ids.json").read_text())
            question = ref["prompt"].split("<im_end>\n", 1)[1].rsplit(" ASSISTANT:", 1)[0]
            questions.append(question)
            e = generate(model, tok, feats, prefix, question, sampling)
            c = generate(model, tok, feats, prefix, question, sampling, decoder=decoder)
            same_answer(e, c)
            assert c.token_ids == ref["generated_ids"]
            for k, t in enumerate(c.targets):
                assert np.abs(t.logits.astype(np.float64) - np.load(ref_dir / f"masks_{k}.npy")).max() <= 1e-3
            torch.testing.assert_close(c.codebook_hidden, e.codebook_hidden, atol=1e-4, rtol=0)
        for e, c in zip(generate_batch(model, tok, feats, prefix, questions, sampling),
                        generate_batch(model, tok, feats, prefix, questions, sampling, batch_decoder)):
            same_answer(e, c)
    assert decoder.fallback_reason is None and batch_decoder.fallback_reason is None
