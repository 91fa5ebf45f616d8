"""Fixtures of the serve tests: the real tiny bundle's test images (from its run's splits.json)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_images(tiny_run) -> list[tuple[Path, str]]:
    """(path, label) of the tiny run's test split, in splits.json order."""
    from edgeft.core.manifests import SplitsDoc

    splits = SplitsDoc.load(tiny_run)
    return [(splits.abspath(it), it.label) for it in splits.of("test")]
