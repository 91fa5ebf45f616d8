"""`edgeft parity` on the real bundle of a real run: clean passes, planted damage fails with exit code 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeft.check.gate import Gate
from edgeft.check.parity import run_parity
from edgeft.cli.app import app
from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import BundleManifest
from edgeft.core.reports import ParityReport

pytestmark = pytest.mark.slow


def _bundle_copy(tiny_bundle, tmp_path):
    """A copy of run + bundle side by side, so the copied bundle's source.run_dir still resolves."""
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.parent, run)
    bundle = run / tiny_bundle.name
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["source"]["run_dir"] = str(run)
    (bundle / "bundle.json").write_text(json.dumps(doc))
    return bundle


def _swap_classes_in_onnx(bundle, artifact: str, i: int, j: int) -> None:
    """Swap two output classes of an ONNX artifact (rows of the last Gemm) and re-record its sha256."""
    import onnx
    from onnx import numpy_helper

    manifest = BundleManifest.load(bundle)
    art = manifest.artifact(artifact)
    path = bundle / art.path
    model = onnx.load(str(path))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    inits = {t.name: t for t in model.graph.initializer}
    for name in gemm.input[1:3]:
        arr = numpy_helper.to_array(inits[name]).copy()
        arr[[i, j]] = arr[[j, i]]
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(model, str(path))
    doc = json.loads((bundle / "bundle.json").read_text())
    for a in doc["artifacts"]:
        if a["name"] == artifact:
            a["sha256"] = sha256_file(path)
    (bundle / "bundle.json").write_text(json.dumps(doc))


def test_clean_bundle_fp32_matches_torch_and_parity_json_is_typed(tiny_bundle, tmp_path):
    report = run_parity(tiny_bundle, out=tmp_path, backends=["fp32"])
    assert report.reference == "torch:cpu/torch-fp32"
    assert set(report.backends) == {"onnxruntime:cpu/onnx-fp32", "openvino:CPU/openvino-fp32"}
    for b in report.backends.values():
        assert b.gate.passed and b.comparison.agreement == 1.0 and b.comparison.max_abs_logit_diff <= 1e-5
    assert report.passed and "test split" in report.data and report.n_images == 24
    again = ParityReport.load(tmp_path / "parity.json")
    assert again == report
    assert not (tmp_path / "parity_flips.png").exists(), "no flips, no picture"


def test_planted_class_swap_fails_the_gate_with_exit_code_1(tiny_bundle, tmp_path):
    bundle = _bundle_copy(tiny_bundle, tmp_path)
    _swap_classes_in_onnx(bundle, "onnx-fp32", 0, 1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["parity", str(bundle), "--out", str(out), "--backends", "onnx-fp32"])
    assert result.exit_code == 1, result.output
    assert "parity FAILED" in result.stderr and "Traceback" not in result.output
    assert "serve an artifact that passed" in result.stderr
    report = ParityReport.load(out / "parity.json")
    bad = report.backends["onnxruntime:cpu/onnx-fp32"]
    assert not report.passed and not bad.gate.passed
    classes = BundleManifest.load(bundle).classes
    flipped = bad.comparison.flip_matrix
    assert set(flipped) <= {classes[0], classes[1]} and bad.comparison.n_flipped >= 6
    assert all(f.reference in classes[:2] and f.candidate in classes[:2] for f in bad.comparison.flipped)
    assert any("agreement" in r for r in bad.gate.reasons) and any("Δlogit" in r for r in bad.gate.reasons)
    picture = out / "parity_flips.png"
    assert "flipped images" in result.stdout and str(picture) in result.stdout.replace("\n", "")
    with Image.open(picture) as im:  # the flip matrix and one thumbnail per flipped image (up to 12)
        assert im.width >= 2.4 * 90 * (1 + min(12, bad.comparison.n_flipped)) - 5


