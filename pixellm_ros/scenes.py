"""Synthetic tabletop scenes: a few cups, bowls, bottles, knives, scissors and balls on a table, with the
visible-pixel mask of every object.

The demo camera publishes them and the training package builds its synthetic domain (questions, answers,
targets: training/data/synthetic.py) on them, so the renderer lives here, in the shipped package, and the
node side never imports `training`. `render_scene` is a pure function of the generator's state: a scene is
reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("cup", "bowl", "bottle", "knife", "scissors", "ball")
COLORS = {"red": (205, 35, 35), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (230, 200, 30)}

# `make demo`: the questions its planner asks, all on ONE scene, so the answers do not depend on timing:
# render_scene(default_rng([DEMO_SEED, DEMO_SCENE])), the first scene of seed 0 where every question has an answer
# (a container, exactly one red cup, a blue object, a cutting tool; training.evaluate.demo_scene applies the rule,
# a test checks the two agree). Chosen by that rule, not by how a model answers on it.
DEMO_QUESTIONS = ("Which objects could hold water?", "Where is the red cup?", "Segment all the blue objects.",
                  "What could I use to cut the rope?")
DEMO_SEED, DEMO_SCENE = 0, 113


@dataclass
class SceneObject:
    kind: str
    color: str
    mask: np.ndarray  # visible pixels, bool (H, W)

    @property
    def name(self) -> str:
        return f"the {self.color} {self.kind}"

    @property
    def x(self) -> float:
        return float(np.nonzero(self.mask)[1].mean())


@dataclass
class SceneConfig:
    width: int = 320
    height: int = 240
    min_objects: int = 2
    max_objects: int = 4
    kinds: tuple[str, ...] = KINDS
    colors: tuple[str, ...] = tuple(COLORS)
    min_visible_fraction: float = 0.5  # objects hidden more than this are redrawn elsewhere
    style: str = "default"  # "default" or "dim" (a darker, bluish camera: a new domain look)
    # No two objects of one kind and colour: "the red cup" then names one object. Off by default (the demo camera's
    # and the shipped model's streams); training curricula of one or two colours need it, or their answers teach
    # "The red cup and the red cup.".
    distinct: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ValueError(f"objects per scene must satisfy 1 <= min <= max <= 8, got {self.min_objects}..{self.max_objects}")
        unknown = [k for k in self.kinds if k not in KINDS] + [c for c in self.colors if c not in COLORS]
        if unknown or not self.kinds or not self.colors:
            raise ValueError(f"kinds must be some of {list(KINDS)} and colors some of {list(COLORS)}, got "
                             f"{list(self.kinds)} / {list(self.colors)}")


def _draw(kind: str, canvas: np.ndarray, cx: int, cy: int, s: float, color, rng: np.random.Generator) -> None:
    """Draw one object's silhouette (value 1 on `canvas` when color is None, else the color)."""
    c = 1 if color is None else color
    if kind == "cup":
        w, h = int(22 * s), int(30 * s)
        cv2.rectangle(canvas, (cx - w, cy - h), (cx + w, cy + h), c, -1)
        cv2.ellipse(canvas, (cx + w, cy), (int(10 * s), int(13 * s)), 0, -90, 90, c, max(2, int(5 * s)))
    elif kind == "bowl":
        cv2.ellipse(canvas, (cx, cy - int(6 * s)), (int(38 * s), int(26 * s)), 0, 0, 180, c, -1)
        cv2.rectangle(canvas, (cx - int(38 * s), cy - int(10 * s)), (cx + int(38 * s), cy - int(4 * s)), c, -1)
    elif kind == "bottle":
        w, h = int(14 * s), int(34 * s)
        cv2.rectangle(canvas, (cx - w, cy - h // 2), (cx + w, cy + h), c, -1)
        cv2.rectangle(canvas, (cx - w // 2, cy - h), (cx + w // 2, cy - h // 2), c, -1)
    elif kind == "knife":
        angle = rng.uniform(-0.5, 0.5)
        dx, dy = np.cos(angle), np.sin(angle)
        blade = np.array([[cx, cy], [cx + 50 * s * dx, cy + 50 * s * dy]], np.int32)
        cv2.line(canvas, tuple(blade[0]), tuple(blade[1]), c, max(3, int(7 * s)))
        handle_end = (int(cx - 26 * s * dx), int(cy - 26 * s * dy))
        cv2.line(canvas, (cx, cy), handle_end, c, max(5, int(12 * s)))
    elif kind == "scissors":
        r = int(11 * s)
        cv2.circle(canvas, (cx - r, cy + int(20 * s)), r, c, max(3, int(5 * s)))
        cv2.circle(canvas, (cx + r, cy + int(20 * s)), r, c, max(3, int(5 * s)))
        cv2.line(canvas, (cx - r // 2, cy + int(10 * s)), (cx + int(14 * s), cy - int(36 * s)), c, max(3, int(6 * s)))
        cv2.line(canvas, (cx + r // 2, cy + int(10 * s)), (cx - int(14 * s), cy - int(36 * s)), c, max(3, int(6 * s)))
    elif kind == "ball":
        cv2.circle(canvas, (cx, cy), int(24 * s), c, -1)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def render_scene(rng: np.random.Generator, cfg: SceneConfig | None = None) -> tuple[np.ndarray, list[SceneObject]]:
    """(H, W, 3) uint8 RGB scene and its objects (visible masks; objects hidden too much are left out)."""
    cfg = cfg or SceneConfig()
    h, w = cfg.height, cfg.width
    wall = rng.integers(170, 235, 3)
    table = rng.integers(90, 170, 3) * np.array([1.0, 0.8, 0.6])
    horizon = int(h * rng.uniform(0.3, 0.45))
    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = wall
    img[horizon:] = table
    img += rng.normal(0, 6, img.shape)  # sensor noise and texture
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[SceneObject] = []
    occupied = np.zeros((h, w), bool)
    for _ in range(n):
        kind = str(rng.choice(cfg.kinds))
        color = str(rng.choice(cfg.colors))
        used = {(o.kind, o.color) for o in objects} if cfg.distinct else set()
        if (kind, color) in used:  # (draws more only then: the streams without `distinct` are unchanged)
            free = [(k, c) for k in cfg.kinds for c in cfg.colors if (k, c) not in used]
            if not free:
                break
            kind, color = free[int(rng.integers(len(free)))]
        for _attempt in range(20):
            s = rng.uniform(0.8, 1.3)
            cx, cy = int(rng.uniform(45, w - 45)), int(rng.uniform(horizon + 10, h - 40))
            sil = np.zeros((h, w), np.uint8)
            _draw(kind, sil, cx, cy, s, None, np.random.default_rng(int(rng.integers(1 << 30))))
            sil = sil.astype(bool)
            if sil.sum() > 150 and (sil & occupied).sum() < 0.3 * sil.sum():
                break
        shade = np.array(COLORS[color], np.float32) * rng.uniform(0.85, 1.1)
        img[sil] = shade + rng.normal(0, 5, (int(sil.sum()), 3))
        for o in objects:  # the new object hides what it covers
            o.mask &= ~sil
        objects.append(SceneObject(kind, color, sil))
        occupied |= sil
    objects = [o for o in objects if o.mask.sum() > 0.5 * 150]
    if cfg.style == "dim":
        img = img * np.array([0.55, 0.6, 0.8]) + 10
    return np.clip(img, 0, 255).astype(np.uint8), objects
