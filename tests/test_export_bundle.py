"""`edgeft export` end to end on a tiny run: one exported bundle shared by every check in this module."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
typer = pytest.importorskip("typer")

from export_fixtures import make_tiny_run  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from edgeft.calibration import calibration_key, prepare  # noqa: E402
from edgeft.errors import EdgeftError  # noqa: E402
from edgeft.export import build_bundle, check_qdq_for_tensorrt  # noqa: E402
from edgeft.export.commands import register  # noqa: E402
from edgeft.export.context import load_eval_set  # noqa: E402
from edgeft.export.errors import ExportRefusedError  # noqa: E402
from edgeft.export.triton import as_list, read_config  # noqa: E402
from edgeft.manifest import BundleManifest, ModelManifest, sha256_file  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("edgeft-cache")
        mp.setenv("EDGEFT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The run the export tests use; swap for conftest's `tiny_run` once the trainer provides it."""
    root = tmp_path_factory.mktemp("export-run")
    return make_tiny_run(root / "run", root / "data")


def _cli(args: list[str]):
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """edgeft (export only)."""

    register(app)
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def exported(run_dir, cache_dir) -> tuple[Path, str]:
    result = _cli(["export", str(run_dir)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return run_dir / "bundle", result.output


@pytest.fixture(scope="module")
def bundle(exported) -> BundleManifest:
    return BundleManifest.load(exported[0])


@pytest.fixture(scope="module")
def test_data(run_dir):
    """Test-split images, labels and the PyTorch logits, computed independently of the exporter."""
    import torch

    from edgeft.train.model import load_run

    model, manifest = load_run(run_dir)
    splits = json.loads((run_dir / "splits.json").read_text())
    es = load_eval_set(splits, "test", list(manifest.classes), manifest.preprocess_spec)
    with torch.inference_mode():
        es.reference = model(torch.from_numpy(es.x)).numpy()
    return es


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def _ov(xml: Path, x: np.ndarray, f32: bool) -> np.ndarray:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    return compiled({0: x})[compiled.output(0)]


def test_bundle_json_lists_every_artifact_with_sha256(exported, bundle, run_dir):
    bundle_dir, output = exported
    bundle.verify(bundle_dir)
    names = [a.name for a in bundle.artifact_list()]
    assert {"onnx-fp32", "onnx-int8"} <= set(names)
    if importlib.util.find_spec("openvino"):
        assert {"openvino-fp32", "openvino-fp16", "openvino-int8-qdq"} <= set(names)
    for art in bundle.artifact_list():
        assert art.sha256 == sha256_file(bundle_dir / art.path)
        if art.format == "openvino":
            assert list(art.extra_files) == [art.path.replace(".xml", ".bin")]
    assert bundle.reference == "onnx-fp32"
    assert bundle.source["run_dir"] == str(run_dir.resolve())
    assert bundle.source["weights_sha256"] == sha256_file(run_dir / "model.safetensors")
    assert bundle.source["model_json_sha256"] == sha256_file(run_dir / "model.json")
    assert bundle.source["backbone"] == "efficientnet_lite0"
    assert bundle.classes == ModelManifest.load(run_dir).classes
    assert bundle.output["shape"] == [-1, len(bundle.classes)]
    assert "Bundle written to" in output and "onnx-int8" in output
    assert not list(bundle_dir.parent.glob(".bundle.partial-*"))


def test_onnx_fp32_is_single_file_dynamic_batch_with_metadata(exported, bundle):
    import onnx

    path = exported[0] / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert sorted(p.name for p in exported[0].iterdir() if p.suffix == ".data") == []
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["edgeft.classes"]) == bundle.classes
    assert json.loads(meta["edgeft.preprocess"]) == bundle.preprocess
    assert meta["edgeft.weights_sha256"] == bundle.source["weights_sha256"]


def test_onnx_fp32_matches_pytorch(exported, test_data):
    logits = _ort(exported[0] / "model.onnx", test_data.x)
    assert np.mean(logits.argmax(1) == test_data.reference.argmax(1)) == 1.0
    assert np.abs(logits - test_data.reference).max() <= 1e-4


def test_openvino_fp32_matches_onnx(exported, test_data):
    pytest.importorskip("openvino")
    onnx_logits = _ort(exported[0] / "model.onnx", test_data.x)
    ov_logits = _ov(exported[0] / "openvino" / "model.fp32.xml", test_data.x, f32=True)
    assert np.abs(ov_logits - onnx_logits).max() <= 1e-4


@pytest.mark.parametrize("name", ["onnx-int8", "onnx-int8-cpu", "openvino-int8", "openvino-int8-qdq"])
def test_int8_agrees_with_fp32_and_keeps_accuracy(exported, bundle, test_data, name):
    art = next((a for a in bundle.artifact_list() if a.name == name), None)
    if art is None:
        pytest.skip(f"{name} not built on this machine")
    path = exported[0] / art.path
    logits = _ort(path, test_data.x) if art.format == "onnx" else _ov(path, test_data.x, f32=False)
    agreement = np.mean(logits.argmax(1) == test_data.reference.argmax(1))
    acc = np.mean(logits.argmax(1) == test_data.y)
    ref_acc = np.mean(test_data.reference.argmax(1) == test_data.y)
    assert agreement >= 0.98
    assert 100 * (ref_acc - acc) <= 1.0


def test_int8_qdq_graph_follows_tensorrt_rules(exported, bundle):
    s8 = bundle.artifact("onnx-int8")
    assert check_qdq_for_tensorrt(exported[0] / s8.path) == []
    assert s8.info["tensorrt_compatible"] is True
    cpu = next((a for a in bundle.artifact_list() if a.name == "onnx-int8-cpu"), None)
    if cpu is not None:
        problems = check_qdq_for_tensorrt(exported[0] / cpu.path)
        assert any("uint8" in p for p in problems)
        assert any("zero-point" in p and "!= 0" in p for p in problems)


def test_calibration_is_stratified_from_calib_split_only(exported, run_dir, bundle, cache_dir):
    cal = json.loads((exported[0] / "calibration.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    by_path = {it["path"]: it for it in splits["items"]}
    assert set(cal["per_class"]) == set(bundle.classes)
    assert all(n >= 1 for n in cal["per_class"].values())
    assert cal["count"] == len(cal["images"]) == sum(cal["per_class"].values())
    assert all(by_path[im["path"]]["split"] == "calib" for im in cal["images"])
    test_shas = {it["sha256"] for it in splits["items"] if it["split"] == "test"}
    assert not {im["sha256"] for im in cal["images"]} & test_shas
    n_calib = sum(1 for it in splits["items"] if it["split"] == "calib")
    if n_calib < 300:
        assert any(f"only {n_calib} calib images exist" in n for n in cal["notes"])
    assert (cache_dir / "calibration" / cal["cache_key"] / "ranges.json").is_file()
    assert bundle.artifact("onnx-int8").info["calibration_key"] == cal["cache_key"]


def test_cache_key_changes_when_weights_change(exported, run_dir, tmp_path):
    import torch

    from edgeft.train.model import load_run, save_weights

    cal = json.loads((exported[0] / "calibration.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    manifest = ModelManifest.load(run_dir)
    same = prepare(
        splits,
        manifest.classes,
        manifest.preprocess_spec,
        sha256_file(run_dir / "model.safetensors"),
        300,
        "minmax",
        tmp_path / "same.json",
    )
    assert same.key == cal["cache_key"]
    model, _ = load_run(run_dir)
    with torch.no_grad():
        model.head.net[-1].bias.add_(0.01)  # "retrained": a new head
    new_sha = save_weights(model, tmp_path)
    retrained = prepare(splits, manifest.classes, manifest.preprocess_spec, new_sha, 300, "minmax", tmp_path / "r.json")
    assert retrained.key != cal["cache_key"]
    images = [(im["path"], im["sha256"]) for im in cal["images"]]
    assert calibration_key("x", manifest.preprocess_spec, images, "entropy") != calibration_key(
        "x", manifest.preprocess_spec, images, "minmax"
    )


def test_export_report_has_one_row_per_artifact(exported, bundle):
    report = json.loads((exported[0] / "export_report.json").read_text())
    rows = {r["artifact"]: r for r in report["rows"]}
    assert rows["torch-fp32"]["status"] == "reference"
    assert {a.name for a in bundle.artifact_list()} <= set(rows)
    for r in rows.values():
        assert {"precision", "size_mb", "accuracy", "agreement", "delta_pts"} <= set(r)
    assert report["failed"] == {}


def test_triton_configs_parse_and_match_model_io(exported, bundle):
    root = exported[0] / "triton"
    models = sorted(p for p in root.iterdir() if p.is_dir())
    assert {p.name.rsplit("_", 1)[1] for p in models} >= {"onnx"}
    s, n = bundle.preprocess_spec.input_size, len(bundle.classes)
    for model_dir in models:
        cfg = read_config(model_dir / "config.pbtxt")
        assert cfg["name"] == model_dir.name
        assert cfg["max_batch_size"] > 0
        assert "dynamic_batching" in cfg
        (inp,), (out,) = as_list(cfg["input"]), as_list(cfg["output"])
        assert (inp["name"], inp["data_type"], inp["dims"]) == ("input", "TYPE_FP32", [3, s, s])
        assert (out["name"], out["data_type"], out["dims"]) == ("logits", "TYPE_FP32", [n])
        assert (model_dir / out["label_filename"]).read_text().splitlines() == bundle.classes
        assert as_list(cfg["parameters"])[0]["value"]["string_value"] in {a.name for a in bundle.artifact_list()}
        files = sorted(p.name for p in (model_dir / "1").iterdir())
        if cfg.get("backend") == "onnxruntime":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            i, o = sess.get_inputs()[0], sess.get_outputs()[0]
            assert (i.name, i.shape[1:], o.name, o.shape[1:]) == ("input", [3, s, s], "logits", [n])
        elif cfg.get("backend") == "openvino":
            import openvino as ov

            assert files == ["model.bin", "model.xml"]
            m = ov.Core().read_model(str(model_dir / "1" / "model.xml"))
            assert "input" in m.inputs[0].get_names() and "logits" in m.outputs[0].get_names()
            assert str(m.inputs[0].get_partial_shape()) == f"[?,3,{s},{s}]"
            assert str(m.outputs[0].get_partial_shape()) == f"[?,{n}]"


def test_nncf_accuracy_control_runs_on_val(exported, run_dir, bundle):
    nncf = pytest.importorskip("nncf")
    import openvino as ov

    from edgeft.calibration.nncf_quant import quantize_ir

    splits = json.loads((run_dir / "splits.json").read_text())
    val = load_eval_set(splits, "val", bundle.classes, bundle.preprocess_spec)
    cal = json.loads((exported[0] / "calibration.json").read_text())
    calib = load_eval_set(
        {**splits, "items": [dict(im, split="calib") for im in cal["images"]]},
        "calib",
        bundle.classes,
        bundle.preprocess_spec,
    ).x
    fp32 = ov.Core().read_model(str(exported[0] / bundle.artifact("openvino-fp32").path))
    val.x, val.y = val.x[:8], val.y[:8]
    quantized, info = quantize_ir(nncf, fp32, calib, val, max_drop_pts=1.0)
    assert info["accuracy_control"] is True and info["val_images"] == len(val.y)
    assert info["fake_quantize_ops"] > 0


# ---- bad input: a clear error and no bundle, not even a partial one ---------------------------------------
def _copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("bundle", ".bundle*"))
    return dest


def _assert_no_bundle(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-model-json", "model.json is missing"),
        ("no-weights", "weights file is missing"),
        ("class-mismatch", "classes but the weights have"),
        ("empty-calib", "calib split is empty"),
        ("no-splits", "splits.json not found"),
    ],
)
def test_bad_run_dir_is_a_clear_error_and_writes_nothing(run_dir, tmp_path, damage, message):
    run = _copy_run(run_dir, tmp_path / "run")
    if damage == "no-model-json":
        (run / "model.json").unlink()
    elif damage == "no-weights":
        (run / "model.safetensors").unlink()
    elif damage == "no-splits":
        (run / "splits.json").unlink()
    elif damage == "class-mismatch":
        doc = json.loads((run / "model.json").read_text())
        doc["classes"] = [*doc["classes"], "Sea_Bass"]
        (run / "model.json").write_text(json.dumps(doc))
    elif damage == "empty-calib":
        doc = json.loads((run / "splits.json").read_text())
        for it in doc["items"]:
            it["split"] = "train" if it["split"] == "calib" else it["split"]
        (run / "splits.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    with pytest.raises(EdgeftError, match=message) as err:
        build_bundle(run, out)
    assert err.value.fix and (err.value.path or damage == "empty-calib")
    _assert_no_bundle(out)


def test_out_dir_with_another_models_bundle_is_refused_unless_force(run_dir, exported, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    doc = json.loads((exported[0] / "bundle.json").read_text())
    doc["source"]["weights_sha256"] = "0" * 64
    (out / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(ExportRefusedError, match="another model"):
        build_bundle(run_dir, out)
    assert json.loads((out / "bundle.json").read_text())["source"]["weights_sha256"] == "0" * 64
    assert not list(tmp_path.glob(".bundle.partial-*"))
    result = _cli(["export", str(run_dir), "--out", str(out), "--no-int8", "--no-fp16", "--formats", "onnx"])
    assert result.exit_code != 0 and isinstance(result.exception, ExportRefusedError)


def test_out_dir_with_foreign_files_is_refused(run_dir, tmp_path):
    out = tmp_path / "somewhere"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportRefusedError, match="no readable bundle.json"):
        build_bundle(run_dir, out)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportRefusedError, match="contain the run dir"):
        build_bundle(run_dir, run_dir.parent, force=True)


def test_parity_failure_fails_the_export_and_leaves_the_old_bundle(run_dir, exported, tmp_path, monkeypatch):
    import edgeft.export.onnx_export as onnx_export
    from edgeft.export.errors import ExportParityError

    def reuse_export(model, input_size, out, meta):
        shutil.copyfile(exported[0] / "model.onnx", out)
        return {}

    monkeypatch.setattr(onnx_export, "export_onnx", reuse_export)
    monkeypatch.setattr(onnx_export, "parity_problems", lambda *a, **k: ["max |delta logit| = 0.5 (need <= 0.0001)"])
    out = tmp_path / "bundle"
    with pytest.raises(ExportParityError, match="disagrees with PyTorch"):
        build_bundle(run_dir, out, int8=False, fp16=False, formats=["onnx"])
    _assert_no_bundle(out)


def test_fp16_typed_onnx_for_tensorrt11_keeps_fp32_io_and_predictions(exported, test_data, tmp_path):
    import onnx

    from edgeft.export.tensorrt_build import fp16_typed_onnx

    path = fp16_typed_onnx(exported[0] / "model.onnx", tmp_path / "fp16.onnx")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    logits = _ort(path, test_data.x)
    assert logits.dtype == np.float32
    assert np.mean(logits.argmax(1) == test_data.reference.argmax(1)) >= 0.98
