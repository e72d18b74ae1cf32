"""pixellm_ros.conversions on real sensor_msgs messages: every encoding, padding, byte order, errors, depth,
back-projection and point clouds."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pixellm_ros import conversions as conv
from pixellm_ros.conversions import ImageConversionError

pytestmark = pytest.mark.ros

H, W = 6, 5
RGB = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def header():
    from std_msgs.msg import Header

    return Header(frame_id="camera_optical_frame")


def image(body: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, **override):
    """sensor_msgs/Image from an (H, W[, C]) array, rows padded with `pad` junk bytes."""
    from sensor_msgs.msg import Image

    h, w = body.shape[:2]
    order = ">" if bigendian else "<"
    raw = body.astype(body.dtype.newbyteorder(order)) if body.dtype.itemsize > 1 else body
    row_bytes = np.ascontiguousarray(raw).view(np.uint8).reshape(h, -1)
    rows = np.full((h, row_bytes.shape[1] + pad), 0xAB, np.uint8)
    rows[:, : row_bytes.shape[1]] = row_bytes
    fields = dict(header=header(), height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                  step=rows.shape[1], data=rows.tobytes())
    fields.update(override)
    return Image(**fields)


GRAY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
ENCODED = {  # encoding -> (body, expected RGB)
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[..., ::-1], RGB),
    "8UC3": (RGB[..., ::-1], RGB),
    "rgba8": (np.dstack([RGB, np.full((H, W), 9, np.uint8)]), RGB),
    "bgra8": (np.dstack([RGB[..., ::-1], np.full((H, W), 9, np.uint8)]), RGB),
    "mono8": (GRAY, np.repeat(GRAY[..., None], 3, axis=2)),
    "8UC1": (GRAY, np.repeat(GRAY[..., None], 3, axis=2)),
    "mono16": (GRAY.astype(np.uint16) * 257, np.repeat(GRAY[..., None], 3, axis=2)),
}


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", sorted(ENCODED))
def test_image_to_rgb_every_encoding(encoding, pad):
    body, expected = ENCODED[encoding]
    msg = image(np.ascontiguousarray(body), encoding, pad=pad)
    rgb = conv.image_to_rgb(msg)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)


def test_image_to_rgb_returns_a_copy():
    msg = image(RGB, "rgb8")
    rgb = conv.image_to_rgb(msg)
    rgb[:] = 0
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)


def test_mono16_big_endian_and_scaling():
    values = np.array([[0, 257, 65535, 32896, 128, 1000]], np.uint16)
    expected = np.array([[0, 1, 255, 128, 0, 4]], np.uint8)
    for bigendian in (False, True):
        rgb = conv.image_to_rgb(image(values, "mono16", pad=2, bigendian=bigendian))
        np.testing.assert_array_equal(rgb[..., 0], expected)
        np.testing.assert_array_equal(rgb[..., 2], expected)


def test_image_accepts_list_and_bytes_data():
    msg = image(RGB, "rgb8")
    msg.data = list(RGB.tobytes())
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_encoding_is_not_a_color_image(encoding):
    body = np.ones((H, W), np.uint16 if encoding == "16UC1" else np.float32)
    with pytest.raises(ImageConversionError, match="is a depth encoding, not a color image"):
        conv.image_to_rgb(image(body, encoding))


@pytest.mark.parametrize("change, match", [
    (dict(encoding="yuv422"), "unsupported image encoding 'yuv422'"),
    (dict(width=0), "empty"),
    (dict(height=0), "empty"),
    (dict(step=W * 3 - 1), "step 14 is too small"),
    (dict(data=bytes(H * W * 3 - 1)), r"data too small \(89 bytes, needs 90\)"),
])
def test_image_errors(change, match):
    msg = image(RGB, "rgb8")
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(ImageConversionError, match=match):
        conv.image_to_rgb(msg)


def test_image_too_many_pixels():
    with pytest.raises(ImageConversionError, match="the limit is 29"):
        conv.image_to_rgb(image(RGB, "rgb8"), max_pixels=H * W - 1)
    assert conv.image_to_rgb(image(RGB, "rgb8"), max_pixels=H * W).shape == (H, W, 3)


def compressed(rgb: np.ndarray, fmt: str):
    from sensor_msgs.msg import CompressedImage

    ok, buf = cv2.imencode("." + fmt, rgb[..., ::-1])
    assert ok
    return CompressedImage(header=header(), format=fmt, data=buf.tobytes())


def test_compressed_png_is_lossless():
    np.testing.assert_array_equal(conv.compressed_to_rgb(compressed(RGB, "png")), RGB)


def test_compressed_jpeg():
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[:, 24:, 2] = 150
    rgb = conv.compressed_to_rgb(compressed(smooth, "jpeg"))
    assert rgb.shape == (32, 48, 3)
    assert np.abs(rgb.astype(int) - smooth).mean() < 4  # red left, magenta right, not BGR-swapped


def test_compressed_errors():
    from sensor_msgs.msg import CompressedImage

    with pytest.raises(ImageConversionError, match="cannot decode"):
        conv.compressed_to_rgb(CompressedImage(format="jpeg", data=b"not an image at all"))
    with pytest.raises(ImageConversionError, match="empty"):
        conv.compressed_to_rgb(CompressedImage(format="png", data=b""))
    with pytest.raises(ImageConversionError, match="depth"):
        conv.compressed_to_rgb(CompressedImage(format="16UC1; compressedDepth png", data=b"x"))
    for fmt in ("png", "jpeg"):  # the size is read from the header, before decoding
        with pytest.raises(ImageConversionError, match="30 pixels; the limit is 29"):
            conv.compressed_to_rgb(compressed(RGB, fmt), max_pixels=H * W - 1)


def test_compressed_size_limit_holds_before_decoding():
    """A 2.5 KB lossless WebP decodes to an 8000x8000 image (192 MB): formats without a size in a header we read
    are refused before cv2 decodes them, and a JPEG frame header behind a large APP segment is still found."""
    from sensor_msgs.msg import CompressedImage

    ok, webp = cv2.imencode(".webp", np.zeros((8000, 8000, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and webp.size < 10_000
    with pytest.raises(ImageConversionError, match="send PNG or JPEG"):
        conv.compressed_to_rgb(CompressedImage(format="webp", data=webp.tobytes()))
    with pytest.raises(ImageConversionError, match="send PNG or JPEG"):
        conv.compressed_to_rgb(compressed(RGB, "webp"))
    jpeg = compressed(RGB, "jpeg").data
    app = b"\xff\xe2" + (65535).to_bytes(2, "big") + bytes(65533)  # a full-size APP2 segment (ICC profile)
    padded = CompressedImage(format="jpeg", data=bytes(jpeg[:2]) + app + app + bytes(jpeg[2:]))
    with pytest.raises(ImageConversionError, match="30 pixels; the limit is 29"):
        conv.compressed_to_rgb(padded, max_pixels=H * W - 1)
    assert conv.compressed_to_rgb(padded).shape == (H, W, 3)


def test_depth_16uc1_millimetres():
    mm = np.array([[0, 1000, 1500], [65535, 250, 0]], np.uint16)
    for encoding in ("16UC1", "mono16"):
        for bigendian in (False, True):
            depth = conv.depth_to_meters(image(mm, encoding, pad=4, bigendian=bigendian))
            assert depth.dtype == np.float32 and depth.shape == (2, 3)
            np.testing.assert_allclose(depth, [[np.nan, 1.0, 1.5], [65.535, 0.25, np.nan]], rtol=1e-6)


def test_depth_32fc1_metres():
    m = np.array([[1.25, np.nan, np.inf], [-1.0, 0.0, 3.5]], np.float32)
    for bigendian in (False, True):
        depth = conv.depth_to_meters(image(m, "32FC1", pad=8, bigendian=bigendian))
        np.testing.assert_allclose(depth, [[1.25, np.nan, np.nan], [np.nan, np.nan, 3.5]])


def test_depth_errors():
    with pytest.raises(ImageConversionError, match="unsupported depth encoding 'rgb8'"):
        conv.depth_to_meters(image(RGB, "rgb8"))
    with pytest.raises(ImageConversionError, match="data too small"):
        conv.depth_to_meters(image(np.ones((H, W), np.float32), "32FC1", data=bytes(10)))
    with pytest.raises(ImageConversionError, match="limit"):
        conv.depth_to_meters(image(np.ones((H, W), np.uint16), "16UC1"), max_pixels=5)


def test_outgoing_images_round_trip():
    msg = conv.rgb_to_msg(RGB, header())
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", H, W, 3 * W)
    assert msg.header.frame_id == "camera_optical_frame"
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)

    mask = RGB[..., 0] > 127
    m = conv.mask_to_msg(mask, header())
    assert (m.encoding, m.step) == ("mono8", W)
    assert set(np.frombuffer(bytes(m.data), np.uint8)) <= {0, 255}
    np.testing.assert_array_equal(conv.image_to_rgb(m)[..., 0] == 255, mask)

    label = (RGB[..., 1] % 4).astype(np.uint8)
    lm = conv.label_to_msg(label, header())
    np.testing.assert_array_equal(np.frombuffer(bytes(lm.data), np.uint8).reshape(H, W), label)
    with pytest.raises(ValueError):
        conv.rgb_to_msg(GRAY, header())
    with pytest.raises(ValueError):
        conv.label_to_msg(label.astype(np.int32), header())


K = [500.0, 0.0, 32.0, 0.0, 400.0, 24.0, 0.0, 0.0, 1.0]


def test_backproject_plane_with_known_intrinsics():
    h, w = 48, 64
    depth = np.full((h, w), 2.0, np.float32)  # a wall 2 m in front of the camera
    depth[0, 0] = np.nan
    mask = np.zeros((h, w), bool)
    mask[:2, :2] = True  # (0,0) has no depth
    mask[24, 32] = True  # the principal point
    pts = conv.backproject(mask, depth, np.array(K).reshape(3, 3))
    assert pts.dtype == np.float32 and pts.shape == (4, 3)
    by_pixel = {(round(float(x) * 500 / 2 + 32), round(float(y) * 400 / 2 + 24)): (x, y, z) for x, y, z in pts}
    assert set(by_pixel) == {(1, 0), (0, 1), (1, 1), (32, 24)}
    np.testing.assert_allclose(by_pixel[(32, 24)], (0, 0, 2))
    np.testing.assert_allclose(by_pixel[(1, 0)], ((1 - 32) * 2 / 500, (0 - 24) * 2 / 400, 2), rtol=1e-6)
    assert np.all(pts[:, 2] == 2.0)

    full = conv.backproject(np.ones((h, w), bool), depth, K)  # flat CameraInfo.k works too
    assert full.shape == (h * w - 1, 3)
    cx, cy, cz = conv.centroid(full)
    assert cz == pytest.approx(2.0) and abs(cx - (31.5 - 32) * 2 / 500) < 1e-3 and abs(cy - (23.5 - 24) * 2 / 400) < 1e-3
    assert conv.centroid(np.zeros((0, 3), np.float32)) is None
    with pytest.raises(ValueError, match="registered"):
        conv.backproject(mask, depth[:10], K)


def test_point_cloud_pack_unpack():
    pts = np.random.default_rng(1).normal(size=(17, 3)).astype(np.float32)
    cloud = conv.points_to_cloud(pts, header())
    assert (cloud.height, cloud.width, cloud.point_step) == (1, 17, 12)
    assert [f.name for f in cloud.fields] == ["x", "y", "z"] and cloud.header.frame_id == "camera_optical_frame"
    np.testing.assert_array_equal(conv.cloud_to_points(cloud), pts)
    empty = conv.points_to_cloud(np.zeros((0, 3)), header())
    assert empty.width == 0 and conv.cloud_to_points(empty).shape == (0, 3)


def test_cloud_to_points_other_layout():
    """A big-endian cloud with an extra field and padding, as other drivers publish."""
    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.arange(12, dtype=np.float32).reshape(4, 3)
    dt = np.dtype({"names": ["intensity", "x", "y", "z"], "formats": [">f4"] * 4, "offsets": [0, 4, 8, 12],
                   "itemsize": 20})
    rec = np.zeros(4, dt)
    rec["x"], rec["y"], rec["z"] = pts.T
    fields = [PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1)
              for n, o in (("intensity", 0), ("x", 4), ("y", 8), ("z", 12))]
    cloud = PointCloud2(height=2, width=2, fields=fields, is_bigendian=True, point_step=20, row_step=40,
                        data=rec.tobytes(), is_dense=True)
    np.testing.assert_array_equal(conv.cloud_to_points(cloud), pts)


def test_cv_bridge_used_when_it_works_and_numpy_when_it_fails(monkeypatch):
    class Bridge:
        def __init__(self, fail):
            self.fail, self.calls = fail, 0

        def imgmsg_to_cv2(self, msg, desired_encoding):
            self.calls += 1
            assert desired_encoding == "rgb8"
            if self.fail:
                raise RuntimeError("cv_bridge broken")
            return np.full((H, W, 3), 7, np.uint8)

    working, broken = Bridge(False), Bridge(True)
    monkeypatch.setattr(conv, "_bridge", working)
    assert (conv.image_to_rgb(image(RGB, "rgb8")) == 7).all() and working.calls == 1
    with pytest.raises(ImageConversionError, match="data too small"):  # validated before cv_bridge sees it
        msg = image(RGB, "rgb8")
        msg.data = bytes(5)
        conv.image_to_rgb(msg)
    assert working.calls == 1
    monkeypatch.setattr(conv, "_bridge", broken)
    np.testing.assert_array_equal(conv.image_to_rgb(image(RGB[..., ::-1].copy(), "bgr8")), RGB)
    assert broken.calls == 1
