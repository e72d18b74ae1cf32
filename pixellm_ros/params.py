"""The node's ROS parameters -> NodeConfig (how the node serves) + EngineConfig (which model, where).

Defaults live in ONE place, config/pixellm.yaml: `load_defaults` reads it and the node declares every
parameter with those values, so this module holds names, types and checks but no default value.
`configure` is the one function mapping parameter values to both configs; it reports every problem at
once. No ROS import: it takes a plain {name: value} dict, so it is tested without a node.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .engine import COMPILE_CHOICES, EngineConfig, resolve_device, resolve_dtype
from .model import SamplingConfig
from .model.quantize import MODES as QUANTIZATIONS, check_quantization

PARAMS_FILE = "pixellm.yaml"
# Parameters of the model and where it may come from; every other parameter is a NodeConfig field.
ENGINE_PARAMS = ("model_path", "model_root", "vision_tower", "device", "dtype", "quantization", "max_new_tokens",
                 "max_targets", "repetition_ngram", "repetition_count", "num_threads", "compile")
FRAME_POLICIES = ("latest", "next")  # for std_msgs/String queries (Query messages carry their own policy)
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


class ConfigError(ValueError):
    """Parameter values the node cannot run with; the message lists every problem."""


@dataclass(frozen=True)
class NodeConfig:
    """How the node serves requests (see config/pixellm.yaml for meaning and defaults)."""

    queue_size: int
    max_standing_queries: int
    draft_reuse: bool
    draft_max_age_s: float
    frame_policy: str
    max_image_age_s: float
    next_frame_timeout_s: float
    max_query_chars: int
    max_image_pixels: int
    cameras: tuple[str, ...]
    image_topics: tuple[str, ...]
    use_compressed: bool
    ring_size: int
    use_depth: bool
    depth_topic: str
    camera_info_topic: str
    max_target_topics: int
    publish_overlay: bool
    diagnostics_period_s: float
    adapter_dir: str
    autostart: bool


def params_file() -> Path:
    """config/pixellm.yaml: in the source tree (also behind a symlink install), else the installed share dir."""
    candidates = [Path(__file__).resolve().parent.parent / "config" / PARAMS_FILE]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("pixellm_ros")) / "config" / PARAMS_FILE)
    except Exception:  # no ament index (plain pip install) or package not in it
        pass
    candidates.append(Path(sys.prefix) / "share" / "pixellm_ros" / "config" / PARAMS_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{PARAMS_FILE} not found in {[str(c) for c in candidates]}: install the package "
                            f"(config/ goes to share/pixellm_ros) or run from the source tree")


def load_defaults(path: str | Path | None = None) -> dict[str, Any]:
    """{name: default} from the `/**: ros__parameters:` section of the parameter YAML."""
    path = Path(path) if path else params_file()
    data = yaml.safe_load(path.read_text())
    try:
        values = data["/**"]["ros__parameters"]
    except (KeyError, TypeError):
        raise ConfigError(f"{path}: expected a '/**: ros__parameters:' section") from None
    return dict(values)


def _typed(name: str, value: Any, default: Any, problems: list[str]) -> Any:
    """`value` with the type of `default` (int accepted for float, lists as tuples of str)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        problems.append(f"{name}: expected {type(default).__name__}"
                        f"{' of str' if isinstance(default, list) else ''}, got {value!r}")
    return value


def model_root_of(model_root: str, model_path: str) -> Path:
    """The folder models may be loaded from: `model_root`, or the one holding `model_path` when it is ""."""
    return Path(model_root).expanduser().resolve() if model_root else Path(model_path).expanduser().resolve().parent


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)  # resolve() follows symlinks: a link out of root is refused


