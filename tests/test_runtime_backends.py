"""Backends on real ONNX Runtime and OpenVINO sessions: agreement, auto selection, input checks, sha256, TensorRT."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from edgeft.errors import EdgeftError
from edgeft.manifest import Artifact, BundleManifest
from edgeft.runtime import available_backends, open_backend
from edgeft.runtime.backends import (
    BACKENDS,
    CPU_PREFERENCE,
    _run_in_static_chunks,
    auto_candidates,
    find_artifact,
    plan_targets,
    trt_fingerprint_problems,
)
from edgeft.runtime.preprocess import preprocess_path

try:
    from runtime_fixtures import SPEC, TinyBundle, copy_bundle, install_fake_train_module, tiny_bundle  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.runtime_fixtures import (  # noqa: F401
        SPEC,
        TinyBundle,
        copy_bundle,
        install_fake_train_module,
        tiny_bundle,
    )

GPU_HERE = any(s in available_backends() for s in ("onnxruntime:cuda", "tensorrt"))


def batch_of(tb: TinyBundle, n: int = 12) -> np.ndarray:
    return np.stack([preprocess_path(p, SPEC) for p in tb.test_images[:n]])


def _edit_bundle(bundle_dir: Path, keep=lambda a: True, extra: list[dict] | None = None) -> None:
    data = json.loads((bundle_dir / "bundle.json").read_text())
    data["artifacts"] = [a for a in data["artifacts"] if keep(a)] + (extra or [])
    (bundle_dir / "bundle.json").write_text(json.dumps(data))


def test_available_backends_lists_cpu_engines():
    avail = available_backends()
    assert "onnxruntime:cpu" in avail
    assert "openvino:CPU" in avail
    assert set(BACKENDS) >= {"onnxruntime", "openvino", "tensorrt", "torch"}


def test_onnxruntime_and_openvino_fp32_agree(tiny_bundle):
    x = batch_of(tiny_bundle)
    with open_backend(tiny_bundle.bundle_dir, "onnxruntime:cpu", "fp32") as ort_be:
        ref = ort_be.infer(x)
        assert ort_be.describe() == "onnxruntime:cpu fp32 (onnx-fp32)"
    with open_backend(tiny_bundle.bundle_dir, "openvino:CPU", "fp32") as ov_be:
        got = ov_be.infer(x)
        assert ov_be.describe().startswith("openvino:CPU fp32 (openvino-fp32)")
    assert ref.shape == (12, 9) and ref.dtype == np.float32
    assert np.abs(ref - got).max() <= 1e-4
    classes = BundleManifest.load(tiny_bundle.bundle_dir).classes
    assert [classes[i] for i in ref.argmax(1)] == tiny_bundle.test_labels[:12]  # the tiny model is really trained


def test_int8_and_fp16_backends_agree_on_top1(tiny_bundle):
    x = batch_of(tiny_bundle, 36)
    with open_backend(tiny_bundle.bundle_dir, "onnxruntime", "fp32") as be:
        top1 = be.infer(x).argmax(1)
    for spec, precision in [("onnxruntime", "int8"), ("openvino", "int8"), ("openvino", "fp16")]:
        with open_backend(tiny_bundle.bundle_dir, spec, precision) as be:
            assert be.artifact.precision == precision
            np.testing.assert_array_equal(be.infer(x).argmax(1), top1)


def test_openvino_throughput_hint_splits_batches_across_requests(tiny_bundle):
    x = batch_of(tiny_bundle, 9)
    with open_backend(tiny_bundle.bundle_dir, "openvino", "fp32", hint="LATENCY") as lat:
        ref = lat.infer(x)
    with open_backend(tiny_bundle.bundle_dir, "openvino", "fp32", hint="THROUGHPUT", streams=2) as thr:
        assert thr.nireq == 2
        np.testing.assert_allclose(thr.infer(x), ref, atol=1e-5)
        many = thr.infer_many([x[:4], x[4:5], x[5:]])
    assert [m.shape[0] for m in many] == [4, 1, 4]
    np.testing.assert_allclose(np.concatenate(many), ref, atol=1e-5)


def test_bad_hint_and_unknown_device_are_clear_errors(tiny_bundle):
    with pytest.raises(EdgeftError, match="performance hint"):
        open_backend(tiny_bundle.bundle_dir, "openvino", "fp32", hint="FASTEST")
    with pytest.raises(EdgeftError, match="available devices"):
        open_backend(tiny_bundle.bundle_dir, "openvino:NPU", "fp32")
    with pytest.raises(EdgeftError, match=r"available providers: \[.*CPUExecutionProvider"):
        open_backend(tiny_bundle.bundle_dir, "onnxruntime:cuda" if not GPU_HERE else "onnxruntime:nope", "fp32")
    with pytest.raises(EdgeftError, match="unknown backend"):
        open_backend(tiny_bundle.bundle_dir, "tflite", "fp32")
    with pytest.raises(EdgeftError, match="unknown precision"):
        open_backend(tiny_bundle.bundle_dir, "auto", "int4")


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (np.zeros((2, 3, 32, 32), np.float64), r"dtype float64; expected a \(N, 3, 32, 32\) float32"),
        (np.zeros((2, 3, 31, 31), np.float32), r"shape \(2, 3, 31, 31\)"),
        (np.zeros((3, 32, 32), np.float32), r"shape \(3, 32, 32\)"),
        (np.zeros((2, 32, 32, 3), np.float32), r"shape \(2, 32, 32, 3\)"),
        ([[0.0]], "got list"),
    ],
)
def test_wrong_input_is_refused_with_the_expected_layout(tiny_bundle, batch, match):
    with open_backend(tiny_bundle.bundle_dir, "onnxruntime", "fp32") as be, pytest.raises(EdgeftError, match=match):
        be.infer(batch)


def test_empty_batch_and_unloaded_backend(tiny_bundle):
    be = open_backend(tiny_bundle.bundle_dir, "openvino", "int8")
    assert be.infer(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 9)
    be.close()
    with pytest.raises(EdgeftError, match="not loaded"):
        be.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_auto_picks_the_measured_cpu_preference(tiny_bundle):
    if GPU_HERE:
        pytest.skip("auto prefers GPU backends on this machine")
    bundle = BundleManifest.load(tiny_bundle.bundle_dir)
    for precision in ("fp32", "fp16", "int8"):
        spec, art = auto_candidates(bundle, precision)[0]
        expected = next(
            s
            for s in CPU_PREFERENCE[precision]
            if s in available_backends() and find_artifact(bundle, BACKENDS[s.split(":")[0]].formats[0], precision)
        )
        assert spec == expected
        with open_backend(tiny_bundle.bundle_dir, "auto", precision) as be:
            assert be.describe().startswith(f"{spec} {precision} ({art.name})")


def test_auto_falls_back_to_onnxruntime_without_openvino_artifacts(tiny_bundle, tmp_path):
    if GPU_HERE:
        pytest.skip("auto prefers GPU backends on this machine")
    bdir = copy_bundle(tiny_bundle, tmp_path / "b")
    _edit_bundle(bdir, keep=lambda a: a["format"] != "openvino")
    with open_backend(bdir, "auto", "int8") as be:
        assert be.describe() == "onnxruntime:cpu int8 (onnx-int8)"
    with pytest.raises(EdgeftError, match=r"no backend on this machine can run a fp16 artifact.*onnx-fp32"):
        open_backend(bdir, "auto", "fp16")


def test_device_specific_artifact_is_preferred(tiny_bundle, tmp_path):
    bdir = copy_bundle(tiny_bundle, tmp_path / "b")
    data = json.loads((bdir / "bundle.json").read_text())
    cpu = dict(next(a for a in data["artifacts"] if a["name"] == "onnx-int8"), name="onnx-int8-cpu")
    _edit_bundle(bdir, extra=[cpu])
    with open_backend(bdir, "onnxruntime:cpu", "int8") as be:
        assert be.artifact.name == "onnx-int8-cpu"
    targets, _ = plan_targets(BundleManifest.load(bdir), bdir, ["int8"])
    assert {t.key for t in targets} >= {"onnxruntime:cpu/onnx-int8", "onnxruntime:cpu/onnx-int8-cpu"}


@pytest.mark.parametrize(
    ("file", "backend", "precision"),
    [("model.fp32.onnx", "onnxruntime", "fp32"), ("openvino/int8/model.bin", "openvino", "int8")],
)
def test_tampered_artifact_is_refused(tiny_bundle, tmp_path, file, backend, precision):
    bdir = copy_bundle(tiny_bundle, tmp_path / "b")
    data = bytearray((bdir / file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bdir / file).write_bytes(bytes(data))
    with pytest.raises(EdgeftError, match="does not match the sha256") as err:
        open_backend(bdir, backend, precision)
    assert err.value.path == str(bdir / file)
    assert "re-export" in err.value.fix
    # the other artifacts still open
    with open_backend(bdir, "openvino", "fp16") as be:
        assert be.loaded


def test_static_batch_models_are_fed_in_padded_chunks():
    calls = []

    def run(chunk):
        calls.append(chunk.shape[0])
        return chunk.reshape(chunk.shape[0], -1)[:, :2] * 2

    x = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    out = _run_in_static_chunks(x, 2, run)
    assert calls == [2, 2, 2]
    np.testing.assert_array_equal(out, x.reshape(5, -1)[:, :2] * 2)


def test_torch_backend_loads_the_run_lazily(tiny_bundle, monkeypatch):
    install_fake_train_module(monkeypatch, tiny_bundle)
    x = batch_of(tiny_bundle, 6)
    with (
        open_backend(tiny_bundle.bundle_dir, "torch", "fp32") as tb,
        open_backend(tiny_bundle.bundle_dir, "onnxruntime", "fp32") as ob,
    ):
        assert tb.describe() == "torch:cpu fp32 (torch-fp32)"
        assert np.abs(tb.infer(x) - ob.infer(x)).max() <= 1e-4
    with pytest.raises(EdgeftError, match="fp32 only"):
        open_backend(tiny_bundle.bundle_dir, "torch", "int8")


# ---- TensorRT ---------------------------------------------------------------------------------
PLAN = {"compute_capability": "8.9", "tensorrt": "10.3.0"}


@pytest.mark.parametrize(
    ("info", "cc", "trt", "expected"),
    [
        (PLAN, "8.9", "10.3.0", []),
        (PLAN, "8.9", "10.3.0.26", []),  # build number does not matter
        (PLAN, "8.6", "10.3.0", ["built for SM 8.9, this GPU is SM 8.6"]),
        (PLAN, "8.9", "10.4.0", ["built with TensorRT 10.3.0, this machine has TensorRT 10.4.0"]),
        (PLAN, None, "10.3.0", ["no CUDA GPU"]),
        (PLAN, "8.9", None, ["TensorRT is not installed"]),
        (PLAN, "7.5", "11.0.0", ["SM 8.9, this GPU is SM 7.5", "TensorRT 10.3.0, this machine has TensorRT 11.0.0"]),
        ({**PLAN, "hardware_compatibility": "ampere+"}, "9.0", "10.3.0", []),
        ({**PLAN, "hardware_compatibility": "ampere+"}, "7.5", "10.3.0", ["Ampere+"]),
        ({**PLAN, "version_compatible": True}, "8.9", "10.5.1", []),
        ({**PLAN, "version_compatible": True}, "8.9", "10.2.0", ["needs TensorRT 10.x >= 10.3.0"]),
        ({**PLAN, "version_compatible": True}, "8.9", "11.0.0", ["needs TensorRT 10.x"]),
        ({}, "8.9", "10.3.0", ["does not record the compute capability", "does not record the TensorRT version"]),
    ],
)
def test_trt_fingerprint_problems(info, cc, trt, expected):
    problems = trt_fingerprint_problems(info, cc, trt)
    assert len(problems) == len(expected)
    for got, want in zip(problems, expected, strict=True):
        assert want in got


def _with_fake_plan(tiny_bundle, tmp_path) -> Path:
    bdir = copy_bundle(tiny_bundle, tmp_path / "b")
    plan = bdir / "tensorrt/model.int8.sm89.trt10.3.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"not a real plan")
    from edgeft.manifest import sha256_file

    art = Artifact(
        "tensorrt-int8", "tensorrt", "int8", "tensorrt/model.int8.sm89.trt10.3.plan", sha256_file(plan), info=PLAN
    )
    _edit_bundle(bdir, extra=[asdict(art)])
    return bdir


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_without_tensorrt_is_a_clear_error_and_never_auto(tiny_bundle, tmp_path):
    bdir = _with_fake_plan(tiny_bundle, tmp_path)
    with pytest.raises(EdgeftError, match="needs the Python package 'tensorrt'") as err:
        open_backend(bdir, "tensorrt", "int8")
    assert "pip install tensorrt" in err.value.fix
    with open_backend(bdir, "auto", "int8") as be:
        assert be.artifact.format != "tensorrt"
    targets, skipped = plan_targets(BundleManifest.load(bdir), bdir)
    assert all(t.artifact.format != "tensorrt" for t in targets)
    assert "TensorRT is not installed" in skipped["tensorrt/tensorrt-int8"]


def test_tensorrt_backend_matches_onnxruntime(tiny_bundle, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed (needs an NVIDIA GPU machine)")
    from edgeft.manifest import sha256_file
    from edgeft.runtime.backends import cuda_compute_capability

    cc = cuda_compute_capability()
    if cc is None:
        pytest.skip("no CUDA GPU")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((tiny_bundle.bundle_dir / "model.fp32.onnx").read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    config.add_optimization_profile(profile)
    plan_bytes = builder.build_serialized_network(network, config)
    bdir = copy_bundle(tiny_bundle, tmp_path / "b")
    plan = bdir / "tensorrt/model.fp32.plan"
    plan.parent.mkdir()
    plan.write_bytes(bytes(plan_bytes))
    info = {"compute_capability": cc, "tensorrt": trt.__version__}
    _edit_bundle(
        bdir,
        extra=[
            {
                "name": "tensorrt-fp32",
                "format": "tensorrt",
                "precision": "fp32",
                "path": "tensorrt/model.fp32.plan",
                "sha256": sha256_file(plan),
                "info": info,
            }
        ],
    )
    x = batch_of(tiny_bundle, 12)  # > max batch 8: split inside the backend
    with open_backend(bdir, "tensorrt", "fp32") as be, open_backend(bdir, "onnxruntime", "fp32") as ref:
        np.testing.assert_allclose(be.infer(x), ref.infer(x), atol=1e-3)
