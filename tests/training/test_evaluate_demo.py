"""`python -m training.evaluate --demo`: `make demo`'s questions scored against each scene's truth, and the demo's
scene rule (pixellm_ros.scenes.DEMO_SCENE)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm_ros.engine import Engine, EngineConfig
from pixellm_ros.model import SamplingConfig
from pixellm_ros.model.scratch import ScriptedAnswer
from pixellm_ros.scenes import DEMO_QUESTIONS, DEMO_SCENE, DEMO_SEED, SceneObject, render_scene
from training.evaluate import demo_failures, demo_scene, evaluate_demo, main, node_sampling, question_targets

HOLD, RED_CUP, BLUE, CUT = DEMO_QUESTIONS


def obj(kind: str, color: str, x: int) -> SceneObject:
    mask = np.zeros((8, 40), bool)
    mask[2:5, x:x + 3] = True
    return SceneObject(kind, color, mask)


def names(objects) -> list[str]:
    return [o.name for o in objects]


def test_question_targets_follow_the_synthetic_answer_rules():
    scene = [obj("cup", "red", 30), obj("bottle", "blue", 5), obj("knife", "yellow", 20), obj("ball", "blue", 12)]
    assert question_targets(HOLD, scene) == ("afford", [scene[1], scene[0]])  # left to right
    assert question_targets(RED_CUP, scene) == ("refer", [scene[0]])
    assert names(question_targets(BLUE, scene)[1]) == ["the blue bottle", "the blue ball"]
    assert question_targets(CUT, scene) == ("afford", [scene[2]])
    assert question_targets("Can you find the green bowl?", scene) == ("refer", [])  # absent: no such object
    assert names(question_targets("Which objects are blue?", scene)[1]) == ["the blue bottle", "the blue ball"]
    with pytest.raises(ValueError, match="not a question of the synthetic domain"):
        question_targets("What is the meaning of life?", scene)


@pytest.mark.parametrize("said, truth, ious, failures", [
    (["The red cup", "the blue bottle"], ["the blue bottle", "the red cup"], [0.9, 0.8], []),
    (["The red bottle", "the red bottle"], ["the red bottle", "the red cup"], [0.9, 0.0],
     ["duplicated name", "missed target"]),
    (["The blue ball"], ["the blue bowl"], [0.7], ["wrong object"]),
    (["The red cup"], [], [], ["extra target"]),
    (["The red knife", "the blue scissors"], ["the red scissors"], [0.6], ["wrong object", "extra target"]),
    ([], ["the yellow knife"], [], ["missed target"]),
    (["The green cup", "the green cup"], ["the green cup", "the green cup"], [0.9, 0.2], ["bad mask"]),
    ([], [], [], []),
])
def test_failure_kinds_by_hand(said, truth, ious, failures):
    assert demo_failures(said, truth, ious) == failures


def test_the_demo_scene_is_the_first_that_answers_every_question():
    assert demo_scene() == DEMO_SCENE and DEMO_SEED == 0
    _, objects = render_scene(np.random.default_rng([DEMO_SEED, DEMO_SCENE]))
    truths = [question_targets(q, objects)[1] for q in DEMO_QUESTIONS]
    assert all(truths) and len(truths[1]) == 1
    _, before = render_scene(np.random.default_rng([DEMO_SEED, DEMO_SCENE - 1]))
    assert not all(question_targets(q, before)[1] for q in DEMO_QUESTIONS)


def test_a_model_that_always_says_the_red_cup_is_scored_per_question(tiny):
    path, tok = tiny
    engine = Engine(EngineConfig(model_path=str(path), device="cpu"))
    ids = tok.sp.encode("The red cup") + tok.seg_token_ids + tok.sp.encode(".") + [tok.eos_id]
    # scene 1 of seed 0: the red cup, the blue ball, the blue bottle, the yellow ball (left to right)
    report = evaluate_demo(engine, [1], SamplingConfig(max_new_tokens=20, logits_processor=ScriptedAnswer(ids)))
    engine.close()
    answers = {a["question"]: a for a in report["per_scene"][0]["answers"]}
    assert [a["said"] for a in answers.values()] == [["The red cup"]] * 4
    assert answers[HOLD]["truth"] == ["the red cup", "the blue bottle"]
    assert answers[HOLD]["failures"] == ["missed target"]
    assert answers[BLUE]["failures"] == ["wrong object", "missed target"]
    assert answers[CUT]["failures"] == ["extra target"] and answers[CUT]["truth"] == []
    assert answers[RED_CUP]["names_right"] and answers[RED_CUP]["failures"] in ([], ["bad mask"])
    assert report["asked"] == 4 and report["names_right"] == 1 and report["right"] <= 1
    assert report["by_question"][CUT]["failures"]["extra target"] == 1
    assert report["by_question"][CUT]["target_count_accuracy"] == 0.0
    assert report["failures"]["missed target"] == 2
    # answers of several targets, split by whether two share a colour (then only the kind tells them apart)
    assert report["by_question"][HOLD]["several_targets"] == {"sharing a colour": {"asked": 0, "names_right": 0},
                                                              "all colours distinct": {"asked": 1, "names_right": 0}}
    assert report["by_question"][BLUE]["several_targets"]["sharing a colour"] == {"asked": 1, "names_right": 0}
    assert answers[RED_CUP]["targets_share_a_colour"] is None


def test_cli_asks_with_the_node_defaults_on_the_camera_scenes_and_the_demo_scene(tiny, tmp_path, monkeypatch):
    asked = []
    ask = Engine.ask
    monkeypatch.setattr(Engine, "ask", lambda self, q, sampling=None, *a, **k: asked.append(sampling) or
                        ask(self, q, SamplingConfig(**{**sampling.__dict__, "max_new_tokens": 4}), *a, **k))
    main(["--model", str(tiny[0]), "--device", "cpu", "--demo", "--demo-scenes", "2", "--out", str(tmp_path)])
    assert asked == [node_sampling()] * 12  # 2 scenes + the demo scene, 4 questions each
    report = json.loads((tmp_path / "report_demo.json").read_text())
    assert report["scenes"] == [0, 1] and report["asked"] == 8 and set(report["by_question"]) == set(DEMO_QUESTIONS)
    assert report["demo_scene"]["scene"] == DEMO_SCENE and len(report["demo_scene"]["answers"]) == 4