def test_wrong_mean_std_in_bundle_is_reported_and_fails(tiny_bundle, tmp_path):
    bundle = _bundle_copy(tiny_bundle, tmp_path)
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["preprocess"]["mean"], doc["preprocess"]["std"] = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    (bundle / "bundle.json").write_text(json.dumps(doc))
    report = run_parity(bundle, out=tmp_path, backends=["openvino-fp32"])
    assert not report.passed
    assert "preprocessing differs from the run's model.json" in report.checks[0]
    # the reference ran with the run's numbers, the candidate with the bundle's: the damage shows
    assert report.backends["openvino:CPU/openvino-fp32"].comparison.max_abs_logit_diff > 1e-2


def test_onnx_reference_when_torch_is_unavailable(tiny_bundle, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "edgeft.models.classifier", None)  # `import` raises ImportError
    report = run_parity(tiny_bundle, backends=["openvino:CPU"], out=tmp_path, gate=Gate(min_agreement=0.5))
    assert report.reference == "onnxruntime:cpu/onnx-fp32"
    assert "torch reference unavailable" in report.reference_note
    assert report.gate.min_agreement == 0.5


def test_run_dir_target_finds_its_bundle_and_a_data_tree_works(tiny_bundle, tiny_run, colour_tree, tmp_path):
    report = run_parity(tiny_run, data=colour_tree, backends=["fp32"], out=tmp_path)
    assert report.bundle_dir == str(tiny_bundle) and report.n_images == 128 and report.passed


def test_latest_run_is_used_when_no_target_is_given(tiny_bundle, tmp_path, monkeypatch):
    runs = tmp_path / "runs" / "folder"
    runs.mkdir(parents=True)
    shutil.copytree(tiny_bundle.parent, runs / "tiny")
    monkeypatch.chdir(tmp_path)
    report = run_parity(None, backends=["onnx-fp32"], out=tmp_path)
    assert report.run_dir.endswith("runs/folder/tiny") and report.passed


def test_data_tree_with_unknown_class_is_refused(tiny_bundle, tmp_path):
    (tmp_path / "Shark").mkdir()
    img = next(p for p in (tiny_bundle.parent / "predictions.png").parent.rglob("*.png"))
    (tmp_path / "Shark" / "a.png").write_bytes(img.read_bytes())
    with pytest.raises(EdgeftError, match=r"\['Shark'\] are not classes of the model"):
        run_parity(tiny_bundle, data=tmp_path, out=tmp_path)


def test_not_a_bundle_or_run_and_nothing_trained(tmp_path, monkeypatch):
    with pytest.raises(EdgeftError, match="neither a run dir"):
        run_parity(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EdgeftError, match="edgeft train fish"):
        run_parity(None)


def test_tampered_candidate_is_a_failed_backend_not_a_crash(tiny_bundle, tmp_path):
    bundle = _bundle_copy(tiny_bundle, tmp_path)
    art = BundleManifest.load(bundle).artifact("openvino-fp32")
    (bundle / next(iter(art.extra_files))).write_bytes(b"\0" * 64)
    report = run_parity(bundle, out=tmp_path, backends=["fp32"])
    entry = report.backends["openvino:CPU/openvino-fp32"]
    assert not report.passed and not entry.gate.passed and "sha256" in entry.gate.reasons[0]
    assert report.backends["onnxruntime:cpu/onnx-fp32"].gate.passed


def test_strict_gate_fails_exactly_when_some_reduced_precision_prediction_flipped(tiny_bundle, tmp_path):
    r = CliRunner().invoke(app, ["parity", str(tiny_bundle), "--out", str(tmp_path), "--min-agreement", "1.0"])
    report = ParityReport.load(tmp_path / "parity.json")
    reduced = [b for b in report.backends.values() if b.precision != "fp32" and b.comparison is not None]
    assert reduced
    flips = sum(b.comparison.n_flipped for b in reduced)
    drops = [b for b in reduced if -(b.comparison.delta_accuracy_pts or 0) > 1.0]
    expected_fail = flips > 0 or bool(drops)
    assert r.exit_code == (1 if expected_fail else 0), r.output
    assert np.isclose(sum(b.comparison.agreement for b in reduced), len(reduced)) == (flips == 0)


