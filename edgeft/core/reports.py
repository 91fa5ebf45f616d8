"""Typed reports edgeft writes and reads back: comparisons, parity.json, bench.json, metrics.json, export_report.json.

The comparator (edgeft.check) produces `Comparison`; the gate turns it into the `GateRecord` that bundle.json,
parity.json, bench.json and the online monitor all carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgeft.core.manifests import Doc, GateRecord, GateSettings


class Flip(Doc):
    """One image whose top-1 differs between reference and candidate."""

    source: str
    label: str | None = None
    reference: str
    candidate: str
    reference_prob: float
    candidate_prob: float
    reference_margin: float  # reference top-1 minus top-2 probability: small = a borderline image


class Comparison(Doc):
    """Candidate logits against reference logits on the same images (THE comparator's output)."""

    n: int
    agreement: float
    agreement_low: float
    agreement_high: float
    confidence: float = 0.95
    top5_overlap: float
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    cosine: float
    accuracy: float | None = None
    reference_accuracy: float | None = None
    delta_accuracy_pts: float | None = None
    n_flipped: int
    flip_matrix: dict[str, dict[str, int]] = Field(default_factory=dict)
    flipped: list[Flip] = Field(default_factory=list)


class BackendResult(Doc):
    """One backend x artifact in parity.json."""

    backend: str
    artifact: str
    precision: str
    describe: str = ""
    cached: bool = False  # its logits came from the cache (export or an earlier parity ran the same evaluation)
    comparison: Comparison | None = None
    gate: GateRecord
    error: str | None = None


def parity_file(fast: bool = False) -> str:
    """parity.json, or parity.fast.json for `parity --fast-preprocess` (both live in the bundle dir side by side;
    serve --fast-preprocess reads the second)."""
    return "parity.fast.json" if fast else "parity.json"


class ParityReport(Doc):
    """parity.json: every runnable backend of a bundle against the reference model."""

    bundle_dir: str
    run_dir: str | None
    reference: str
    reference_note: str
    data: str
    n_images: int
    preprocess: str = "reference"  # "fast": the backends got serving's --fast-preprocess inputs
    bundle_sha256: str | None = None  # of the bundle.json judged: a verdict is not carried to another bundle
    gate: GateSettings
    backends: dict[str, BackendResult]
    skipped_backends: dict[str, str] = Field(default_factory=dict)
    skipped_images: list[dict[str, str]] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    passed: bool = False

    def failures(self) -> list[str]:
        """Every reason the gate failed: bundle-level checks first, then per backend."""
        out = list(self.checks)
        for name, b in self.backends.items():
            out += [f"{name}: {r}" for r in b.gate.reasons if not b.gate.passed]
        return out

    @classmethod
    def load(cls, path: str | Path) -> ParityReport:
        return cls.read(path, "parity.json", "re-run `edgeft parity`")


class Timing(Doc):
    """Throughput (images/s) and per-batch latency percentiles (ms) of one measured loop."""

    throughput: float
    p50_ms: float
    p99_ms: float
    iterations: int
    seconds: float


class BenchResult(Doc):
    """One backend x artifact x batch size in bench.json."""

    backend: str
    artifact: str
    precision: str
    describe: str
    batch: int
    options: dict[str, Any] = Field(default_factory=dict)
    image_input: bool = False  # the engine took uint8 images and normalised them in its graph
    engine: Timing
    e2e: dict[str, float]
    e2e_request: Timing
    pipeline_overhead: float
    model_mb: float
    load_seconds: float
    rss_mb_before_load: float | None = None
    rss_mb_after_load: float | None = None
    rss_mb_after_run: float | None = None
    rss_delta_load_mb: float | None = None
    peak_rss_mb_process: float
    gate: GateRecord | None = None


class BenchReport(Doc):
    """bench.json."""

    bundle_dir: str
    images: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    preprocess_cpu_ms_per_image: float = 0.0
    # --fast-preprocess: the same, up to the uint8 image an image-input engine (OpenVINO) takes; None otherwise
    image_preprocess_cpu_ms_per_image: float | None = None
    results: list[BenchResult] = Field(default_factory=list)
    skipped_backends: dict[str, str] = Field(default_factory=dict)
    failed_backends: dict[str, str] = Field(default_factory=dict)

    def best(self, batch: int, precision: str | None = None) -> BenchResult | None:
        """The fastest engine throughput at a batch size (optionally of one precision)."""
        rows = [r for r in self.results if r.batch == batch and (precision is None or r.precision == precision)]
        return max(rows, key=lambda r: r.engine.throughput, default=None)

    @classmethod
    def load(cls, path: str | Path) -> BenchReport:
        return cls.read(path, "bench.json", "re-run `edgeft bench`")


class ExportRow(Doc):
    """One line of the export table (and of export_report.json)."""

    artifact: str
    format: str
    precision: str
    path: str
    size_mb: float
    status: str  # reference | ok | rejected
    reason: str = ""
    comparison: Comparison | None = None
    gate: GateRecord | None = None

    @property
    def accuracy(self) -> float | None:
        return None if self.comparison is None else self.comparison.accuracy

    @property
    def agreement(self) -> float | None:
        return None if self.comparison is None else self.comparison.agreement


class ExportReport(Doc):
    """export_report.json: every artifact built, kept or rejected, and why."""

    bundle_dir: str
    run_dir: str
    eval_split: str
    eval_images: int
    options: dict[str, Any]
    gate: GateSettings
    rows: list[ExportRow]
    failed: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    packages: dict[str, list[str]] = Field(default_factory=dict)
    artifact_info: dict[str, dict[str, Any]] = Field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path) -> ExportReport:
        return cls.read(path, "export_report.json", "re-run `edgeft export`")


class SplitMetrics(Doc):
    """Classification metrics of one split."""

    n: int
    accuracy: float | None
    precision_macro: float
    recall_macro: float
    f1_macro: float
    f1_weighted: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]


class MetricsDoc(Doc):
    """metrics.json of a run dir."""

    test: SplitMetrics
    val: SplitMetrics | None = None
    phases: dict[str, Any] = Field(default_factory=dict)
    synthetic_data: bool = False
    images_per_role: dict[str, int] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    head_selection: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> MetricsDoc:
        return cls.read(Path(run_dir) / "metrics.json", "metrics.json", "re-run `edgeft train`")

    def save(self, run_dir: str | Path) -> Path:
        return self.write(Path(run_dir) / "metrics.json")
