"""Fixtures of the serve tests: the real tiny bundle's test images (from its run's splits.json)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_images(tiny_run) -> list[tuple[Path, str]]:
    """(path, label) of the tiny run's test split, in splits.json order."""
    from edgeft.core.manifests import SplitsDoc

    splits = SplitsDoc.load(tiny_run)
    return [(splits.abspath(it), it.label) for it in splits.of("test")]


@pytest.fixture
def serve():
    """serve(bundle dir or Predictor, **config groups) -> (server, client, app): a real server on 127.0.0.1,
    stopped when the test ends."""
    import httpx

    from edgeft.serve.config import ServeConfig
    from edgeft.serve.http import create_app
    from edgeft.serve.server import BackgroundServer

    stack = contextlib.ExitStack()

    def start(what, /, **config):
        app = create_app(what, ServeConfig.build(**config))
        srv = stack.enter_context(BackgroundServer(app))
        client = stack.enter_context(httpx.Client(base_url=srv.url, timeout=30.0))
        return srv, client, app

    with stack:
        yield start
