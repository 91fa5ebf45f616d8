"""Predictor on the real tiny bundle: every input kind, per-item errors, batch boundaries, laziness, top-k, schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from servekit import ControlledEngine

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import BundleManifest
from edgeft.core.numeric import softmax
from edgeft.core.preprocess import load_image, preprocess
from edgeft.engines.select import open_bundle
from edgeft.serve.predictor import Predictor
from edgeft.serve.schema import Prediction

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    # unknown_below=0: these tests are about inputs, batching and top-k (test_unknown.py covers the threshold)
    with Predictor(tiny_bundle, backend="onnxruntime", batch_size=3, topk=3, unknown_below=0.0) as p:
        yield p


def reference_logits(bundle_dir, paths) -> np.ndarray:
    """THE preprocessing + the raw engine, without the Predictor."""
    spec = BundleManifest.load(bundle_dir).preprocess
    with open_bundle(bundle_dir, "onnxruntime", "fp32") as engine:
        return engine.infer(np.stack([preprocess(load_image(p), spec) for p in paths]))


def test_predictor_exposes_the_bundle_and_engine(predictor, tiny_bundle):
    bundle = BundleManifest.load(tiny_bundle)
    assert predictor.classes == bundle.classes and predictor.spec == bundle.preprocess
    assert predictor.name == bundle.name and predictor.precision == "fp32"
    assert predictor.describe() == "onnxruntime:cpu fp32 (onnx-fp32)"
    assert predictor.topk == min(3, len(bundle.classes))


def test_every_input_kind_gives_the_same_answer_as_the_engine(predictor, tiny_bundle, test_images):
    path = test_images[0][0]
    rgb = load_image(path)
    forms = [path, str(path), path.read_bytes(), rgb, np.asarray(rgb), preprocess(rgb, predictor.spec)]
    preds = predictor.predict(forms)
    ref = reference_logits(tiny_bundle, [path])[0]
    for pred in preds:
        assert pred.ok and pred.label == predictor.classes[int(ref.argmax())]
        np.testing.assert_allclose(pred.logits, ref, atol=1e-5)
    assert [p.source for p in preds[:3]] == [str(path), str(path), "<bytes #2>"]
    assert [p.source for p in preds[3:]] == ["<image #3>", "<array #4>", "<array #5>"]


def test_bad_inputs_become_error_predictions_without_sinking_the_batch(predictor, test_images, tmp_path):
    good = test_images[0][0]
    png = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    items = [
        b"definitely not an image",
        tmp_path / "missing.jpg",
        b"",
        truncated,
        np.zeros((5, 5), np.float32),
        42,
        good,
    ]
    preds = predictor.predict(items)
    assert [p.reason for p in preds[:-1]] == [
        "not_an_image",
        "unreadable",
        "empty",
        preds[3].reason,
        "unsupported_array",
        "unsupported_type",
    ]
    assert preds[3].reason in ("truncated", "corrupt")
    for p in preds[:-1]:
        assert not p.ok and p.error and p.label is None and p.prob is None and p.topk == []
    assert preds[-1].ok and preds[-1].source == str(good)


def test_batches_split_at_batch_size_and_keep_the_order(tiny_bundle, test_images):
    paths = [p for p, _ in test_images[:10]]
    engine = ControlledEngine(open_bundle(tiny_bundle, "onnxruntime", "fp32"))
    with Predictor.from_engine(engine, tiny_bundle, batch_size=3) as p:
        preds = p.predict(paths)
    assert engine.batch_sizes == [3, 3, 3, 1]
    assert [x.source for x in preds] == [str(x) for x in paths]
    np.testing.assert_allclose(np.stack([x.logits for x in preds]), reference_logits(tiny_bundle, paths), atol=1e-5)


def test_predict_iter_pulls_inputs_lazily(predictor, test_images):
    pulled = []

    def feed():
        for p, _ in test_images[:7]:
            pulled.append(p)
            yield p

    it = predictor.predict_iter(feed())
    first = next(it)
    assert first.source == str(test_images[0][0])
    assert len(pulled) <= 2 * predictor.batch_size, "one batch in hand, at most one batch of look-ahead"
    assert len([first, *it]) == 7


def test_top_k_is_softmax_ordered_with_ties_broken_by_lower_index(predictor):
    n = len(predictor.classes)
    flat, spiky = np.zeros(n, np.float32), np.full(n, -1000.0, np.float32)
    spiky[n - 1] = 1000.0
    tie, peaked = predictor.predictions(["tie", "peaked"], np.stack([flat, spiky]))
    assert [t.label for t in tie.topk] == predictor.classes[: predictor.topk]
    assert tie.prob == pytest.approx(1.0 / n) and tie.index == 0
    assert peaked.label == predictor.classes[-1] and peaked.prob == pytest.approx(1.0)
    assert all(np.isfinite(t.prob) for t in peaked.topk)
    probs = [t.prob for t in peaked.topk]
    assert probs == sorted(probs, reverse=True)


def test_probabilities_use_the_calibrated_temperature(tiny_bundle, copy_dir, test_images):
    bdir = copy_dir(tiny_bundle)
    bundle = BundleManifest.load(bdir)
    bundle.calibration.temperature = 2.0
    bundle.save(bdir)
    path = test_images[0][0]
    with (
        Predictor(bdir, "onnxruntime", unknown_below=0.0) as warm,
        Predictor(tiny_bundle, "onnxruntime", unknown_below=0.0) as plain,
    ):
        a, b = warm.predict(path)[0], plain.predict(path)[0]
    assert a.label == b.label and a.logits == b.logits
    assert a.prob == pytest.approx(float(softmax(np.array(a.logits), 2.0).max()))
    assert a.prob < b.prob


def test_from_engine_owns_the_engine(tiny_bundle, test_images):
    engine = open_bundle(tiny_bundle, "openvino", "int8")
    with Predictor.from_engine(engine, tiny_bundle, batch_size=4, topk=2) as p:
        assert p.describe() == engine.describe() and p.bundle_sha256
        preds = p.predict([x for x, _ in test_images[:4]])
    assert all(x.ok and len(x.topk) == 2 for x in preds)
    assert not engine.loaded, "closing the Predictor closed the engine"


def test_batcher_runs_prepared_tensors_through_the_engine(predictor, tiny_bundle, test_images):
    paths = [p for p, _ in test_images[:5]]
    with predictor.batcher(max_wait_ms=1) as batcher:
        rows = [f.result(timeout=30) for f in [batcher.submit(predictor.prepare(p)) for p in paths]]
    np.testing.assert_allclose(np.stack(rows), reference_logits(tiny_bundle, paths), atol=1e-5)


def test_prediction_json_is_the_schema_with_logits_only_on_request(predictor, test_images):
    pred = predictor.predict(test_images[0][0])[0]
    line = json.loads(pred.to_json())
    assert set(line) == {"source", "label", "index", "unknown", "prob", "topk", "error", "reason"}
    assert line["topk"][0] == {"label": pred.label, "prob": pred.prob}
    assert Prediction.model_validate_json(pred.to_json(with_logits=True)) == pred


def test_images_of_any_mode_are_converted(predictor):
    rgba = Image.fromarray(np.full((20, 30, 4), 128, np.uint8), "RGBA")
    gray = Image.fromarray(np.full((20, 30), 200, np.uint8), "L")
    assert all(p.ok for p in predictor.predict([rgba, gray]))


def test_bad_settings_are_refused(tiny_bundle):
    for kwargs, match in (({"batch_size": 0}, "batch_size"), ({"topk": 0}, "topk"), ({"workers": 0}, "workers")):
        with pytest.raises(EdgeftError, match=f"{match} must be >= 1"):
            Predictor(tiny_bundle, **kwargs)


@pytest.mark.parametrize("overlap", [True, False])
def test_decoding_overlaps_inference_only_off_the_cpu(predictor, test_images, overlap, monkeypatch):
    """A CPU engine runs every core: batch k+1 is decoded only after batch k was inferred (overlap=False);
    an engine elsewhere (a GPU) gets batch k+1 decoded while it runs batch k."""
    events = []
    real_infer = predictor.infer

    def infer(x):
        events.append(("infer", len(x)))
        return real_infer(x)

    def feed():
        for p, _ in test_images[:6]:
            events.append(("pull", p))
            yield p

    monkeypatch.setattr(predictor, "infer", infer)
    monkeypatch.setattr(predictor, "overlap", overlap)
    assert len(list(predictor.predict_iter(feed()))) == 6
    first_infer = events.index(("infer", 3))
    pulled_before = sum(1 for e in events[:first_infer] if e[0] == "pull")
    assert pulled_before == (6 if overlap else 3)


def test_cpu_engines_do_not_overlap_decoding(predictor):
    assert predictor.engine.device.lower().startswith("cpu") and predictor.overlap is False


def test_only_engines_on_the_cpu_stop_decoding_from_overlapping(tmp_path):
    """TensorRT and GPU devices keep the next batch decoding while they run; CPU engines do not."""
    from edgeft.engines.onnxruntime import OnnxRuntimeEngine
    from edgeft.engines.openvino import OpenVinoEngine
    from edgeft.engines.tensorrt import TensorRTEngine
    from edgeft.serve.predictor import on_cpu

    model = tmp_path / "m.onnx"
    cases = [
        (OnnxRuntimeEngine(model), True),
        (OnnxRuntimeEngine(model, device="cuda"), False),
        (OpenVinoEngine(model), True),
        (OpenVinoEngine(model, device="GPU"), False),
        (TensorRTEngine(model), False),
    ]
    assert [on_cpu(engine) for engine, _ in cases] == [want for _, want in cases]


def test_fast_preprocess_on_openvino_feeds_uint8_images_to_a_graph_that_normalises_them(tiny_bundle, test_images):
    """--fast-preprocess with OpenVINO: rows are the resized uint8 images, the IR normalises them; the answers
    equal the same engine fed the host-normalised tensors, on every path (predict, batcher, monitor tensors)."""
    paths = [p for p, _ in test_images[:7]]
    with Predictor(tiny_bundle, "openvino", "fp32", batch_size=3, fast_preprocess=True) as images_in:
        assert images_in.takes_images and "[uint8 image input]" in images_in.describe()
        s = images_in.spec.input_size
        row = images_in.prepare(paths[0])
        assert row.shape == (s, s, 3) and row.dtype == np.uint8
        got = np.array([p.logits for p in images_in.predict(paths)], np.float32)
        with images_in.batcher(max_wait_ms=1) as batcher:
            batched = np.stack([f.result(timeout=30) for f in [batcher.submit(images_in.prepare(p)) for p in paths]])
        tensor = images_in.tensor(row)  # what the parity monitor's reference is given
        assert tensor.shape == (3, s, s) and tensor.dtype == np.float32
    with Predictor(tiny_bundle, "openvino", "fp32", batch_size=3) as exact_path:
        assert not exact_path.takes_images and exact_path.prepare(paths[0]).shape == (3, s, s)
    engine = open_bundle(tiny_bundle, "openvino", "fp32")
    with Predictor.from_engine(engine, tiny_bundle, batch_size=3, fast_preprocess=True) as tensors_in:
        assert not tensors_in.takes_images  # an engine opened without image_input keeps taking tensors
        ref = np.array([p.logits for p in tensors_in.predict(paths)], np.float32)
        np.testing.assert_array_equal(tensors_in.prepare(paths[0]), tensor)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(batched, ref, atol=1e-4)
