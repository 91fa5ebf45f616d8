"""Parity metrics and gate: clean bundle passes, planted bugs (swapped logits, wrong mean/std) fail with exit 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeft.cli import app
from edgeft.errors import EdgeftError
from edgeft.runtime.evalset import find_bundle_for_run, resolve_target
from edgeft.runtime.parity import Gate, compare_logits, run_parity

try:
    from runtime_fixtures import (  # noqa: F401
        CLASSES,
        copy_bundle,
        install_fake_train_module,
        replace_artifact,
        swapped_model,
        tiny_bundle,
    )
except ImportError:  # tests/ imported as a package
    from tests.runtime_fixtures import (  # noqa: F401
        CLASSES,
        copy_bundle,
        install_fake_train_module,
        replace_artifact,
        swapped_model,
        tiny_bundle,
    )

CPU_KEYS = {
    "onnxruntime:cpu/onnx-int8",
    "openvino:CPU/openvino-fp32",
    "openvino:CPU/openvino-fp16",
    "openvino:CPU/openvino-int8",
}


def test_compare_logits_on_a_planted_class_swap():
    n, c = 18, 9
    ref = np.zeros((n, c), np.float32)
    ref[np.arange(n), np.arange(n) % c] = 4.0  # row i predicts class i % 9 with margin 4
    cand = ref.copy()
    cand[:, [0, 1]] = ref[:, [1, 0]]  # classes 0 and 1 swapped
    labels = np.arange(n) % c
    m = compare_logits(ref, cand, CLASSES, labels, [f"img{i}" for i in range(n)])
    assert m["agreement"] == pytest.approx(14 / 18)
    assert m["accuracy"] == pytest.approx(14 / 18) and m["reference_accuracy"] == 1.0
    assert m["delta_accuracy_pts"] == pytest.approx(-100 * 4 / 18)
    assert m["max_abs_logit_diff"] == pytest.approx(4.0)
    assert m["mean_abs_logit_diff"] == pytest.approx(4 * 2 * 4 / (n * c))
    assert m["cosine"] == pytest.approx(14 / 18)  # swapped rows are orthogonal, the others identical
    assert m["top5_overlap"] == 1.0  # the same five classes, in another order
    assert m["flip_matrix"] == {CLASSES[0]: {CLASSES[1]: 2}, CLASSES[1]: {CLASSES[0]: 2}}
    assert [f["source"] for f in m["flipped"]] == ["img0", "img1", "img9", "img10"]
    assert m["flipped"][0] | {"reference_prob": 0, "candidate_prob": 0} == {
        "source": "img0",
        "label": CLASSES[0],
        "reference": CLASSES[0],
        "candidate": CLASSES[1],
        "reference_prob": 0,
        "candidate_prob": 0,
    }


def test_compare_logits_identical_and_unlabelled():
    x = np.random.default_rng(0).normal(size=(5, 9)).astype(np.float32)
    m = compare_logits(x, x, CLASSES, labels=np.full(5, -1))
    assert m["agreement"] == 1.0 and m["top5_overlap"] == 1.0 and m["max_abs_logit_diff"] == 0.0
    assert m["cosine"] == pytest.approx(1.0) and m["accuracy"] is None and m["delta_accuracy_pts"] is None
    assert m["flip_matrix"] == {} and m["flipped"] == []
    ref = np.array([[5, 4, 3, 2, 1, 0, 0, 0, 0]], np.float32)
    cand = np.array([[5, 4, 3, 2, 0, 1.5, 0, 0, 0]], np.float32)
    assert compare_logits(ref, cand, CLASSES)["top5_overlap"] == pytest.approx(0.8)


def test_gate_rules():
    gate = Gate(min_agreement=0.99, max_drop=1.0, logit_tol=1e-4)
    ok = {"agreement": 1.0, "max_abs_logit_diff": 5e-5, "delta_accuracy_pts": 0.0, "n_flipped": 0}
    assert gate.check("fp32", ok) == []
    assert gate.check("fp32", ok | {"max_abs_logit_diff": 2e-4})[0].startswith("fp32 max |Δlogit|")
    assert "agreement" in gate.check("fp32", ok | {"agreement": 0.999, "n_flipped": 1})[0]
    assert gate.check("int8", ok | {"agreement": 0.995, "max_abs_logit_diff": 0.5, "delta_accuracy_pts": -0.5}) == []
    assert "min_agreement" in gate.check("int8", ok | {"agreement": 0.98})[0]
    assert "accuracy drop 1.50 pts" in gate.check("fp16", ok | {"delta_accuracy_pts": -1.5})[0]
    assert gate.check("int8", ok | {"delta_accuracy_pts": None}) == []


def test_clean_bundle_passes_and_writes_parity_json(tiny_bundle, tmp_path):
    report = run_parity(tiny_bundle.bundle_dir, out=tmp_path, reference="onnx")
    assert report.passed and report.failures() == []
    doc = json.loads((tmp_path / "parity.json").read_text())
    assert doc["passed"] is True
    assert doc["reference"] == "onnxruntime:cpu/onnx-fp32"
    assert set(doc["backends"]) == CPU_KEYS  # the reference itself is not compared with itself
    assert doc["n_images"] == 36 and "test split" in doc["data"]
    for entry in doc["backends"].values():
        for key in ("accuracy", "delta_accuracy_pts", "agreement", "top5_overlap", "max_abs_logit_diff"):
            assert key in entry
        assert entry["agreement"] == 1.0 and entry["accuracy"] == 1.0 and entry["passed"] is True
        assert entry["cosine"] > 0.99 and entry["flip_matrix"] == {} and entry["flipped"] == []
    assert doc["backends"]["openvino:CPU/openvino-fp32"]["max_abs_logit_diff"] <= 1e-4


def test_planted_swap_fails_the_gate_with_exit_code_1(tiny_bundle, tmp_path):
    bdir = copy_bundle(tiny_bundle, tmp_path / "swapped")
    replace_artifact(bdir, "openvino-fp32", swapped_model(tiny_bundle, 0, 1))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["parity", str(bdir), "--out", str(out), "--reference", "onnx"])
    assert result.exit_code == 1, result.output
    assert "parity FAILED" in result.output and str(out / "parity.json") in result.output.replace("\n", "")
    doc = json.loads((out / "parity.json").read_text())
    assert doc["passed"] is False
    bad = doc["backends"]["openvino:CPU/openvino-fp32"]
    assert bad["passed"] is False
    assert bad["agreement"] == pytest.approx(28 / 36)  # 4 test images of class 0 and 4 of class 1 flipped
    assert bad["delta_accuracy_pts"] == pytest.approx(-100 * 8 / 36)
    assert bad["flip_matrix"] == {CLASSES[0]: {CLASSES[1]: 4}, CLASSES[1]: {CLASSES[0]: 4}}
    assert len(bad["flipped"]) == 8 and all(f["label"] == f["reference"] for f in bad["flipped"])
    assert any("agreement" in f for f in bad["failures"]) and any("Δlogit" in f for f in bad["failures"])
    others = {k: v for k, v in doc["backends"].items() if k != "openvino:CPU/openvino-fp32"}
    assert others and all(v["passed"] for v in others.values())


def test_wrong_mean_std_bundle_fails(tiny_bundle, tmp_path):
    bdir = copy_bundle(tiny_bundle, tmp_path / "wrongnorm")
    data = json.loads((bdir / "bundle.json").read_text())
    data["preprocess"]["mean"] = [0.485, 0.456, 0.406]
    data["preprocess"]["std"] = [0.229, 0.224, 0.225]
    (bdir / "bundle.json").write_text(json.dumps(data))
    result = CliRunner().invoke(
        app, ["parity", str(bdir), "--out", str(tmp_path), "--reference", "onnx", "--backends", "openvino-fp32"]
    )
    assert result.exit_code == 1, result.output
    doc = json.loads((tmp_path / "parity.json").read_text())
    assert doc["passed"] is False
    assert "preprocessing differs from the run's model.json" in doc["checks"][0]
    assert "mean: bundle [0.485, 0.456, 0.406] vs run [0.5, 0.5, 0.5]" in doc["checks"][0]
    # the reference ran with the run's numbers, the candidate with the bundle's: the damage shows up
    assert doc["backends"]["openvino:CPU/openvino-fp32"]["max_abs_logit_diff"] > 1e-2


def test_torch_reference_via_load_run(tiny_bundle, tmp_path, monkeypatch):
    install_fake_train_module(monkeypatch, tiny_bundle)
    report = run_parity(tiny_bundle.bundle_dir, backends=["onnx-fp32", "openvino-fp32"], out=tmp_path)
    assert report.reference == "torch:cpu/torch-fp32"
    assert set(report.backends) == {"onnxruntime:cpu/onnx-fp32", "openvino:CPU/openvino-fp32"}
    assert report.passed, report.failures()
    assert report.backends["onnxruntime:cpu/onnx-fp32"]["max_abs_logit_diff"] <= 1e-4


def test_auto_reference_falls_back_to_onnx_with_a_note(tiny_bundle, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "edgeft.train.model", None)  # `import` raises ImportError
    report = run_parity(tiny_bundle.bundle_dir, backends=["openvino:CPU"], out=tmp_path, min_agreement=1.0)
    assert report.reference == "onnxruntime:cpu/onnx-fp32"
    assert "torch reference unavailable" in report.reference_note
    assert report.passed and report.gate["min_agreement"] == 1.0


def test_run_dir_target_and_data_tree(tiny_bundle, tmp_path):
    assert find_bundle_for_run(tiny_bundle.run_dir) == tiny_bundle.bundle_dir.resolve()
    assert resolve_target(tiny_bundle.run_dir) == (tiny_bundle.bundle_dir.resolve(), tiny_bundle.run_dir)
    report = run_parity(
        tiny_bundle.run_dir, data=tiny_bundle.data_dir, backends=["int8"], out=tmp_path, reference="onnx"
    )
    assert report.passed and report.n_images == 36
    assert set(report.backends) == {"onnxruntime:cpu/onnx-int8", "openvino:CPU/openvino-int8"}
    assert report.bundle_dir == str(tiny_bundle.bundle_dir.resolve())


def test_data_tree_with_unknown_class_is_refused(tiny_bundle, tmp_path):
    (tmp_path / "Shark").mkdir()
    (tmp_path / "Shark" / "a.png").write_bytes(tiny_bundle.test_images[0].read_bytes())
    with pytest.raises(EdgeftError, match=r"\['Shark'\] are not classes of the bundle"):
        run_parity(tiny_bundle.bundle_dir, data=tmp_path, out=tmp_path, reference="onnx")


def test_not_a_bundle_or_run(tmp_path):
    with pytest.raises(EdgeftError, match="neither a bundle dir"):
        run_parity(tmp_path)


def test_tampered_candidate_is_a_failed_backend_not_a_crash(tiny_bundle, tmp_path):
    bdir = copy_bundle(tiny_bundle, tmp_path / "b")
    (bdir / "openvino/int8/model.bin").write_bytes(b"\0" * 64)
    report = run_parity(bdir, out=tmp_path, reference="onnx")
    entry = report.backends["openvino:CPU/openvino-int8"]
    assert not report.passed and not entry["passed"]
    assert "sha256" in entry["failures"][0]
    assert all(v["passed"] for k, v in report.backends.items() if k != "openvino:CPU/openvino-int8")
