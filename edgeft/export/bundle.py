"""`build_bundle`: run dir -> bundle dir, built in a hidden sibling (`core.files.staged_dir`) and swapped in at the end.

Every input problem is found before any heavy work; a failed export leaves the previous bundle (if any)
untouched and no half-written one. Every artifact is run through `edgeft.engines` and judged by THE gate
against the run's torch model; one that fails moves to rejected/ and stays out of bundle.json, so the runtime
can never pick it. A FP32 ONNX that does not reproduce torch fails the whole export.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeft import __version__
from edgeft.check.gate import Gate
from edgeft.check.refcache import load_reference, reference_key, save_reference
from edgeft.core.errors import EdgeftError
from edgeft.core.files import staged_dir
from edgeft.core.hashing import classes_sha256, sha256_file
from edgeft.core.manifests import (
    BundleManifest,
    BundleSource,
    CalibrationDoc,
    ModelManifest,
    SplitsDoc,
    TensorSpec,
)
from edgeft.core.progress import Reporter, or_silent
from edgeft.core.reports import ExportReport, ExportRow
from edgeft.core.versions import package_version
from edgeft.data.evalsets import from_splits
from edgeft.engines.base import Engine
from edgeft.engines.torch import TorchEngine
from edgeft.export.calibration import METHODS
from edgeft.export.context import Built, ExportContext, ExportOptions, Judging
from edgeft.export.errors import ExportParityError, ExportRefusedError
from edgeft.export.evaluate import EVAL_BATCH, judge, reference_row
from edgeft.export.onnx_int8 import FP32_FILE
from edgeft.export.registry import ExportFormat, resolve
from edgeft.models.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx, metadata

REPORT_FILE = "export_report.json"
REJECTED_DIR = "rejected"
# what export, parity and bench write at a bundle's top level; anything else in a bundle is the user's
BUNDLE_ENTRIES = re.compile(
    r"(bundle|export_report|calibration|bench|tradeoff|parity(\.fast)?)\.json"
    r"|(accuracy_latency|tradeoff|parity_flips(\.fast)?)\.png"
    r"|model(\.[\w-]+)*\.onnx|openvino|tensorrt|triton|rejected"
)
ARTIFACT_ORDER = (
    "onnx-fp32",
    "onnx-int8",
    "onnx-int8-cpu",
    "openvino-fp32",
    "openvino-fp16",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8-qdq",
    "tensorrt-int8",
    "tensorrt-fp16",
)


@dataclass
class ExportResult:
    """What `build_bundle` produced: the written bundle.json and export_report.json, as typed documents."""

    bundle_dir: Path
    bundle: BundleManifest
    report: ExportReport
    calibration: CalibrationDoc | None = None

    @property
    def rows(self) -> list[ExportRow]:
        """rows[0] is the torch reference; then every artifact built, accepted or rejected."""
        return self.report.rows

    @property
    def failed(self) -> dict[str, str]:
        """Rejected artifacts and formats that failed to build, with the reason."""
        return self.report.failed

    @property
    def notes(self) -> list[str]:
        return self.report.notes

    @property
    def ok(self) -> bool:
        return not self.failed

    def row(self, artifact: str) -> ExportRow:
        return next(r for r in self.rows if r.artifact == artifact)


def _versions() -> dict[str, str]:
    out = {"edgeft": __version__}
    for pkg in ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt"):
        if v := package_version(pkg):
            out[pkg] = v
    return out


def _check_options(o: ExportOptions) -> None:
    if o.calib_method not in METHODS:
        raise EdgeftError(f"unknown --calib-method {o.calib_method!r}", fix=f"use one of {list(METHODS)}")
    if o.calib_size < 1 or not o.max_drop >= 0:
        raise EdgeftError("--calib-size must be >= 1 and --max-drop >= 0", fix="fix the option values")


def _check_run(run_dir: Path, int8: bool) -> tuple[ModelManifest, SplitsDoc, str]:
    """Cheap checks first (manifest, weights file, splits.json), so bad input fails before any model is built."""
    if not run_dir.is_dir():
        raise EdgeftError("run dir not found", path=run_dir, fix="pass a run dir written by `edgeft train`")
    if not (run_dir / "model.json").is_file():
        raise EdgeftError(
            "model.json is missing (not a run dir, or a half-written one)",
            path=run_dir / "model.json",
            fix="pass a run dir written by `edgeft train`, or re-run training",
        )
    manifest = ModelManifest.load(run_dir)
    weights = run_dir / manifest.weights.file
    if not weights.is_file():
        raise EdgeftError("weights file is missing (half-written run?)", path=weights, fix="re-run `edgeft train`")
    splits = SplitsDoc.load(run_dir)
    if sorted(splits.classes) == sorted(manifest.classes) and list(splits.classes) != list(manifest.classes):
        raise EdgeftError(
            f"model.json lists the classes as {manifest.classes} but the run's splits.json (the order the head was "
            f"trained with) as {splits.classes}: every label would be wrong",
            path=run_dir / "model.json",
            fix="restore model.json from the run (never edit its classes), or re-run `edgeft train`",
        )
    bad = sorted({it.label for it in splits.items} - set(manifest.classes))
    if bad:
        raise EdgeftError(
            f"splits.json has labels {bad} that model.json does not list",
            path=run_dir / "splits.json",
            fix="re-run `edgeft train`; splits.json and model.json come from different runs",
        )
    if int8 and not splits.of("calib"):
        raise EdgeftError(
            "the run's calib split is empty: there is nothing to calibrate INT8 with",
            path=run_dir / "splits.json",
            fix="re-run `edgeft train` with a calib fraction > 0, or export with --no-int8",
        )
    return manifest, splits, sha256_file(weights)


def check_out(out: Path, run_dir: Path, weights_sha: str, force: bool) -> None:
    """Replace only this model's own bundle, or with --force another model's edgeft bundle; never anything else.

    A directory that holds anything but an edgeft bundle (a dataset, a run, someone's files) is refused even
    with --force, so an export can never delete what it did not write.
    """
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
    if not any(out.iterdir()):
        return
    try:
        old = BundleManifest.load(out)
    except EdgeftError:
        raise ExportRefusedError(
            "the output dir is not empty and is not a bundle (no readable bundle.json); export replaces "
            "only bundles, even with --force",
            path=out,
            fix="pick an empty or new --out, or move its contents away yourself",
        ) from None
    foreign = sorted(p.name for p in out.iterdir() if not BUNDLE_ENTRIES.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ExportRefusedError(
            f"the output bundle also holds files edgeft did not write ({shown}); export rebuilds the whole folder "
            "and would delete them, even with --force",
            path=out,
            fix="move them out of the bundle, or pick another --out",
        )
    old_sha = old.source.weights_sha256
    if old_sha != weights_sha and not force:
        raise ExportRefusedError(
            f"the output dir holds the bundle of another model (weights {old_sha[:12]}..., this run {weights_sha[:12]}...)",
            path=out / "bundle.json",
            fix="pick another --out, or pass --force to replace that bundle",
        )


def _judging(
    run_dir: Path,
    manifest: ModelManifest,
    splits: SplitsDoc,
    reference: Engine,
    gate: Gate,
    note: Callable[[str], None],
    rep: Reporter,
    weights_sha: str,
) -> Judging:
    """The test split (val when the run has no test images), preprocessed once, and torch's logits on it."""
    classes = list(manifest.classes)
    for split in ("test", "val"):
        evalset = from_splits(splits, split, classes, f"{split} split of {run_dir / 'splits.json'}")
        if len(evalset):
            break
    else:
        raise EdgeftError(
            "the run has no test (or val) images to check the exported models on",
            path=run_dir / "splits.json",
            fix="re-run `edgeft train` with a test split",
        )
    if split != "test":
        note("the run has no test images: accuracy and agreement are measured on the val split")
    rep.task(f"preprocess the {split} images", len(evalset))
    x, kept = evalset.load(manifest.preprocess, rep.advance)
    if not len(kept):
        raise EdgeftError(
            f"none of the {len(evalset)} {split} images could be read (e.g. {kept.skipped[0]['source']})",
            path=run_dir / "splits.json",
            fix="restore the dataset at the path recorded in splits.json (its 'root')",
        )
    if kept.skipped:
        note(f"{len(kept.skipped)} {split} image(s) could not be read and are left out of the gate")
    images = kept.shas  # hashed from the bytes load decoded, for the reference key and every artifact's key
    key = reference_key(weights_sha, manifest.preprocess, images, "torch-fp32")
    logits = load_reference(key, len(kept), len(classes))
    if logits is None:  # computed once; `edgeft parity` and later exports of this run reuse it
        rep.task(f"PyTorch reference on {len(kept)} {split} images", len(kept))
        logits = reference.run(x, EVAL_BATCH, rep.advance)
        save_reference(key, logits)
    return Judging(split, kept, x, kept.label_indices(classes), logits, gate, images)


def _metadata(manifest: ModelManifest, weights_sha: str) -> dict[str, str]:
    classes = list(manifest.classes)
    return metadata(manifest.name, classes, manifest.preprocess.to_dict(), weights_sha, classes_sha256(classes))


def _export_fp32(ctx: ExportContext) -> ExportRow:
    """THE exporter writes model.onnx; the gate then judges it against torch on every judging image."""
    ctx.step("ONNX FP32 export")
    try:
        info = export_onnx(ctx.model, ctx.spec.input_size, ctx.work / FP32_FILE, ctx.metadata)
    except EdgeftError as exc:
        raise ExportParityError(
            f"the FP32 ONNX export of this run failed: {exc.message}", path=ctx.run_dir, fix=exc.fix
        ) from None
    row = judge(ctx, ctx.add(Built("onnx-fp32", "onnx", "fp32", FP32_FILE, info=info)))
    if row.status != "ok":
        raise ExportParityError(
            f"the FP32 ONNX disagrees with PyTorch on the {ctx.judging.split} images: {row.reason}",
            path=ctx.run_dir,
            fix="report this with the run dir; no bundle was written",
        )
    return row


def _build_formats(ctx: ExportContext, formats: list[ExportFormat], failed: dict[str, str]) -> None:
    """Build each format; an optional one that fails is recorded, not fatal."""
    for fmt in formats:
        try:
            fmt.build(ctx)
        except Exception as exc:  # an optional engine's converter can raise anything; the others still ship
            if fmt.always:
                raise
            why = exc.message if isinstance(exc, EdgeftError) else f"{type(exc).__name__}: {exc}"
            failed[fmt.name] = f"build failed: {why}"
            ctx.note(f"{fmt.name}: build failed ({why})")


def _reject(ctx: ExportContext, built: Built) -> None:
    """Move a rejected artifact's files to rejected/ so it cannot be served but can still be inspected."""
    for rel in built.files():
        src, dst = ctx.work / rel, ctx.work / REJECTED_DIR / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)


