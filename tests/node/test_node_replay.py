"""Record a node's inputs (images, queries) and outputs (results) to an MCAP bag with rosbags, replay the inputs
into a fresh node and get the same answers and masks (the tiny model is greedy, hence deterministic)."""
from __future__ import annotations


import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from sensor_msgs.msg import Image

from tests.support.node_fixtures import (DEADLINE_S, ROOT, Camera, sample_rgb,  # noqa: F401 (start_node: fixture)
                                         start_node)
from pixellm_ros.msg import Query, SegmentationResult

pytestmark = pytest.mark.ros
TOPICS = {"/image": "sensor_msgs/msg/Image", "/query_full": "pixellm_ros/msg/Query",
          "/pixellm/result": "pixellm_ros/msg/SegmentationResult"}
PARAMS = dict(max_new_tokens=32, max_image_age_s=0.0)  # 0: no age limit, the replayed stamps are old


def typestore():
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted((ROOT / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"pixellm_ros/msg/{path.stem}"))
    store.register(types)
    return store


def feed(client, cam: Camera, image: Image, query: Query):
    """Publish one frame, wait until the node has it, then ask about exactly that frame (FRAME_STAMP)."""
    n = client.frames("camera")
    cam.pub.publish(image)
    client.wait_frames("camera", n + 1)
    client.query_full_pub.publish(query)
    return client.result_for(query.id)


def test_record_then_replay_gives_the_same_results(start_node, scripted_model, tmp_path):
    store, bag = typestore(), tmp_path / "session"
    client = start_node(model_path=scripted_model, diagnostics_period_s=0.2, **PARAMS)
    cam = Camera(client, "image", "camera_optical")
    client.wait_connected(cam.pub)
    client.spin_until(lambda: client.diagnostic("state") == "active", "the node to be active", timeout=2 * DEADLINE_S)
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {t: writer.add_connection(t, msgtype, typestore=store) for t, msgtype in TOPICS.items()}
        for k in range(3):
            image = cam.publish(1_700_000_000_000_000_000 + k * 50_000_000, rgb=sample_rgb(30 + k))
            query = Query(id=f"r{k}", text=f"Where is the cup number {k}?", frame_policy=Query.FRAME_STAMP,
                          stamp=image.header.stamp)
            result = feed(client, cam, image, query)
            assert result.status == SegmentationResult.OK, result.status_message
            t = 1_700_000_000_000_000_000 + k * 1000
            for topic, msg, dt in (("/image", image, 0), ("/query_full", query, 1), ("/pixellm/result", result, 2)):
                writer.write(conns[topic], t + dt, serialize_message(msg))
    client.process.stop()  # the recording node must be gone before the replay node joins the domain

    replay = start_node(model_path=scripted_model, diagnostics_period_s=0.2, **PARAMS)
    rcam = Camera(replay, "image", "camera_optical")
    replay.wait_connected(rcam.pub)
    replay.spin_until(lambda: replay.diagnostic("state") == "active", "the replay node to be active", timeout=2 * DEADLINE_S)
    recorded, replayed = [], []
    with Reader(bag) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == TOPICS
        pending = None
        for conn, _, raw in reader.messages():
            if conn.topic == "/image":
                pending = deserialize_message(raw, Image)
            elif conn.topic == "/query_full":
                replayed.append(feed(replay, rcam, pending, deserialize_message(raw, Query)))
            else:
                recorded.append(store.deserialize_cdr(raw, conn.msgtype))  # via the registered custom types
    assert len(recorded) == len(replayed) == 3
    for old, new in zip(recorded, replayed):
        assert (new.query_id, new.status, new.answer) == (old.query_id, SegmentationResult.OK, old.answer)
        assert (new.header.stamp.sec, new.header.stamp.nanosec) == (old.header.stamp.sec, old.header.stamp.nanosec)
        assert [t.pixel_count for t in new.targets] == [t.pixel_count for t in old.targets]
        assert [bytes(t.mask.data) for t in new.targets] == [bytes(t.mask.data) for t in old.targets]
        assert len(old.targets) == 2
