"""A synthetic tabletop domain: rendered scenes, questions, text answers and one mask per target.

Scenes hold 2-4 objects (`min_objects` / `max_objects`) of a few kinds and colors, at random sizes and
positions, sometimes overlapping (masks are the VISIBLE pixels). Questions are referring ("Where is the red cup?"),
referring to an object that is not there (`refer_absent`: "Where is the red cup?" with no red cup -> no target),
affordance ("Which objects could hold water?" -> every cup, bowl and bottle) or attribute
("Segment all the blue objects."), so answers name 0 to 4 targets. Every sample is a pure function
of (seed, index): a dataset is reproducible, and resuming training resumes the exact data stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .sample import Sample

KINDS = ("cup", "bowl", "bottle", "knife", "scissors", "ball")
COLORS = {"red": (205, 35, 35), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (230, 200, 30)}
AFFORDANCES = {
    "hold water": ("cup", "bowl", "bottle"),
    "cut the rope": ("knife", "scissors"),
    "play catch": ("ball",),
}
QUESTION_KINDS = ("refer", "refer_absent", "afford", "color")
NO_SUCH_OBJECT = "There is no such object in the image."  # the answer when nothing matches
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")
# Question phrasings per kind; "template" is the original set (its order and size fix the old data streams).
PHRASINGS = {
    "template": {
        "refer": ("Where is the {name}?", "Segment the {name}.", "Can you find the {name}?"),
        "afford": ("Which objects could I use to {verb}?", "What could I use to {verb}?"),
        "color": ("Segment all the {color} objects.",),
    },
    "varied": {
        "refer": ("Where is the {name}?", "Segment the {name}.", "Can you find the {name}?", "Show me the {name}.",
                  "Find the {name}.", "Which object is the {name}?"),
        "afford": ("Which objects could I use to {verb}?", "What could I use to {verb}?", "Which objects could {verb}?",
                   "What can I use to {verb}?", "Find everything I could use to {verb}.",
                   "Which things could I use to {verb}?"),
        "color": ("Segment all the {color} objects.", "Which objects are {color}?", "Find all the {color} objects.",
                  "Show me the {color} objects."),
    },
}


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
class SyntheticConfig:
    width: int = 320
    height: int = 240
    min_objects: int = 2
    max_objects: int = 4
    kinds: tuple[str, ...] = KINDS
    colors: tuple[str, ...] = tuple(COLORS)
    min_visible_fraction: float = 0.5  # objects hidden more than this are redrawn elsewhere
    style: str = "default"  # "default" or "dim" (a darker, bluish camera: a new domain look)
    questions_per_scene: int = 1  # > 1: consecutive samples ask different questions about one scene
    question_mix: dict[str, float] = field(default_factory=lambda: {"refer": 0.45, "afford": 0.35, "color": 0.2})
    # "template": the few fixed phrasings per kind the first models learned (their data streams unchanged);
    # "varied": more ways to ask the same thing, as operators do ("Which objects could hold water?").
    phrasing: str = "template"

    def __post_init__(self) -> None:
        unknown = set(self.question_mix) - set(QUESTION_KINDS)
        if unknown or not self.question_mix or min(self.question_mix.values()) < 0 or sum(self.question_mix.values()) <= 0:
            raise ValueError(f"question_mix must weigh {' / '.join(QUESTION_KINDS)} with non-negative ratios, "
                             f"got {self.question_mix}")
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {sorted(PHRASINGS)}, got {self.phrasing!r}")
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ValueError(f"objects per scene must satisfy 1 <= min <= max <= 8, got {self.min_objects}..{self.max_objects}")


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


def render_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, list[SceneObject]]:
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


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _pick(rng: np.random.Generator, phrasings: tuple[str, ...]) -> str:
    """One phrasing; a single one draws no random number (so the template stream stays as it always was)."""
    return phrasings[0] if len(phrasings) == 1 else str(rng.choice(phrasings))


def _refer_to_absent(rng: np.random.Generator, objects: list[SceneObject], cfg: SyntheticConfig,
                     phrasings: tuple[str, ...]) -> tuple[str, str, list[SceneObject]]:
    """A referring question whose object is not in the scene. Half of them are near misses (a present
    object's kind in another color, or its color on another kind): the model has to check both words."""
    present = {(o.color, o.kind) for o in objects}
    absent = [(c, k) for c in cfg.colors for k in cfg.kinds if (c, k) not in present]
    near = [(c, k) for c, k in absent if any(c == pc or k == pk for pc, pk in present)]
    pool = near if near and rng.random() < 0.5 else absent
    color, kind = pool[int(rng.integers(len(pool)))]
    return _pick(rng, phrasings).format(name=f"{color} {kind}"), NO_SUCH_OBJECT, []


def make_question(rng: np.random.Generator, objects: list[SceneObject], cfg: SyntheticConfig
                  ) -> tuple[str, str, list[SceneObject]]:
    """(question, answer with one {seg} per target, targets in answer order)."""
    phrasings = PHRASINGS[cfg.phrasing]
    kinds = list(cfg.question_mix)
    kind = str(rng.choice(kinds, p=np.array(list(cfg.question_mix.values())) / sum(cfg.question_mix.values())))
    if kind == "refer_absent":
        return _refer_to_absent(rng, objects, cfg, phrasings["refer"])
    if kind == "refer":
        unique = [o for o in objects if sum(p.kind == o.kind and p.color == o.color for p in objects) == 1]
        if unique:
            o = unique[int(rng.integers(len(unique)))]
            q = _pick(rng, phrasings["refer"]).format(name=f"{o.color} {o.kind}")
            return q, f"{o.name.capitalize()} is {{seg}}.", [o]
        kind = "afford"
    if kind == "afford":
        verb = str(rng.choice(list(AFFORDANCES)))
        targets = sorted([o for o in objects if o.kind in AFFORDANCES[verb]], key=lambda o: o.x)
        q = _pick(rng, phrasings["afford"]).format(verb=verb)
    else:
        color = str(rng.choice(cfg.colors))
        targets = sorted([o for o in objects if o.color == color], key=lambda o: o.x)
        q = _pick(rng, phrasings["color"]).format(color=color)
    if not targets:
        return q, NO_SUCH_OBJECT, []
    return q, _join([f"{t.name} {{seg}}" for t in targets]).capitalize() + ".", targets


def synthetic_sample(seed: int, index: int, cfg: SyntheticConfig | None = None) -> Sample:
    """Sample `index` of the stream. With `questions_per_scene` = n > 1, samples n*k .. n*k + n - 1 ask
    different questions about the same scene (consecutive indices land in the same batch), so a mask
    decoder that ignores the question cannot fit them all."""
    cfg = cfg or SyntheticConfig()
    if cfg.questions_per_scene == 1:
        rng = np.random.default_rng([seed, index])
        image, objects = render_scene(rng, cfg)
    else:
        scene, k = divmod(index, cfg.questions_per_scene)
        image, objects = render_scene(np.random.default_rng([seed, scene]), cfg)
        rng = np.random.default_rng([seed, scene, k + 1])
    question, answer, targets = make_question(rng, objects, cfg)
    masks = np.stack([t.mask for t in targets]) if targets else np.zeros((0, *image.shape[:2]), bool)
    return Sample(image=image, question=question, answer=answer, masks=masks,
                  names=[t.name for t in targets], source=f"synthetic:{seed}:{index}")


def domain_text(cfg: SyntheticConfig | None = None, n: int = 400, seed: int = 12345) -> list[str]:
    """Questions and answers of the domain, for training its tokenizer."""
    out = []
    for i in range(n):
        s = synthetic_sample(seed, i, cfg)
        out += [s.question, s.answer.replace("{seg}", "")]
    return out
