"""`build_bundle` end to end on the tiny run: what the bundle holds, and the gate's records, checked independently."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgeft.check.comparator import compare
from edgeft.check.gate import Gate
from edgeft.core.errors import EdgeftError
from edgeft.core.files import cache_root
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import BundleManifest, CalibrationDoc, ModelManifest, SplitsDoc
from edgeft.core.reports import ExportReport, GateSettings
from edgeft.data.evalsets import from_splits
from edgeft.engines.onnxruntime import OnnxRuntimeEngine
from edgeft.engines.openvino import OpenVinoEngine
from edgeft.export import build_bundle, check_qdq_for_tensorrt
from edgeft.export.errors import ExportParityError, ExportRefusedError
from edgeft.export.openvino_ir import computes_in

pytestmark = pytest.mark.slow

BUILT_HERE = {
    "onnx-fp32",
    "onnx-int8",
    "onnx-int8-cpu",
    "openvino-fp32",
    f"openvino-{'bf16' if computes_in() == 'bf16' else 'fp16'}",  # named for what this CPU computes
    "openvino-int8",
    "openvino-int8-qdq",
}


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> BundleManifest:
    return BundleManifest.load(tiny_bundle)


@pytest.fixture(scope="module")
def report(tiny_bundle) -> ExportReport:
    return ExportReport.load(tiny_bundle / "export_report.json")


@pytest.fixture(scope="module")
def reference(tiny_run) -> SimpleNamespace:
    """Test images, labels and plain torch logits, computed without any export code."""
    import torch

    from edgeft.models.classifier import load_run

    manifest, splits = ModelManifest.load(tiny_run), SplitsDoc.load(tiny_run)
    x, kept = from_splits(splits, "test", manifest.classes).load(manifest.preprocess)
    model, _ = load_run(tiny_run)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)).numpy()
    return SimpleNamespace(
        x=x, labels=kept.label_indices(manifest.classes), logits=logits, n=len(splits.of("test")), manifest=manifest
    )


def _artifact_file(bundle_dir: Path, rel: str) -> Path:
    """An artifact's file: in the bundle when accepted, under rejected/ when the gate refused it."""
    return bundle_dir / rel if (bundle_dir / rel).is_file() else bundle_dir / "rejected" / rel


def test_bundle_json_lists_every_artifact_with_sha256_and_a_gate_record(
    tiny_bundle, tiny_run, bundle, report, reference
):
    bundle.verify(tiny_bundle)
    names = {a.name for a in bundle.artifacts}
    assert names | set(report.failed) >= BUILT_HERE
    assert not names & set(report.failed)
    for art in bundle.artifacts:
        assert art.sha256 == sha256_file(tiny_bundle / art.path)
        assert all(sha256_file(tiny_bundle / f) == h for f, h in art.extra_files.items())
        if art.format == "openvino":
            assert list(art.extra_files) == [art.path.replace(".xml", ".bin")]
        assert art.gate is not None and art.gate.passed and art.gate.verdict == "pass"
        assert art.gate.n == reference.n and "test split" in art.gate.judged_on
    for name in report.failed:
        row = next(r for r in report.rows if r.artifact == name)
        assert (tiny_bundle / "rejected" / row.path).is_file() and not (tiny_bundle / row.path).exists()
    m = reference.manifest
    assert (bundle.classes, bundle.classes_sha256) == (m.classes, m.classes_sha256)
    assert bundle.source.run_dir == str(tiny_run.resolve())
    assert bundle.source.weights_sha256 == sha256_file(tiny_run / "model.safetensors")
    assert bundle.source.model_json_sha256 == sha256_file(tiny_run / "model.json")
    assert bundle.source.backbone == "tinynet" and bundle.reference == "onnx-fp32"
    s = m.preprocess.input_size
    assert (bundle.input.shape, bundle.output.shape) == ([-1, 3, s, s], [-1, len(m.classes)])
    assert not list(tiny_run.glob(".bundle.partial-*"))


def test_onnx_fp32_is_single_file_dynamic_batch_with_metadata(tiny_bundle, reference):
    import onnx
    import onnxruntime as ort

    path = tiny_bundle / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert not list(tiny_bundle.rglob("*.data"))
    meta = {p.key: p.value for p in model.metadata_props}
    m = reference.manifest
    assert json.loads(meta["edgeft.classes"]) == m.classes
    assert meta["edgeft.classes_sha256"] == m.classes_sha256
    assert json.loads(meta["edgeft.preprocess"]) == m.preprocess.to_dict()
    assert meta["edgeft.weights_sha256"] == m.weights.sha256
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        assert sess.run(["logits"], {"input": reference.x[:n]})[0].shape == (n, len(m.classes))


