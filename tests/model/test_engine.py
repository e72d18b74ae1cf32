"""The engine robots call and the chat CLI: caching, streaming, batching, device/dtype choice, errors."""
from __future__ import annotations

import json
import re
import threading

import cv2
import numpy as np
import pytest
import torch
from tests.support.tiny_checkpoint import PLANNED, Q_ONE, Q_THREE, synthetic_image

from pixellm_ros.chat import main as chat_main
from pixellm_ros.engine import Engine, EngineConfig, resolve_device, resolve_dtype
from pixellm_ros.model import SamplingConfig, TargetEvent, TextEvent, save_pixellm

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def taught_dir(taught, tmp_path_factory):
    """The taught tiny model saved as a self-contained folder (safetensors + vision tower)."""
    return save_pixellm(taught.model, taught.tok, tmp_path_factory.mktemp("taught") / "model")


@pytest.fixture(scope="module")
def rgb(test_image):
    return synthetic_image(150, 220)


@pytest.fixture()
def engine(taught_dir):
    e = Engine.from_pretrained(taught_dir, device="cpu", dtype="float32")
    yield e
    e.close()


def test_set_image_is_cached_per_frame(engine, rgb):
    assert engine.set_image(rgb) is False
    assert engine.set_image(rgb) is True  # same pixels: reused
    assert engine.set_image(rgb, image_key="cam/1") is False
    assert engine.set_image(rgb.copy(), image_key="cam/1") is True  # same key: reused without hashing
    first = engine.ask(Q_ONE)
    second = engine.ask(Q_ONE)
    assert second.image_cached and second.timings.encode_image == 0.0
    assert first.token_ids == second.token_ids


def test_ask_returns_answer_targets_and_timings(engine, rgb, taught):
    engine.set_image(rgb)
    result = engine.ask(Q_THREE)
    assert result.token_ids == taught.plans[Q_THREE]
    assert len(result.targets) == 3 and result.stop_reason == "eos"
    for t in result.targets:
        assert t.mask.shape == rgb.shape[:2] and t.mask.dtype == bool and 0 <= t.score <= 1
    assert [t.phrase for t in result.targets] == ["the rocket", "the tower", "the sky"]
    label = result.label_image()
    assert label.shape == rgb.shape[:2] and set(np.unique(label)) <= {0, 1, 2, 3}
    tm = result.timings
    assert tm.total >= tm.generate > 0 and 0 < tm.first_token <= tm.first_mask <= tm.total


def test_stream_yields_targets_before_the_answer_ends(engine, rgb):
    engine.set_image(rgb)
    s = engine.stream(Q_THREE)
    events = list(s)
    result = s.result
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("TargetEvent") == 3
    assert kinds.index("TargetEvent") < len(kinds) - 1  # the first mask comes before the last token
    texts = [e.text for e in events if isinstance(e, TextEvent)]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # streamed text only grows
    assert [e.target.index for e in events if isinstance(e, TargetEvent)] == [0, 1, 2]
    assert result.answer.startswith("Here they are")


def test_stream_closed_mid_answer_frees_the_engine(engine, rgb):
    """A stream abandoned mid-answer (close) gives the engine's lock back: another thread can answer."""
    engine.set_image(rgb)
    s = engine.stream(Q_THREE)
    next(s)
    s.close()
    with pytest.raises(RuntimeError, match="closed before its end"):
        s.result
    out = []
    other = threading.Thread(target=lambda: out.append(engine.ask(Q_ONE)), daemon=True)
    other.start()
    other.join(60)
    assert not other.is_alive() and out[0].stop_reason == "eos" and len(out[0].targets) == 1


def test_ask_many_matches_single_questions(engine, rgb):
    engine.set_image(rgb)
    questions = list(PLANNED)
    batch = engine.ask_many(questions)
    single = [engine.ask(q) for q in questions]
    assert [r.token_ids for r in batch] == [r.token_ids for r in single]
    for b, s in zip(batch, single):
        for tb, ts in zip(b.targets, s.targets):
            np.testing.assert_allclose(tb.logits, ts.logits, atol=1e-4)


