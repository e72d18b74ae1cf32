"""Frames out of a ROS 2 bag into PNGs + labelme templates, then back in as Samples once annotated."""
from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

rosbags = pytest.importorskip("rosbags")
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from training.capture import image_msg_to_rgb, main  # noqa: E402
from training.data.labelme import LabelmeDataset  # noqa: E402

H, W = 12, 10


def store():
    return get_typestore(getattr(Stores, "ROS2_KILTED", Stores.LATEST))


def frames(n):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def image_msg(ts, rgb, encoding, pad, t):
    """A sensor_msgs/Image with `pad` bytes at the end of each row."""
    body = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full((H, W), 7, np.uint8)]),
            "mono8": rgb[..., :1]}[encoding]
    step = W * body.shape[2] + pad
    rows = np.zeros((H, step), np.uint8)
    rows[:, : W * body.shape[2]] = body.reshape(H, -1)
    rows[:, W * body.shape[2]:] = 0xAB
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    return Image(header=Header(stamp=Time(sec=t, nanosec=5), frame_id="cam"), height=H, width=W,
                 encoding=encoding, is_bigendian=0, step=step, data=rows.reshape(-1))


def write_bag(path, storage, originals):
    ts = store()
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]
    with Writer(path, version=9, storage_plugin=storage) as w:
        raw = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        comp = w.add_connection("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=ts)
        for k, (enc, pad) in enumerate([("bgr8", 2), ("rgb8", 0), ("rgb8", 3)]):
            msg = image_msg(ts, originals[k], enc, pad, k)
            w.write(raw, (k + 1) * 10**8, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
        png = cv2.imencode(".png", originals[3][..., ::-1])[1]
        msg = Compressed(header=Header(stamp=Time(sec=9, nanosec=0), frame_id="cam"), format="png", data=png)
        w.write(comp, 5 * 10**8, ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))


def read_png(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_capture_writes_frames_and_templates_then_reads_annotations(tmp_path, storage):
    originals = frames(4)
    bag, out = tmp_path / "bag", tmp_path / "frames"
    write_bag(bag, storage, originals)
    assert main([str(bag), "--topic", "/camera/image_raw", "--topic", "/camera/image_raw/compressed",
                 "--out", str(out)]) == 0
    pngs = sorted(out.glob("camera_image_raw_0*.png"))
    assert len(pngs) == 3
    for png, rgb in zip(pngs, originals):
        assert (read_png(png) == rgb).all(), png
    assert (read_png(out / "camera_image_raw_compressed_000000.png") == originals[3]).all()
    template = json.loads((out / "camera_image_raw_000001.json").read_text())
    assert template["imagePath"] == "camera_image_raw_000001.png" and template["shapes"] == []
    assert (template["imageHeight"], template["imageWidth"]) == (H, W)
    assert template["questions"] == [{"question": "", "answer": "", "targets": []}]
    assert template["capture"]["stamp_ns"] == 1 * 10**9 + 5 and template["capture"]["encoding"] == "rgb8"

    assert len(LabelmeDataset(out)) == 0  # nothing annotated yet

    template["shapes"] = [{"label": "mug", "points": [[2, 3], [6, 3], [6, 8], [2, 8]], "group_id": None,
                           "shape_type": "polygon", "flags": {}}]
    (out / "camera_image_raw_000001.json").write_text(json.dumps(template))
    ds = LabelmeDataset(out)
    assert len(ds) == 1 and ds.skipped == 3
    s = ds[0]
    assert (s.image == originals[1]).all()
    want = np.zeros((H, W), bool)
    want[3:9, 2:7] = True
    assert s.masks.shape == (1, H, W) and (s.masks[0] == want).all()
    assert s.question == "Segment every mug." and s.answer == "The mug is {seg}."

    # A second run keeps the annotated file; --every and --max thin the frames.
    out2 = tmp_path / "thin"
    assert main([str(bag), "--out", str(out2), "--every", "2", "--max", "2"]) == 0
    assert len(list(out2.glob("*.png"))) == 2
    assert main([str(bag), "--topic", "/camera/image_raw", "--out", str(out)]) == 0
    assert json.loads((out / "camera_image_raw_000001.json").read_text())["shapes"]


def test_encodings_and_padding():
    rgb = frames(1)[0]
    ts = store()
    for enc in ("rgb8", "bgr8", "rgba8"):
        assert (image_msg_to_rgb(image_msg(ts, rgb, enc, 5, 0)) == rgb).all(), enc
    gray = image_msg_to_rgb(image_msg(ts, rgb, "mono8", 1, 0))
    assert (gray == rgb[..., :1]).all() and gray.shape == (H, W, 3)
    bgra = SimpleNamespace(encoding="bgra8", height=H, width=W, step=W * 4,
                           data=np.dstack([rgb[..., ::-1], np.zeros((H, W), np.uint8)]).reshape(-1))
    assert (image_msg_to_rgb(bgra) == rgb).all()
    with pytest.raises(ValueError, match="unsupported image encoding"):
        image_msg_to_rgb(SimpleNamespace(encoding="16UC1", height=H, width=W, step=W * 2, data=b""))
    with pytest.raises(ValueError, match="too small"):
        image_msg_to_rgb(SimpleNamespace(encoding="rgb8", height=H, width=W, step=W * 3, data=b"\0" * 10))


def test_missing_topic_is_reported(tmp_path, capsys):
    write_bag(tmp_path / "bag", StoragePlugin.MCAP, frames(4))
    assert main([str(tmp_path / "bag"), "--topic", "/nope", "--out", str(tmp_path / "o")]) == 2
    assert "image topics" in capsys.readouterr().err
