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


def test_objects_per_scene_range_is_honoured_and_validated():
    import pytest

    from training.config import SourceConfig
    from training.data.dataset import source_reader

    read, _ = source_reader(SourceConfig(seed=2, objects=[4, 5], question_mix={"color": 1}))
    counts = [len(render_scene(np.random.default_rng([2, i]), SyntheticConfig(min_objects=4, max_objects=5))[1])
              for i in range(30)]
    assert max(counts) == 5 and np.mean(counts) > 3.5  # (objects hidden under others are dropped)
    expected = synthetic_sample(2, 3, SyntheticConfig(min_objects=4, max_objects=5, question_mix={"color": 1}))
    assert np.array_equal(read(3).image, expected.image) and read(3).question == expected.question
    with pytest.raises(ValueError, match="min <= max"):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match=r"\[min, max\]"):
        source_reader(SourceConfig(objects=[3]))


def test_a_source_can_restrict_kinds_and_colours_and_unknown_ones_are_refused():
    """Curricula such as "containers of two colours" (same-coloured containers to tell apart) come from a source's
    kinds / colors; a typo must fail when the config is read, not as a KeyError deep in a data worker."""
    import pytest

    from training.config import SourceConfig
    from training.data.dataset import source_reader

    read, _ = source_reader(SourceConfig(seed=4, kinds=["cup", "bottle"], colors=["red", "blue"], objects=[3, 4],
                                         question_mix={"afford": 1}))
    seen = set()
    for i in range(20):
        s = read(i)
        s.validate()
        seen |= {tuple(n.split()[1:]) for n in s.names}
        assert "hold water" in s.question or s.answer == "There is no such object in the image."
    assert seen and seen <= {(c, k) for c in ("red", "blue") for k in ("cup", "bottle")}
    for bad in ({"kinds": ("mug",)}, {"colors": ("purple",)}, {"colors": ()}):
        with pytest.raises(ValueError, match="kinds must be some of"):
            SyntheticConfig(**bad)


def test_distinct_scenes_never_repeat_a_kind_and_colour():
    """One-colour curricula need it: else "The red cup and the red cup." is a right answer they teach."""
    one_colour = dict(colors=("red",), min_objects=4, max_objects=5)
    pairs = lambda objects: [(o.kind, o.color) for o in objects]  # noqa: E731
    plain = [render_scene(np.random.default_rng([5, i]), SyntheticConfig(**one_colour))[1] for i in range(30)]
    assert any(len(set(pairs(objects))) < len(objects) for objects in plain)  # without the flag, kinds repeat
    for i in range(30):
        objects = render_scene(np.random.default_rng([5, i]), SyntheticConfig(**one_colour, distinct=True))[1]
        assert len(set(pairs(objects))) == len(objects) >= 2
    only_one = SyntheticConfig(kinds=("cup",), colors=("red",), min_objects=3, max_objects=3, distinct=True)
    assert len(render_scene(np.random.default_rng(0), only_one)[1]) == 1  # no free pair left: fewer objects


def test_varied_phrasings_ask_the_same_things_and_leave_the_template_stream_alone():
    import pytest

    varied = SyntheticConfig(phrasing="varied")
    questions = [synthetic_sample(5, i, varied) for i in range(200)]
    assert len({q.question.split(" the ")[0] for q in questions}) > 12  # many ways of asking
    assert any(q.question.startswith("Which objects could hold water") for q in questions)
    for i in range(50):  # same scenes and targets either way; only the wording (and later draws) may differ
        a, b = synthetic_sample(5, i), synthetic_sample(5, i, varied)
        assert np.array_equal(a.image, b.image)
    template = [synthetic_sample(5, i).question for i in range(200)]
    allowed = ("Where is the ", "Segment the ", "Can you find the ", "Which objects could I use to ",
               "What could I use to ", "Segment all the ")
    assert all(q.startswith(allowed) for q in template)
    with pytest.raises(ValueError, match="phrasing"):
        SyntheticConfig(phrasing="poetic")


def test_questions_about_absent_objects_name_no_target_and_often_near_miss():
    cfg = SyntheticConfig(question_mix={"refer_absent": 1})
    near_misses = 0
    for i in range(60):
        s = synthetic_sample(4, i, cfg)
        s.validate()
        rng = np.random.default_rng([4, i])
        _, objects = render_scene(rng, cfg)
        asked = s.question.removesuffix("?").split(" the ")[-1].split()
        assert s.answer == "There is no such object in the image." and len(s.masks) == 0
        assert (asked[0], asked[1]) not in {(o.color, o.kind) for o in objects}  # really absent
        near_misses += any(asked[0] == o.color or asked[1] == o.kind for o in objects)
    assert near_misses > 30  # half are drawn from near misses, and uniform draws hit some too
    # the default stream (the shipped model's data and the held-out split) is unchanged by the new kind
    assert [synthetic_sample(6, i).question for i in range(6)] == [
        "Segment all the green objects.", "Where is the green knife?", "Segment all the yellow objects.",
        "What could I use to hold water?", "Segment all the blue objects.", "What could I use to play catch?"]
