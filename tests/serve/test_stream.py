"""`edgeft serve --source/--camera`: real OpenCV on real video files, image folders, reconnects, and the loop's outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from servekit import class_frames, decode_video, write_video

from edgeft.core.errors import EdgeftError
from edgeft.serve.config import ServeConfig, StreamOptions
from edgeft.serve.outputs import AnnotatedSaver, JsonlSink
from edgeft.serve.predictor import Predictor
from edgeft.serve.schema import FrameRecord
from edgeft.serve.sources import PacedCapture, open_source
from edgeft.serve.stream import StreamRunner, serve_stream

pytestmark = pytest.mark.slow

N_FRAMES = 24


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    with Predictor(tiny_bundle, "onnxruntime", "fp32", batch_size=4, topk=3) as p:
        yield p


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    """A real video written by OpenCV, and the frames it decodes back to as a PNG folder."""
    root = tmp_path_factory.mktemp("media")
    video = root / "clip.avi"
    fourcc = write_video(video, class_frames(N_FRAMES), fps=30.0)
    decoded = decode_video(video)
    frames_dir = root / "frames"
    frames_dir.mkdir()
    for i, rgb in enumerate(decoded):
        cv2.imwrite(str(frames_dir / f"frame_{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return {"video": video, "dir": frames_dir, "fourcc": fourcc, "decoded": decoded}


def run(predictor, source, out: Path, **kw) -> tuple[list[FrameRecord], object]:
    sink = JsonlSink(out)
    try:
        report = StreamRunner(predictor, source.start(), sink, status_every_s=0, **kw).run()
    finally:
        sink.close()
    return [FrameRecord.model_validate_json(line) for line in out.read_text().splitlines()], report


def test_video_file_gives_the_same_predictions_as_its_frames_as_images(predictor, media, tmp_path):
    assert len(media["decoded"]) == N_FRAMES
    if media["fourcc"] == "FFV1":  # lossless: the decoded frames are the written ones, bit for bit
        assert all(np.array_equal(a, b) for a, b in zip(media["decoded"], class_frames(N_FRAMES), strict=True))
    src = open_source(source=str(media["video"]))
    assert not src.live and src.kind == "video"
    saver = AnnotatedSaver(tmp_path / "annotated", as_video=True, fps=src.fps, source_id=src.source_id)
    video, video_report = run(predictor, src, tmp_path / "video.jsonl", saver=saver)
    saver.close()
    folder, _ = run(predictor, open_source(source=str(media["dir"])), tmp_path / "dir.jsonl")

    assert [r.frame for r in video] == list(range(N_FRAMES)) == [r.frame for r in folder]
    assert video_report.frames == N_FRAMES and video_report.dropped == 0 and video_report.stopped_by == "end"
    assert [r.prediction.label for r in video] == [r.prediction.label for r in folder]
    for v, d in zip(video, folder, strict=True):
        assert v.prediction.prob == pytest.approx(d.prediction.prob, abs=1e-5)
    direct = predictor.predict(media["decoded"])
    assert [r.prediction.label for r in video] == [p.label for p in direct], "the loop and predict() agree"
    first = video[0]
    assert first.stream == "clip.avi" and first.backend == predictor.describe() and len(first.prediction.topk) == 3
    assert first.latency_ms is not None and first.infer_ms is not None and first.prediction.logits is None
    assert folder[3].prediction.source == "frame_0003.png"
    annotated = decode_video(saver.video_path)
    assert len(annotated) == N_FRAMES
    assert not np.array_equal(annotated[0][:10], media["decoded"][0][:10]), "the label box is drawn"


def test_max_frames_stops_and_corrupt_images_become_error_lines(predictor, media, tmp_path):
    rows, report = run(predictor, open_source(source=str(media["video"])), tmp_path / "a.jsonl", max_frames=7)
    assert len(rows) == 7 and report.stopped_by == "max-frames"

    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), media["decoded"][0])
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cv2.imwrite(str(folder / "c.png"), media["decoded"][1])
    rows, report = run(predictor, open_source(source=str(folder / "*.png")), tmp_path / "b.jsonl")
    assert [r.prediction.source for r in rows] == ["a.png", "b.png", "c.png"]
    bad = rows[1].prediction
    assert bad.reason in ("corrupt", "not_an_image", "truncated") and bad.label is None and bad.error
    assert rows[0].prediction.ok and rows[2].prediction.ok and report.errors == 1


def test_lost_stream_reconnects_with_backoff(predictor, media, tmp_path, caplog):
    """First capture: a real cv2.VideoCapture on a truncated copy of the clip (ends mid-stream); then the full clip."""
    truncated = tmp_path / "truncated.avi"
    data = media["video"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    calls: list[str] = []

    def open_capture(target):
        calls.append(str(target))
        path = truncated if len(calls) == 1 else media["video"]
        return PacedCapture(cv2.VideoCapture(str(path)), fps=300.0)

    opts = StreamOptions(reconnect=True, max_retries=3, backoff_s=0.01, max_backoff_s=0.02)
    src = open_source(source="rtsp://user:secret@camera.local/stream", options=opts, open_capture=open_capture)
    assert src.live and "secret" not in src.source_id
    holder: dict = {}

    def on_record(frame, _record) -> None:
        if frame.session >= 2:
            holder["runner"].stop()

    sink = JsonlSink(tmp_path / "live.jsonl")
    holder["runner"] = runner = StreamRunner(predictor, src.start(), sink, status_every_s=0, on_record=on_record)
    with caplog.at_level(logging.WARNING, logger="edgeft.serve"):
        report = runner.run()
    sink.close()
    assert report.stopped_by == "stop" and len(calls) >= 2 and report.reconnects >= 1
    records = [FrameRecord.model_validate_json(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert records[0].session == 1 and records[-1].session >= 2
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    assert any("reconnected" in r.getMessage() for r in caplog.records)
    frames = [r.frame for r in records]
    assert frames == sorted(frames) and len(set(frames)) == len(frames), "frame indices count on across reconnects"


def test_unopenable_camera_fails_clearly_after_retries(predictor, tmp_path, caplog):
    src = open_source(camera=99, options=StreamOptions(max_retries=2, backoff_s=0.01, max_backoff_s=0.02))
    sink = JsonlSink(tmp_path / "cam.jsonl")
    with caplog.at_level(logging.WARNING, logger="edgeft.serve"), pytest.raises(EdgeftError) as info:
        StreamRunner(predictor, src.start(), sink, status_every_s=0).run()
    assert "cannot open camera 99 after 3 attempts" in str(info.value)
    assert info.value.fix and "--camera" in info.value.fix
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "retry 2/2" in retries[-1]
    src = open_source(camera=99, options=StreamOptions(reconnect=False))
    with pytest.raises(EdgeftError, match="after 1 attempt"):
        StreamRunner(predictor, src.start(), sink, status_every_s=0).run()
    sink.close()


class OpensButNeverStreams:
    """A capture that opens and then fails every read (a camera whose driver hangs)."""

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        return False, None

    def get(self, _prop: int) -> float:
        return 0.0

    def release(self) -> None:
        pass


def test_a_source_that_opens_but_never_streams_gives_up(predictor, tmp_path):
    opens = []
    opts = StreamOptions(max_retries=2, backoff_s=0.01)
    src = open_source(
        source="http://cam.local/mjpeg", options=opts, open_capture=lambda t: opens.append(t) or OpensButNeverStreams()
    )
    sink = JsonlSink(tmp_path / "dead.jsonl")
    with pytest.raises(EdgeftError, match="opens but delivers no frames"):
        StreamRunner(predictor, src.start(), sink, status_every_s=0).run()
    sink.close()
    assert len(opens) == 3, "1 attempt + 2 retries, then a clear error instead of a reconnect loop"


def test_serve_stream_opens_and_closes_everything_for_one_call(tiny_bundle, media, tmp_path):
    config = ServeConfig.build(
        model={"backend": "onnxruntime", "precision": "int8", "batch_size": 5},
        parity={"sample": 1.0, "min_samples": 5},
        stream={"jsonl": str(tmp_path / "out.jsonl"), "max_frames": 12},
        status_every_s=0,
    )
    report = serve_stream(tiny_bundle, config, source=str(media["dir"]))
    assert report.frames == 12 and report.lines == 12 and report.stopped_by == "max-frames"
    assert report.jsonl == str(tmp_path / "out.jsonl") and "int8" in report.backend
    assert report.parity is not None and report.parity.checked + report.parity.dropped == 12
    assert report.parity.reference.startswith("onnxruntime:cpu fp32 (onnx-fp32)")
    with pytest.raises(EdgeftError, match="--reconnect applies to live sources"):
        serve_stream(
            tiny_bundle, config.model_copy(update={"stream": StreamOptions(reconnect=True)}), source=str(media["video"])
        )


def test_video_files_decode_on_one_thread_and_still_open_when_ffmpeg_cannot(tmp_path):
    """FFmpeg's decoder threads would run beside the model on the same cores (the camera benchmark's p99
    tripled); files are opened with one decoder thread, and a file FFmpeg refuses falls back to OpenCV's choice."""
    from edgeft.serve.sources.base import VIDEO_DECODE_THREADS, default_open_capture

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    cap = default_open_capture(str(path))
    try:
        assert cap.isOpened() and cap.read()[0]
        assert cap.get(cv2.CAP_PROP_N_THREADS) == VIDEO_DECODE_THREADS == 1
    finally:
        cap.release()
    missing = default_open_capture(str(tmp_path / "absent.avi"))
    assert not missing.isOpened()


def test_the_parity_monitor_gets_tensors_when_openvino_takes_uint8_images(tiny_bundle, media, tmp_path):
    config = ServeConfig.build(
        model={"backend": "openvino", "precision": "fp32", "batch_size": 4, "fast_preprocess": True},
        parity={"sample": 1.0, "min_samples": 5},
        stream={"jsonl": str(tmp_path / "out.jsonl"), "max_frames": 8},
        status_every_s=0,
    )
    report = serve_stream(tiny_bundle, config, source=str(media["dir"]))
    assert "[uint8 image input]" in report.backend and report.frames == 8
    p = report.parity
    assert p is not None and p.errors == 0 and p.checked + p.dropped == 8 and p.checked >= 1
    assert p.disagreements == 0, "the reference got the normalised tensor of each served image"
