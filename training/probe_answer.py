"""Where an answer tips: teacher-force an answer and read, token by token, the probability the model gives it and
the model's own first choices there.

    python -m training.probe_answer --model DIR --question "Which objects could hold water?" \
        --answer "The red bottle {seg} and the red cup {seg}."          # on the demo scene; --scene N for another

Greedy decoding follows the top choice at every step, so a step where the forced token is not the top one (or only
just) is where the model's own answer leaves this one: e.g. "and" against "." after a first target.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from pixellm_ros.engine import Engine, EngineConfig, SamplingConfig
from pixellm_ros.model.scratch import ScriptedAnswer
from pixellm_ros.scenes import DEMO_SCENE, DEMO_SEED, render_scene

from .data.dataset import answer_ids


@dataclass
class Step:
    token_id: int
    probability: float  # the model's probability of the forced token here
    top: list[tuple[int, float]]  # its own first choices (id, probability), most likely first


class _Forced(ScriptedAnswer):
    """ScriptedAnswer (forces the planned token at each step) that first records the model's own distribution."""

    def __init__(self, ids: list[int], top: int) -> None:
        super().__init__(ids)
        self.k, self.steps = top, []

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        want = self.ids[len(generated)]
        p = torch.softmax(logits.float(), -1)
        best = torch.topk(p, self.k)
        self.steps.append(Step(want, float(p[want]), [(int(i), float(v)) for v, i in zip(best.values, best.indices)]))
        return super().__call__(generated, logits)


def forced_ids(engine: Engine, question: str, ids: list[int], top: int = 3) -> list[Step]:
    """Ask `question` of the engine's current image with the answer tokens `ids` forced: one Step per token."""
    forced = _Forced(ids, top)
    engine.ask(question, SamplingConfig(max_new_tokens=len(ids), logits_processor=forced))
    return forced.steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--question", required=True)
    ap.add_argument("--answer", required=True, help='with one "{seg}" per target')
    ap.add_argument("--scene", type=int, default=DEMO_SCENE, help="scene of the demo camera's seed (default: the demo's)")
    ap.add_argument("--seed", type=int, default=DEMO_SEED)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    engine = Engine(EngineConfig(model_path=args.model, device=args.device))
    image, _ = render_scene(np.random.default_rng([args.seed, args.scene]))
    engine.set_image(image, image_key=f"scene {args.seed}:{args.scene}")
    name = lambda i: engine.tokenizer.decode([i]).strip() or engine.tokenizer.decode([i], skip_special_tokens=False)  # noqa: E731
    for s in forced_ids(engine, args.question, answer_ids(engine.tokenizer, args.answer)):
        mark = "" if s.top[0][0] == s.token_id else "   <- not the model's choice"
        print(f"{name(s.token_id):>12} {s.probability:6.3f}   top: "
              + ", ".join(f"{name(i)} {v:.3f}" for i, v in s.top) + mark)
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