def _order(built: Built) -> int:
    return ARTIFACT_ORDER.index(built.name) if built.name in ARTIFACT_ORDER else len(ARTIFACT_ORDER)


def _judge_all(ctx: ExportContext, rows: dict[str, ExportRow], failed: dict[str, str]) -> None:
    """Judge every artifact not judged yet; accepted ones go to ctx.accepted, rejected ones to rejected/."""
    for built in sorted(ctx.built, key=_order):
        row = rows.get(built.name) or judge(ctx, built)
        rows[built.name] = row
        if row.status == "rejected":
            failed[built.name] = row.reason
            _reject(ctx, built)
        else:
            ctx.accepted.append(built)


def _bundle_manifest(ctx: ExportContext, rows: dict[str, ExportRow], failed: dict[str, str]) -> BundleManifest:
    """bundle.json: the accepted artifacts only, each with the gate record it passed."""
    m, s = ctx.manifest, ctx.spec.input_size
    return BundleManifest(
        name=m.name,
        classes=ctx.classes,
        preprocess=m.preprocess,
        calibration=m.calibration,
        artifacts=[b.to_artifact(ctx.work, rows[b.name].gate) for b in ctx.accepted],
        input=TensorSpec(name=INPUT_NAME, shape=[-1, 3, s, s]),
        output=TensorSpec(name=OUTPUT_NAME, shape=[-1, len(ctx.classes)]),
        source=BundleSource(
            run_dir=str(ctx.run_dir),
            weights_sha256=ctx.weights_sha256,
            model_json_sha256=sha256_file(ctx.run_dir / "model.json"),
            backbone=m.backbone.id,
        ),
        reference="onnx-fp32",
        versions=_versions(),
        gate=ctx.judging.gate.settings(),
        rejected=dict(failed),
    )


