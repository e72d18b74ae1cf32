"""Node parts tested in this process: parameters (one source of defaults), the adapter path check, the
vision_msgs guard, model errors (CUDA OOM included) and the lazy overlay, on an in-process node."""
from __future__ import annotations

import re
import shutil
import time
import types
from dataclasses import fields

import pytest
import rclpy
import torch
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

import pixellm_ros.outputs as outputs_module
from tests.support.node_fixtures import ROOT, image_msg, sample_rgb
from pixellm_ros.messages import detections_msg
from pixellm_ros.model import streaming
from pixellm_ros.msg import Query, SegmentationResult, TargetMask
from pixellm_ros.node import PixelLMNode, resolve_adapter
from pixellm_ros.outputs import import_vision_msgs
from pixellm_ros.serving import Request
from pixellm_ros.params import ENGINE_PARAMS, ConfigError, NodeConfig, configure, load_defaults

pytestmark = pytest.mark.ros


def test_yaml_is_the_one_source_of_defaults():
    defaults = load_defaults()
    assert set(defaults) == {f.name for f in fields(NodeConfig)} | set(ENGINE_PARAMS)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The ROS 2 node", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert set(defaults) <= documented, f"not in the README parameter table: {set(defaults) - documented}"


def test_max_image_pixels_has_one_default():
    """The YAML's value is the node's; the engine and the image readers, used without the node, default to it."""
    from pixellm_ros.conversions import DEFAULT_MAX_PIXELS
    from pixellm_ros.engine import EngineConfig

    assert load_defaults()["max_image_pixels"] == EngineConfig.max_image_pixels == DEFAULT_MAX_PIXELS


def test_configure_maps_and_reports_every_problem(scripted_model, tmp_path):
    node, engine = configure({**load_defaults(), "model_path": str(scripted_model), "max_image_age_s": 3,
                              "max_new_tokens": 7, "num_threads": 0})
    assert node.max_image_age_s == 3.0 and node.cameras == ("camera",) and node.image_topics == ("image",)
    assert engine.sampling.max_new_tokens == 7 and engine.num_threads is None and engine.max_question_chars == 2000
    with pytest.raises(ConfigError) as err:
        configure({"model_path": str(tmp_path / "none"), "cameras": ["a", "b"], "queue_size": 0, "dtype": "int8"})
    for words in ("model_path", "image_topics", "queue_size", "dtype"):
        assert words in str(err.value)
    with pytest.raises(ConfigError, match="max_image_age_s: expected float"):
        configure({"max_image_age_s": "soon"})


def test_model_paths_stay_inside_model_root(scripted_model, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(scripted_model, root / "good")
    (root / "link_out").symlink_to(scripted_model, target_is_directory=True)
    values = {**load_defaults(), "model_path": str(root / "good")}
    assert configure(values)[1].model_path == str(root / "good")  # model_root "" = the start-up model's folder
    assert configure({**values, "vision_tower": str(root / "good" / "vision_tower")}, model_root=root.resolve())
    (tmp_path / "x").mkdir()  # `..` out of the root into an existing folder
    for name, path in (("model_path", root / "link_out"), ("model_path", root / ".." / "models" / ".." / "x"),
                       ("model_path", scripted_model), ("vision_tower", scripted_model / "vision_tower")):
        with pytest.raises(ConfigError, match=f"{name} .* outside model_root"):
            configure({**values, name: str(path)}, model_root=root.resolve())


def test_resolve_adapter_stays_inside_adapter_dir(tmp_path):
    root, outside = tmp_path / "adapters", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (root / "link_out").symlink_to(outside)
    (root / "link_in").symlink_to(root / "a")
    assert resolve_adapter(str(root), "a") == root / "a"
    assert resolve_adapter(str(root), "a/b") == root / "a" / "b"
    assert resolve_adapter(str(root), "link_in") == root / "a"
    for name, words in [("..", ".."), ("a/../../outside", ".."), (str(outside), ".."), ("link_out", "outside"),
                        ("nope", "available"), (".", "outside")]:
        with pytest.raises(ValueError, match=words):
            resolve_adapter(str(root), name)
    with pytest.raises(ValueError, match="adapter_dir"):
        resolve_adapter("", "a")
    (root / "loop").symlink_to(root / "loop")
    for name in ("ü" * 300, "loop", "a\x00b"):  # too long, a symlink loop, NUL: refused (the first crashed the node)
        with pytest.raises(ValueError):
            resolve_adapter(str(root), name)


def test_detections_only_with_vision_msgs():
    assert import_vision_msgs() is None  # not installed here: the node runs without ~/detections

    def ns(**kw):
        return lambda **over: types.SimpleNamespace(**{**{k: v() if callable(v) else v for k, v in kw.items()},
                                                       **over})
    fake = types.SimpleNamespace(
        Detection2DArray=ns(header=None, detections=list),
        Detection2D=ns(header=None, id="", results=list, bbox=lambda: types.SimpleNamespace(
            center=types.SimpleNamespace(position=types.SimpleNamespace(x=0.0, y=0.0), theta=0.0),
            size_x=0.0, size_y=0.0)),
        ObjectHypothesisWithPose=ns(hypothesis=lambda: types.SimpleNamespace(class_id="", score=0.0)))
    target = TargetMask(index=1, label="the cup", score=0.75)
    target.bbox.x_offset, target.bbox.y_offset, target.bbox.width, target.bbox.height = 10, 20, 4, 6
    out = detections_msg(fake, Header(frame_id="cam"), [target])
    (det,) = out.detections
    assert (det.id, det.results[0].hypothesis.class_id, det.results[0].hypothesis.score) == ("1", "the cup", 0.75)
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y) == (12, 23, 4, 6)


