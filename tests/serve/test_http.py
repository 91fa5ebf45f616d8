"""`edgeft serve --http`: a real uvicorn server on 127.0.0.1 (a free port per test), hit with httpx.

Every test starts its own server, so no test depends on what another one did.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servekit import ControlledEngine, class_frames, png_bytes

from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import BundleManifest
from edgeft.core.preprocess import normalize
from edgeft.engines.select import open_bundle
from edgeft.serve.predictor import Predictor, prepare_item
from edgeft.serve.schema import ErrorBody, HealthResponse, PredictResponse
from edgeft.serve.server import parse_host_port

LIMIT_MB = 0.0625  # 64 KiB
LIMIT = int(LIMIT_MB * 2**20)
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [png_bytes(rgb) for rgb in class_frames(6, seed=11)]


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_health_and_openapi_describe_the_served_model(serve, tiny_bundle):
    srv, client, _ = serve(tiny_bundle, model={"backend": "auto", "precision": "int8"})
    assert srv.host == "127.0.0.1"
    health = HealthResponse.model_validate(client.get("/health").json())
    bundle = BundleManifest.load(tiny_bundle)
    assert health.status == "ok" and health.model == bundle.name and health.classes == len(bundle.classes)
    assert health.bundle_sha256 == sha256_file(tiny_bundle / "bundle.json")
    assert "int8" in health.backend and health.precision == "int8"
    spec = client.get("/openapi.json").json()
    assert {"Prediction", "PredictResponse", "ErrorBody", "HealthResponse", "Label"} <= set(
        spec["components"]["schemas"]
    )
    post = spec["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(post["requestBody"]["content"])
    assert {"200", "400", "413", "503", "504"} <= set(post["responses"])
    response = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert response == {"$ref": "#/components/schemas/PredictResponse"}


@pytest.mark.slow
def test_predict_raw_body_and_multipart(serve, tiny_bundle, images):
    _, client, _ = serve(tiny_bundle, model={"backend": "onnxruntime", "precision": "fp32"})
    with Predictor(tiny_bundle, "onnxruntime", "fp32") as local:
        expected = local.predict(images[:5])
    r = client.post("/predict", content=images[0], headers=PNG)
    assert r.status_code == 200, r.text
    body = PredictResponse.model_validate(r.json())
    assert body.backend == "onnxruntime:cpu fp32 (onnx-fp32)" and body.latency_ms > 0
    (pred,) = body.predictions
    assert pred.source == "<body>" and pred.label == expected[0].label and pred.logits is None
    assert pred.prob == pytest.approx(expected[0].prob, abs=1e-6)

    files = [("files", (f"fish{i}.png", images[i], "image/png")) for i in range(1, 5)]
    r = client.post("/predict", files=files, params={"logits": "true"})
    assert r.status_code == 200, r.text
    preds = PredictResponse.model_validate(r.json()).predictions
    assert [p.source for p in preds] == [f"fish{i}.png" for i in range(1, 5)]
    assert [p.label for p in preds] == [e.label for e in expected[1:5]]
    assert preds[0].logits == pytest.approx(expected[1].logits, abs=1e-5)


@pytest.mark.slow
def test_bad_requests_get_clear_json_errors(serve, tiny_bundle, images):
    _, client, _ = serve(tiny_bundle, model={"backend": "onnxruntime"}, http={"max_queue": 3})

    def error(r: httpx.Response, status: int) -> ErrorBody:
        assert r.status_code == status, r.text
        return ErrorBody.model_validate(r.json())

    half = images[0][: len(images[0]) // 2]
    assert error(client.post("/predict", content=half, headers=PNG), 400).reason in ("truncated", "corrupt")
    csv = error(client.post("/predict", content=b"name,length\ncod,40\n", headers={"content-type": "text/csv"}), 400)
    assert csv.error == "bad_image" and csv.reason == "not_an_image"
    assert error(client.post("/predict", content=b"", headers=PNG), 400).reason == "empty"
    mixed = [("files", ("ok.png", images[0], "image/png")), ("files", ("notes.txt", b"hello", "text/plain"))]
    body = error(client.post("/predict", files=mixed), 400)
    assert body.error == "bad_image" and [(i.index, i.source) for i in body.items] == [(1, "notes.txt")]
    assert error(client.post("/predict", data={"comment": "no files"}), 400).error == "no_images"
    named = [(name, (f"{name}.png", images[0], "image/png")) for name in ("file", "image")]  # any field name
    assert [
        p.source for p in PredictResponse.model_validate(client.post("/predict", files=named).json()).predictions
    ] == [
        "file.png",
        "image.png",
    ]
    urlencoded = {"content-type": "application/x-www-form-urlencoded"}  # what curl --data-binary sends
    as_form = error(client.post("/predict", content=images[0], headers=urlencoded), 400)
    assert as_form.error == "no_images" and "Content-Type: image/jpeg" in as_form.message
    many = [("files", (f"f{i}.png", images[0], "image/png")) for i in range(4)]
    assert error(client.post("/predict", files=many), 400).error == "too_many_images"
    assert (
        error(client.post("/predict", params={"logits": "maybe"}, content=images[0], headers=PNG), 400).error
        == "bad_request"
    )
    assert error(client.get("/predict"), 405).error == "method_not_allowed"
    assert error(client.get("/nowhere"), 404).error == "not_found"


@pytest.mark.slow
def test_oversized_bodies_get_413(serve, tiny_bundle):
    _, client, _ = serve(tiny_bundle, model={"backend": "onnxruntime"}, http={"max_body_mb": LIMIT_MB})
    r = client.post("/predict", content=b"\0" * (LIMIT + 1), headers=PNG)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large" and str(LIMIT) in r.json()["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(8):
            yield b"\0" * (LIMIT // 4)

    r = client.post("/predict", content=chunks(), headers=PNG)
    assert r.status_code == 413 and "exceeds" in r.json()["message"]
    files = [("files", ("big.png", b"\0" * (LIMIT + 1), "image/png"))]
    assert client.post("/predict", files=files).status_code == 413
    assert metric(scrape(client), "edgeft_http_errors_total", error="body_too_large") == 3


@pytest.mark.slow
def test_overload_gives_503_with_retry_after_and_the_queue_runs_as_one_batch(serve, tiny_bundle, images):
    """The model blocks: 1 running + 2 queued fill max_queue=2, so the 4th request is refused at once."""
    engine = ControlledEngine(open_bundle(tiny_bundle, "onnxruntime", "fp32"))
    with Predictor.from_engine(engine, tiny_bundle, batch_size=4) as predictor:
        srv, client, app = serve(predictor, http={"max_queue": 2, "max_wait_ms": 1.0, "retry_after_s": 2})
        expected = [p.label for p in predictor.predict(images[:3])]
        engine.batch_sizes.clear()
        engine.block = True
        results: dict[int, httpx.Response] = {}

        def post(i: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=30.0) as c:
                results[i] = c.post("/predict", content=images[i], headers=PNG)

        threads = [threading.Thread(target=post, args=(0,))]
        threads[0].start()
        assert engine.entered.wait(10.0)
        threads += [threading.Thread(target=post, args=(i,)) for i in (1, 2)]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 10.0
        while app.state.serve.health().inflight < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/health").json()["inflight"] == 3

        r = client.post("/predict", content=images[3], headers=PNG)
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.json()["error"] == "overloaded"
        engine.release.set()
        for t in threads:
            t.join(15.0)
        assert [results[i].status_code for i in range(3)] == [200, 200, 200]
        assert [results[i].json()["predictions"][0]["label"] for i in range(3)] == expected
        assert engine.batch_sizes[:2] == [1, 2], "the two queued requests ran as one batch"
        samples = scrape(client)
        assert metric(samples, "edgeft_http_requests_total", endpoint="/predict", status="503") == 1
        assert metric(samples, "edgeft_http_errors_total", error="overloaded") == 1
        assert metric(samples, "edgeft_inflight_images") == 0


@pytest.mark.slow
def test_timeouts_and_model_crashes_are_json_and_the_server_survives(serve, tiny_bundle, images):
    engine = ControlledEngine(open_bundle(tiny_bundle, "onnxruntime", "fp32"))
    with Predictor.from_engine(engine, tiny_bundle) as predictor:
        _, client, _ = serve(predictor, http={"request_timeout_s": 0.2})
        engine.block = True
        r = client.post("/predict", content=images[0], headers=PNG)
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        engine.block = False
        engine.release.set()
        engine.fail = True
        r = client.post("/predict", content=images[0], headers=PNG)
        assert r.status_code == 500 and r.json()["error"] == "inference_failed"
        engine.fail = False
        assert client.post("/predict", content=images[0], headers=PNG).status_code == 200


@pytest.mark.slow
def test_metrics_are_prometheus_text_and_the_status_line_reads_them(serve, tiny_bundle, images):
    _, client, app = serve(
        tiny_bundle, model={"backend": "onnxruntime", "precision": "int8"}, parity={"sample": 1.0, "min_samples": 1}
    )
    for i in range(2):
        assert client.post("/predict", content=images[i], headers=PNG).status_code == 200
    files = [("files", (f"f{i}.png", images[i], "image/png")) for i in range(2, 5)]
    assert client.post("/predict", files=files).status_code == 200
    assert app.state.serve.monitor.wait_idle(10.0)
    samples = scrape(client)
    assert metric(samples, "edgeft_http_requests_total", endpoint="/predict", status="200") == 3
    assert metric(samples, "edgeft_images_total") == 5
    assert metric(samples, "edgeft_batch_size_sum") == 5
    assert metric(samples, "edgeft_http_request_duration_seconds_count", endpoint="/predict") == 3
    assert metric(samples, "edgeft_queue_capacity") == 64 and metric(samples, "edgeft_queue_depth") == 0
    assert metric(samples, "edgeft_parity_checked_total") == 5
    assert metric(samples, "edgeft_parity_window_samples") == 5
    info = next(labels for (name, labels) in samples if name == "edgeft_model_info")
    assert dict(info)["bundle_sha256"] == sha256_file(tiny_bundle / "bundle.json")
    line = app.state.serve.status_line()
    assert line.startswith("http requests 3 (failed 0)") and "queue 0/64" in line and "in flight 0" in line
    assert "parity" in line


def test_host_port_parsing():
    assert parse_host_port("8080") == ("127.0.0.1", 8080)
    assert parse_host_port(":9000") == ("127.0.0.1", 9000)
    assert parse_host_port("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_host_port("[::1]:81") == ("::1", 81)
    with pytest.raises(EdgeftError, match="HOST:PORT"):
        parse_host_port("localhost:http")
    with pytest.raises(EdgeftError, match="out of range"):
        parse_host_port("70000")


@pytest.mark.slow
def test_http_with_openvino_on_uint8_images_batches_them_and_checks_parity(serve, tiny_bundle, images):
    _, client, app = serve(
        tiny_bundle,
        model={"backend": "openvino", "precision": "fp32", "fast_preprocess": True},
        parity={"sample": 1.0, "min_samples": 1},
    )
    assert app.state.serve.predictor.takes_images
    files = [("files", (f"f{i}.png", images[i], "image/png")) for i in range(4)]
    r = client.post("/predict", files=files, params={"logits": True})
    assert r.status_code == 200
    served = np.array([p["logits"] for p in r.json()["predictions"]], np.float32)
    assert app.state.serve.monitor.wait_idle(10.0)
    samples = scrape(client)
    assert metric(samples, "edgeft_parity_checked_total") == 4  # each reference got a (3, S, S) tensor
    assert metric(samples, "edgeft_parity_disagreements_total") == 0 and app.state.serve.monitor.snapshot().errors == 0
    with Predictor(tiny_bundle, "openvino", "fp32", fast_preprocess=False) as tensors_in:
        spec = tensors_in.spec
        x = np.stack([normalize(prepare_item(b, spec, fast=True, raw=True), spec) for b in images[:4]])
        np.testing.assert_allclose(served, tensors_in.infer(x), atol=1e-4)


def test_the_status_line_percentiles_never_exceed_the_slowest_request():
    from edgeft.serve.metrics import PREDICT, ServeMetrics

    metrics = ServeMetrics({"name": "m"}, capacity=4)
    for seconds in (0.01, 0.01, 0.01, 0.01, 2.0):
        metrics.observe_request(PREDICT, 200, seconds)
    p99 = re.search(r"p99 ([\d.]+) ms", metrics.status_line())
    assert p99 is not None and float(p99.group(1)) == 2000.0  # the (1, 2.5] s bucket alone would read ~2,400
    assert "p99 - ms" in metrics.status_line()  # nothing since the previous line