def _report(ctx: ExportContext, out: Path, rows: list[ExportRow], failed: dict[str, str]) -> ExportReport:
    """export_report.json: every row (rejected ones included), the gate settings, notes and calibration summary."""
    cal = ctx.calibration.doc if ctx.calibration is not None else None
    return ExportReport(
        bundle_dir=str(out),
        run_dir=str(ctx.run_dir),
        eval_split=ctx.judging.split,
        eval_images=len(ctx.judging.x),
        options=asdict(ctx.options),
        gate=ctx.judging.gate.settings(),
        rows=rows,
        failed=failed,
        notes=ctx.notes,
        packages=ctx.packages,
        artifact_info={b.name: b.info for b in sorted(ctx.built, key=_order)},
        calibration=None
        if cal is None
        else cal.model_dump(mode="json", include={"method", "count", "per_class", "cache_key", "notes"}),
    )


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
    min_agreement: float = 0.99,
    min_n: int | None = None,
    reporter: Reporter | None = None,
) -> ExportResult:
    """Export a run dir to a deployable bundle (ONNX always; OpenVINO/TensorRT/Triton as asked or available).

    Rejected artifacts are listed in `result.failed`; the bundle is still written (callers decide: the CLI
    exits 1). Bad input raises EdgeftError before anything is written.
    """
    options = ExportOptions(
        int8=int8,
        fp16=fp16,
        formats=tuple(formats) if formats is not None else None,
        calib_size=calib_size,
        calib_method=calib_method,
        max_drop=max_drop,
        accuracy_control=accuracy_control,
        force=force,
        min_agreement=min_agreement,
        min_n=min_n,
    )
    return run_export(run_dir, out, options, reporter)