def test_fp32_artifacts_match_torch(tiny_bundle, reference):
    import onnxruntime as ort
    import openvino as ov

    sess = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(["logits"], {"input": reference.x})[0]
    compiled = ov.Core().compile_model(
        str(tiny_bundle / "openvino" / "model.fp32.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ov_logits = compiled({0: reference.x})[compiled.output(0)]
    assert np.abs(onnx_logits - reference.logits).max() <= 1e-5
    assert np.abs(ov_logits - reference.logits).max() <= 1e-5


def test_reduced_precision_gate_records_agree_with_a_recomparison(tiny_bundle, bundle, report, reference):
    engines = {"onnx": OnnxRuntimeEngine, "openvino": OpenVinoEngine}
    gate = Gate(**report.gate.model_dump())
    checked = 0
    for row in report.rows:
        if row.precision == "fp32" or row.format not in engines:
            continue
        path = _artifact_file(tiny_bundle, row.path)
        with engines[row.format](path, precision=row.precision) as engine:
            logits = engine.run(reference.x, 32)
        c = compare(reference.logits, logits, bundle.classes, reference.labels)
        record = row.gate
        assert record.n == c.n == reference.n
        assert record.agreement == c.agreement
        assert record.delta_accuracy_pts == pytest.approx(c.delta_accuracy_pts)
        assert record.max_abs_logit_diff == pytest.approx(c.max_abs_logit_diff, rel=1e-3, abs=1e-6)
        assert record.passed is gate.judge(row.precision, c).passed is (row.status == "ok")
        if row.status == "ok":
            assert bundle.artifact(row.artifact).gate == record
        checked += 1
    assert checked >= 5  # onnx-int8, onnx-int8-cpu, openvino-fp16, openvino-int8, openvino-int8-qdq


def test_int8_qdq_graph_follows_tensorrt_rules(tiny_bundle, report):
    s8 = next(r for r in report.rows if r.artifact == "onnx-int8")
    assert check_qdq_for_tensorrt(_artifact_file(tiny_bundle, s8.path)) == []
    assert report.artifact_info["onnx-int8"]["tensorrt_compatible"] is True
    cpu = next(r for r in report.rows if r.artifact == "onnx-int8-cpu")
    problems = check_qdq_for_tensorrt(_artifact_file(tiny_bundle, cpu.path))
    assert any("uint8" in p for p in problems)
    assert any("zero-point" in p and "!= 0" in p for p in problems)


def test_calibration_is_stratified_from_the_calib_split_only(tiny_bundle, tiny_run, report):
    cal = CalibrationDoc.read(tiny_bundle / "calibration.json", "calibration.json", "re-export")
    splits = SplitsDoc.load(tiny_run)
    by_path = {it.path: it for it in splits.items}
    assert set(cal.per_class) == set(splits.classes) and min(cal.per_class.values()) >= 1
    assert cal.count == len(cal.images) == sum(cal.per_class.values()) == len(splits.of("calib"))
    assert all(by_path[im.path].split == "calib" for im in cal.images)
    assert not {im.sha256 for im in cal.images} & {it.sha256 for it in splits.of("test")}
    assert any(f"only {cal.count} calib images exist" in n for n in cal.notes)
    assert (cache_root() / "calibration" / cal.cache_key / "ranges.json").is_file()
    assert report.artifact_info["onnx-int8"]["calibration_key"] == cal.cache_key
    assert report.calibration is not None and report.calibration["cache_key"] == cal.cache_key


def test_export_report_has_one_typed_row_per_artifact(report, bundle, reference):
    ref = report.rows[0]
    assert (ref.artifact, ref.status, ref.gate) == ("torch-fp32", "reference", None)
    assert ref.accuracy == pytest.approx(float(np.mean(reference.logits.argmax(1) == reference.labels)))
    rows = {r.artifact: r for r in report.rows[1:]}
    assert set(rows) >= BUILT_HERE
    for art in bundle.artifacts:
        assert rows[art.name].status == "ok" and rows[art.name].gate == art.gate
        assert rows[art.name].size_mb == pytest.approx((art.bytes) / 1e6)
    assert {n for n, r in rows.items() if r.status == "rejected"} == set(report.failed)
    assert report.gate == GateSettings(min_n=10)  # the min_n the tiny_bundle fixture states
    assert (report.eval_split, report.eval_images) == ("test", reference.n)
    assert report.options["max_drop"] == 1.0 and report.options["int8"] is True


# ---- out-dir rules and failures: nothing is written, nothing of the user's is touched ----------------------
def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_partials(out: Path) -> None:
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_a_foreign_dir_is_refused_and_left_byte_for_byte(tiny_run, tmp_path):
    out = tmp_path / "somewhere"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "photo.png").write_bytes(bytes(range(256)))
    before = _snapshot(out)
    for force in (False, True):  # --force replaces bundles only: a foreign dir is refused either way
        with pytest.raises(ExportRefusedError, match="is not a bundle"):
            build_bundle(tiny_run, out, force=force)
        assert _snapshot(out) == before
    _no_partials(out)


def test_a_bundle_holding_the_users_files_is_refused_even_with_force(tiny_run, tiny_bundle, copy_dir):
    out = copy_dir(tiny_bundle, "mine")
    (out / "NOTES.md").write_text("what I found")
    (out / "my_results").mkdir()
    (out / "my_results" / "r.txt").write_text("42")
    before = _snapshot(out)
    for force in (False, True):
        with pytest.raises(ExportRefusedError, match=r"did not write \(NOTES\.md, my_results\)") as err:
            build_bundle(tiny_run, out, force=force, int8=False, fp16=False, formats=["onnx"])
        assert err.value.path == str(out)
        assert _snapshot(out) == before
    _no_partials(out)


def test_another_models_bundle_is_refused_unless_force(tiny_run, tiny_bundle, copy_dir):
    out = copy_dir(tiny_bundle, "other")
    other = BundleManifest.load(out)
    other.source = other.source.model_copy(update={"weights_sha256": "0" * 64})
    other.save(out)
    before = _snapshot(out)
    with pytest.raises(ExportRefusedError, match="another model"):
        build_bundle(tiny_run, out)
    assert _snapshot(out) == before
    result = build_bundle(tiny_run, out, force=True, int8=False, fp16=False, formats=["onnx"], max_drop=2.5)
    assert BundleManifest.load(out).source.weights_sha256 == sha256_file(tiny_run / "model.safetensors")
    assert result.report.gate == GateSettings(max_drop=2.5, min_n=381)  # min_n derived from 0.99
    assert BundleManifest.load(out).gate == result.report.gate
    assert [r.artifact for r in result.rows] == ["torch-fp32", "onnx-fp32"]
    assert not (out / "openvino").exists() and not (out / "calibration.json").exists()
    _no_partials(out)


def test_the_run_dir_is_never_replaced(tiny_run):
    for out in (tiny_run, tiny_run.parent):
        with pytest.raises(ExportRefusedError, match="contain the run dir"):
            build_bundle(tiny_run, out, force=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-model-json", "model.json is missing"),
        ("no-weights", "weights file is missing"),
        ("no-splits", "splits.json not found"),
        ("empty-calib", "calib split is empty"),
        ("class-mismatch", "classes but the weights have"),
        ("class-reorder", "every label would be wrong"),
    ],
)
def test_a_bad_run_dir_is_a_clear_error_and_writes_nothing(tiny_run, copy_dir, tmp_path, damage, message):
    run = copy_dir(tiny_run, "run")
    shutil.rmtree(run / "bundle", ignore_errors=True)
    if damage == "no-model-json":
        (run / "model.json").unlink()
    elif damage == "no-weights":
        (run / "model.safetensors").unlink()
    elif damage == "no-splits":
        (run / "splits.json").unlink()
    elif damage == "empty-calib":
        doc = json.loads((run / "splits.json").read_text())
        for it in doc["items"]:
            it["split"] = "train" if it["split"] == "calib" else it["split"]
        (run / "splits.json").write_text(json.dumps(doc))
    elif damage == "class-mismatch":
        doc = json.loads((run / "model.json").read_text())
        doc["classes"] = [*doc["classes"], "Sea_Bream"]
        doc["classes_sha256"] = ""
        (run / "model.json").write_text(json.dumps(doc))
    elif damage == "class-reorder":  # same names, new order, hash recomputed: only splits.json knows
        doc = json.loads((run / "model.json").read_text())
        doc["classes"] = list(reversed(doc["classes"]))
        doc["classes_sha256"] = ""
        (run / "model.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    with pytest.raises(EdgeftError, match=message) as err:
        build_bundle(run, out)
    assert err.value.fix
    assert not out.exists()
    _no_partials(out)


class _OffByAThousandth(OnnxRuntimeEngine):
    """ONNX Runtime whose FP32 logits come out 1e-3 too high: top-1 unchanged, |Δlogit| over the FP32 gate."""

    def check_output(self, out, n):
        return super().check_output(out, n) + np.float32(1e-3 if self.precision == "fp32" else 0.0)


def _skew_while_exporting(export_onnx):
    """THE exporter, handed a model whose traced graph adds 1 to every logit (eager torch does not)."""
    import torch

    class Skewed(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            y = self.model(x)
            return y + 1.0 if torch.compiler.is_exporting() else y

    return lambda model, *args, **kwargs: export_onnx(Skewed(model), *args, **kwargs)


@pytest.mark.parametrize("broken", ["graph", "engine"])
def test_an_fp32_onnx_that_disagrees_with_torch_fails_the_export_and_writes_nothing(
    tiny_run, tiny_bundle, tmp_path, monkeypatch, broken
):
    import edgeft.export.bundle as bundle_mod
    import edgeft.export.evaluate as evaluate_mod

    if broken == "graph":  # the exported graph itself differs from eager torch
        monkeypatch.setattr(bundle_mod, "export_onnx", _skew_while_exporting(bundle_mod.export_onnx))
    else:
        monkeypatch.setitem(evaluate_mod.ENGINE_BY_FORMAT, "onnx", _OffByAThousandth)
    out = tiny_run / "bundle"
    before = _snapshot(out)
    with pytest.raises(ExportParityError, match=re.escape("fp32 max |Δlogit|")) as err:
        build_bundle(tiny_run, int8=False, fp16=False, formats=["onnx"])
    assert err.value.path == str(tiny_run.resolve())
    assert _snapshot(out) == before  # the previous bundle is untouched
    _no_partials(out)


def test_an_optional_format_that_fails_to_build_is_recorded_and_the_rest_ships(tiny_run, tmp_path, monkeypatch):
    from dataclasses import replace

    import edgeft.export.registry as registry

    def crash(ctx):
        raise RuntimeError("converter crashed")

    formats = tuple(replace(f, build=crash) if f.name == "openvino" else f for f in registry.FORMATS)
    monkeypatch.setattr(registry, "FORMATS", formats)
    result = build_bundle(tiny_run, tmp_path / "b", int8=False, fp16=False, formats=["onnx", "openvino", "triton"])
    assert result.failed == {"openvino": "build failed: RuntimeError: converter crashed"}
    assert [a.name for a in BundleManifest.load(tmp_path / "b").artifacts] == ["onnx-fp32"]
    (model,) = result.report.packages["triton"]
    assert re.fullmatch(r"tiny_[0-9a-f]{8}_onnx", model)


@pytest.mark.slow
def test_every_file_export_parity_and_bench_write_into_a_bundle_is_one_export_may_replace(tiny_bundle, copy_dir):
    """BUNDLE_ENTRIES lists what edgeft writes at a bundle's top level; a name missing there would make the next
    export refuse a bundle that holds only edgeft's own files."""
    from edgeft.check.parity import run_parity
    from edgeft.export.bundle import BUNDLE_ENTRIES
    from edgeft.serve.bench import BenchSettings, run_bench

    bdir = copy_dir(tiny_bundle, "used")
    run_parity(bdir, backends=["onnx-fp32", "openvino-int8"])
    run_parity(bdir, backends=["onnx-fp32"], fast_preprocess=True)
    run_bench(bdir, BenchSettings(batches=[1], backends=["onnx-fp32"], seconds=0.05, warmup=0, min_iters=1, rounds=1))
    names = sorted(p.name for p in bdir.iterdir())
    assert {"parity.json", "parity.fast.json", "bench.json", "tradeoff.json", "openvino"} <= set(names), names
    assert [n for n in names if not BUNDLE_ENTRIES.fullmatch(n)] == []
