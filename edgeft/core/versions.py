"""Installed package versions, read from package metadata without importing the package."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version(distribution: str) -> str:
    """The installed version of a distribution (e.g. "onnxruntime"), or "" when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return ""
