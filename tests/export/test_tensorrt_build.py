"""TensorRT plans: names, the builder's flags (with a stand-in `tensorrt` module), FP16-typed ONNX, and a real build."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.export.registry import resolve
from edgeft.export.tensorrt_build import PROFILE, build_plan, fp16_typed_onnx, plan_name, unavailable


def test_plan_name_encodes_gpu_and_tensorrt_version():
    assert plan_name("int8", "8.9", "10.3.0.26") == "tensorrt/model.int8.sm89.trt10.3.plan"
    assert plan_name("fp16", "12.0", "11.0.0") == "tensorrt/model.fp16.sm120.trt11.0.plan"


@pytest.mark.skipif(unavailable() is None, reason="TensorRT and a GPU are available here")
def test_tensorrt_skipped_with_one_clear_line():
    lines: list[str] = []
    chosen = [f.name for f in resolve(["tensorrt"], lines.append)]
    assert chosen == ["onnx"]
    assert len(lines) == 1 and lines[0].startswith("tensorrt: skipped (")


class _FakeTrt:
    """Just enough of the tensorrt module to record what build_plan asks for (TensorRT is not installable here)."""

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH, STRONGLY_TYPED = 0, 5

    class BuilderFlag:
        FP16 = "FP16"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self, version: str, parses: bool = True):
        self.__version__, self.calls = version, {}
        calls = self.calls

        class _Input:
            name = "input"

        class _Network:
            def get_input(self, i):
                return _Input()

        class _Profile:
            def set_shape(self, name, lo, opt, hi):
                calls["profile"] = (name, lo, opt, hi)

        class _Config:
            def set_memory_pool_limit(self, pool, size):
                calls["workspace"] = size

            def set_flag(self, flag):
                calls.setdefault("flags", []).append(flag)

            def add_optimization_profile(self, profile):
                pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls["network_flags"] = flags
                return _Network()

            def create_builder_config(self):
                return _Config()

            def create_optimization_profile(self):
                return _Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        class _Error:
            def desc(self):
                return "Unsupported operator FancyOp"

        class OnnxParser:
            num_errors = 0 if parses else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                calls["parsed"] = path
                return parses

            def get_error(self, i):
                return _Error()

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize(("version", "explicit_batch"), [("8.6.1", True), ("10.3.0", False), ("11.0.0", False)])
def test_tensorrt_int8_build_is_strongly_typed_with_batch_profile(tmp_path, version, explicit_batch):
    trt = _FakeTrt(version)
    plan = build_plan(trt, tmp_path / "model.int8.onnx", 224, strongly_typed=True, fp16_flag=False)
    assert plan == b"PLAN"
    flags = trt.calls["network_flags"]
    assert flags & (1 << 5)
    assert bool(flags & 1) is explicit_batch
    assert "flags" not in trt.calls  # strongly typed: precisions come from the Q/DQ graph, no builder flags
    assert trt.calls["profile"] == ("input", *[(PROFILE[k], 3, 224, 224) for k in ("min", "opt", "max")])


def test_tensorrt_fp16_uses_builder_flag_only_on_weakly_typed_networks(tmp_path):
    trt = _FakeTrt("10.3.0")
    build_plan(trt, tmp_path / "model.onnx", 224, strongly_typed=False, fp16_flag=True)
    assert trt.calls["flags"] == ["FP16"] and trt.calls["network_flags"] == 0


def test_tensorrt_parse_failure_is_a_clear_error(tmp_path):
    from edgeft.core.errors import EdgeftError

    with pytest.raises(EdgeftError, match="FancyOp"):
        build_plan(_FakeTrt("10.3.0", parses=False), tmp_path / "m.onnx", 32, strongly_typed=True, fp16_flag=False)


@pytest.mark.slow
def test_fp16_typed_onnx_for_tensorrt11_keeps_fp32_io_and_predictions(tiny_bundle, tmp_path):
    import onnx
    import onnxruntime as ort

    path = fp16_typed_onnx(tiny_bundle / "model.onnx", tmp_path / "fp16.onnx")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    fp32 = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want, got = fp32.run(["logits"], {"input": x})[0], fp16.run(["logits"], {"input": x})[0]
    assert got.dtype == np.float32
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9
    assert np.abs(got - want).max() < 0.05


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=f"no real TensorRT build here: {unavailable()}")
def test_real_tensorrt_plans_are_built_and_gated(tiny_run, tmp_path):
    from edgeft.core.manifests import BundleManifest
    from edgeft.engines.tensorrt import cuda_compute_capability, tensorrt_version
    from edgeft.export import build_bundle

    result = build_bundle(tiny_run, tmp_path / "bundle", formats=["onnx", "tensorrt"])
    bundle = BundleManifest.load(result.bundle_dir)
    plans = {r.artifact: r for r in result.rows if r.format == "tensorrt"}
    assert set(plans) == {"tensorrt-int8", "tensorrt-fp16"}
    cc = cuda_compute_capability().replace(".", "")
    for name, row in plans.items():
        assert f".sm{cc}.trt{tensorrt_version().split('.')[0]}." in row.path
        assert row.gate is not None and row.gate.n == result.report.eval_images
        if row.status == "ok":
            assert bundle.artifact(name).gate == row.gate
        else:
            assert (result.bundle_dir / "rejected" / row.path).is_file()
