"""Bounded serving: a pixel budget read from the image header, capped concurrent decodes, read timeouts,
and sources that never loop or repeat a file."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from servekit import class_frames, png_bytes

from edgeft.core.errors import ImageDecodeError
from edgeft.core.preprocess import image_size, load_image
from edgeft.serve.predictor import Predictor
from edgeft.serve.sources import glob_files, list_images, open_source

pytestmark = pytest.mark.slow


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height (small on the wire, width*height RGB pixels once decoded)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def giant() -> bytes:
    return huge_png(9000, 9000)


def test_the_pixel_budget_is_read_from_the_header_without_decoding(giant):
    assert len(giant) < 100_000
    assert image_size(giant) == (9000, 9000)
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as info:
        load_image(giant, name="giant.png", max_pixels=40_000_000)
    assert time.perf_counter() - t0 < 0.5, "refused before decoding 81 Mpx"
    assert info.value.reason == "too_many_pixels" and "9000x9000" in info.value.message
    assert info.value.path == "giant.png"


def test_huge_images_get_413_naming_the_file_and_the_server_stays_small(serve, tiny_bundle, giant):
    _, client, _ = serve(tiny_bundle, model={"backend": "onnxruntime"})
    results: list[httpx.Response] = []

    def post(i: int) -> None:
        files = {"files": (f"giant{i}.png", giant, "image/png")}
        results.append(client.post("/predict", files=files))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [413] * 4
    for r in results:
        body = r.json()
        assert body["error"] == "too_many_pixels" and "9000x9000" in body["message"] and "giant" in body["message"]
    raw = client.post("/predict", content=giant, headers={"content-type": "image/png"})
    assert raw.status_code == 413 and "--max-pixels-mp" in raw.json()["message"]
    small = png_bytes(class_frames(1)[0])
    assert client.post("/predict", content=small, headers={"content-type": "image/png"}).status_code == 200


def test_two_images_over_the_request_budget_together_are_refused(serve, tiny_bundle):
    _, client, _ = serve(tiny_bundle, model={"backend": "onnxruntime"}, http={"max_pixels_mp": 0.005})
    img = png_bytes(class_frames(1, size=(64, 48))[0])  # 3072 px each: one fits, two do not
    one = client.post("/predict", files=[("files", ("a.png", img, "image/png"))])
    assert one.status_code == 200
    two = client.post(
        "/predict", files=[("files", ("a.png", img, "image/png")), ("files", ("b.png", img, "image/png"))]
    )
    assert two.status_code == 413
    assert "the 2 images decode to 6144 px" in two.json()["message"] and "at most 5000 px" in two.json()["message"]


def test_decodes_are_capped_server_wide_and_a_full_decode_queue_gets_503(serve, tiny_bundle, monkeypatch):
    import edgeft.serve.predictor as predictor_module

    real = predictor_module.prepare_item
    gate, running, peak = threading.Event(), [0], [0]
    lock = threading.Lock()

    def slow_prepare(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            gate.wait(20.0)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(predictor_module, "prepare_item", slow_prepare)
    img = png_bytes(class_frames(1)[0])
    with Predictor(tiny_bundle, "onnxruntime", workers=2) as predictor:
        _, client, _ = serve(predictor, http={"max_queue": 3, "retry_after_s": 3})
        codes: list[int] = []

        def post() -> None:
            codes.append(client.post("/predict", content=img, headers={"content-type": "image/png"}).status_code)

        threads = [threading.Thread(target=post) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while running[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        over = client.post("/predict", content=img, headers={"content-type": "image/png"})
        assert over.status_code == 503 and over.headers["retry-after"] == "3"
        assert "waiting to be decoded" in over.json()["message"]
        gate.set()
        for t in threads:
            t.join()
    assert codes == [200, 200, 200]
    assert peak[0] == 2, "never more decodes at once than decode threads"


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(4096):
            out += chunk
    return out


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty",  # headers never finish
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\nabc",
        b"",  # connects and says nothing
    ],
    ids=["half-sent-headers", "half-sent-body", "silent"],
)
def test_slow_clients_get_408_after_the_read_timeout(serve, tiny_bundle, sent):
    srv, client, _ = serve(tiny_bundle, model={"backend": "onnxruntime"}, http={"read_timeout_s": 0.5})
    with socket.create_connection((srv.host, srv.port)) as sock:
        sock.sendall(sent)
        t0 = time.monotonic()
        answer = _read_all(sock, timeout=5.0)
        assert time.monotonic() - t0 < 4.0, "the server closed the connection"
    assert answer.startswith(b"HTTP/1.1 408") and b'"error":"timeout"' in answer
    assert client.get("/health").status_code == 200, "the server keeps serving"


def test_a_waiting_model_does_not_count_against_the_read_timeout(serve, tiny_bundle):
    """A complete request that waits for a slow model is answered, not cut off."""
    from servekit import ControlledEngine

    from edgeft.engines.select import open_bundle

    engine = ControlledEngine(open_bundle(tiny_bundle, "onnxruntime", "fp32"))
    engine.block = True
    with Predictor.from_engine(engine, tiny_bundle) as predictor:
        _, client, _ = serve(predictor, http={"read_timeout_s": 0.3})
        threading.Timer(1.0, engine.release.set).start()
        img = png_bytes(class_frames(1)[0])
        assert client.post("/predict", content=img, headers={"content-type": "image/png"}).status_code == 200


@pytest.fixture
def looped_tree(tmp_path) -> Path:
    root = tmp_path / "frames"
    (root / "sub").mkdir(parents=True)
    for name, rgb in zip(("a.png", "sub/b.png"), class_frames(2), strict=True):
        (root / name).write_bytes(png_bytes(rgb))
    os.symlink("..", root / "sub" / "loop")
    os.symlink(str(root), root / "sub" / "again")
    os.symlink("a.png", root / "alias.png")
    return root


def test_directory_and_glob_sources_never_loop_or_repeat_a_file(looped_tree):
    expected = [looped_tree / "a.png", looped_tree / "sub" / "b.png"]
    assert list_images(looped_tree) == expected
    assert glob_files(f"{looped_tree}/**/*.png") == expected
    assert glob_files(f"{looped_tree}/*.png") == [looped_tree / "a.png"]
    for source in (str(looped_tree), f"{looped_tree}/**/*.png"):
        src = open_source(source=source)
        assert len(src.files) == 2


def test_a_folder_source_names_the_files_it_skips(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("notes")
    (tmp_path / "clip.mp4").write_bytes(b"y")
    (tmp_path / ".hidden").write_text("z")
    with caplog.at_level(logging.WARNING, logger="edgeft.serve"):
        assert list_images(tmp_path) == [tmp_path / "a.png"]
    assert "skipped 2 file(s)" in caplog.text and "clip.mp4, readme.txt" in caplog.text and ".hidden" not in caplog.text
