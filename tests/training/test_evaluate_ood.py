"""`python -m training.evaluate --ood`: the out-of-domain answer figures, on a tiny model made to loop or to stop."""
from __future__ import annotations

import json

import numpy as np

from pixellm_ros.engine import Engine, EngineConfig
from pixellm_ros.model import SamplingConfig
from pixellm_ros.model.scratch import ScriptedAnswer
from training.data.sample import Sample
from training.evaluate import evaluate_ood, longest_word_run, main, node_sampling, ood_summary


def samples(n: int = 3) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "Where is the red cup?",
                   "There is no such object in the image.", np.zeros((0, 48, 64), bool), source=f"ood:photo:p{i // 2}")
            for i in range(n)]


def test_longest_word_run_ignores_case_and_punctuation():
    assert longest_word_run("The red cup is,,, red cup,,, cup cup Cup cup.") == 5
    assert longest_word_run("There is no such object in the image.") == 1
    assert longest_word_run("") == 0


def test_summary_counts_by_hand():
    answers = [{"targets": 0, "tokens": 10, "chars": 37, "word_run": 1, "stop_reason": "eos"},
               {"targets": 9, "tokens": 60, "chars": 120, "word_run": 2, "stop_reason": "max_targets"},
               {"targets": 2, "tokens": 50, "chars": 310, "word_run": 5, "stop_reason": "repetition"},
               {"targets": 1, "tokens": 512, "chars": 200, "word_run": 3, "stop_reason": "max_new_tokens"}]
    s = ood_summary(answers)
    assert (s["no_target_fraction"], s["eos_fraction"], s["guard_cut_fraction"], s["bounded_fraction"]) == (
        0.25, 0.25, 0.5, 0.5)
    assert (s["mean_tokens"], s["mean_targets"], s["max_targets"], s["max_chars"], s["max_word_run"]) == (
        158, 3, 9, 310, 5)
    assert s["stop_reasons"] == {"eos": 1, "max_new_tokens": 1, "max_targets": 1, "repetition": 1}


def test_a_looping_model_is_cut_by_the_guards_and_runs_to_the_limit_without(tiny):
    path, tok = tiny
    engine = Engine(EngineConfig(model_path=str(path), device="cpu"))
    cycle = tok.encode("cup and", add_bos=False)
    loop = ScriptedAnswer(cycle, loop=True)
    stop = ScriptedAnswer([tok.eos_id], loop=True)
    settings = {"guarded": SamplingConfig(max_new_tokens=60, repetition_ngram=16, repetition_count=4,
                                          logits_processor=loop),
                "unguarded": SamplingConfig(max_new_tokens=400, logits_processor=loop),
                "stops": SamplingConfig(max_new_tokens=60, logits_processor=stop)}
    report = evaluate_ood(engine, samples(), settings)
    guarded, unguarded, stops = (report["settings"][k] for k in settings)
    assert report["questions"] == 3 and report["images"] == 2
    assert guarded["guard_cut_fraction"] == 1.0 and guarded["stop_reasons"] == {"repetition": 3}
    assert guarded["mean_tokens"] <= 4 * len(cycle) < 60 and guarded["max_word_run"] <= 4
    assert unguarded["stop_reasons"] == {"max_new_tokens": 3} and unguarded["mean_tokens"] == 400
    assert unguarded["guard_cut_fraction"] == 0.0 and unguarded["max_chars"] > 300
    assert unguarded["bounded_fraction"] == 0.0
    assert stops["eos_fraction"] == 1.0 and stops["no_target_fraction"] == 1.0 and stops["mean_targets"] == 0
    assert set(guarded["by_group"]) == {"photo"} and len(guarded["per_answer"]) == 3
    engine.close()


def test_cli_asks_with_the_node_defaults_and_the_engine_defaults(tiny, tmp_path, monkeypatch):
    import training.data.randomize as randomize

    monkeypatch.setattr(randomize, "ood_eval_set", lambda questions_per_image: samples(questions_per_image))
    asked = []
    ask = Engine.ask
    monkeypatch.setattr(Engine, "ask", lambda self, q, sampling=None, *a, **k: asked.append(sampling) or
                        ask(self, q, SamplingConfig(**{**sampling.__dict__, "max_new_tokens": 6}), *a, **k))
    main(["--model", str(tiny[0]), "--device", "cpu", "--ood", "--ood-questions", "2", "--out", str(tmp_path)])
    assert asked[:2] == [node_sampling()] * 2 and asked[2:] == [SamplingConfig()] * 2
    assert node_sampling().max_targets > 0 and node_sampling().repetition_ngram > 0
    report = json.loads((tmp_path / "report_ood.json").read_text())
    assert set(report["settings"]) == {"node_defaults", "engine_defaults"}
    assert report["settings"]["engine_defaults"]["sampling"]["max_targets"] == 0
    assert len(report["settings"]["node_defaults"]["per_answer"]) == 2
