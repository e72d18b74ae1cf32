"""A SegmentationResult with real masks, published by another process, arrives intact."""
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from pixellm_ros.msg import SegmentationResult
from tests.support.ros_helpers import RESULT_TOPIC, sample_masks, sample_result, spin_until

pytestmark = pytest.mark.ros


def test_result_with_masks_crosses_processes(ros_node, start_peer):
    node, executor = ros_node
    received = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(SegmentationResult, RESULT_TOPIC, received.append, qos)
    seed = 1234
    peer = start_peer("publish", str(seed))  # publishes once it sees our subscription matched

    spin_until(executor, lambda: received, f"a SegmentationResult on {RESULT_TOPIC}", peer)

    got, want = received[0], sample_result(seed)
    assert got == want  # every field, masks included
    for t, mask in zip(got.targets, sample_masks(seed)):
        assert (t.mask.encoding, t.mask.height, t.mask.width, t.mask.step) == ("mono8", 48, 64, 64)
        pixels = np.frombuffer(bytes(t.mask.data), np.uint8).reshape(48, 64)
        np.testing.assert_array_equal(pixels, np.where(mask, 255, 0))
        assert t.pixel_count == mask.sum() and t.mask.header == got.header
    assert got.targets[1].label == "la tasse à café ☕"
    assert got.status == SegmentationResult.OK and got.incomplete_codebook_tokens == 2