def configure(values: dict[str, Any], defaults: dict[str, Any] | None = None,
              model_root: Path | None = None) -> tuple[NodeConfig, EngineConfig]:
    """Check parameter values (types, ranges, paths) and build both configs. Raises ConfigError.

    `model_root`: the folder pinned at start-up (the node passes it so that a model_path set at run time
    cannot move it); None derives it from `values`."""
    defaults = load_defaults() if defaults is None else defaults
    problems: list[str] = []
    v = {name: _typed(name, values.get(name, default), default, problems) for name, default in defaults.items()}
    if problems:
        raise ConfigError("invalid parameters: " + "; ".join(problems))

    def check(cond: bool, message: str) -> None:
        if not cond:
            problems.append(message)

    for name in ("queue_size", "ring_size", "max_new_tokens", "max_query_chars", "max_image_pixels"):
        check(v[name] >= 1, f"{name} must be >= 1, got {v[name]}")
    for name in ("max_standing_queries", "max_target_topics", "num_threads", "max_image_age_s",
                 "next_frame_timeout_s", "max_targets", "repetition_ngram"):
        check(v[name] >= 0, f"{name} must be >= 0, got {v[name]}")
    check(v["repetition_count"] >= 2, f"repetition_count must be >= 2, got {v['repetition_count']}")
    check(v["draft_max_age_s"] > 0, f"draft_max_age_s must be > 0, got {v['draft_max_age_s']}")
    check(v["diagnostics_period_s"] > 0, f"diagnostics_period_s must be > 0, got {v['diagnostics_period_s']}")
    check(v["frame_policy"] in FRAME_POLICIES, f"frame_policy must be one of {FRAME_POLICIES}, got {v['frame_policy']!r}")
    check(v["quantization"] in QUANTIZATIONS, f"quantization must be one of {QUANTIZATIONS}, got {v['quantization']!r}")
    check(v["dtype"] in DTYPES, f"dtype must be one of {DTYPES}, got {v['dtype']!r}")
    if v["quantization"] in QUANTIZATIONS[1:] and v["dtype"] in DTYPES:
        try:  # bitsandbytes installed, and able to run on this device in this dtype (a small layer is tried)
            device = resolve_device(v["device"])
            check_quantization(v["quantization"], device, resolve_dtype(v["dtype"], device))
        except (RuntimeError, ValueError) as exc:
            problems.append(str(exc))
    check(v["compile"] in COMPILE_CHOICES, f"compile must be one of {COMPILE_CHOICES} (auto: compile on CUDA only), "
          f"got {v['compile']!r}")
    cameras, topics = v["cameras"], v["image_topics"]
    check(len(cameras) >= 1 and all(cameras), f"cameras must be non-empty names, got {list(cameras)}")
    check(len(set(cameras)) == len(cameras), f"cameras must be unique, got {list(cameras)}")
    check(len(topics) == len(cameras) and all(topics),
          f"image_topics must name one topic per camera: {len(cameras)} cameras {list(cameras)}, "
          f"{len(topics)} topics {list(topics)}")
    model = Path(v["model_path"]).expanduser()
    root = model_root_of(v["model_root"], v["model_path"]) if model_root is None else model_root
    check(model.is_dir() and (model / "config.json").is_file(),
          f"model_path {str(model)!r} (resolved {model.resolve()}) is not a model folder with config.json: "
          f"set the model_path parameter")
    check(_inside(model, root), f"model_path {str(model)!r} resolves to {model.resolve()}, outside model_root {root}")
    if v["vision_tower"]:
        tower = Path(v["vision_tower"]).expanduser()
        check(tower.is_dir(), f"vision_tower {v['vision_tower']!r} is not a folder")
        check(_inside(tower, root), f"vision_tower {str(tower)!r} resolves to {tower.resolve()}, outside model_root {root}")
    if v["adapter_dir"]:
        check(Path(v["adapter_dir"]).expanduser().is_dir(), f"adapter_dir {v['adapter_dir']!r} is not a folder")
    if problems:
        raise ConfigError("invalid parameters: " + "; ".join(problems))

    node = NodeConfig(**{f.name: v[f.name] for f in fields(NodeConfig)})
    engine = EngineConfig(
        model_path=str(model), vision_tower=str(Path(v["vision_tower"]).expanduser()) if v["vision_tower"] else None,
        device=v["device"], dtype=v["dtype"], quantization=v["quantization"],
        sampling=SamplingConfig(max_new_tokens=v["max_new_tokens"], max_targets=v["max_targets"],
                                repetition_ngram=v["repetition_ngram"], repetition_count=v["repetition_count"]),
        max_question_chars=v["max_query_chars"],
        max_image_pixels=v["max_image_pixels"], num_threads=v["num_threads"] or None, compile=v["compile"])
    return node, engine
