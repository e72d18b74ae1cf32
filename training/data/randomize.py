"""Domain randomization and negatives for the tabletop domain, and the out-of-domain image set.

A model trained only on rendered tabletop scenes has never seen anything else; shown a photograph or a drawing
it names domain objects anyway and often loops (issue #19). Two training sources teach it what it does not know:

- `randomized_sample`: the rendered objects (their exact visible masks) composited over real photographs and
  procedural textures instead of the wall and table, with unknown distractor shapes (triangles, stars, crosses,
  rings, diamonds, hexagons: never named) under them, then colour/lighting jitter, blur and noise. Questions and
  answers are the synthetic domain's (`synthetic.make_question`), so masks and targets stay exact.
- `negative_sample`: a photograph or texture (with distractors, jittered) and no domain object; every question is
  answered with `synthetic.NO_SUCH_OBJECT`. Referring questions name a domain object that is not there.

Photographs are scikit-image's bundled samples (`skimage.data`, offline; a training-only dependency).
`HELDOUT_PHOTOS` and `HELDOUT_TEXTURES` are never drawn by the training sources: `ood_eval_set` uses them (plus
the training texture kinds at a seed no training config uses) for `python -m training.evaluate --ood`.
Every sample is a pure function of (seed, index), as in synthetic.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from .patch_labels import class_map
from .sample import Sample
from .synthetic import COLORS, NO_SUCH_OBJECT, SyntheticConfig, make_question, render_scene

TRAIN_PHOTOS = ("astronaut", "camera", "chelsea", "brick", "grass", "gravel", "coins", "moon", "page", "text",
                "hubble_deep_field", "immunohistochemistry", "cell", "microaneurysms", "logo")
# Held out of training for the out-of-domain evaluation (`cat` is `chelsea`, so it is in neither list).
HELDOUT_PHOTOS = ("coffee", "rocket", "clock", "retina", "colorwheel", "stereo_motorcycle")
TRAIN_TEXTURES = ("noise", "gradient", "stripes", "checkerboard", "rectangles", "blobs")
HELDOUT_TEXTURES = ("two_rects", "waves", "scribbles")  # kinds only the evaluation draws
DISTRACTORS = ("triangle", "star", "cross", "ring", "diamond", "hexagon")  # not domain kinds: never named
OOD_SEED = 9999  # procedural images of the evaluation (training sources take their seeds from the YAML)


@dataclass
class RandomizeConfig:
    """How composites and negatives look; `scene` renders the objects and asks the questions."""

    scene: SyntheticConfig = field(default_factory=SyntheticConfig)
    photo_fraction: float = 0.5  # backgrounds: photographs, else procedural textures
    max_distractors: int = 3  # 0..max unknown shapes per image
    jitter: bool = True  # colour/lighting jitter, blur, noise

    def __post_init__(self) -> None:
        if not 0.0 <= self.photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in [0, 1], got {self.photo_fraction}")
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors must be >= 0, got {self.max_distractors}")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A skimage.data sample as (H, W, 3) uint8 RGB (grey stacked, RGBA over white, stereo pairs: the left view)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        a = img[..., 3:].astype(np.float32) / 255
        img = img[..., :3] * a + 255 * (1 - a)
    img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    img.setflags(write=False)
    return img


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A procedural (H, W, 3) uint8 image of `kind` (TRAIN_TEXTURES or HELDOUT_TEXTURES)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "noise":
        cells = (max(2, int(h / rng.uniform(1, 24))), max(2, int(w / rng.uniform(1, 24))))
        img = cv2.resize(rng.normal(128, rng.uniform(20, 70), (*cells, 3)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_NEAREST)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1.0))[..., None]
        img = _color(rng) * (1 - t) + _color(rng) * t
    elif kind == "stripes":
        a, period = rng.uniform(0, np.pi), rng.uniform(6, 60)
        on = (np.sin((np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period) > 0)[..., None]
        img = np.where(on, _color(rng), _color(rng))
    elif kind == "checkerboard":
        s = rng.uniform(8, 60)
        on = (((xx // s) + (yy // s)) % 2 == 0)[..., None]
        img = np.where(on, _color(rng), _color(rng))
    elif kind == "rectangles":
        img = np.empty((h, w, 3), np.float32)
        img[:] = _color(rng)
        for _ in range(int(rng.integers(10, 40))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(5, w // 3)), y0 + int(rng.integers(5, h // 3))
            cv2.rectangle(img, (x0, y0), (x1, y1), _color(rng).tolist(), -1)
    elif kind == "blobs":
        img = cv2.resize(rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.float32),
                         (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == "two_rects":  # two coloured rectangles on black (the example)
        img = np.zeros((h, w, 3), np.float32)
        for k in range(2):
            x0 = int(rng.uniform(0.05, 0.3) * w) + k * w // 2
            y0 = int(rng.uniform(0.1, 0.4) * h)
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.uniform(0.15, 0.35) * w), y0 + int(rng.uniform(0.2, 0.5) * h)),
                          list(COLORS.values())[int(rng.integers(len(COLORS)))], -1)
    elif kind == "waves":
        img = np.stack([128 + 120 * np.sin(xx * rng.uniform(0.02, 0.2) + yy * rng.uniform(0.02, 0.2)
                                           + rng.uniform(0, 6)) for _ in range(3)], axis=2)
    elif kind == "scribbles":  # a line drawing: dark strokes on paper
        img = np.full((h, w, 3), 245, np.float32)
        for _ in range(int(rng.integers(5, 15))):
            pts = np.cumsum(rng.normal(0, 25, (int(rng.integers(3, 12)), 2)), axis=0) + [w / 2, h / 2]
            cv2.polylines(img, [pts.astype(np.int32)], False, (rng.integers(0, 90, 3)).tolist(), int(rng.integers(1, 4)))
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


def _crop(photo: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random crop of the photo with the target aspect (at least half its size), resized to (h, w)."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    ch = int(min(ph, pw * h / w) * scale)
    cw = int(ch * w / h)
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    out = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return cv2.resize(np.ascontiguousarray(out), (w, h), interpolation=cv2.INTER_AREA)


def background(rng: np.random.Generator, cfg: RandomizeConfig, h: int, w: int) -> tuple[np.ndarray, str]:
    """(image, its name) from the TRAINING photographs or textures only."""
    if rng.random() < cfg.photo_fraction:
        name = TRAIN_PHOTOS[int(rng.integers(len(TRAIN_PHOTOS)))]
        return _crop(load_photo(name), rng, h, w), f"photo:{name}"
    name = TRAIN_TEXTURES[int(rng.integers(len(TRAIN_TEXTURES)))]
    return texture(name, rng, h, w), f"texture:{name}"


def draw_distractor(img: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    """One unknown shape in place, any colour (domain colours included: the shape decides, not the colour)."""
    h, w = img.shape[:2]
    cx, cy, r = int(rng.uniform(20, w - 20)), int(rng.uniform(20, h - 20)), rng.uniform(12, 40)
    pick = list(COLORS.values()) + [tuple(_color(rng).tolist())]
    c = tuple(int(v) for v in pick[int(rng.integers(len(pick)))])
    a0 = rng.uniform(0, 2 * np.pi)

    def poly(n: int, radii: tuple[float, ...]) -> np.ndarray:
        k = np.arange(n * len(radii))
        rad = np.array(radii * n)
        ang = a0 + k * 2 * np.pi / len(k)
        return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)

    if kind == "triangle":
        cv2.fillPoly(img, [poly(3, (r,))], c)
    elif kind == "star":
        cv2.fillPoly(img, [poly(5, (r, r * 0.45))], c)
    elif kind == "diamond":
        cv2.fillPoly(img, [poly(4, (r,))], c)
    elif kind == "hexagon":
        cv2.fillPoly(img, [poly(6, (r,))], c)
    elif kind == "cross":
        t = max(3, int(r / 3))
        cv2.line(img, (int(cx - r), cy), (int(cx + r), cy), c, t)
        cv2.line(img, (cx, int(cy - r)), (cx, int(cy + r)), c, t)
    elif kind == "ring":
        cv2.circle(img, (cx, cy), int(r), c, max(3, int(r / 5)))
    else:
        raise ValueError(f"unknown distractor {kind!r}")


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (brightness, contrast), a mild colour cast, sometimes blur and sensor noise; small enough that
    a red object stays red."""
    x = img.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.75, 1.25)
    x = x * rng.uniform(0.9, 1.1, 3)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(1, 8), x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def _scene_rngs(seed: int, index: int, per_scene: int) -> tuple[np.random.Generator, np.random.Generator, int]:
    """(scene rng, question rng, scene number); consecutive samples share a scene as in synthetic_sample."""
    scene, k = divmod(index, max(per_scene, 1))
    return np.random.default_rng([seed, scene]), np.random.default_rng([seed, scene, k + 1]), scene


