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
