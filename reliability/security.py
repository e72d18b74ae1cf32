"""Security checks that need no node: how weights are read (source scan), and what the trainer's resume reads."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("pixellm_ros", "training", "benchmarks", "reliability")


def scan_loads() -> dict:
    """Every torch.load call in the project's code, and every trust_remote_code=True / pickle.load use."""
    unsafe, loads, remote = [], 0, []
    for package in SCANNED:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = ast.unparse(node.func)
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if name.endswith("torch.load"):
                    loads += 1
                    if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords):
                        unsafe.append(where)
                if name in ("pickle.load", "pickle.loads"):
                    unsafe.append(where)
                for k in node.keywords:
                    if k.arg == "trust_remote_code" and not (isinstance(k.value, ast.Constant) and not k.value.value):
                        remote.append(where)
    return {"torch_load_calls": loads, "unsafe_loads": unsafe, "trust_remote_code": remote}


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def resume_pickle_probe(workdir: Path) -> dict:
    """Does `training.train --resume` run code planted in a checkpoint? A real checkpoint of a 2-step run;
    then each pickle-format file accelerate reads back (and custom_checkpoint_0.pkl, which accelerate unpickles
    with weights_only=False for registered objects) is replaced in turn by a pickle that creates a marker
    file when unpickled, and the run is resumed. Returns {file: code ran?}; a refused load is the safe outcome."""
    import shutil
    import subprocess
    import sys

    import torch
    import yaml

    from training.init_model import init_model

    repo = Path(__file__).resolve().parents[1]
    workdir.mkdir(parents=True, exist_ok=True)
    base = init_model("tiny", workdir / "base")
    cfg = dict(base_model=str(base), output_dir=str(workdir / "run"), steps=2, batch_size=1, grad_accum=1,
               warmup_steps=1, trainable=["all"], lora={"enabled": False}, save_every=2, log_every=1,
               export_dtype="float32", num_threads=1, data={"sources": [{"kind": "synthetic", "seed": 3}]})
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def train(*extra: str) -> None:
        subprocess.run([sys.executable, "-m", "training.train", str(workdir / "cfg.yaml"), *extra], cwd=repo,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)

    train()
    ckpt = workdir / "run" / "checkpoints" / "step_0000002"
    pristine = workdir / "pristine"
    shutil.rmtree(pristine, ignore_errors=True)
    shutil.copytree(ckpt, pristine)
    targets = sorted({p.name for p in pristine.iterdir() if p.suffix in (".pkl", ".bin")} | {"custom_checkpoint_0.pkl"})
    ran = {}
    for name in targets:
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        marker = workdir / f"ran_{name}"
        marker.unlink(missing_ok=True)
        torch.save(_RunsCode(marker), ckpt / name)
        train("--resume")
        ran[name] = marker.exists()
    return ran


def data_path_probe(workdir: Path) -> dict:
    """Training records that point outside their data folder (`..`, an absolute path, a symlink out): how many
    of the loaders' reads were refused with a DataError naming the record."""
    import json

    import cv2
    import numpy as np

    from training.data.labelme import LabelmeDataset
    from training.data.muse import MuseDataset
    from training.data.sample import DataError

    data, outside = workdir / "data", workdir / "outside"
    data.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(outside / "x.png"), np.zeros((8, 8, 3), np.uint8))
    link = data / "link.png"
    link.unlink(missing_ok=True)
    link.symlink_to(outside / "x.png")
    shape = {"label": "cup", "points": [[1, 1], [5, 1], [5, 5]], "group_id": None, "shape_type": "polygon"}
    tricks = ["../outside/x.png", str(outside / "x.png"), "link.png"]
    for i, path in enumerate(tricks):
        (data / f"r{i}.json").write_text(json.dumps({"shapes": [shape], "imagePath": path, "imageData": None}))
    (workdir / "muse.json").write_text(json.dumps([{"file_name": t, "height": 8, "width": 8, "ann_list": [{}],
                                                  "questions": ["Q?"], "answers": [[]]} for t in tricks]))
    tried = refused = 0
    for ds in (LabelmeDataset(data), MuseDataset(workdir / "muse.json", data)):
        for i in range(len(ds)):
            tried += 1
            try:
                ds[i]
            except DataError as e:
                refused += "outside the data folder" in str(e)
    return {"tried": tried, "refused": refused}