def test_parity_reuses_the_reference_logits_export_computed_and_agrees_with_a_fresh_pass(tiny_bundle, tmp_path):
    from edgeft.core.files import cache_root

    cached = run_parity(tiny_bundle, backends=["onnxruntime"], out=tmp_path / "a")
    assert "from the cache" in cached.reference_note and cached.reference == "torch:cpu/torch-fp32"
    shutil.rmtree(cache_root() / "reference")
    fresh = run_parity(tiny_bundle, backends=["onnxruntime"], out=tmp_path / "b")
    assert "cache" not in fresh.reference_note and fresh.reference == cached.reference
    for key, result in fresh.backends.items():
        assert result.comparison == cached.backends[key].comparison  # same logits either way
    again = run_parity(tiny_bundle, backends=["onnxruntime"], out=tmp_path / "c")  # the fresh pass refilled it
    assert "from the cache" in again.reference_note


def test_progress_covers_the_reference_pass_and_every_backend(tiny_bundle, tmp_path):
    from edgeft.core.progress import Reporter

    class Recorder(Reporter):
        def __init__(self) -> None:
            self.tasks: list[tuple[str, int | None]] = []
            self.done: dict[str, int] = {}

        def task(self, name: str, total: int | None = None) -> None:
            self.tasks.append((name, total))
            self.done[name] = 0

        def advance(self, n: int = 1) -> None:
            self.done[self.tasks[-1][0]] += n

        def note(self, text: str) -> None:
            return None

    rec = Recorder()
    report = run_parity(tiny_bundle, out=tmp_path, backends=["onnx-fp32", "openvino-fp32"], reporter=rec)
    n = report.n_images
    names = [name for name, _ in rec.tasks]
    assert names == [
        "preprocess",
        f"reference {report.reference}",
        "1/2 onnxruntime:cpu/onnx-fp32",
        "2/2 openvino:CPU/openvino-fp32",
    ]
    assert all(total == n for _, total in rec.tasks) and all(done == n for done in rec.done.values())


CPU_BACKENDS = ["onnxruntime:cpu", "openvino:CPU"]


def test_cached_and_no_cache_parity_give_identical_comparisons_and_verdicts(tiny_bundle, tmp_path):
    cached = run_parity(tiny_bundle, backends=CPU_BACKENDS, out=tmp_path / "a")
    fresh = run_parity(tiny_bundle, backends=CPU_BACKENDS, out=tmp_path / "b", use_cache=False)
    assert len(cached.backends) >= 4 and set(fresh.backends) == set(cached.backends)
    assert all(b.cached for b in cached.backends.values()), "export judged every one of these on the test split"
    assert not any(b.cached for b in fresh.backends.values())
    assert "from the cache" in cached.reference_note and "cache" not in fresh.reference_note
    for key, result in fresh.backends.items():
        assert result.model_copy(update={"cached": True}) == cached.backends[key]  # comparison, gate, describe
    assert (fresh.passed, fresh.failures()) == (cached.passed, cached.failures())
    assert ParityReport.load(tmp_path / "a" / "parity.json").backends == cached.backends


def test_cli_says_what_it_reused_and_no_cache_reruns_it(tiny_bundle, tmp_path):
    args = ["parity", str(tiny_bundle), "--backends", "onnxruntime:cpu"]
    cached = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    n = len(ParityReport.load(tmp_path / "a" / "parity.json").backends)
    assert cached.exit_code == 0 and n >= 2, cached.output
    assert f"reused {n} artifact evaluation(s) from the cache" in cached.stdout.replace("\n", " ")
    fresh = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--no-cache"])
    assert fresh.exit_code == 0 and "artifact evaluation" not in fresh.stdout, fresh.output
    report = ParityReport.load(tmp_path / "b" / "parity.json")
    assert not any(b.cached for b in report.backends.values()) and "cache" not in report.reference_note