@pytest.fixture
def local_node(scripted_model):
    context = rclpy.Context()
    rclpy.init(context=context)
    # In a namespace of its own: once a server of /pixellm/get_state has lived in this process (in any context), a
    # later call from this process to a node process's /pixellm/get_state goes unanswered (Fast DDS 3.2 /
    # rmw_fastrtps, Kilted; a bare rclpy LifecycleNode named pixellm does it too, one with another name does not):
    # test_node_lifecycle.py's first get_state timed out whenever this file ran first in the same pytest process.
    node = PixelLMNode(context=context, namespace="in_process", parameter_overrides=[
        Parameter("model_path", Parameter.Type.STRING, str(scripted_model)),
        Parameter("autostart", Parameter.Type.BOOL, False), Parameter("num_threads", Parameter.Type.INTEGER, 1),
        Parameter("max_new_tokens", Parameter.Type.INTEGER, 32)])
    node.trigger_configure()
    node.trigger_activate()
    yield node
    node.close()
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def _ask(node: PixelLMNode, qid: str) -> SegmentationResult:
    got = []
    req = Request(Query(id=qid, text="Where is the cup?"), "test", got.append,
                  image=image_msg(sample_rgb(1), Header(frame_id="given")))
    node.serving.finish(req, node.serving.answer(req))
    return got[0]


