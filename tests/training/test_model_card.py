"""The model card lists every training stage, with the commands that rebuild the shipped model."""
from __future__ import annotations

import json

import yaml

from training.config import TrainConfig
from training.model_card import write_card


def _run(root, name, base, steps, **extra):
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 3, "hidden_size": 192, "num_attention_heads": 4, "vocab_size": 808,
         "resize_vision_tower_size": 224, "torch_dtype": "bfloat16"}))
    cfg = TrainConfig.from_dict({"base_model": str(base), "output_dir": str(run), "steps": steps, "batch_size": 8, "grad_accum": 1,
                                **extra}).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = "".join(f"{s},0.001,8.0,1.0,0.1,0.1,0.1,0,0\n" for s in range(10, steps + 1, 10))
    (run / "metrics.csv").write_text("step,lr,samples_per_s,loss,ce,bce,dice,overlap,naming\n" + rows)
    return run


def test_card_names_each_stage_and_how_to_rebuild_it(tmp_path):
    first = _run(tmp_path, "s1", tmp_path / "init", 100)
    _run(tmp_path, "s2", tmp_path / "s1_step50", 40, reinit_modules=["model.mask_decoder"])
    final = _run(tmp_path, "s3", tmp_path / "s2" / "model", 20,
                 data={"sources": [{"kind": "synthetic", "seed": 2, "question_mix": {"refer": 1, "color": 1}},
                                   {"kind": "synthetic", "seed": 3, "kinds": ["cup", "bottle"], "colors": ["red", "blue"],
                                    "distinct": True}]})
    evaluation = _heldout(tmp_path / "eval", 0.5, 0.6, 0.8)
    out = write_card(final, evaluation, tmp_path / "shipped", stages=[f"{first}:50", str(tmp_path / "s2")])
    card = (out / "MODEL_CARD.md").read_text()
    assert "| stage 1 |" in card and "50 steps x batch" in card and "stopped and exported at step 50" in card
    assert "re-initialised first: model.mask_decoder" in card and "question mix {'color': 1, 'refer': 1}" in card
    assert "seed 3, 1 questions per scene, only cup/bottle, only red/blue objects, no kind and colour twice" in card  # a restricted source says so
    assert "| stage 3 |" in card and "**not met**" in card
    # 50 + 40 + 20 steps of batch 8 at 8 samples/s: 110 s
    assert "| time | 2 min of training" in card
    assert f"--checkpoint {first}/checkpoints/step_0000050 --out {first}_step50" in card
    assert card.count("python -m training.train ") == 3 and f"--stages {first}:50 {tmp_path / 's2'}" in card
    assert (out / "heldout_report.json").is_file() and (out / "config.json").is_file()


def _heldout(folder, giou, ciou, count):
    """An evaluation folder as `training.evaluate` writes it (10 held-out questions)."""
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"questions": 10, "gIoU": giou, "cIoU": ciou,
                                                    "target_count_accuracy": count}))
    return folder


def _ood(folder, no_target):
    summary = {"answers": 4, "no_target_fraction": no_target, "eos_fraction": 0.5, "guard_cut_fraction": 0.25,
               "bounded_fraction": 1.0, "mean_tokens": 12.5, "mean_targets": 0.25, "max_targets": 1, "max_chars": 80,
               "max_word_run": 2}
    folder.mkdir()
    (folder / "report_ood.json").write_text(json.dumps({"images": 2, "questions": 4, "settings": {
        "node_defaults": summary, "engine_defaults": {**summary, "guard_cut_fraction": 0.0}}}))
    return folder


