"""Security checks that need no node: how weights are read (source scan), and what the trainer's resume reads."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("pixellm_ros", "training", "benchmarks")


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


def resume_pickle_probe(workdir: Path) -> bool:
    """Does the trainer's resume path (accelerate.load_state -> load_custom_state, used for the registered
    scheduler) run code from a checkpoint's custom_checkpoint_0.pkl? True = it does (a finding)."""
    import torch
    from accelerate import PartialState
    from accelerate.checkpointing import load_custom_state

    PartialState(cpu=True)

    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / "resume_pickle_ran_code"
    marker.unlink(missing_ok=True)
    torch.save(_RunsCode(marker), workdir / "custom_checkpoint_0.pkl")

    class Target:
        def load_state_dict(self, state) -> None:
            pass

    try:
        load_custom_state(Target(), workdir, 0)
    except Exception:
        pass
    return marker.exists()
