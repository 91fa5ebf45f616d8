"""Engines on the real tiny bundle: ONNX Runtime and OpenVINO sessions, INT8, hints, input checks, torch, static batch."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import BundleManifest, SplitsDoc
from edgeft.core.preprocess import preprocess_many
from edgeft.engines.base import run_in_static_chunks
from edgeft.engines.select import available_backends, open_artifact, open_bundle

pytestmark = pytest.mark.slow

GPU_HERE = any(s in available_backends() for s in ("onnxruntime:cuda", "tensorrt"))


@pytest.fixture(scope="module")
def batch(tiny_run, tiny_bundle) -> np.ndarray:
    """The tiny run's test images, preprocessed with the bundle's spec."""
    splits = SplitsDoc.load(tiny_run)
    paths = [splits.abspath(it) for it in splits.of("test")]
    x, ok, failed = preprocess_many(paths, BundleManifest.load(tiny_bundle).preprocess)
    assert not failed
    return x


def test_onnxruntime_and_openvino_fp32_agree(tiny_bundle, batch):
    with open_bundle(tiny_bundle, "onnxruntime:cpu", "fp32") as ort_engine:
        ref = ort_engine.infer(batch)
        assert ort_engine.describe() == "onnxruntime:cpu fp32 (onnx-fp32)"
    with open_bundle(tiny_bundle, "openvino:CPU", "fp32") as ov_engine:
        got = ov_engine.infer(batch)
        assert ov_engine.describe().startswith("openvino:CPU fp32 (openvino-fp32)")
    n_classes = len(BundleManifest.load(tiny_bundle).classes)
    assert ref.shape == (batch.shape[0], n_classes) and ref.dtype == np.float32
    assert np.abs(ref - got).max() <= 1e-5


@pytest.mark.parametrize(("backend", "artifact"), [("onnxruntime", "onnx-int8-cpu"), ("openvino", "openvino-int8")])
def test_int8_artifacts_run_and_keep_top1(tiny_bundle, batch, backend, artifact):
    with open_bundle(tiny_bundle, "onnxruntime", "fp32") as ref:
        top1 = ref.infer(batch).argmax(1)
    with open_bundle(tiny_bundle, backend, "int8") as engine:
        assert engine.artifact.name == artifact  # the device-specific (cpu) variant wins for onnxruntime:cpu
        got = engine.infer(batch)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert (got.argmax(1) == top1).mean() >= 0.9


def test_openvino_throughput_hint_splits_batches_across_requests(tiny_bundle, batch):
    x = batch[:9]
    with open_bundle(tiny_bundle, "openvino", "fp32", hint="LATENCY") as latency:
        assert latency.hint == "LATENCY"
        ref = latency.infer(x)
    with open_bundle(tiny_bundle, "openvino", "fp32", hint="THROUGHPUT", streams=2) as throughput:
        assert throughput.nireq == 2
        np.testing.assert_allclose(throughput.infer(x), ref, atol=1e-5)
        many = throughput.infer_many([x[:4], x[4:5], x[5:]])
    assert [m.shape[0] for m in many] == [4, 1, 4]
    np.testing.assert_allclose(np.concatenate(many), ref, atol=1e-5)


def test_openvino_hint_defaults_follow_the_batch_size(tiny_bundle):
    with open_bundle(tiny_bundle, "openvino", "fp32", batch_size=1) as single:
        assert single.hint == "LATENCY"
    with open_bundle(tiny_bundle, "openvino", "fp32", batch_size=8) as batched:
        assert batched.hint == "THROUGHPUT"


def test_bad_hint_unknown_device_backend_and_precision_are_clear_errors(tiny_bundle):
    with pytest.raises(EdgeftError, match="unknown OpenVINO performance hint 'FASTEST'"):
        open_bundle(tiny_bundle, "openvino", "fp32", hint="FASTEST")
    with pytest.raises(EdgeftError, match="OpenVINO device 'NPU' is not available here"):
        open_bundle(tiny_bundle, "openvino:NPU", "fp32")
    with pytest.raises(EdgeftError, match=r"available: \[.*CPUExecutionProvider"):
        open_bundle(tiny_bundle, "onnxruntime:cuda" if not GPU_HERE else "onnxruntime:nope", "fp32")
    with pytest.raises(EdgeftError, match="unknown backend 'tflite'"):
        open_bundle(tiny_bundle, "tflite", "fp32")
    with pytest.raises(EdgeftError, match="unknown precision 'int4'"):
        open_bundle(tiny_bundle, "auto", "int4")
    with pytest.raises(EdgeftError, match=r"does not take option\(s\) \['hint'\]"):
        open_bundle(tiny_bundle, "onnxruntime", "fp32", hint="LATENCY")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda s: np.zeros((2, 3, s, s), np.float64), r"dtype float64; expected a \(N, 3, {s}, {s}\) float32"),
        (lambda s: np.zeros((2, 3, s - 1, s - 1), np.float32), r"shape \(2, 3, {t}, {t}\)"),
        (lambda s: np.zeros((3, s, s), np.float32), r"shape \(3, {s}, {s}\)"),
        (lambda s: np.zeros((2, s, s, 3), np.float32), r"shape \(2, {s}, {s}, 3\)"),
        (lambda s: [[0.0]], "got list"),
    ],
)
def test_wrong_input_is_refused_with_the_expected_layout(tiny_bundle, make, match):
    s = BundleManifest.load(tiny_bundle).preprocess.input_size
    with open_bundle(tiny_bundle, "onnxruntime", "fp32") as engine, pytest.raises(EdgeftError) as err:
        engine.infer(make(s))
    assert err.match(match.format(s=s, t=s - 1))
    assert err.value.fix


def test_empty_batch_and_unloaded_engine(tiny_bundle):
    bundle = BundleManifest.load(tiny_bundle)
    s, n = bundle.preprocess.input_size, len(bundle.classes)
    engine = open_bundle(tiny_bundle, "openvino", "int8")
    assert engine.infer(np.zeros((0, 3, s, s), np.float32)).shape == (0, n)
    engine.close()
    with pytest.raises(EdgeftError, match="not loaded"):
        engine.infer(np.zeros((1, 3, s, s), np.float32))


def test_static_batch_model_is_fed_in_padded_chunks(tiny_bundle, copy_dir, batch):
    """A copy of the FP32 model with its batch dimension fixed to 4: 7 rows run as 4 + (3 + 1 padding)."""
    onnx = pytest.importorskip("onnx")
    from edgeft.core.hashing import sha256_file

    bdir = copy_dir(tiny_bundle)
    bundle = BundleManifest.load(bdir)
    art = bundle.artifact("onnx-fp32")
    model = onnx.load(str(bdir / art.path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, str(bdir / art.path))
    art.sha256 = sha256_file(bdir / art.path)
    bundle.save(bdir)
    x = batch[:7]
    with open_bundle(tiny_bundle, "onnxruntime", "fp32") as dynamic, open_bundle(bdir, "onnxruntime", "fp32") as static:
        assert static.static_batch == 4 and dynamic.static_batch is None
        np.testing.assert_allclose(static.infer(x), dynamic.infer(x), atol=1e-5)
        np.testing.assert_allclose(static.infer(x[:1]), dynamic.infer(x[:1]), atol=1e-5)


def test_run_in_static_chunks_pads_the_last_chunk_and_drops_the_padding():
    seen = []

    def run(chunk: np.ndarray) -> np.ndarray:
        seen.append(chunk.copy())
        return chunk.reshape(chunk.shape[0], -1)[:, :2] * 2

    x = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2) + 1
    out = run_in_static_chunks(x, 2, run)
    assert [c.shape[0] for c in seen] == [2, 2, 2]
    assert not seen[-1][1].any(), "the padding row is zeros"
    np.testing.assert_array_equal(out, x.reshape(5, -1)[:, :2] * 2)


def test_torch_engine_loads_the_run_lazily(tiny_bundle, batch):
    pytest.importorskip("torch")
    bundle = BundleManifest.load(tiny_bundle)
    from edgeft.engines.select import torch_artifact

    engine = open_artifact(tiny_bundle, bundle, "torch:cpu", torch_artifact(bundle, tiny_bundle))
    assert not engine.loaded and not hasattr(engine, "model"), "constructing must not load the model"
    with engine, open_bundle(tiny_bundle, "onnxruntime", "fp32") as ref:
        assert engine.describe() == "torch:cpu fp32 (torch-fp32)"
        assert np.abs(engine.infer(batch) - ref.infer(batch)).max() <= 1e-4
    with pytest.raises(EdgeftError, match="fp32 only"):
        open_bundle(tiny_bundle, "torch", "int8")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_image_input_normalises_in_the_graph(tiny_run, tiny_bundle, precision):
    """image_input: the IR takes (N, S, S, 3) uint8 RGB and normalises it itself, matching the host's tensors."""
    from edgeft.core.preprocess import normalize

    spec = BundleManifest.load(tiny_bundle).preprocess
    splits = SplitsDoc.load(tiny_run)
    paths = [splits.abspath(it) for it in splits.of("test")]
    images, _, failed = preprocess_many(paths, spec, raw=True)
    assert not failed and images.dtype == np.uint8 and images.shape[1:] == (spec.input_size, spec.input_size, 3)
    tensors = np.stack([normalize(im, spec) for im in images])
    with open_bundle(tiny_bundle, "openvino", precision) as plain:
        ref = plain.infer(tensors)
    with open_bundle(tiny_bundle, "openvino", precision, image_input=True) as engine:
        assert engine.takes_images and "[uint8 image input]" in engine.describe()
        got = engine.infer(images)
        with pytest.raises(EdgeftError, match="uint8"):
            engine.infer(tensors)  # normalised tensors are refused, not normalised twice
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    if precision == "fp32":
        assert np.abs(got - ref).max() <= 1e-4
        with open_bundle(tiny_bundle, "onnxruntime", "fp32", image_input=True) as ort_engine:
            assert not getattr(ort_engine, "takes_images", False)  # engines that cannot keep taking tensors
            assert np.abs(ort_engine.infer(tensors) - ref).max() <= 1e-4
