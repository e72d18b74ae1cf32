"""Fault scenarios against a node process (the real node with injected model faults, faulty_node.py):
- model load failures through the lifecycle (missing folder, no weights, bad config.json, weights of the wrong
  shapes, truncated safetensors, a pickle that would run code): a clear error in the log, the node stays
  unconfigured / inactive and answers NOT_READY, and configuring it with the good model afterwards works;
- faults in the worker (CUDA out of memory, CPU out of memory, a RuntimeError, a too-thin image the model
  refuses, a raising subscription callback): an error result, then the next question is answered OK;
- a broken adapter: refused, the base model keeps answering.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from lifecycle_msgs.msg import Transition
from std_msgs.msg import Header, String

from reliability.common import STATUS_NAMES, log, log_problems, start, stop
from reliability.node_process import Lifecycle, build_adapter, image_msg, sample_rgb
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import LoadAdapter, Segment

MARKER = "pwned_by_pickle"


class _RunsCode:
    """Unpickling this runs `open(marker, 'w')`: a weights file must never do that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_models(good: Path, root: Path) -> dict[str, Path]:
    """Broken copies of the good model folder, by fault name."""
    out = {"missing folder": root / "does_not_exist"}

    def copy(name: str) -> Path:
        folder = root / name.replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        out[name] = folder
        return folder

    root.mkdir(parents=True, exist_ok=True)
    link = root / "link_out_of_model_root"  # a symlink inside model_root to a model outside it
    link.unlink(missing_ok=True)
    link.symlink_to(good.resolve(), target_is_directory=True)
    out["symlink out of model_root"] = link
    (copy("no weights") / "model.safetensors").unlink()
    (copy("bad config.json") / "config.json").write_text("{ this is not json")
    folder = copy("wrong shapes")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (folder / "config.json").write_text(json.dumps(cfg))
    folder = copy("truncated weights")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    folder = copy("pickle that runs code")
    (folder / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _RunsCode(root / MARKER)}, folder / "pytorch_model.bin")
    return out


def run_faults(model: Path, workdir: Path) -> dict:
    """All scenarios on one node process; figures per scenario."""
    workdir.mkdir(parents=True, exist_ok=True)
    models = bad_models(model, workdir / "bad_models")
    adapters = workdir / "adapters"
    if not (adapters / "broken").exists():
        build_adapter(model, adapters / "broken")
        data = (adapters / "broken" / "adapter_model.safetensors").read_bytes()
        (adapters / "broken" / "adapter_model.safetensors").write_bytes(data[:100])
    node, client = start(workdir / "faults_node.log", module="reliability.faulty_node", autostart=False,
                         model_path=models["missing folder"], model_root=workdir / "bad_models", max_new_tokens=9,
                         adapter_dir=adapters,
                         max_image_age_s=0.0)
    good = workdir / "bad_models" / "good"  # the node may only load models inside model_root
    shutil.rmtree(good, ignore_errors=True)
    shutil.copytree(model, good)
    figures: dict = {"load": {}, "worker": {}}
    try:
        lifecycle = Lifecycle(client)
        state = lambda: lifecycle.state().label  # noqa: E731
        transition, set_param = lifecycle.transition, lifecycle.set_string

        def set_model(path: Path) -> None:
            assert set_param("model_path", path)

        def segment(qid: str, text: str = "Where is the cup?", rgb=None) -> SegmentationResult:
            image = image_msg(sample_rgb(1) if rgb is None else rgb, Header(frame_id="given"))
            request = Segment.Request(query=Query(id=qid, text=text), use_image=True, image=image)
            return client.call(client.segment, request, f"the answer to {qid}", timeout=60).result

        for name, path in models.items():
            if name == "missing folder":
                pass
            else:
                if state() == "inactive":
                    transition(Transition.TRANSITION_CLEANUP)
                set_model(path)
            before = len(node.log())
            failed_at = ("configure" if not transition(Transition.TRANSITION_CONFIGURE)
                         else "activate" if not transition(Transition.TRANSITION_ACTIVATE) else "")
            lines = [ln for ln in node.log()[before:].splitlines() if "ERROR" in ln]
            figures["load"][name] = {
                "failed_at": failed_at or "NOT REFUSED", "state_after": state(),
                "answer": STATUS_NAMES[segment(f"load-{len(figures['load'])}").status],
                "error": lines[0].split("]: ", 1)[-1][:160] if lines else ""}
        figures["pickle_code_ran"] = (workdir / "bad_models" / MARKER).exists()
        figures["launch_only_params_changed"] = [name for name in ("model_root", "adapter_dir")
                                                 if set_param(name, Path("/"))]
        if state() == "inactive":
            transition(Transition.TRANSITION_CLEANUP)
        set_model(good)
        recovered = transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
        first = segment("after-load-faults")
        figures["load_recovered"] = recovered and first.status == SegmentationResult.OK

        cases = [("CUDA out of memory", "FAULT:cuda_oom where is the cup?", None),
                 ("CPU out of memory", "FAULT:cpu_oom where is the cup?", None),
                 ("RuntimeError in the model", "FAULT:runtime where is the cup?", None),
                 ("image the model refuses (1x2000)", "Where is the cup?", sample_rgb(2, 1, 2000))]
        for k, (name, text, rgb) in enumerate(cases):
            bad = segment(f"fault-{k}", text, rgb)
            after = segment(f"after-fault-{k}")
            figures["worker"][name] = {"answer": STATUS_NAMES[bad.status], "message": bad.status_message[:120],
                                       "next_answer": STATUS_NAMES[after.status]}
        n = len(client.results)
        client.query_pub.publish(String(data="FAULT:callback"))
        client.query_pub.publish(String(data="Where is the cup?"))
        client.spin_until(lambda: len(client.results) > n, "an answer after the raising callback")
        figures["worker"]["raising subscription callback"] = {
            "answer": "(none: the callback raised before queueing)", "message": "traceback logged",
            "next_answer": STATUS_NAMES[client.results[-1].status], "alive": node.proc.poll() is None}
        response = client.call(client.load_adapter, LoadAdapter.Request(name="broken"), "load_adapter broken")
        after = segment("after-broken-adapter")
        figures["adapter"] = {"loaded": response.success, "message": response.message[:120],
                              "active_adapter": response.active_adapter, "next_answer": STATUS_NAMES[after.status]}
        text = node.log()
        figures.update(alive_at_end=node.proc.poll() is None, crashes=0,
                       callback_tracebacks=text.count("a callback raised; the node keeps running"),
                       **log_problems(text))
    except AssertionError as exc:
        figures.update(crashes=int(node.proc.poll() is not None), error=str(exc).splitlines()[0],
                       alive_at_end=node.proc.poll() is None)
        log.error("fault run failed: %s", exc)
    finally:
        figures["exit_code"] = stop(node, client)
    return figures