def test_parity_right_after_export_runs_no_engine(tiny_run, tmp_path, monkeypatch):
    import sys

    from edgeft.engines.onnxruntime import OnnxRuntimeEngine
    from edgeft.engines.openvino import OpenVinoEngine
    from edgeft.engines.torch import TorchEngine
    from edgeft.export.bundle import build_bundle

    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path / "cache"))  # only this export fills it
    bundle = build_bundle(tiny_run, tmp_path / "bundle", int8=False, formats=["onnx", "openvino"], min_n=10)
    assert len(bundle.bundle.artifacts) >= 2

    def no_engine(self, *args):
        raise AssertionError(f"{self.describe()} ran")

    for cls in (OnnxRuntimeEngine, OpenVinoEngine, TorchEngine):
        monkeypatch.setattr(cls, "_load", no_engine)
    report = run_parity(bundle.bundle_dir, out=tmp_path / "p")
    assert report.passed and "from the cache" in report.reference_note
    assert {b.artifact for b in report.backends.values()} == {a.name for a in bundle.bundle.artifacts}
    assert all(b.cached and b.gate.passed for b in report.backends.values())
    # without torch the reference is the bundle's ONNX FP32 artifact: export evaluated that one too
    monkeypatch.setitem(sys.modules, "edgeft.models.classifier", None)
    onnx_ref = run_parity(bundle.bundle_dir, out=tmp_path / "q")
    assert onnx_ref.reference == "onnxruntime:cpu/onnx-fp32" and "from the cache" in onnx_ref.reference_note
    assert onnx_ref.passed and all(b.cached for b in onnx_ref.backends.values())


def test_an_artifact_changed_after_export_misses_the_cache(tiny_bundle, tmp_path):
    bundle = _bundle_copy(tiny_bundle, tmp_path)
    before = run_parity(bundle, out=tmp_path / "a", backends=["onnx-fp32"])
    assert before.passed and before.backends["onnxruntime:cpu/onnx-fp32"].cached
    _swap_classes_in_onnx(bundle, "onnx-fp32", 2, 3)  # new bytes (no other test makes these), new sha256
    after = run_parity(bundle, out=tmp_path / "b", backends=["onnx-fp32"])
    bad = after.backends["onnxruntime:cpu/onnx-fp32"]
    assert not bad.cached and not bad.gate.passed and bad.comparison.n_flipped >= 6
    classes = BundleManifest.load(bundle).classes
    assert set(bad.comparison.flip_matrix) <= {classes[2], classes[3]}


def test_fast_preprocess_feeds_the_backends_the_serving_fast_path_and_judges_fp32_on_agreement(
    tiny_bundle, colour_tree, tmp_path
):
    jpegs = tmp_path / "jpegs"
    for png in sorted(colour_tree.rglob("*.png"))[::4]:
        dst = jpegs / png.parent.name / png.with_suffix(".jpg").name
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).save(dst, "JPEG", quality=90)
    exact = run_parity(tiny_bundle, data=jpegs, backends=["onnx-fp32"], out=tmp_path / "exact")
    fast = run_parity(tiny_bundle, data=jpegs, backends=["onnx-fp32"], out=tmp_path / "fast", fast_preprocess=True)
    assert exact.preprocess == "reference" and fast.preprocess == "fast" and fast.n_images == exact.n_images == 32
    (e,), (f,) = exact.backends.values(), fast.backends.values()
    assert e.comparison.max_abs_logit_diff <= 1e-4
    assert f.comparison.max_abs_logit_diff > 1e-4, "the backend got other pixels than the reference"
    assert not f.cached, "fast-path outputs are never taken from (or mistaken for) the exact path's cache"
    assert f.comparison.n_flipped == 0 and f.gate.verdict == "pass", "one-step pixel changes flip no clear answer"
    assert not any("logit" in r for r in f.gate.reasons)
    assert ParityReport.load(tmp_path / "fast" / "parity.fast.json").preprocess == "fast"
    assert not (tmp_path / "fast" / "parity.json").exists()
    result = CliRunner().invoke(
        app,
        [
            "parity",
            str(tiny_bundle),
            "--data",
            str(jpegs),
            "--backends",
            "onnx-fp32",
            "--out",
            str(tmp_path / "cli"),
            "--fast-preprocess",
        ],
    )
    assert "backends' inputs: --fast-preprocess" in result.output