def test_model_errors_and_cuda_oom_leave_the_node_serving(local_node, monkeypatch):
    assert _ask(local_node, "ok").status == SegmentationResult.OK
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    engine = local_node.serving.engine

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator function, for streaming()

    monkeypatch.setattr(engine, "stream", streaming(oom))  # a Stream, like Engine.stream
    result = _ask(local_node, "oom")
    assert result.status == SegmentationResult.MODEL_ERROR and "out of device memory" in result.status_message and freed
    monkeypatch.setattr(engine, "stream", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    result = _ask(local_node, "boom")
    assert result.status == SegmentationResult.MODEL_ERROR and "RuntimeError: boom" in result.status_message
    monkeypatch.undo()
    assert _ask(local_node, "after").status == SegmentationResult.OK


def test_overlay_drawn_only_while_subscribed(local_node, monkeypatch):
    drawn = []
    real = outputs_module.draw_overlay
    monkeypatch.setattr(outputs_module, "draw_overlay", lambda *a, **k: drawn.append(1) or real(*a, **k))
    assert _ask(local_node, "nobody").status == SegmentationResult.OK and drawn == []
    local_node.create_subscription(Image, "~/overlay", lambda msg: None, 5)
    deadline = time.monotonic() + 10
    while local_node.outputs.overlay.get_subscription_count() == 0:
        assert time.monotonic() < deadline, "the overlay subscription did not match"
        time.sleep(0.01)
    assert _ask(local_node, "watched").status == SegmentationResult.OK and drawn == [1]


def test_no_answer_reports_an_image_age_above_the_limit(local_node, monkeypatch):
    """The age limit is checked at the inference start, after the conversion: a frame that turns stale while it
    is converted (here a slow conversion of a frame 0.9 s old, limit 1.0 s) is STALE_IMAGE, never an OK answer
    with image_age above max_image_age_s."""
    from pixellm_ros.frame_cache import Frame

    limit = local_node.cfg.max_image_age_s
    assert limit == 1.0
    now = local_node.get_clock().now().nanoseconds
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = divmod(now - 900_000_000, 1_000_000_000)
    local_node.serving.cameras.get().put(Frame(image_msg(sample_rgb(2), header), now - 900_000_000, time.monotonic_ns(),
                                        "camera"))
    real = local_node.serving.convert
    monkeypatch.setattr(local_node.serving, "convert", lambda *a: time.sleep(0.3) or real(*a))
    got = []
    req = Request(Query(id="late", text="Where is the cup?"), "test", got.append)
    local_node.serving.finish(req, local_node.serving.answer(req))
    age = got[0].image_age.sec + got[0].image_age.nanosec * 1e-9
    assert not (got[0].status == SegmentationResult.OK and age > limit), age
    assert got[0].status == SegmentationResult.STALE_IMAGE and "max_image_age_s" in got[0].status_message


def test_the_caller_is_answered_before_the_topics_and_the_heap_is_frozen_only_while_active(local_node,
                                                                                           monkeypatch):
    """The topics (label image, one mask per target topic, overlay, detections) go out after the waiting caller
    has its result, so they never add to its latency; a failure there is logged, not turned into an error
    answer. Activation freezes the long-lived objects out of the garbage collector's scans; deactivation
    unfreezes them so the unloaded engine can be collected."""
    import gc

    order = []
    real = local_node.publish_outputs
    monkeypatch.setattr(local_node, "publish_outputs", lambda *a: order.append("topics") or real(*a))
    req = Request(Query(id="first", text="Where is the cup?"), "test", lambda result: order.append("caller"),
                  image=image_msg(sample_rgb(1), Header(frame_id="given")))
    assert local_node.serving.finish(req, local_node.serving.answer(req)).status == SegmentationResult.OK
    assert order == ["caller", "topics"]

    monkeypatch.setattr(local_node, "publish_outputs", lambda *a: (_ for _ in ()).throw(RuntimeError("no topic")))
    assert _ask(local_node, "topics fail").status == SegmentationResult.OK

    assert gc.get_freeze_count() > 0
    local_node.trigger_deactivate()
    assert gc.get_freeze_count() == 0


def test_busy_answers_are_logged_at_most_once_a_second_with_a_count():
    from pixellm_ros.diagnostics import Stats

    stats = Stats()
    assert stats.record("BUSY", None, now_s=10.0) == (False, 0)  # logged
    assert stats.record("BUSY", None, now_s=10.5) == (True, 0)  # quiet
    assert stats.record("BUSY", None, now_s=10.9) == (True, 0)
    assert stats.record("BUSY", None, now_s=11.1) == (False, 2)  # logged, with the 2 before it
    assert stats.record("OK", 0.25, now_s=11.2) == (False, 0)
    assert stats.snapshot() == ({"BUSY": 4, "OK": 1}, [0.25])


def test_centroid_poses_and_pinhole_camera_info():
    import math

    from pixellm_ros.messages import centroids_msg, pinhole_info

    poses = centroids_msg(Header(frame_id="cam"), [(1.0, 2.0, 3.0), None])
    assert poses.header.frame_id == "cam" and len(poses.poses) == 2
    assert (poses.poses[0].position.x, poses.poses[0].position.z, poses.poses[0].orientation.w) == (1.0, 3.0, 1.0)
    assert math.isnan(poses.poses[1].position.x)  # no depth under that mask
    info = pinhole_info(Header(frame_id="cam"), 480, 640, hfov_deg=90.0)
    assert (info.width, info.height) == (640, 480) and info.k[0] == pytest.approx(320.0)
    assert (info.k[2], info.k[5]) == (319.5, 239.5)
