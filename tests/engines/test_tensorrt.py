"""TensorRT: which plans fit a machine, a clear error (and never `auto`) without TensorRT, and a real plan on a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import Artifact, BundleManifest
from edgeft.engines.select import open_bundle, plan_targets
from edgeft.engines.tensorrt import cuda_compute_capability, trt_fingerprint_problems

PLAN = {"compute_capability": "8.9", "tensorrt": "10.3.0"}
TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize(
    ("info", "cc", "trt", "expected"),
    [
        (PLAN, "8.9", "10.3.0", []),
        (PLAN, "8.9", "10.3.0.26", []),  # the build number does not matter
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


def with_plan(bundle_dir: Path, plan: bytes, info: dict, precision: str = "int8") -> Path:
    """Add a TensorRT plan artifact to a (copied) bundle."""
    rel = f"tensorrt/model.{precision}.plan"
    (bundle_dir / rel).parent.mkdir(exist_ok=True)
    (bundle_dir / rel).write_bytes(plan)
    bundle = BundleManifest.load(bundle_dir)
    art = Artifact(
        name=f"tensorrt-{precision}",
        format="tensorrt",
        precision=precision,
        path=rel,
        sha256=sha256_file(bundle_dir / rel),
        info=info,
    )
    bundle.artifacts = [*bundle.artifacts, art]
    bundle.save(bundle_dir)
    return bundle_dir


@pytest.mark.slow
@pytest.mark.skipif(TRT_INSTALLED, reason="tensorrt is installed here")
def test_tensorrt_absent_is_a_clear_error_and_never_picked(tiny_bundle, copy_dir):
    bdir = with_plan(copy_dir(tiny_bundle), b"not a real plan", PLAN)
    with pytest.raises(EdgeftError, match="needs the Python package 'tensorrt'") as err:
        open_bundle(bdir, "tensorrt", "int8")
    assert "pip install tensorrt" in err.value.fix
    with open_bundle(bdir, "auto", "int8") as engine:
        assert engine.artifact.format != "tensorrt"
    targets, skipped = plan_targets(BundleManifest.load(bdir), bdir)
    assert all(t.artifact.format != "tensorrt" for t in targets)
    assert "TensorRT or a GPU matching the plan is not available" in skipped["tensorrt/tensorrt-int8"]


@pytest.mark.slow
@pytest.mark.skipif(not TRT_INSTALLED, reason="tensorrt is not installed (needs an NVIDIA GPU machine)")
def test_real_tensorrt_plan_matches_onnxruntime(tiny_bundle, copy_dir):
    import tensorrt as trt

    cc = cuda_compute_capability()
    if cc is None:
        pytest.skip("tensorrt is installed but there is no CUDA GPU")
    bundle = BundleManifest.load(tiny_bundle)
    s = bundle.preprocess.input_size
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((tiny_bundle / bundle.artifact("onnx-fp32").path).read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(bundle.input.name, (1, 3, s, s), (4, 3, s, s), (8, 3, s, s))
    config.add_optimization_profile(profile)
    plan = bytes(builder.build_serialized_network(network, config))
    bdir = with_plan(copy_dir(tiny_bundle), plan, {"compute_capability": cc, "tensorrt": trt.__version__}, "fp32")
    x = np.random.default_rng(0).normal(size=(12, 3, s, s)).astype(np.float32)  # > max batch 8: split inside
    with open_bundle(bdir, "tensorrt", "fp32") as engine, open_bundle(bdir, "onnxruntime", "fp32") as ref:
        np.testing.assert_allclose(engine.infer(x), ref.infer(x), atol=1e-3)