def test_fast_preprocess_also_judges_the_onnx_reference_artifact(tiny_bundle, tmp_path):
    """Without torch the ONNX FP32 artifact is the reference; on fast inputs it is a candidate like any other."""
    report = run_parity(tiny_bundle, backends=["onnx-fp32"], reference="onnx", out=tmp_path, fast_preprocess=True)
    assert report.reference == "onnxruntime:cpu/onnx-fp32"
    (b,) = report.backends.values()
    assert b.artifact == "onnx-fp32" and b.comparison.max_abs_logit_diff > 1e-4  # fast inputs vs exact ones
    assert report.bundle_sha256 == sha256_file(tiny_bundle / "bundle.json")


def test_fast_preprocess_judges_openvino_as_serving_runs_it_on_uint8_images(tiny_bundle, tmp_path):
    report = run_parity(tiny_bundle, backends=["openvino-fp32", "onnx-fp32"], out=tmp_path, fast_preprocess=True)
    ov, ort = report.backends["openvino:CPU/openvino-fp32"], report.backends["onnxruntime:cpu/onnx-fp32"]
    assert "[uint8 image input]" in ov.describe and "image input" not in ort.describe
    assert ov.gate.passed and ort.gate.passed
    # the same fast pixels, normalised in the graph or on the host: the same logits to FP32 rounding
    assert abs(ov.comparison.max_abs_logit_diff - ort.comparison.max_abs_logit_diff) <= 1e-4


def test_a_failed_fast_parity_tells_to_serve_without_the_fast_path(tiny_bundle, tmp_path, monkeypatch):
    import edgeft.check.gate as gate

    monkeypatch.setattr(gate, "FAST_FP32_AGREEMENT", 1.01)  # no FP32 artifact can pass on fast inputs now
    args = ["parity", str(tiny_bundle), "--out", str(tmp_path), "--backends", "onnx-fp32"]
    result = CliRunner().invoke(app, [*args, "--fast-preprocess"])
    assert result.exit_code == 1 and "parity FAILED" in result.stderr
    assert "run `edgeft parity` without --fast-preprocess to tell" in result.stderr  # no exact verdict yet
    assert CliRunner().invoke(app, args).exit_code == 0  # THE preprocessing passes it
    result = CliRunner().invoke(app, [*args, "--fast-preprocess"])
    assert result.exit_code == 1 and "serve them without --fast-preprocess" in result.stderr
    assert "INT8" not in result.stderr


def test_a_fast_parity_failure_the_fast_path_did_not_cause_gets_the_re_export_advice(tiny_bundle, tmp_path):
    bundle = _bundle_copy(tiny_bundle, tmp_path)
    _swap_classes_in_onnx(bundle, "onnx-fp32", 0, 1)  # wrong with any preprocessing
    args = ["parity", str(bundle), "--out", str(tmp_path / "o"), "--backends", "onnx-fp32", "--fast-preprocess"]
    assert "to tell whether the fast path is to blame" in CliRunner().invoke(app, args).stderr
    assert CliRunner().invoke(app, args[:-1]).exit_code == 1  # THE preprocessing fails it too
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "serve an artifact that passed, or re-export" in result.stderr
    assert "without --fast-preprocess" not in result.stderr
