"""`edgeft serve --http`: a real uvicorn server on 127.0.0.1 and a random port, hit with httpx."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from runtime_fixtures import CLASSES, tiny_bundle  # noqa: F401 - the shared session fixture
from test_serve_support import ControlledInfer, frame_label, png_bytes, synthetic_frames

from edgeft.errors import EdgeftError
from edgeft.manifest import sha256_file
from edgeft.runtime.predictor import Predictor
from edgeft.runtime.serve.http import BackgroundServer, create_app, parse_host_port
from edgeft.runtime.serve.model import open_model

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:  # noqa: F811 - pytest injects the imported fixture
    return tiny_bundle.bundle_dir


@pytest.fixture(scope="module")
def server(bundle):
    """The real path: create_app(bundle dir) loads the model itself, with the parity monitor checking every image."""
    app = create_app(
        bundle, backend="auto", precision="int8", max_body_bytes=LIMIT, parity_sample=1.0, parity_min_samples=1
    )
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30.0) as client:
        yield srv, client, app


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [png_bytes(rgb) for rgb in synthetic_frames(6, seed=11)]


def metrics(client: httpx.Client) -> dict[str, list]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {fam.name: fam.samples for fam in text_string_to_metric_families(r.text)}


def sample(fams: dict, name: str, **labels: str) -> float:
    for samples in fams.values():
        for s in samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((name, labels))


def test_health_names_model_backend_and_bundle_sha(server, bundle) -> None:
    srv, client, app = server
    assert srv.host == "127.0.0.1"
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "tiny-fish" and body["classes"] == len(CLASSES)
    assert body["bundle_sha256"] == sha256_file(bundle / "bundle.json")
    assert "int8" in body["backend"] and body["precision"] == "int8"


def test_predict_single_and_multipart_batch(server, bundle, images) -> None:
    _, client, _ = server
    r = client.post("/predict", content=images[0], headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 1 and res[0]["label"] == frame_label(0) and len(res[0]["topk"]) == 5
    with Predictor(bundle, backend="auto", precision="int8") as pred:
        local = pred.predict([images[0]])[0]
    assert res[0]["label"] == local.label and res[0]["prob"] == pytest.approx(local.prob, abs=1e-5)

    files = [("files", (f"fish{i}.png", data, "image/png")) for i, data in enumerate(images[1:5], start=1)]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["source"] for x in res] == [f"fish{i}.png" for i in range(1, 5)]
    assert [x["label"] for x in res] == [frame_label(i) for i in range(1, 5)]


def test_bad_inputs_get_clear_json_errors(server, images) -> None:
    _, client, _ = server
    r = client.post("/predict", content=images[0][: len(images[0]) // 2], headers={"content-type": "image/png"})
    assert r.status_code == 400 and r.json()["error"] == "bad_image"
    assert r.json()["reason"] in ("truncated", "corrupt")
    r = client.post("/predict", content=b"name,length\ncod,40\n", headers={"content-type": "text/csv"})
    assert r.status_code == 400 and r.json()["reason"] == "not_an_image"
    r = client.post("/predict", content=b"", headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and r.json()["reason"] == "empty"
    files = [("files", ("ok.png", images[0], "image/png")), ("files", ("notes.txt", b"hello", "text/plain"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 400 and r.json()["items"][0]["source"] == "notes.txt"
    r = client.post("/predict", data={"comment": "no files"}, files=[])
    assert r.status_code == 400 and r.json()["error"] in ("no_images", "bad_image")


def test_oversized_bodies_get_413(server) -> None:
    _, client, _ = server
    r = client.post("/predict", content=b"\0" * (LIMIT + 1), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large" and str(LIMIT) in r.json()["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(8):
            yield b"\0" * (LIMIT // 4)

    r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "exceeds" in r.json()["message"]


def test_metrics_parse_as_prometheus_text(server, images) -> None:
    _, client, app = server
    client.post("/predict", content=images[5], headers={"content-type": "image/png"})
    assert app.state.serve.parity.wait_idle(10.0)
    fams = metrics(client)
    for name in (
        "edgeft_http_requests",
        "edgeft_http_request_duration_seconds",
        "edgeft_batch_size",
        "edgeft_queue_depth",
        "edgeft_rejected_requests",
        "edgeft_parity_agreement",
        "edgeft_model_info",
    ):
        assert name in fams, name
    assert sample(fams, "edgeft_http_requests_total", endpoint="/predict", status="200") >= 1
    assert sample(fams, "edgeft_batch_size_count") >= 1
    assert sample(fams, "edgeft_parity_agreement") == 1.0
    assert sample(fams, "edgeft_parity_checked_total") >= 1
    if sample(fams, "edgeft_rejected_requests_total", reason="body_too_large") == 0:
        pytest.fail("the 413s of the previous test should be counted (run the module as a whole)")


def test_overload_gives_503_batches_queued_requests_and_survives_crashes(bundle, images) -> None:
    """A model blocked on an Event: 1 running + 2 queued fill the server, the 4th request gets 503."""
    with open_model(bundle, "onnxruntime", "fp32") as real:
        ctl = ControlledInfer(real.infer)
        app = create_app(real.with_infer(ctl), max_queue=2, max_batch=4, max_wait_ms=1.0, retry_after_s=2)
        state = app.state.serve
        with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30.0) as client:
            ctl.block = True
            results: dict[int, httpx.Response] = {}

            def post(i: int) -> None:
                with httpx.Client(base_url=srv.url, timeout=30.0) as c:
                    results[i] = c.post("/predict", content=images[i], headers={"content-type": "image/png"})

            first = threading.Thread(target=post, args=(0,))
            first.start()
            assert ctl.entered.wait(10.0)
            queued = [threading.Thread(target=post, args=(i,)) for i in (1, 2)]
            for t in queued:
                t.start()
            deadline = time.monotonic() + 10.0
            while state.pending < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert state.pending == 3

            r = client.post("/predict", content=images[3], headers={"content-type": "image/png"})
            assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.json()["error"] == "overloaded"

            ctl.release.set()
            for t in (first, *queued):
                t.join(15.0)
            assert [results[i].status_code for i in range(3)] == [200, 200, 200]
            assert [results[i].json()["results"][0]["label"] for i in range(3)] == [frame_label(i) for i in range(3)]
            assert ctl.batch_sizes[:2] == [1, 2], "the two queued requests run as one batch"

            ctl.block, ctl.fail = False, True
            r = client.post("/predict", content=images[4], headers={"content-type": "image/png"})
            assert r.status_code == 500 and r.json()["error"] == "internal"
            ctl.fail = False
            assert client.post("/predict", content=images[4], headers={"content-type": "image/png"}).status_code == 200
            fams = metrics(client)
            assert sample(fams, "edgeft_rejected_requests_total", reason="queue_full") == 1
            assert sample(fams, "edgeft_http_requests_total", endpoint="/predict", status="503") == 1
            assert sample(fams, "edgeft_http_requests_total", endpoint="/predict", status="500") == 1


def test_host_port_parsing() -> None:
    assert parse_host_port("8080") == ("127.0.0.1", 8080)
    assert parse_host_port(":9000") == ("127.0.0.1", 9000)
    assert parse_host_port("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_host_port("[::1]:81") == ("::1", 81)
    with pytest.raises(EdgeftError, match="HOST:PORT"):
        parse_host_port("localhost:http")


def test_status_line_mentions_queue_and_parity(server) -> None:
    _, _, app = server
    line = app.state.serve.status_line()
    assert "queue 0/64" in line and "parity" in line and "p99" in line
    assert np.isfinite(app.state.serve.latency.percentile(50))
