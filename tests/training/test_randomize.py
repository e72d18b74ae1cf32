"""Domain randomization and negatives (training/data/randomize.py): composites keep the rendered masks exact,
negatives name no target, and the out-of-domain evaluation's photographs and texture kinds never reach training."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")  # training-only dependency (requirements.txt)

from training.config import SourceConfig, TrainConfig  # noqa: E402
from training.data import randomize  # noqa: E402
from training.data.dataset import source_reader  # noqa: E402
from training.data.randomize import (HELDOUT_PHOTOS, HELDOUT_TEXTURES, TRAIN_PHOTOS, TRAIN_TEXTURES,  # noqa: E402
                                     RandomizeConfig, negative_sample, ood_eval_set, ood_images, randomized_sample)
from training.data.synthetic import NO_SUCH_OBJECT, SyntheticConfig, render_scene  # noqa: E402

MIX = {"refer": 0.3, "refer_absent": 0.1, "afford": 0.3, "color": 0.3}


def test_composites_keep_every_mask_and_object_pixel_exact():
    cfg = RandomizeConfig(scene=SyntheticConfig(questions_per_scene=4, question_mix=MIX), jitter=False)
    named = 0
    for i in range(0, 80, 4):  # one question per scene
        s = randomized_sample(3, i, cfg).validate()
        rendered, objects = render_scene(np.random.default_rng([3, i // 4]), cfg.scene)
        for mask, name in zip(s.masks, s.names):  # the rendered visible pixels, not a resampled mask
            assert any(np.array_equal(mask, o.mask) for o in objects if o.name == name)
            assert np.array_equal(s.image[mask], rendered[mask])
            named += 1
        union = np.any([o.mask for o in objects], axis=0)
        assert not np.array_equal(s.image[~union], rendered[~union])  # the wall and table are gone
    assert named >= 8


def test_samples_are_a_function_of_seed_and_index_and_jitter_changes_only_the_look():
    a, b = randomized_sample(5, 7), randomized_sample(5, 7)
    assert np.array_equal(a.image, b.image) and a.question == b.question and np.array_equal(a.masks, b.masks)
    plain = randomized_sample(5, 7, RandomizeConfig(jitter=False))
    assert plain.question == a.question and np.array_equal(plain.masks, a.masks)
    assert not np.array_equal(plain.image, a.image)


def test_negatives_name_no_target_and_ask_every_kind_of_question():
    cfg = RandomizeConfig(scene=SyntheticConfig(question_mix={"refer": 0.4, "afford": 0.3, "color": 0.3},
                                                phrasing="varied"))
    samples = [negative_sample(11, i, cfg).validate() for i in range(60)]
    assert all(s.answer == NO_SUCH_OBJECT and s.masks.shape == (0, 240, 320) for s in samples)
    questions = " ".join(s.question for s in samples)
    for words in ("hold water", "cut the rope", "objects", "the red", "the blue"):
        assert words in questions or words.replace("the ", "") in questions


def test_training_sources_never_draw_the_held_out_photographs_or_texture_kinds(monkeypatch):
    loaded = []
    real = randomize.load_photo
    monkeypatch.setattr(randomize, "load_photo", lambda name: loaded.append(name) or real(name))
    sources = [randomized_sample(1, i).source for i in range(150)] + [negative_sample(2, i).source for i in range(150)]
    backgrounds = {":".join(s.split(":")[3:5]) for s in sources}
    assert {b.split(":")[0] for b in backgrounds} == {"photo", "texture"}
    assert set(loaded) <= set(TRAIN_PHOTOS) and len(set(loaded)) >= 10
    assert {b.split(":")[1] for b in backgrounds if b.startswith("texture")} == set(TRAIN_TEXTURES)
    assert not set(HELDOUT_PHOTOS) & set(TRAIN_PHOTOS) and not set(HELDOUT_TEXTURES) & set(TRAIN_TEXTURES)


def test_the_ood_set_is_the_held_out_images_with_domain_questions_answered_no_target():
    names = [im.name for im in ood_images()]
    assert {f"photo:{p}" for p in HELDOUT_PHOTOS} <= set(names)
    assert {n.split(":")[1] for n in names if n.startswith("texture")} == set(HELDOUT_TEXTURES) | set(TRAIN_TEXTURES)
    samples = ood_eval_set(questions_per_image=3)
    assert len(samples) == 3 * len(names)
    assert all(s.answer == NO_SUCH_OBJECT and len(s.masks) == 0 for s in samples)
    assert any(s.question.startswith(("Where is", "Show me the", "Segment the", "Find the", "Can you", "Which object is"))
               for s in samples)
    assert [s.question for s in samples] == [s.question for s in ood_eval_set(questions_per_image=3)]


def test_the_sources_plug_into_a_training_config():
    cfg = TrainConfig.from_dict({"data": {"sources": [
        {"kind": "randomized", "seed": 4, "questions_per_scene": 2, "objects": [1, 2], "question_mix": MIX},
        {"kind": "negative", "seed": 5, "size": 3}]}})
    read, n = source_reader(cfg.data.sources[0])
    s = read(0)
    assert n is None and s.source.startswith("randomized:4:0:") and len(s.masks) <= 2
    read, n = source_reader(cfg.data.sources[1])
    assert n == 3 and read(4).source == read(1).source and read(1).answer == NO_SUCH_OBJECT
    with pytest.raises(ValueError, match="objects must be"):
        source_reader(SourceConfig(kind="randomized", objects=[1]))
