"""Every recipe the repository ships under training/configs/ still parses and passes the trainer's checks (a
renamed or removed field would otherwise surface only when someone re-runs an old stage)."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig

CONFIGS = sorted((Path(__file__).parents[2] / "training" / "configs").glob("*.yaml"))


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_passes_the_checks(path):
    TrainConfig.from_yaml(path).check()