def _decorate(img: np.ndarray, rng: np.random.Generator, cfg: RandomizeConfig) -> None:
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        draw_distractor(img, DISTRACTORS[int(rng.integers(len(DISTRACTORS)))], rng)


def randomized_sample(seed: int, index: int, cfg: RandomizeConfig | None = None) -> Sample:
    """The rendered objects over a photograph or texture, with distractors and jitter; the scene's questions."""
    cfg = cfg or RandomizeConfig()
    srng, qrng, scene = _scene_rngs(seed, index, cfg.scene.questions_per_scene)
    rendered, objects = render_scene(srng, cfg.scene)
    h, w = rendered.shape[:2]
    img, bg = background(srng, cfg, h, w)
    _decorate(img, srng, cfg)
    for o in objects:  # visible pixels only, so every mask stays exact
        img[o.mask] = rendered[o.mask]
    if cfg.jitter:
        img = jitter(img, srng)
    question, answer, targets = make_question(qrng, objects, cfg.scene)
    masks = np.stack([t.mask for t in targets]) if targets else np.zeros((0, h, w), bool)
    return Sample(image=img, question=question, answer=answer, masks=masks, names=[t.name for t in targets],
                  source=f"randomized:{seed}:{index}:{bg}", class_map=class_map(objects, (h, w)))


