"""A synthetic tabletop domain: rendered scenes (pixellm_ros.scenes), questions, text answers and one mask per target.

Scenes hold 2-4 objects (`min_objects` / `max_objects`) of a few kinds and colors, at random sizes and
positions, sometimes overlapping (masks are the VISIBLE pixels). Questions are referring ("Where is the red cup?"),
referring to an object that is not there (`refer_absent`: "Where is the red cup?" with no red cup -> no target),
affordance ("Which objects could hold water?" -> every cup, bowl and bottle) or attribute
("Segment all the blue objects."), so answers name 0 to 4 targets. Every sample is a pure function
of (seed, index): a dataset is reproducible, and resuming training resumes the exact data stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pixellm_ros.scenes import COLORS, KINDS, SceneConfig, SceneObject, render_scene  # noqa: F401 (re-exported)

from .patch_labels import class_map
from .sample import Sample

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
class SyntheticConfig(SceneConfig):
    """The scene (pixellm_ros.scenes.SceneConfig: size, objects, style) and the questions asked about it."""
    questions_per_scene: int = 1  # > 1: consecutive samples ask different questions about one scene
    question_mix: dict[str, float] = field(default_factory=lambda: {"refer": 0.45, "afford": 0.35, "color": 0.2})
    # "template": the few fixed phrasings per kind the first models learned (their data streams unchanged);
    # "varied": more ways to ask the same thing, as operators do ("Which objects could hold water?").
    phrasing: str = "template"

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.question_mix) - set(QUESTION_KINDS)
        if unknown or not self.question_mix or min(self.question_mix.values()) < 0 or sum(self.question_mix.values()) <= 0:
            raise ValueError(f"question_mix must weigh {' / '.join(QUESTION_KINDS)} with non-negative ratios, "
                             f"got {self.question_mix}")
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {sorted(PHRASINGS)}, got {self.phrasing!r}")


def matching_objects(objects: list[SceneObject], color: str | None = None, kind: str | None = None,
                     verb: str | None = None) -> list[SceneObject]:
    """The objects a question asks for, left to right (the answer's order): of `color` and/or `kind`, or usable to
    `verb` (AFFORDANCES). The one answer rule of make_question and of the evaluation that scores answers by it."""
    return sorted((o for o in objects if (color is None or o.color == color) and (kind is None or o.kind == kind)
                   and (verb is None or o.kind in AFFORDANCES[verb])), key=lambda o: o.x)


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
        targets = matching_objects(objects, verb=verb)
        q = _pick(rng, phrasings["afford"]).format(verb=verb)
    else:
        color = str(rng.choice(cfg.colors))
        targets = matching_objects(objects, color=color)
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
                  names=[t.name for t in targets], source=f"synthetic:{seed}:{index}",
                  class_map=class_map(objects, image.shape[:2]))


def domain_text(cfg: SyntheticConfig | None = None, n: int = 400, seed: int = 12345) -> list[str]:
    """Questions and answers of the domain, for training its tokenizer."""
    out = []
    for i in range(n):
        s = synthetic_sample(seed, i, cfg)
        out += [s.question, s.answer.replace("{seg}", "")]
    return out
