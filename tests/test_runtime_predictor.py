"""Predictor (every input kind, per-item errors, batching) and DynamicBatcher (batching, back-pressure, shutdown)."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import CancelledError, wait

import numpy as np
import pytest
from PIL import Image

from edgeft.errors import EdgeftError
from edgeft.runtime import DynamicBatcher, Prediction, Predictor, QueueFull
from edgeft.runtime.predictor import softmax, topk_indices
from edgeft.runtime.preprocess import preprocess_path

try:
    from runtime_fixtures import CLASSES, SPEC, tiny_bundle  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.runtime_fixtures import CLASSES, SPEC, tiny_bundle  # noqa: F401


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    with Predictor(tiny_bundle.bundle_dir, backend="onnxruntime", batch_size=3, topk=3) as p:
        yield p


def test_predictor_exposes_bundle_facts(predictor, tiny_bundle):
    assert predictor.classes == CLASSES
    assert predictor.spec == SPEC
    assert predictor.bundle.name == "tiny-fish"
    assert predictor.backend.describe() == "onnxruntime:cpu fp32 (onnx-fp32)"


def test_every_input_kind_and_per_item_errors(predictor, tiny_bundle, tmp_path):
    paths = tiny_bundle.test_images
    labels = tiny_bundle.test_labels
    png = paths[1].read_bytes()
    img = Image.open(paths[2]).convert("RGB")
    arr = np.asarray(Image.open(paths[3]).convert("RGB"))
    tensor = preprocess_path(paths[4], SPEC)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    items = [
        paths[0],
        png,
        b"definitely not an image",
        img,
        arr,
        tmp_path / "missing.jpg",
        tensor,
        b"",
        str(truncated),
        np.zeros((5, 5), np.float32),
        str(paths[5]),
    ]
    preds = predictor.predict(items)
    assert len(preds) == len(items)
    good = {0: 0, 1: 1, 3: 2, 4: 3, 6: 4, 10: 5}
    for pos, img_idx in good.items():
        p = preds[pos]
        assert p.error is None and p.ok
        assert p.label == labels[img_idx] and CLASSES[p.index] == p.label
        assert len(p.topk) == 3 and p.topk[0] == (p.label, p.prob)
        assert p.logits.shape == (9,)
    errors = {pos: preds[pos].error for pos in range(len(items)) if pos not in good}
    assert errors[2].startswith("not_an_image:")
    assert errors[5].startswith("unreadable:")
    assert errors[7].startswith("empty:")
    assert errors[8].split(":")[0] in ("truncated", "corrupt")
    assert errors[9].startswith("unsupported_array:")
    for pos in errors:
        assert preds[pos].label is None and preds[pos].logits is None
    assert preds[0].source == str(paths[0]) and preds[1].source == "<bytes #1>" and preds[3].source == "<image #3>"
    json.dumps([p.to_dict() for p in preds])  # JSON-ready


def test_predict_matches_predict_tensor_across_batch_boundaries(predictor, tiny_bundle):
    paths = tiny_bundle.test_images[:10]  # batch_size 3 -> 4 engine batches
    x = np.stack([preprocess_path(p, SPEC) for p in paths])
    logits = predictor.predict_tensor(x)
    preds = predictor.predict(paths)
    np.testing.assert_allclose(np.stack([p.logits for p in preds]), logits, atol=1e-6)
    probs = softmax(logits)
    assert [p.prob for p in preds] == pytest.approx(probs.max(1).tolist())
    assert [p.source for p in preds] == [str(p) for p in paths]


def test_predict_iter_streams_lazily(predictor, tiny_bundle):
    pulled = []

    def gen():
        for p in tiny_bundle.test_images[:7]:
            pulled.append(p)
            yield p

    it = predictor.predict_iter(gen())
    first = next(it)
    assert first.source == str(tiny_bundle.test_images[0])
    assert len(pulled) <= 6  # one batch in hand, at most one batch of look-ahead
    assert len([first, *it]) == 7


def test_softmax_is_stable_and_topk_deterministic():
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[0, 0] == pytest.approx(1.0)
    assert topk_indices(p, 3)[1].tolist() == [0, 1, 2]  # ties: lower index first


def test_prediction_dict_carries_logits_on_request():
    pred = Prediction(source="a.png", label="Trout", index=8, prob=0.9, topk=[("Trout", 0.9)], logits=np.ones(2))
    assert pred.to_dict()["topk"] == [["Trout", 0.9]]
    assert "logits" not in pred.to_dict()
    assert pred.to_dict(with_logits=True)["logits"] == [1.0, 1.0]


def test_predictor_rejects_bad_settings(tiny_bundle):
    with pytest.raises(EdgeftError, match="batch_size"):
        Predictor(tiny_bundle.bundle_dir, batch_size=0)
    with pytest.raises(EdgeftError, match="topk"):
        Predictor(tiny_bundle.bundle_dir, topk=0)


# ---- DynamicBatcher ---------------------------------------------------------------------------
def row_sums(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(batch.shape[0], -1).sum(1, keepdims=True).repeat(2, 1)


def test_batcher_merges_concurrent_submits_into_one_batch():
    calls = []

    def infer(batch):
        calls.append(batch.shape[0])
        return row_sums(batch)

    xs = [np.full((3, 4, 4), i, np.float32) for i in range(4)]
    futures = [None] * 4
    barrier = threading.Barrier(4)

    def client(i):
        barrier.wait()
        futures[i] = batcher.submit(xs[i])

    with DynamicBatcher(infer, max_batch=4, max_wait_ms=60_000, max_queue=8) as batcher:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(timeout=30) for f in futures]
        stats = batcher.stats()
    assert calls == [4]
    assert stats.batch_size_histogram == {4: 1} and stats.batches == 1 and stats.items == 4
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, [48.0 * i, 48.0 * i])
    assert stats.to_dict()["batch_size_histogram"] == {"4": 1}


def test_batcher_queue_full_raises_immediately_and_recovers():
    entered, release = threading.Event(), threading.Event()

    def infer(batch):
        entered.set()
        release.wait(30)
        return row_sums(batch)

    batcher = DynamicBatcher(infer, max_batch=1, max_wait_ms=0, max_queue=2)
    x = np.zeros((3, 2, 2), np.float32)
    first = batcher.submit(x)
    assert entered.wait(30)  # the worker holds item 1 inside infer; the queue is empty again
    queued = [batcher.submit(x), batcher.submit(x)]
    assert batcher.queue_depth == 2
    with pytest.raises(QueueFull, match="queue is full") as err:
        batcher.submit(x)
    assert isinstance(err.value, EdgeftError) and err.value.fix
    release.set()
    for f in [first, *queued]:
        assert f.result(timeout=30).shape == (2,)
    batcher.close()
    stats = batcher.stats()
    assert stats.rejected == 1 and stats.batches == 3 and stats.batch_size_histogram == {1: 3}


def test_batcher_close_without_drain_cancels_queued_work():
    entered, release = threading.Event(), threading.Event()

    def infer(batch):
        entered.set()
        release.wait(30)
        return row_sums(batch)

    batcher = DynamicBatcher(infer, max_batch=1, max_wait_ms=0, max_queue=4)
    x = np.zeros((3, 2, 2), np.float32)
    running = batcher.submit(x)
    assert entered.wait(30)
    pending = [batcher.submit(x), batcher.submit(x)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    done, _ = wait(pending, timeout=30)
    assert len(done) == 2 and all(f.cancelled() for f in pending)
    release.set()
    closer.join(30)
    assert running.result(timeout=30).shape == (2,)
    with pytest.raises(CancelledError):
        pending[0].result()
    assert batcher.stats().cancelled == 2
    with pytest.raises(EdgeftError, match="closed"):
        batcher.submit(x)


def test_batcher_close_drains_by_default():
    batcher = DynamicBatcher(row_sums, max_batch=2, max_wait_ms=1, max_queue=16)
    futures = [batcher.submit(np.ones((3, 2, 2), np.float32)) for _ in range(5)]
    batcher.close()
    assert all(f.result(timeout=0).tolist() == [12.0, 12.0] for f in futures)
    assert batcher.stats().items == 5


def test_batcher_propagates_infer_errors_and_keeps_serving():
    def infer(batch):
        if (batch < 0).any():
            raise RuntimeError("engine failed")
        return row_sums(batch)

    with DynamicBatcher(infer, max_batch=1, max_wait_ms=0) as batcher:
        bad = batcher.submit(-np.ones((3, 2, 2), np.float32))
        with pytest.raises(RuntimeError, match="engine failed"):
            bad.result(timeout=30)
        assert batcher.submit(np.ones((3, 2, 2), np.float32)).result(timeout=30).tolist() == [12.0, 12.0]
        assert batcher.stats().errors == 1


def test_batcher_validates_items():
    with DynamicBatcher(row_sums, item_shape=(3, 2, 2)) as batcher:
        with pytest.raises(EdgeftError, match="float32"):
            batcher.submit(np.ones((3, 2, 2), np.float64))
        with pytest.raises(EdgeftError, match="differs"):
            batcher.submit(np.ones((3, 4, 4), np.float32))
    with pytest.raises(EdgeftError, match="invalid batcher settings"):
        DynamicBatcher(row_sums, max_batch=0)


def test_predictor_batcher_matches_direct_inference(predictor, tiny_bundle):
    x = np.stack([preprocess_path(p, SPEC) for p in tiny_bundle.test_images[:5]])
    with predictor.batcher(max_wait_ms=1) as batcher:
        rows = [f.result(timeout=30) for f in [batcher.submit(t) for t in x]]
    np.testing.assert_allclose(np.stack(rows), predictor.predict_tensor(x), atol=1e-6)
    pred = predictor.make_prediction("frame-1", rows[0])
    assert pred.label == tiny_bundle.test_labels[0]


def test_from_backend_wraps_a_loaded_backend(tiny_bundle):
    from edgeft.runtime import open_backend

    backend = open_backend(tiny_bundle.bundle_dir, "openvino", "int8")
    with Predictor.from_backend(backend, batch_size=4, topk=2) as p:
        preds = p.predict(tiny_bundle.test_images[:4])
    assert [x.label for x in preds] == tiny_bundle.test_labels[:4]
    assert not backend.loaded  # closing the predictor closed the backend


def test_image_modes_are_converted(predictor):
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 4), 128, np.uint8), "RGBA").save(buf, "PNG")
    gray = Image.fromarray(np.full((20, 30), 200, np.uint8), "L")
    preds = predictor.predict([buf.getvalue(), gray])
    assert all(p.ok for p in preds)


def test_openvino_hint_follows_batch_size(tiny_bundle):
    with Predictor(tiny_bundle.bundle_dir, backend="openvino", batch_size=1) as single:
        assert single.backend.hint == "LATENCY"
    with Predictor(tiny_bundle.bundle_dir, backend="openvino", batch_size=8) as batched:
        assert batched.backend.hint == "THROUGHPUT"
    with Predictor(tiny_bundle.bundle_dir, backend="openvino", batch_size=8, hint="LATENCY") as forced:
        assert forced.backend.hint == "LATENCY"
