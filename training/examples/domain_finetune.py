"""Domain fine-tuning end to end: a new camera look, captured through a bag, learned by a LoRA adapter.

    python -m training.examples.domain_finetune --base models/pixellm_tabletop --out runs/domain_dim

1. Record: frames of the new domain (the "dim" camera: darker, bluish) are written to an MCAP bag on
   /camera/image_raw, as the robot's camera topic would be recorded.
2. Capture: `training.capture` turns the bag into PNGs + labelme templates.
3. Annotate: a person would draw the objects in labelme and write questions; here the scene generator's
   ground truth fills the templates (polygons from the true masks, questions and answers), so the
   example runs unattended. The files are ordinary labelme JSON either way.
4. Fine-tune a LoRA adapter (release recipe: LoRA on q/v + decoder, projectors, embeddings, lm_head)
   on the labelme folder.
5. Evaluate base vs base+adapter on held-out frames of the new domain; write metrics JSON and a plot.
The adapter folder is what the node's ~/load_adapter service loads.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import yaml

from pixellm_ros.engine import Engine, EngineConfig
from pixellm_ros.model import SamplingConfig

from ..capture import capture
from ..config import TrainConfig
from ..data.synthetic import SyntheticConfig, make_question, render_scene
from ..evaluate import evaluate_engine, synthetic_eval_set
from ..train import train

log = logging.getLogger("domain_finetune")
TOPIC = "/camera/image_raw"
STYLE = "dim"


def record_bag(path: Path, frames: int, seed: int) -> list[tuple[np.ndarray, list]]:
    """Render `frames` scenes of the new domain and write them to an MCAP bag as sensor_msgs/Image."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_KILTED if hasattr(Stores, "ROS2_KILTED") else Stores.LATEST)
    Image, Header, Time = (store.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                     "builtin_interfaces/msg/Time"))
    cfg = SyntheticConfig(style=STYLE)
    scenes = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(TOPIC, Image.__msgtype__, typestore=store)
        for i in range(frames):
            rng = np.random.default_rng([seed, i])
            rgb, objects = render_scene(rng, cfg)
            scenes.append((rgb, objects, rng))
            t = 1_000_000_000 + i * 100_000_000
            msg = Image(header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera_optical_frame"),
                        height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                        step=rgb.shape[1] * 3, data=np.ascontiguousarray(rgb).reshape(-1))
            writer.write(conn, t, store.serialize_cdr(msg, Image.__msgtype__))
    return scenes


def annotate(folder: Path, scenes: list, questions_per_frame: int = 3) -> int:
    """Fill the labelme templates from the generator's ground truth (standing in for a person)."""
    templates = sorted(folder.glob("*.json"))
    if len(templates) != len(scenes):
        raise RuntimeError(f"{len(templates)} templates for {len(scenes)} recorded frames")
    cfg = SyntheticConfig(style=STYLE)
    for path, (rgb, objects, rng) in zip(templates, scenes):
        doc = json.loads(path.read_text())
        shapes, first_shape = [], {}
        for k, o in enumerate(objects):  # every visible part of an object: one polygon, one group_id
            contours, _ = cv2.findContours(o.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for c in contours:
                if len(c) >= 3:
                    first_shape.setdefault(id(o), len(shapes))
                    shapes.append({"label": f"{o.color} {o.kind}", "points": c[:, 0].tolist(),
                                   "shape_type": "polygon", "group_id": k})
        doc["shapes"] = shapes
        doc["questions"] = []
        for _ in range(questions_per_frame):
            q, a, targets = make_question(rng, objects, cfg)
            doc["questions"].append({"question": q, "answer": a, "targets": [first_shape[id(t)] for t in targets]})
        path.write_text(json.dumps(doc))
    return len(templates)


def evaluate(model: str, adapter: str | None, samples: int, seed: int, out: Path) -> dict:
    engine = Engine(EngineConfig(model_path=model, device="cpu", sampling=SamplingConfig(max_new_tokens=64)))
    if adapter:
        engine.load_adapter(adapter)
    return evaluate_engine(engine, synthetic_eval_set(samples, seed, STYLE), out)


def plot(before: dict, after: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["gIoU", "cIoU", "target_count_accuracy"]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, [before[k] for k in keys], 0.4, label="base model")
    ax.bar(x + 0.2, [after[k] for k in keys], 0.4, label="base + domain adapter")
    ax.set_xticks(x, keys)
    ax.set_ylim(0, 1)
    ax.set_title(f"new camera look ('{STYLE}'), held-out frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/pixellm_tabletop")
    ap.add_argument("--out", default="runs/domain_dim")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--eval-samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=100, help="recording seed; evaluation uses seed + 1")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "bag"
    if not bag.exists():
        scenes = record_bag(bag, args.frames, args.seed)
        capture(bag, out / "frames", [TOPIC])
        log.info("annotated %d frames", annotate(out / "frames", scenes))
    cfg = TrainConfig.from_dict({
        "base_model": args.base, "output_dir": str(out / "run"), "steps": args.steps, "batch_size": 4,
        "grad_accum": 1, "lr": 1e-3, "warmup_steps": 10, "save_every": 50, "log_every": 10,
        "export_dtype": "float32", "num_threads": 2,
        "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05},
        "data": {"sources": [{"kind": "labelme", "path": str(out / "frames")}]}})
    (out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    result = train(cfg, resume=True)
    before = evaluate(args.base, None, args.eval_samples, args.seed + 1, out / "eval_base")
    after = evaluate(args.base, result["adapter"], args.eval_samples, args.seed + 1, out / "eval_adapter")
    report = {"domain": STYLE, "frames": args.frames, "steps": args.steps, "base": before, "adapter": after,
              "adapter_dir": result["adapter"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot(before, after, out / "before_after.png")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
