"""`build_bundle`: run dir -> bundle dir, built in a temp dir next to the output and renamed into place at the end.

Every input problem is found before any heavy work; a failed export leaves the previous bundle (if any)
untouched and no half-written one. Artifacts that miss parity or lose more than max_drop points of test
accuracy are moved to rejected/ and left out of bundle.json, so the runtime can never pick them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edgeft import __version__
from edgeft.errors import EdgeftError
from edgeft.export.context import Built, EvalSet, ExportContext, ExportOptions, load_eval_set
from edgeft.export.errors import ExportRefusedError
from edgeft.export.evaluate import Row, evaluate, reference_row, run_batches
from edgeft.manifest import BundleManifest, ModelManifest, sha256_file, write_json_atomic

REPORT_FILE = "export_report.json"
ARTIFACT_ORDER = (
    "onnx-fp32",
    "onnx-int8",
    "onnx-int8-cpu",
    "openvino-fp32",
    "openvino-fp16",
    "openvino-int8",
    "openvino-int8-qdq",
    "tensorrt-int8",
    "tensorrt-fp16",
)


@dataclass
class ExportResult:
    """What `build_bundle` produced: rows[0] is the PyTorch reference; `failed` names rejected artifacts."""

    bundle_dir: Path
    rows: list[Row]
    failed: list[str]
    notes: list[str] = field(default_factory=list)
    calibration: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def row(self, artifact: str) -> Row:
        return next(r for r in self.rows if r.artifact == artifact)


def _versions() -> dict:
    out = {"edgeft": __version__}
    for pkg in ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _check_run(run_dir: Path) -> tuple[ModelManifest, dict, str]:
    """Cheap checks first (manifest, weights file, splits.json), so bad input fails before any model is built."""
    from edgeft.data.splits import read_splits

    if not run_dir.is_dir():
        raise EdgeftError("run dir not found", path=run_dir, fix="pass a run dir written by `edgeft train`")
    if not (run_dir / "model.json").is_file():
        raise EdgeftError(
            "model.json is missing (not a run dir, or a half-written one)",
            path=run_dir / "model.json",
            fix="pass a run dir written by `edgeft train`, or re-run training",
        )
    manifest = ModelManifest.load(run_dir)
    weights = run_dir / manifest.weights.get("file", "model.safetensors")
    if not weights.is_file():
        raise EdgeftError("weights file is missing (half-written run?)", path=weights, fix="re-run `edgeft train`")
    splits = read_splits(run_dir)
    bad = sorted({str(it.get("label")) for it in splits["items"]} - set(manifest.classes))
    if bad:
        raise EdgeftError(
            f"splits.json has labels {bad} that model.json does not list",
            path=run_dir / "splits.json",
            fix="re-run `edgeft train`; splits.json and model.json come from different runs",
        )
    return manifest, splits, sha256_file(weights)


def _eval_split(splits: dict, manifest, notes: list[str]) -> EvalSet:
    for split in ("test", "val"):
        es = load_eval_set(splits, split, list(manifest.classes), manifest.preprocess_spec)
        if len(es.y):
            if split != "test":
                notes.append("the run has no test images: accuracy and parity are measured on the val split")
            return es
    raise EdgeftError(
        "the run has no test (or val) images to check the exported models on",
        fix="re-run `edgeft train` with a test split",
    )


def _check_out(out: Path, run_dir: Path, weights_sha: str, force: bool) -> None:
    """Refuse to replace anything but this model's own bundle unless --force; never the run dir itself."""
    if out == run_dir or run_dir.is_relative_to(out):
        raise ExportRefusedError(
            "the output dir would contain the run dir, which the export replaces",
            path=out,
            fix="pass --out to a new directory (the default is RUN/bundle)",
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportRefusedError("the output path exists and is not a directory", path=out, fix="pick another --out")
    if not any(out.iterdir()) or force:
        return
    try:
        old = BundleManifest.load(out)
    except EdgeftError:
        raise ExportRefusedError(
            "the output dir is not empty and holds no readable bundle.json",
            path=out,
            fix="pick an empty or new --out, or pass --force to replace its contents",
        ) from None
    old_sha = old.source.get("weights_sha256")
    if old_sha != weights_sha:
        raise ExportRefusedError(
            f"the output dir holds the bundle of another model (weights {str(old_sha)[:12]}..., "
            f"this run {weights_sha[:12]}...)",
            path=out / "bundle.json",
            fix="pick another --out, or pass --force to replace it",
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(tmp: Path, out: Path) -> None:
    """Swap the finished temp dir into place; the old bundle is removed only after the new one is in."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return run_batches(lambda b: model(torch.from_numpy(b)).float().numpy(), x)


def _reject(ctx: ExportContext, built: Built) -> None:
    """Move a rejected artifact's files to rejected/ so it cannot be served but can still be inspected."""
    for rel in built.files():
        src, dst = ctx.work / rel, ctx.work / "rejected" / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)


def _build_engines(ctx: ExportContext, engines, failed: dict[str, str]) -> None:
    for fmt in engines:
        try:
            fmt.build(ctx)
        except EdgeftError as exc:
            if fmt.always:
                raise
            failed[fmt.name] = exc.message
            ctx.note(f"{fmt.name}: build failed ({exc.message})")


def _evaluate_all(ctx: ExportContext, runners: dict, failed: dict[str, str]) -> list[Row]:
    rows = []
    for built in sorted(ctx.built, key=lambda b: ARTIFACT_ORDER.index(b.name) if b.name in ARTIFACT_ORDER else 99):
        ctx.step(f"evaluate {built.name} on {len(ctx.test.y)} {ctx.test.split} images")
        try:
            row = evaluate(ctx, built, None if built.name in ctx.logits else runners[built.format](ctx, built))
        except EdgeftError as exc:
            nan = float("nan")
            size = built.size_bytes(ctx.work) / 1e6
            row = Row(built.name, built.format, built.precision, built.path, size, nan, nan, nan, nan, "rejected")
            row.reason = f"cannot run: {exc.message}"
        rows.append(row)
        if row.status == "rejected":
            failed[built.name] = row.reason
            _reject(ctx, built)
        else:
            ctx.accepted.append(built)
    return rows


def build_bundle(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    int8: bool = True,
    fp16: bool = True,
    formats: list[str] | None = None,
    calib_size: int = 300,
    calib_method: str = "minmax",
    max_drop: float = 1.0,
    accuracy_control: bool = False,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a run dir to a deployable bundle (ONNX always; OpenVINO/TensorRT/Triton as asked or available).

    `progress` receives one short line per step. Returns the table rows; `failed` lists artifacts that were
    rejected (parity, accuracy drop > max_drop, or a failed optional engine), which callers should treat as an error.
    """
    from edgeft.calibration import METHODS
    from edgeft.export.onnx_export import metadata
    from edgeft.export.registry import resolve
    from edgeft.train.model import load_run

    run_dir = Path(run_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve() if out is not None else run_dir / "bundle"
    if calib_method not in METHODS:
        raise EdgeftError(f"unknown --calib-method {calib_method!r}", fix=f"use one of {list(METHODS)}")
    if calib_size < 1 or not max_drop >= 0:
        raise EdgeftError("--calib-size must be >= 1 and --max-drop >= 0", fix="fix the option values")
    notes: list[str] = []
    step = progress or (lambda _msg: None)
    step("checking the run dir")
    manifest, splits, weights_sha = _check_run(run_dir)
    if int8 and not any(it["split"] == "calib" for it in splits["items"]):
        raise EdgeftError(
            "the run's calib split is empty: there is nothing to calibrate INT8 with",
            path=run_dir / "splits.json",
            fix="re-run `edgeft train` with a calib fraction > 0, or export with --no-int8",
        )
    _check_out(out, run_dir, weights_sha, force)
    engines_and_packages = resolve(formats, notes.append)
    step("loading the model")
    model, manifest = load_run(run_dir)  # verifies the weights' sha256 and the class count
    step("loading test images and the PyTorch reference")
    test = _eval_split(splits, manifest, notes)
    test.reference = _torch_logits(model, test.x)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle is meant to be shared
    try:
        ctx = ExportContext(
            run_dir=run_dir,
            work=work,
            manifest=manifest,
            model=model,
            weights_sha256=weights_sha,
            splits=splits,
            options=ExportOptions(int8, fp16, calib_size, calib_method, max_drop, accuracy_control),
            test=test,
            step=step,
            metadata=metadata(manifest.name, list(manifest.classes), manifest.preprocess, weights_sha),
            notes=notes,
        )
        failed: dict[str, str] = {}
        _build_engines(ctx, [f for f in engines_and_packages if f.stage == "engine"], failed)
        runners = {f.name: f.runner for f in engines_and_packages if f.runner is not None}
        rows = [reference_row(ctx, (run_dir / manifest.weights.get("file", "model.safetensors")).stat().st_size)]
        rows += _evaluate_all(ctx, runners, failed)
        _build_engines(ctx, [f for f in engines_and_packages if f.stage == "package"], failed)
        _write_manifest(ctx, out, rows, failed)
        step("moving the bundle into place")
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    cal = ctx.calibration.doc if ctx.calibration is not None else None
    return ExportResult(out, rows, list(failed), notes, cal)


def _write_manifest(ctx: ExportContext, out: Path, rows: list[Row], failed: dict[str, str]) -> BundleManifest:
    """bundle.json (accepted artifacts only) and export_report.json (every row, rejected ones included)."""
    order = {n: i for i, n in enumerate(ARTIFACT_ORDER)}
    accepted = sorted(ctx.accepted, key=lambda b: order.get(b.name, 99))
    s, manifest = ctx.spec.input_size, ctx.manifest
    bundle = BundleManifest(
        name=manifest.name,
        classes=list(manifest.classes),
        preprocess=manifest.preprocess,
        artifacts=[asdict(b.to_artifact(ctx.work)) for b in accepted],
        input={"name": "input", "shape": [-1, 3, s, s], "dtype": "float32"},
        output={"name": "logits", "shape": [-1, len(manifest.classes)], "dtype": "float32"},
        source={
            "run_dir": str(ctx.run_dir),
            "weights_sha256": ctx.weights_sha256,
            "model_json_sha256": sha256_file(ctx.run_dir / "model.json"),
            "backbone": manifest.backbone.get("id"),
        },
        reference="onnx-fp32",
        versions=_versions(),
    )
    bundle.save(ctx.work)
    report = {
        "bundle_dir": str(out),
        "run_dir": str(ctx.run_dir),
        "eval_split": ctx.test.split,
        "eval_images": int(len(ctx.test.y)),
        "options": asdict(ctx.options),
        "rows": [r.to_dict() for r in rows],
        "failed": failed,
        "notes": ctx.notes,
        "packages": ctx.packages,
        "artifact_info": {b.name: b.info for b in ctx.built},
        "calibration": None
        if ctx.calibration is None
        else {k: ctx.calibration.doc[k] for k in ("method", "count", "per_class", "cache_key", "notes")},
    }
    write_json_atomic(ctx.work / REPORT_FILE, report)
    return bundle
