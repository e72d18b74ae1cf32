"""Image preprocessing and the prompt template, as the release's chat.py does them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.tiny_checkpoint import OFFICIAL_FIXTURE
from pixellm_ros.model import build_prompt, preprocess_image
from pixellm_ros.model.processing import PIXEL_MEAN, PIXEL_STD, resized_shape


@pytest.mark.parametrize("hw, expected", [
    ((212, 318), (299, 448)),  # fixture chelsea: 212 * 448 / 318 = 298.7 -> 299
    ((300, 222), (448, 332)),  # fixture rocket: 222 * 448 / 300 = 331.5 -> 332 (round half up)
    ((480, 640), (336, 448)),
    ((640, 480), (448, 336)),
    ((448, 448), (448, 448)),
    ((100, 100), (448, 448)),  # upscaled
    ((1000, 3), (448, 1)),  # 1.344 -> 1
    ((3, 1000), (1, 448)),
    ((2, 896), (1, 448)),  # exactly 1.0
    ((7, 1000), (3, 448)),  # 3.136 -> 3
    ((5, 16), (140, 448)),
])
def test_resized_shape(hw, expected):
    assert resized_shape(*hw, 448) == expected


def test_resized_shape_rounds_half_up():
    # int(x + 0.5), not Python's banker's rounding: 1 * 448 / 896 * 3 = 1.5 -> 2, 2.5 -> 3
    assert resized_shape(3, 896, 448) == (2, 448)
    assert resized_shape(5, 896, 448) == (3, 448)
    for h in range(1, 60):
        for w in (61, 97, 130, 333):
            scale = 448 / max(h, w)
            assert resized_shape(h, w, 448) == (int(h * scale + 0.5), int(w * scale + 0.5))


def uniform(h: int, w: int, rgb=(200, 100, 50)) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = rgb
    return img


@pytest.mark.parametrize("h, w", [(212, 318), (300, 222), (448, 448), (60, 80)])
def test_preprocess_sizes_padding_and_values(h, w):
    p = preprocess_image(uniform(h, w))
    rh, rw = resized_shape(h, w, 448)
    assert p.pixels.shape == (1, 3, 448, 448) and p.pixels.dtype == torch.float32
    assert p.input_size == (rh, rw)
    assert p.original_size == (h, w)
    expected = torch.tensor([(200 - PIXEL_MEAN[0]) / PIXEL_STD[0], (100 - PIXEL_MEAN[1]) / PIXEL_STD[1],
                             (50 - PIXEL_MEAN[2]) / PIXEL_STD[2]])
    inside = p.pixels[0, :, :rh, :rw]
    torch.testing.assert_close(inside, expected.view(3, 1, 1).expand_as(inside), atol=1e-6, rtol=0)
    # zero padding bottom / right (zero after normalisation, as the release pads the normalised image)
    assert torch.count_nonzero(p.pixels[0, :, rh:, :]) == 0
    assert torch.count_nonzero(p.pixels[0, :, :, rw:]) == 0


def test_preprocess_uses_sam_mean_std_not_clip():
    assert PIXEL_MEAN == (123.675, 116.28, 103.53)
    assert PIXEL_STD == (58.395, 57.12, 57.375)
    p = preprocess_image(uniform(10, 10, (0, 255, 128)))
    torch.testing.assert_close(p.pixels[0, :, 0, 0], torch.tensor(
        [-123.675 / 58.395, (255 - 116.28) / 57.12, (128 - 103.53) / 57.375]), atol=1e-6, rtol=0)


def test_preprocess_landscape_and_portrait_orientation():
    rng = np.random.default_rng(0)
    land = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    port = np.ascontiguousarray(land.transpose(1, 0, 2))
    a, b = preprocess_image(land), preprocess_image(port)
    assert a.input_size == (269, 448) and b.input_size == (448, 269)
    assert a.original_size == (120, 200) and b.original_size == (200, 120)
    # channel order is kept (RGB in, RGB planes out): a red image has a high first plane
    red = preprocess_image(uniform(50, 70, (255, 0, 0))).pixels[0, :, 0, 0]
    assert red[0] > 2 and red[1] < -2 and red[2] < -1.8


def test_preprocess_resize_is_pil_bilinear_antialiased():
    from PIL import Image

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (900, 600, 3), dtype=np.uint8)  # downscale by 2: antialiasing matters
    p = preprocess_image(img)
    h, w = p.input_size
    ref = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR)).astype(np.float32)
    ref = (ref - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    np.testing.assert_allclose(p.pixels[0, :, :h, :w].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_preprocess_does_not_modify_input():
    img = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    before = img.copy()
    preprocess_image(img)
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("bad", [
    np.zeros((20, 30, 3), dtype=np.float32),  # wrong dtype
    np.zeros((20, 30, 3), dtype=np.uint16),
    np.zeros((20, 30), dtype=np.uint8),  # 2-D
    np.zeros((20, 30, 4), dtype=np.uint8),  # RGBA
    np.zeros((20, 30, 1), dtype=np.uint8),
    np.zeros((0, 30, 3), dtype=np.uint8),  # empty
    np.zeros((20, 0, 3), dtype=np.uint8),
    np.zeros((2, 20, 30, 3), dtype=np.uint8),  # batch
], ids=["float32", "uint16", "2d", "rgba", "1ch", "empty_h", "empty_w", "4d"])
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        preprocess_image(bad)


def test_prompt_template():
    assert build_prompt("Where is the cat?") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <im_start><image><im_end>\n"
        "Where is the cat? ASSISTANT:")
    assert build_prompt("Hi", use_im_start_end=False).endswith("USER: <image>\nHi ASSISTANT:")


@pytest.mark.skipif(not OFFICIAL_FIXTURE.is_dir(), reason="official fixture not available")
def test_prompt_template_matches_official_fixture():
    for case in ("chelsea_where", "chelsea_two", "rocket_where", "rocket_three", "rocket_text"):
        d = json.loads((OFFICIAL_FIXTURE / "reference" / case / "ids.json").read_text())
        question = d["prompt"].split("<im_end>\n", 1)[1].rsplit(" ASSISTANT:", 1)[0]
        assert build_prompt(question) == d["prompt"], case


@pytest.mark.skipif(not OFFICIAL_FIXTURE.is_dir(), reason="official fixture not available")
@pytest.mark.parametrize("name", ["chelsea", "rocket"])
def test_preprocess_matches_official_fixture(name):
    cv2 = pytest.importorskip("cv2")
    bgr = cv2.imread(str(OFFICIAL_FIXTURE / "inputs" / f"{name}.png"))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    ref = np.load(OFFICIAL_FIXTURE / "reference" / "_images" / f"{name}.npz")
    p = preprocess_image(rgb)
    assert p.input_size == tuple(ref["clip_resize"])
    assert p.original_size == tuple(ref["original_size"])
    np.testing.assert_allclose(p.pixels.numpy(), ref["images_clip"], atol=1e-6, rtol=0)
