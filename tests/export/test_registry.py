"""Which formats an export builds: the asked ones that this machine can build, and the ONNX INT8 step always."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeft.core.errors import EdgeftError
from edgeft.export.registry import FORMATS, resolve


def test_unknown_format_is_an_error_naming_the_known_ones():
    with pytest.raises(EdgeftError, match="unknown format") as err:
        resolve(["onnx", "coreml"], print)
    assert "coreml" in err.value.message and "triton" in err.value.message


def test_onnx_is_always_built_and_skips_say_why(monkeypatch):
    lines: list[str] = []
    assert [f.name for f in resolve(["triton"], lines.append)] == ["onnx", "triton"]
    assert lines == []
    blocked = tuple(replace(f, unavailable=lambda: "no openvino here") if f.name == "openvino" else f for f in FORMATS)
    monkeypatch.setattr("edgeft.export.registry.FORMATS", blocked)
    chosen = [f.name for f in resolve(None, lines.append)]
    assert "openvino" not in chosen and "onnx" in chosen
    assert "openvino: skipped (no openvino here)" in lines