def run_export(
    run_dir: str | Path, out: str | Path | None, options: ExportOptions, reporter: Reporter | None = None
) -> ExportResult:
    """`build_bundle` with its options as one object."""
    rep = or_silent(reporter)
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        rep.note(line)

    run_dir = Path(run_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve() if out is not None else run_dir / "bundle"
    _check_options(options)
    rep.task("checking the run dir")
    manifest, splits, weights_sha = _check_run(run_dir, options.int8)
    check_out(out, run_dir, weights_sha, options.force)
    chosen = resolve(options.formats, note)
    rep.task("loading the model")
    s = manifest.preprocess.input_size
    with TorchEngine(run_dir, input_shape=(3, s, s), num_outputs=len(manifest.classes), label="torch-fp32") as ref:
        # the gate `edgeft parity` will apply too: bundle.json records these settings
        gate = Gate(max_drop=options.max_drop, min_agreement=options.min_agreement, min_n=options.min_n)
        judging = _judging(run_dir, manifest, splits, ref, gate, note, rep, weights_sha)
        with staged_dir(out) as work:
            ctx = ExportContext(
                run_dir=run_dir,
                work=work,
                manifest=manifest,
                model=ref.model,
                weights_sha256=weights_sha,
                splits=splits,
                options=options,
                judging=judging,
                reporter=reporter,
                metadata=_metadata(manifest, weights_sha),
                notes=notes,
            )
            rows = {"onnx-fp32": _export_fp32(ctx)}
            failed: dict[str, str] = {}
            _build_formats(ctx, [f for f in chosen if f.stage == "engine"], failed)
            _judge_all(ctx, rows, failed)
            _build_formats(ctx, [f for f in chosen if f.stage == "package"], failed)
            bundle = _bundle_manifest(ctx, rows, failed)
            bundle.save(work)
            ordered = [reference_row(ctx, run_dir / manifest.weights.file)]
            ordered += [rows[b.name] for b in sorted(ctx.built, key=_order)]
            report = _report(ctx, out, ordered, failed)
            report.write(work / REPORT_FILE)
            rep.task("moving the bundle into place")
    cal = ctx.calibration.doc if ctx.calibration is not None else None
    return ExportResult(out, bundle, report, cal)
