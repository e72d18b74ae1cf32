"""The node tests' side of the node harness (reliability/node_process.py: the scripted model, the node process, the
client): a camera that publishes test frames, the `start_node` fixture, and the two calls every node test makes
(`wait_active`, `segment`). The harness names the tests use are
re-exported here, so a node test imports everything node-related from one module."""
from __future__ import annotations

import time

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import Segment

from reliability.node_process import (DEADLINE_S, NODE, RELIABLE, ROOT, Client, Lifecycle,  # noqa: F401 (re-exported)
                                      NodeProcess, build_adapter, build_scripted_model, image_msg, sample_rgb,
                                      spin_future, spin_until)


class Camera:
    """Publishes test frames on one image topic (sensor-data QoS, as a driver would)."""

    def __init__(self, client: "Client", topic: str, frame_id: str, seed: int = 0) -> None:
        self.client, self.frame_id = client, frame_id
        self.pub = client.node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.rgb = sample_rgb(seed)
        self.sent: list[Header] = []
        self._timer = None

    def publish(self, stamp_ns: int | None = None, rgb: np.ndarray | None = None, **fields) -> Image:
        stamp_ns = time.time_ns() if stamp_ns is None else stamp_ns
        header = Header(frame_id=self.frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg = image_msg(self.rgb if rgb is None else rgb, header)
        for k, v in fields.items():
            setattr(msg, k, v)
        self.pub.publish(msg)
        self.sent.append(header)
        return msg

    def stream(self, rate_hz: float = 20.0, delay_s: float = 0.0) -> None:
        """Publish a frame stamped now - delay_s every 1/rate_hz s while the client spins."""
        self.stop()
        self._timer = self.client.node.create_timer(
            1.0 / rate_hz, lambda: self.publish(time.time_ns() - int(delay_s * 1e9)))

    def stop(self) -> None:
        if self._timer is not None:
            self.client.node.destroy_timer(self._timer)
            self._timer = None


@pytest.fixture
def start_node(tmp_path):
    """start_node(**params) -> Client of a new node process; nodes are stopped (SIGINT) after the test."""
    started = []

    def start(**params) -> "Client":
        node = NodeProcess(tmp_path / f"node{len(started)}.log", num_threads=1, **params)
        client = Client(node)
        started.append((node, client))
        return client

    yield start
    stop_all(started)


def stop_all(started: list) -> None:
    for node, client in started:
        client.close()
        print(f"--- node exited with {node.stop()} ---\n{node.log()}")
    started.clear()


def wait_active(client: Client) -> None:
    """Until the node answers (autostart: configure + activate, then the model is loaded)."""
    req = Segment.Request(query=Query(id="ping", text="ping"), use_image=True,
                          image=image_msg(sample_rgb(9), Header(frame_id="ping")))
    deadline = time.monotonic() + 2 * DEADLINE_S
    while (status := client.call(client.segment, req, "a ping answer").result.status) == SegmentationResult.NOT_READY:
        assert time.monotonic() < deadline, "the node did not become active"
        client.executor.spin_once(timeout_sec=0.2)
    assert status == SegmentationResult.OK


def segment(client: Client, rgb: np.ndarray, qid: str, text: str = "Where is the cup?",
            **image_fields) -> SegmentationResult:
    msg = image_msg(rgb, Header(frame_id="given"))
    msg.header.stamp.sec = 7
    for k, v in image_fields.items():
        setattr(msg, k, v)
    request = Segment.Request(query=Query(id=qid, text=text), use_image=True, image=msg)
    return client.call(client.segment, request, f"the Segment response {qid}").result
