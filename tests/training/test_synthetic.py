"""The synthetic tabletop stream: reproducible, valid, and optionally several questions per scene."""
import numpy as np

from training.data.synthetic import SyntheticConfig, make_question, render_scene, synthetic_sample


def test_samples_are_valid_and_reproducible():
    for i in range(20):
        a, b = synthetic_sample(7, i), synthetic_sample(7, i)
        a.validate()
        assert a.question == b.question and np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
        assert a.answer.count("{seg}") == len(a.masks) == len(a.names)
        for m in a.masks:
            assert m.any()  # every target is visible


def test_one_question_per_scene_is_the_original_stream():
    """The shipped model's stream: scene and question drawn from one generator per index."""
    rng = np.random.default_rng([3, 5])
    image, objects = render_scene(rng, SyntheticConfig())
    question, _, _ = make_question(rng, objects, SyntheticConfig())
    s = synthetic_sample(3, 5)
    assert np.array_equal(s.image, image) and s.question == question


def test_several_questions_per_scene_share_the_image():
    cfg = SyntheticConfig(questions_per_scene=4)
    group = [synthetic_sample(1, i, cfg) for i in range(8)]
    for k in (0, 4):
        assert all(np.array_equal(group[k].image, s.image) for s in group[k:k + 4])
    assert not np.array_equal(group[0].image, group[4].image)
    questions = {(s.question, s.answer) for s in group[:4]}
    assert len(questions) > 1  # the same scene is asked different things
