"""The node's answer guards (max_targets, repetition_*) against a model that loops, in a node of its own: the
module node of test_node.py runs with the same name and services, so this test lives in a module without it."""
from __future__ import annotations

import pytest

from tests.support.node_fixtures import sample_rgb, segment, start_node, wait_active  # noqa: F401 (start_node: fixture)
from pixellm_ros.msg import SegmentationResult

pytestmark = pytest.mark.ros


def test_guard_cuts_a_looping_answer(start_node, scripted_model):
    """The scripted model loops forever: with the YAML's guards (only max_new_tokens raised) the repetition stop
    cuts the answer at the 4th "the cup and", says so in stop_reason and logs a warning with the query id."""
    client = start_node(model_path=scripted_model, max_new_tokens=200)
    wait_active(client)
    result = segment(client, sample_rgb(5), "loop")
    assert result.status == SegmentationResult.OK and result.stop_reason == "repetition", (
        result.stop_reason, result.answer)
    assert result.answer == " ".join(["the cup and"] * 4) and len(result.targets) == 4
    client.spin_until(lambda: "'loop': answer cut by repetition" in client.process.log(), "the guard's warning")
    assert "WARN" in next(line for line in client.process.log().splitlines() if "answer cut by" in line)
