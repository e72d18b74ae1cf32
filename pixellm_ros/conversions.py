"""sensor_msgs <-> numpy: camera images in, masks / label images / point clouds out (the node's other messages:
messages.py).

The readers (`image_to_rgb`, `compressed_to_rgb`, `depth_to_meters`, `cloud_to_points`, `stamp_ns`) only read
message attributes, so they also take rosbags messages (training/capture.py uses them); the message classes are
imported where messages are built. Every problem with an incoming image raises ImageConversionError with a
message that names the encoding, the sizes and what is supported.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

# The node's default, max_image_pixels in config/pixellm.yaml (test_max_image_pixels_has_one_default checks that it,
# this and EngineConfig's agree; the readers are used without the node, so they need one of their own).
DEFAULT_MAX_PIXELS = 16_777_216

# encoding (lower case) -> (bytes per pixel, conversion of the (H, W, C) uint8 array to RGB, or None)
_COLOR_ENCODINGS = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "8uc1": (1, cv2.COLOR_GRAY2RGB),
    "8uc3": (3, cv2.COLOR_BGR2RGB),  # OpenCV's own channel order
    "mono16": (2, cv2.COLOR_GRAY2RGB),  # scaled to 8 bit first
}
# depth encoding (lower case) -> (bytes per pixel, numpy dtype without byte order, metres per unit)
_DEPTH_ENCODINGS = {"16uc1": (2, "u2", 1e-3), "mono16": (2, "u2", 1e-3), "32fc1": (4, "f4", 1.0)}
_NOT_COLOR = {"16uc1", "32fc1"}  # depth encodings image_to_rgb refuses (mono16 is accepted as a gray image)
SUPPORTED_COLOR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "mono16")
SUPPORTED_DEPTH = ("16UC1", "mono16", "32FC1")


class ImageConversionError(ValueError):
    """An incoming image cannot be converted (unknown encoding, wrong sizes, undecodable data)."""


# ------------------------------------------------------------------------------------------------ input
def _bytes_of(data: Any) -> np.ndarray:
    """Message data (array.array, bytes, list or numpy array) as a flat uint8 array, without copying buffers."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _rows(msg: Any, bytes_per_pixel: int, max_pixels: int) -> np.ndarray:
    """Validated (H, W * bytes_per_pixel) uint8 view of the pixel bytes (row padding of `step` removed)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    enc = msg.encoding
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"empty {enc} image: {w}x{h}")
    if h * w > max_pixels:
        raise ImageConversionError(f"{enc} image {w}x{h} has {h * w} pixels; the limit is {max_pixels}")
    if step < w * bytes_per_pixel:
        raise ImageConversionError(f"{enc} image {w}x{h}: step {step} is too small for width {w} * "
                                   f"{bytes_per_pixel} bytes per pixel = {w * bytes_per_pixel}")
    data = _bytes_of(msg.data)
    if data.size < h * step:
        raise ImageConversionError(f"{enc} image {w}x{h} with step {step}: data too small ({data.size} bytes, "
                                   f"needs {h * step})")
    return data[: h * step].reshape(h, step)[:, : w * bytes_per_pixel]


def _words(rows: np.ndarray, dtype: str, bigendian: bool, width: int) -> np.ndarray:
    """(H, W) array of `dtype` ('u2', 'f4') in native byte order from validated rows."""
    raw = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if bigendian else "<"))
    return raw.reshape(rows.shape[0], width).astype(np.dtype(dtype).newbyteorder("="))


_bridge: Any = None


def _cv_bridge() -> Any:
    """A ROS 2 cv_bridge.CvBridge when a ROS install provides a working one, else False (checked once)."""
    global _bridge
    if _bridge is None:
        try:
            from cv_bridge import CvBridge
            _bridge = CvBridge()
        except Exception as exc:  # absent, or the ROS 1 repackage from PyPI that breaks with numpy 2
            log.debug("cv_bridge unavailable (%s): using the numpy conversion", exc)
            _bridge = False
    return _bridge


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB copy of a sensor_msgs/Image.

    Encodings: rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, 8UC3 (as bgr), mono16 (scaled to 8 bit). Rows may be
    padded (`step`); 16-bit data honours `is_bigendian`.
    """
    enc = str(msg.encoding).lower()
    if enc in _NOT_COLOR:
        raise ImageConversionError(f"unsupported image encoding {msg.encoding!r}: {msg.encoding} is a depth "
                                   f"encoding, not a color image (supported: {', '.join(SUPPORTED_COLOR)})")
    if enc not in _COLOR_ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding {msg.encoding!r}; supported: "
                                   f"{', '.join(SUPPORTED_COLOR)}")
    bpp, code = _COLOR_ENCODINGS[enc]
    rows = _rows(msg, bpp, max_pixels)  # validates before cv_bridge sees the message
    h, w = rows.shape[0], int(msg.width)
    if bpp == 2:  # mono16 -> 8 bit, rounded: 65535 -> 255
        gray = _words(rows, "u2", bool(msg.is_bigendian), w).astype(np.uint32)
        return cv2.cvtColor(((gray * 255 + 32767) // 65535).astype(np.uint8), code)
    bridge = _cv_bridge()
    if bridge:
        try:
            return np.array(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"), dtype=np.uint8, copy=True)
        except Exception as exc:
            log.debug("cv_bridge failed on a %s image (%s): using the numpy conversion", enc, exc)
    img = rows.reshape(h, w, bpp)
    return img.copy() if code is None else cv2.cvtColor(np.ascontiguousarray(img), code)


def _compressed_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding the pixels; None if not found.

    The JPEG walk follows segment lengths through the whole buffer (large EXIF / ICC segments may push the
    frame header far in), reading a few bytes per segment."""
    buf = memoryview(np.ascontiguousarray(data).reshape(-1))
    n = len(buf)
    if bytes(buf[:8]) == b"\x89PNG\r\n\x1a\n" and n >= 24:
        return int.from_bytes(buf[16:20], "big"), int.from_bytes(buf[20:24], "big")
    if bytes(buf[:2]) == b"\xff\xd8":
        i = 2
        while i + 9 <= n:
            if buf[i] != 0xFF:
                return None
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte before a marker
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(buf[i + 7:i + 9], "big"), int.from_bytes(buf[i + 5:i + 7], "big")
            if marker == 0xDA:  # start of scan before any frame header: malformed
                return None
            i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")
    return None


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a sensor_msgs/CompressedImage: PNG or JPEG, whose header gives the size, so
    `max_pixels` is checked before anything is decoded (other formats are refused)."""
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(f"compressed image format {fmt!r} is a depth encoding, not a color image")
    data = _bytes_of(msg.data)
    if data.size == 0:
        raise ImageConversionError(f"empty compressed image (format {fmt!r})")
    size = _compressed_size(data)
    if size is None:
        # Other formats (WebP, TIFF, ...) are refused: their size is only known after decoding, and a few KB of
        # WebP decode to 800 MB, so the pixel limit must hold before cv2.imdecode allocates anything.
        raise ImageConversionError(f"cannot decode compressed image (format {fmt!r}, {data.size} bytes): no PNG "
                                   f"or JPEG header with the image size; send PNG or JPEG")
    if size[0] * size[1] > max_pixels:
        raise ImageConversionError(f"compressed image {size[0]}x{size[1]} has {size[0] * size[1]} pixels; "
                                   f"the limit is {max_pixels}")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageConversionError(f"cannot decode compressed image (format {fmt!r}): {exc}") from None
    if img is None:
        raise ImageConversionError(f"cannot decode compressed image (format {fmt!r}, {data.size} bytes); "
                                   f"send PNG or JPEG")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageConversionError(f"compressed image {img.shape[1]}x{img.shape[0]} exceeds the limit of "
                                   f"{max_pixels} pixels")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def depth_to_meters(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W) float32 depth in metres; NaN where the camera has no measurement.

    16UC1 / mono16 are millimetres (0 = none); 32FC1 is metres (non-finite or <= 0 = none).
    """
    enc = str(msg.encoding).lower()
    if enc not in _DEPTH_ENCODINGS:
        raise ImageConversionError(f"unsupported depth encoding {msg.encoding!r}; supported: "
                                   f"{', '.join(SUPPORTED_DEPTH)}")
    bpp, dtype, scale = _DEPTH_ENCODINGS[enc]
    rows = _rows(msg, bpp, max_pixels)
    values = _words(rows, dtype, bool(msg.is_bigendian), int(msg.width))
    depth = values.astype(np.float32) * np.float32(scale)
    with np.errstate(invalid="ignore"):
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (or any object with sec and nanosec: rosbags messages too) in nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ----------------------------------------------------------------------------------------------- output
def _image(array: np.ndarray, encoding: str, header: Any) -> Any:
    from sensor_msgs.msg import Image

    h, w = array.shape[:2]
    array = np.ascontiguousarray(array)
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                 step=w * (array.shape[2] if array.ndim == 3 else 1), data=array.tobytes())


def rgb_to_msg(rgb: np.ndarray, header: Any) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    return _image(rgb, "rgb8", header)


def mask_to_msg(mask: np.ndarray, header: Any) -> Any:
    """(H, W) boolean mask -> sensor_msgs/Image mono8, 255 = target, 0 = background."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    return _image(np.where(mask.astype(bool), np.uint8(255), np.uint8(0)), "mono8", header)


def label_to_msg(label: np.ndarray, header: Any) -> Any:
    """(H, W) uint8 label image (0 background, k = target k) -> sensor_msgs/Image mono8."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 label image, got {label.shape} {label.dtype}")
    return _image(label, "mono8", header)


# ---------------------------------------------------------------------------------------------- 3-D
def backproject(mask: np.ndarray, depth_m: np.ndarray, K: Sequence[float] | np.ndarray) -> np.ndarray:
    """(N, 3) float32 points (x right, y down, z forward: the camera optical frame) of the mask pixels that
    have a depth. mask, depth_m: (H, W), same size (register depth to the color camera first); K: the 3x3
    intrinsics (CameraInfo.k, flat 9 or 3x3)."""
    if mask.shape != depth_m.shape:
        raise ValueError(f"mask {mask.shape} and depth {depth_m.shape} differ in size; the depth image must be "
                         f"registered to the color image")
    k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if fx == 0 or fy == 0:
        raise ValueError("camera intrinsics have a zero focal length (CameraInfo.k not set?)")
    v, u = np.nonzero(mask.astype(bool) & np.isfinite(depth_m))
    z = depth_m[v, u].astype(np.float64)
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=1).astype(np.float32)


def centroid(points: np.ndarray) -> tuple[float, float, float] | None:
    """Mean (x, y, z) of (N, 3) points; None when there are none."""
    if len(points) == 0:
        return None
    x, y, z = np.asarray(points, dtype=np.float64).mean(axis=0)
    return float(x), float(y), float(z)


def points_to_cloud(points: np.ndarray, header: Any) -> Any:
    """(N, 3) points -> sensor_msgs/PointCloud2 with float32 fields x, y, z (unorganized, height 1)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    try:
        from sensor_msgs_py.point_cloud2 import create_cloud_xyz32
        return create_cloud_xyz32(header, points)
    except ImportError:
        pass
    from sensor_msgs.msg import PointCloud2, PointField

    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return PointCloud2(header=header, height=1, width=len(points), fields=fields, is_bigendian=False,
                       point_step=12, row_step=12 * len(points), data=points.astype("<f4").tobytes(),
                       is_dense=True)


_FIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}  # PointField datatypes


def cloud_to_points(msg: Any) -> np.ndarray:
    """(N, 3) float32 x, y, z of a PointCloud2 (any field layout with x, y, z; rows padded to row_step)."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in "xyz" if n not in fields]
    if missing:
        raise ValueError(f"point cloud has no field {missing} (fields: {sorted(fields)})")
    order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype({"names": list("xyz"), "formats": [order + _FIELD_TYPES[fields[n].datatype] for n in "xyz"],
                      "offsets": [fields[n].offset for n in "xyz"], "itemsize": msg.point_step})
    n_rows, width = int(msg.height), int(msg.width)
    rows = _bytes_of(msg.data)[: n_rows * msg.row_step].reshape(n_rows, msg.row_step)[:, : width * msg.point_step]
    pts = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    return np.stack([pts[n].astype(np.float32) for n in "xyz"], axis=1)
