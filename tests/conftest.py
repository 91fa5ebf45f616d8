"""Shared fixtures: a private cache dir, a tiny synthetic fish tree and one tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> Path:
    """Every test session gets its own edgeft cache, so no test sees another run's features."""
    cache = tmp_path_factory.mktemp("edgeft-cache")
    os.environ["EDGEFT_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic Fish_Dataset tree (9 species) in the Kaggle layout."""
    from edgeft.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth"), per_class=24, seed=0, image_size=(160, 120))


@pytest.fixture(scope="session")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    """A real trained run: frozen EfficientNet-Lite0 + MLP head on the small synthetic tree."""
    from rich.console import Console

    from edgeft.train.run import TrainConfig, train

    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(data=synth_root, epochs=30, patience=10, out=out, name="tiny", seed=0)
    return train(cfg, Console(quiet=True)).run_dir
