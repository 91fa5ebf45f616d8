"""Every table renders readably at COLUMNS=80: no line wider, no word split or cut, the key columns present.

The reports are the real ones of the tiny run/bundle, with a few longer names added (TensorRT artifacts,
long species names) so the narrow layout is actually exercised.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from edgeft.cli import console
from edgeft.cli.check import render_parity
from edgeft.cli.export import render_export
from edgeft.cli.serve import render_bench
from edgeft.cli.train import render_eval
from edgeft.core.manifests import BundleManifest
from edgeft.core.reports import ExportReport, MetricsDoc

pytestmark = pytest.mark.slow

LONG_BACKEND = "onnxruntime:tensorrt/tensorrt-int8-nvidia-h200-trt10.13"


@pytest.fixture
def screen(monkeypatch):
    """The stdout console as an 80-column terminal; returns a function giving what was printed."""
    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    monkeypatch.setattr(console, "_OUT", ("80", Console(file=buf, width=80, highlight=False)))
    return buf.getvalue


def assert_readable(text: str, words: list[str], headers: list[str]) -> None:
    table = [line for line in text.splitlines() if line.startswith(" ")]  # rows; notes below start at column 0
    assert len(table) >= 3, text
    assert max(len(line) for line in table) <= 80, text
    assert "…" not in text, "nothing is cut with an ellipsis"
    tokens = set(re.split(r"\s+", text))
    for word in words:
        head, sep, tail = word.partition("/")
        stacked = bool(sep) and f"{head}/" in tokens and tail in tokens  # a name broken after its '/'
        assert word in tokens or stacked, f"{word!r} is not printed whole:\n{text}"
    for header in headers:
        assert re.search(rf"(^|\s){re.escape(header)}(\s|$)", text, re.M), f"column {header!r} missing:\n{text}"


def test_export_table_at_80_columns(tiny_bundle, screen):
    from edgeft.export.bundle import ExportResult

    report = ExportReport.load(tiny_bundle / "export_report.json")
    extra = report.rows[-1].model_copy(update={"artifact": "tensorrt-int8-nvidia-h200-trt10.13"})
    report = report.model_copy(update={"rows": [*report.rows, extra]})
    render_export(ExportResult(tiny_bundle, BundleManifest.load(tiny_bundle), report))
    words = [r.artifact for r in report.rows] + ["pass", "ref"]
    assert_readable(screen(), words, ["artifact", "MB", "acc%", "agree%", "gate"])


def test_parity_table_at_80_columns(tiny_bundle, tmp_path, screen):
    from edgeft.check.parity import run_parity

    report = run_parity(tiny_bundle, out=tmp_path, backends=["onnx-fp32", "openvino-fp16"])
    first = next(iter(report.backends.values()))
    report.backends[LONG_BACKEND] = first
    render_parity(report)
    assert_readable(screen(), [*report.backends, "pass"], ["backend/artifact", "gate", "agree", "Δacc", "max|Δ|"])


def test_bench_table_at_80_columns(tiny_bundle, tmp_path, screen):
    from edgeft.serve.bench import BenchSettings, run_bench

    settings = BenchSettings(batches=[1, 8], backends=["onnx-fp32"], seconds=0.05, warmup=1, rounds=1, n_images=8)
    report = run_bench(tiny_bundle, settings, tmp_path / "bench.json")
    long = report.results[0].model_copy(update={"backend": "onnxruntime:tensorrt", "artifact": "tensorrt-int8-h200"})
    report.results.append(long)
    render_bench(report, tmp_path / "bench.json")
    parts = [f"{r.backend}/{r.artifact}" for r in report.results]
    values = [f"{r.engine.throughput:.0f}" for r in report.results] + [f"{r.model_mb:.1f}" for r in report.results]
    assert_readable(screen(), parts + values, ["backend/artifact", "gate", "batch", "img/s", "MB"])


def test_eval_table_at_80_columns(tiny_run, screen):
    metrics = MetricsDoc.load(tiny_run).test
    per_class = dict(metrics.per_class)
    per_class["Striped Red Mullet of the Aegean Sea"] = next(iter(per_class.values()))
    render_eval(metrics.model_copy(update={"per_class": per_class}))
    text = screen()
    assert_readable(text, [w for name in per_class for w in name.split()], ["class", "n", "recall", "F1"])
    assert "Striped Red Mullet of the Aegean Sea" in text, "a class name stays on one line"


def test_narrow_tables_drop_low_priority_columns_before_splitting_words():
    cols = (console.Col("name", "left", split="/"), console.Col("keep"), console.Col("extra", drop=1))
    rows = [["backend-with-a-long-name/artifact-with-a-long-name", "12345", "67890"]]
    wide = console.fitted_table("t", cols, rows, width=200)
    narrow = console.fitted_table("t", cols, rows, width=40)
    assert [c.header for c in wide.columns] == ["name", "keep", "extra"]
    assert [c.header for c in narrow.columns] == ["name", "keep"]
    buf = io.StringIO()
    Console(file=buf, width=40).print(narrow)
    assert "backend-with-a-long-name/" in buf.getvalue() and "artifact-with-a-long-name" in buf.getvalue()


@pytest.mark.parametrize("group", [[], ["train"], ["data"]])
def test_command_lists_fit_80_columns_uncut(group, monkeypatch):
    from typer.testing import CliRunner

    from edgeft.cli.app import app

    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, [*group, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:")[1].splitlines()[1:]
    assert len([c for c in commands if c.strip()]) >= 2, result.output
    for line in commands:
        assert len(line) <= 80 and not line.rstrip().endswith("..."), line