def test_a_further_stage_continues_the_shipped_card_when_the_old_runs_are_gone(tmp_path):
    first = _run(tmp_path, "s1", tmp_path / "init", 60)
    evaluation = _heldout(tmp_path / "eval", 0.8, 0.8, 0.95)
    shipped = tmp_path / "shipped"
    write_card(first, evaluation, shipped, notes="Stage 1 learned the domain.")
    (tmp_path / "s1").rename(tmp_path / "gone")
    more = _run(tmp_path, "s2", shipped, 120, data={"sources": [
        {"kind": "synthetic", "seed": 3, "ratio": 0.5}, {"kind": "negative", "seed": 4, "ratio": 0.5}]})
    out = write_card(more, evaluation, shipped, notes="Stage 2 learned what it does not know.",
                     previous_card=shipped / "MODEL_CARD.md", ood=_ood(tmp_path / "ood2", 0.75),
                     ood_baseline=_ood(tmp_path / "ood1", 0.25))
    card = (out / "MODEL_CARD.md").read_text()
    assert card.count("| stage 1 | `") == 1 and "| stage 2 | `" in card and "| stage 3 |" not in card
    assert "0.5 of the mix: photographs / textures without domain objects (negative) seed 4" in card
    assert "| time | 3 min of training" in card  # 60 + 120 steps of batch 8 at 8 samples/s: 1 + 2 min
    assert card.index(f"python -m training.train {first}") < card.index(f"python -m training.train {more}")
    assert f"--eval {evaluation} --out {shipped}\npython -m training.train {more}" in card  # base shipped first
    assert f"python -m training.evaluate --model {more}/model --ood --out {tmp_path / 'ood2'}" in card
    assert f"--previous-card {shipped}/MODEL_CARD.md --run {more} --eval {evaluation} --ood {tmp_path / 'ood2'}" in card
    assert "| before (the base model) | node defaults (guards on) | 4 | 0.25 |" in card
    assert "| this model | engine defaults (no guards) | 4 | 0.75 | 0.50 | 0.00 |" in card
    assert card.index("Stage 1 learned") < card.index("Stage 2 learned") and card.count("## Notes") == 1
    assert (out / "ood_report.json").is_file()


def _demo(folder, right):
    by_question = {q: {"right": right, "asked": 2, "names_right": 2} for q in ("Where is the red cup?", "Cut?")}
    folder.mkdir()
    (folder / "report_demo.json").write_text(json.dumps({
        "seed": 0, "scenes": [0, 1], "right": 2 * right, "names_right": 4, "asked": 4, "by_question": by_question,
        "failures": {"wrong object": 2 - right, "bad mask": 0}, "demo_scene": {"scene": 113, "right": right,
                                                                             "answers": [{}, {}]}}))
    return folder


def test_the_demo_table_compares_the_model_with_its_base(tmp_path):
    run = _run(tmp_path, "s1", tmp_path / "init", 20)
    evaluation = _heldout(tmp_path / "eval", 0.8, 0.8, 0.95)
    out = write_card(run, evaluation, tmp_path / "shipped", demo=_demo(tmp_path / "d2", 2),
                     demo_baseline=_demo(tmp_path / "d1", 1))
    card = (out / "MODEL_CARD.md").read_text()
    assert '| model | right | names right | "Where is the red cup?" | "Cut?" | wrong object | bad mask | demo scene |' in card
    assert "| before (the base model) | 2/4 | 4/4 | 1/2 | 1/2 | 1 | 0 | 1/2 |" in card
    assert "| this model | 4/4 | 4/4 | 2/2 | 2/2 | 0 | 0 | 2/2 |" in card and "scene 113" in card
    assert f"python -m training.evaluate --model {run}/model --demo --out {tmp_path / 'd2'}" in card
    assert f"--demo {tmp_path / 'd2'} --out {tmp_path / 'shipped'}" in card and (out / "demo_report.json").is_file()


def test_a_stage_from_a_grown_model_says_so_and_how_it_was_grown(tmp_path):
    first = _run(tmp_path, "s1", tmp_path / "init", 30)
    grown = tmp_path / "s1_grown"
    grown.mkdir()
    (grown / "grown.json").write_text(json.dumps({"source": f"{first}/model", "layers_before": 3, "layers": 6,
                                                  "copied_layers": [0, 1, 2]}))
    final = _run(tmp_path, "s2", grown, 20, trainable=["model.layers.1", "lm_head"], train_vision_tower=True)
    out = write_card(final, _heldout(tmp_path / "eval", 0.8, 0.8, 0.95), tmp_path / "shipped", stages=[str(first)])
    card = (out / "MODEL_CARD.md").read_text()
    assert "LLM grown from 3 to 6 layers first (`training.grow`); trained only: model.layers.1, lm_head; vision " \
           "tower trained too" in card
    assert card.count("grown from") == 1  # stage 1 started from a model nobody grew
    grow_line = f"python -m training.grow --model {first}/model --layers 6 --out {grown}\n"
    assert grow_line + f"python -m training.train {final}" in card
    assert card.index(f"python -m training.train {first}") < card.index(grow_line)
