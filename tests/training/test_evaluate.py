"""Eval metrics: Hungarian-matched gIoU, cIoU and target count, worked out by hand on tiny masks."""
import numpy as np
import pytest

from training.evaluate import Metrics, synthetic_eval_set


def _box(y0: int, y1: int, x0: int, x1: int, size: int = 10) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_targets_are_matched_whatever_order_the_model_names_them():
    a, b = _box(0, 4, 0, 4), _box(6, 10, 6, 10)  # 16 pixels each, disjoint
    metrics = Metrics()
    assert metrics.add(np.stack([b, a]), np.stack([a, b])) == pytest.approx(1.0)
    half = _box(0, 4, 0, 2)  # 8 of a's 16 pixels
    assert metrics.add(np.stack([half]), np.stack([a])) == pytest.approx(0.5)
    s = metrics.summary()
    assert s["gIoU"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert s["cIoU"] == pytest.approx((32 + 8) / (32 + 16))
    assert s["target_count_accuracy"] == 1.0


def test_missing_and_extra_targets_count_as_zero_and_as_wrong_counts():
    a, b = _box(0, 4, 0, 4), _box(6, 10, 6, 10)
    metrics = Metrics()
    assert metrics.add(np.stack([a]), np.stack([a, b])) == pytest.approx(0.5)  # one target missed
    assert metrics.add(np.stack([a]), np.zeros((0, 10, 10), bool)) == 0.0  # named a target that is not there
    assert metrics.add(np.zeros((0, 10, 10), bool), np.zeros((0, 10, 10), bool)) == 1.0  # rightly named none
    s = metrics.summary()
    assert s["gIoU"] == pytest.approx(1 / 3)  # per target: 1 + 0 + 0; an empty-empty question adds no target
    assert s["cIoU"] == pytest.approx(16 / (16 + 16 + 16))
    assert s["target_count_accuracy"] == pytest.approx(1 / 3)


def test_the_held_out_split_can_ask_one_kind_of_question_of_the_same_scenes():
    usual, absent = synthetic_eval_set(6, 9999), synthetic_eval_set(6, 9999, question_kind="refer_absent")
    assert all(np.array_equal(u.image, a.image) for u, a in zip(usual, absent))
    assert all(a.answer == "There is no such object in the image." and len(a.masks) == 0 for a in absent)


def test_gIoU_divides_by_the_images_counts_not_the_questions():
    a, b, c, d = _box(0, 4, 0, 4), _box(6, 10, 6, 10), _box(0, 4, 6, 10), _box(6, 10, 0, 4)  # disjoint, 16 px each
    none = np.zeros((0, 10, 10), bool)
    metrics = Metrics()
    metrics.add(np.stack([a, b]), np.stack([a]), image="kitchen")  # one extra prediction: pairs 1 + 0
    metrics.add(np.stack([c]), np.stack([c, d]), image="kitchen")  # one target missed: pairs 1 + 0
    metrics.add(none, none, image="kitchen")  # rightly named none: adds nothing
    # Per image: max(2 + 1, 1 + 2) = 3; summed per question it would be max(2, 1) + max(1, 2) = 4.
    s = metrics.summary()
    assert s["gIoU"] == pytest.approx(2 / 3) and s["images"] == 1 and s["questions"] == 3
    assert s["cIoU"] == pytest.approx(32 / 64)  # extra and missing masks count in the union
    assert s["target_count_accuracy"] == pytest.approx(1 / 3)
    metrics.add(np.stack([a, b]), np.stack([a]))  # no image: its own, max(2, 1) = 2
    metrics.add(np.stack([c]), np.stack([c, d]))  # its own too: 2
    assert metrics.summary()["gIoU"] == pytest.approx((2 + 2) / (3 + 2 + 2))
    by = metrics.by_targets()
    assert list(by) == ["0", "1", "2", "3", "4+"] and by["3"]["questions"] == 0
    assert np.isnan(by["3"]["gIoU"]) and np.isnan(by["3"]["target_count_accuracy"])  # no such question
    assert by["1"]["gIoU"] == pytest.approx(2 / (2 + 2)) and by["1"]["images"] == 2  # kitchen's 1-target question alone
    assert by["2"]["gIoU"] == pytest.approx(2 / (2 + 2)) and by["0"]["questions"] == 1


def test_a_pair_of_two_empty_masks_counts_as_IoU_1_as_the_release():
    a, empty = _box(0, 4, 0, 4), np.zeros((10, 10), bool)
    metrics = Metrics()
    assert metrics.add(np.stack([a, empty]), np.stack([a])) == pytest.approx(1.0)  # the extra mask is empty
    assert metrics.add(np.stack([empty]), np.stack([a])) == 0.0
    assert metrics.summary()["gIoU"] == pytest.approx(2 / 3)