def test_bad_inputs_are_clear_errors(engine, rgb):
    with pytest.raises(RuntimeError, match="no image set"):
        engine.ask(Q_ONE)
    for bad in (rgb[..., 0], rgb.astype(np.float32), rgb[:0], np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError):
            engine.set_image(bad)
    engine.set_image(rgb)
    for question in ("", "   ", "x" * 5000, "look at <image> here"):
        with pytest.raises(ValueError):
            engine.ask(question)
    assert engine.ask(Q_ONE).targets  # still serving


def test_max_new_tokens_and_cancel(engine, rgb):
    engine.set_image(rgb)
    short = engine.ask(Q_THREE, SamplingConfig(max_new_tokens=4))
    assert len(short.token_ids) == 4 and short.stop_reason == "max_new_tokens"
    cancel = threading.Event()
    cancel.set()
    assert engine.ask(Q_THREE, cancel=cancel).stop_reason == "cancelled"


def test_device_and_dtype_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bfloat16_on_cpu_runs(taught_dir, rgb, taught):
    engine = Engine.from_pretrained(taught_dir, device="cpu", dtype="bfloat16")
    engine.set_image(rgb)
    result = engine.ask(Q_ONE)
    assert engine.model.dtype == torch.bfloat16 and result.targets  # bf16: compare by behaviour, not bits
    engine.close()
    assert engine.model is None


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_matches_cpu_and_frees_memory(taught_dir, rgb, taught):
    cpu = Engine.from_pretrained(taught_dir, device="cpu", dtype="float32")
    cpu.set_image(rgb)
    expected = cpu.ask(Q_THREE)
    gpu = Engine.from_pretrained(taught_dir, device="cuda", dtype="float32")
    gpu.set_image(rgb)
    got = gpu.ask(Q_THREE)
    assert got.token_ids == expected.token_ids
    for a, b in zip(got.targets, expected.targets):
        assert (a.mask == b.mask).mean() > 0.999
    held = gpu.memory_bytes()
    gpu.close()
    assert held > 0 and torch.cuda.memory_allocated() < held


def test_chat_cli_writes_its_outputs(taught_dir, rgb, taught, tmp_path, capsys):
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert chat_main(["--model", str(taught_dir), "--image", str(image), "--query", Q_THREE, "--out", str(out),
                      "--device", "cpu", "--dtype", "float32", "--save-logits"]) == 0
    summary = json.loads((out / "result.json").read_text())
    assert len(summary["targets"]) == 3 and summary["generated_ids"] == taught.plans[Q_THREE]
    for k in range(3):
        mask = cv2.imread(str(out / f"mask_{k}.png"), cv2.IMREAD_GRAYSCALE)
        logits = np.load(out / f"mask_{k}.npy")
        assert mask.shape == logits.shape == rgb.shape[:2] and logits.dtype == np.float32
        assert ((mask > 0) == (logits > 0)).all()
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay.shape[1] == rgb.shape[1] and overlay.shape[0] > rgb.shape[0]  # text band above the image
    assert (out / "answer.txt").read_text().startswith("Here they are")
    assert "target 2" in capsys.readouterr().out


def test_chat_interactive_streams_each_answer(taught_dir, rgb, taught, tmp_path, capsys, monkeypatch):
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    lines = iter([Q_ONE, Q_THREE])

    def typed(prompt: str) -> str:
        line = next(lines, None)
        if line is None:
            raise EOFError
        return line

    monkeypatch.setattr("builtins.input", typed)
    out = tmp_path / "out"
    assert chat_main(["--model", str(taught_dir), "--image", str(image), "--out", str(out),
                      "--device", "cpu", "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    for turn, question in enumerate([Q_ONE, Q_THREE]):
        summary = json.loads((out / f"turn_{turn:03d}" / "result.json").read_text())
        assert summary["generated_ids"] == taught.plans[question]
        answer = (out / f"turn_{turn:03d}" / "answer.txt").read_text().strip()
        streamed = re.search(rf"^(.*)\nanswer: {re.escape(answer)}\n", printed, re.M)  # the line before the summary
        assert streamed and streamed[1].replace(" ", "") == answer.replace(" ", "")  # (spaces around masks differ)