def no_object_mix(mix: dict[str, float]) -> dict[str, float]:
    """The question mix for images without domain objects: referring questions become questions about an absent
    object (make_question would turn them into affordance questions when nothing can be referred to)."""
    out = {k: v for k, v in mix.items() if k != "refer"}
    out["refer_absent"] = out.get("refer_absent", 0.0) + mix.get("refer", 0.0)
    return out


def negative_sample(seed: int, index: int, cfg: RandomizeConfig | None = None) -> Sample:
    """A photograph or texture without any domain object; every answer is NO_SUCH_OBJECT."""
    cfg = cfg or RandomizeConfig()
    srng, qrng, scene = _scene_rngs(seed, index, cfg.scene.questions_per_scene)
    h, w = cfg.scene.height, cfg.scene.width
    img, bg = background(srng, cfg, h, w)
    _decorate(img, srng, cfg)
    if cfg.jitter:
        img = jitter(img, srng)
    qcfg = SyntheticConfig(question_mix=no_object_mix(cfg.scene.question_mix), phrasing=cfg.scene.phrasing,
                           kinds=cfg.scene.kinds, colors=cfg.scene.colors)
    question, answer, targets = make_question(qrng, [], qcfg)
    assert not targets and answer == NO_SUCH_OBJECT
    return Sample(image=img, question=question, answer=answer, masks=np.zeros((0, h, w), bool),
                  source=f"negative:{seed}:{index}:{bg}", class_map=class_map([], (h, w)))


@dataclass
class OodImage:
    name: str  # "photo:coffee", "texture:waves:2", ...
    image: np.ndarray


def ood_images(per_heldout_kind: int = 2, seed: int = OOD_SEED) -> list[OodImage]:
    """The held-out photographs (whole), `per_heldout_kind` images of each held-out texture kind and one of each
    training texture kind at `seed` (a stream no training source uses), 320x240 like the domain's camera."""
    out = [OodImage(f"photo:{n}", load_photo(n)) for n in HELDOUT_PHOTOS]
    for kinds, count in ((HELDOUT_TEXTURES, per_heldout_kind), (TRAIN_TEXTURES, 1)):
        for kind in kinds:
            for k in range(count):
                rng = np.random.default_rng([seed, sum(map(ord, kind)), k])
                out.append(OodImage(f"texture:{kind}:{k}", texture(kind, rng, 240, 320)))
    return out


def ood_eval_set(questions_per_image: int = 4, per_heldout_kind: int = 2, seed: int = OOD_SEED,
                 question_mix: dict[str, float] | None = None, phrasing: str = "varied") -> list[Sample]:
    """Every kind of domain question (referring to an absent object, affordance, colour) on each OOD image;
    the right answer is always NO_SUCH_OBJECT (no domain object is in any of them)."""
    mix = no_object_mix(question_mix or {"refer": 0.3, "afford": 0.4, "color": 0.3})
    qcfg = SyntheticConfig(question_mix=mix, phrasing=phrasing)
    samples = []
    for i, im in enumerate(ood_images(per_heldout_kind, seed)):
        for k in range(questions_per_image):
            q, a, _ = make_question(np.random.default_rng([seed, i, k]), [], qcfg)
            samples.append(Sample(image=np.array(im.image), question=q, answer=a,
                                  masks=np.zeros((0, *im.image.shape[:2]), bool), source=f"ood:{im.name}"))
    return samples
