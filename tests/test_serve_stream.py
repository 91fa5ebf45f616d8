"""`edgeft serve --source/--camera`: real OpenCV videos, image folders, reconnects and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime_fixtures import tiny_bundle  # noqa: F401 - the shared session fixture
from test_serve_support import decode_video, frame_label, synthetic_frames, write_video
from typer.testing import CliRunner

from edgeft.errors import EdgeftError
from edgeft.runtime.serve.model import open_model
from edgeft.runtime.serve.outputs import AnnotatedSaver, JsonlSink
from edgeft.runtime.serve.sources import PacedCapture, SourceOptions, open_source
from edgeft.runtime.serve.stream import StreamRunner

N_FRAMES = 24


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:  # noqa: F811 - pytest injects the imported fixture
    return tiny_bundle.bundle_dir


@pytest.fixture(scope="module")
def model(bundle):
    with open_model(bundle, "onnxruntime", "fp32", batch_size=4, topk=3) as m:
        yield m


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    """A real video written by OpenCV, plus the frames it decodes back to as a PNG folder."""
    root = tmp_path_factory.mktemp("media")
    video = root / "clip.avi"
    fourcc = write_video(video, synthetic_frames(N_FRAMES), fps=30.0)
    decoded = decode_video(video)
    frames_dir = root / "frames"
    frames_dir.mkdir()
    for i, rgb in enumerate(decoded):
        cv2.imwrite(str(frames_dir / f"frame_{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return {"video": video, "dir": frames_dir, "fourcc": fourcc, "decoded": decoded}


def run_source(model, source, out: Path, **kw) -> tuple[list[dict], object]:
    sink = JsonlSink(out)
    try:
        report = StreamRunner(model, source.start(), sink, status_every_s=0, **kw).run()
    finally:
        sink.close()
    return [json.loads(line) for line in out.read_text().splitlines()], report


def test_video_file_matches_image_folder(model, media, tmp_path) -> None:
    assert len(media["decoded"]) == N_FRAMES
    if media["fourcc"] == "FFV1":  # lossless: the decoded frames are the written ones, bit for bit
        assert all(np.array_equal(a, b) for a, b in zip(media["decoded"], synthetic_frames(N_FRAMES), strict=True))
    saver_dir = tmp_path / "annotated"
    src = open_source(source=str(media["video"]))
    assert not src.live and src.kind == "video"
    saver = AnnotatedSaver(saver_dir, as_video=True, fps=src.fps, source_id=src.source_id)
    video_rows, video_report = run_source(model, src, tmp_path / "video.jsonl", saver=saver, batch_size=4, topk=3)
    saver.close()
    dir_rows, dir_report = run_source(
        model, open_source(source=str(media["dir"])), tmp_path / "dir.jsonl", batch_size=5, topk=3
    )

    assert [r["frame"] for r in video_rows] == list(range(N_FRAMES))
    assert [r["frame"] for r in dir_rows] == list(range(N_FRAMES))
    assert video_report.dropped == 0 and video_report.frames == N_FRAMES and video_report.stopped_by == "end"
    assert [r["label"] for r in video_rows] == [r["label"] for r in dir_rows]
    for v, d in zip(video_rows, dir_rows, strict=True):
        assert v["topk"][0]["prob"] == pytest.approx(d["topk"][0]["prob"], abs=1e-5)
    correct = sum(r["label"] == frame_label(r["frame"]) for r in video_rows)
    assert correct >= 0.9 * N_FRAMES, "the trained tiny model should recognise most synthetic fish"
    row = video_rows[0]
    assert set(row) >= {"ts", "source", "frame", "label", "prob", "topk", "latency_ms", "backend"}
    assert row["source"] == "clip.avi" and len(row["topk"]) == 3 and row["backend"] == model.backend
    assert dir_rows[3]["name"] == "frame_0003.png"
    annotated = decode_video(saver.video_path)
    assert len(annotated) == N_FRAMES
    assert not np.array_equal(annotated[0][:10], media["decoded"][0][:10]), "the label box must be drawn"


def test_max_frames_stops_and_corrupt_images_become_error_lines(model, media, tmp_path) -> None:
    rows, report = run_source(model, open_source(source=str(media["video"])), tmp_path / "a.jsonl", max_frames=7)
    assert len(rows) == 7 and report.stopped_by == "max-frames"

    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), media["decoded"][0])
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cv2.imwrite(str(folder / "c.png"), media["decoded"][1])
    rows, report = run_source(model, open_source(source=str(folder / "*.png")), tmp_path / "b.jsonl")
    assert [r.get("name") for r in rows] == ["a.png", "b.png", "c.png"]
    assert rows[1]["reason"] in ("corrupt", "not_an_image", "truncated") and "label" not in rows[1]
    assert "label" in rows[0] and "label" in rows[2] and report.errors == 1


def test_lost_stream_reconnects_with_backoff(model, media, tmp_path, caplog) -> None:
    """First capture: a real cv2.VideoCapture on a truncated copy of the clip (fails mid-stream); then the full clip."""
    truncated = tmp_path / "truncated.avi"
    data = media["video"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    calls: list[str] = []

    def open_capture(target):
        calls.append(str(target))
        path = truncated if len(calls) == 1 else media["video"]
        return PacedCapture(cv2.VideoCapture(str(path)), fps=300.0)

    opts = SourceOptions(reconnect=True, max_retries=3, backoff_s=0.01, max_backoff_s=0.02, open_capture=open_capture)
    src = open_source(source="rtsp://user:secret@camera.local/stream", options=opts)
    assert src.live and "secret" not in src.source_id
    sessions: list[int] = []
    holder: dict = {}

    def on_record(frame, _record) -> None:
        sessions.append(frame.session)
        if frame.session >= 2:
            holder["runner"].stop()

    sink = JsonlSink(tmp_path / "live.jsonl")
    runner = StreamRunner(model, src.start(), sink, batch_size=4, status_every_s=0, on_record=on_record)
    holder["runner"] = runner
    with caplog.at_level(logging.WARNING, logger="edgeft.serve"):
        report = runner.run()
    sink.close()
    assert report.stopped_by == "stop"
    assert len(calls) >= 2 and report.reconnects >= 1
    assert sessions[0] == 1 and sessions[-1] >= 2
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    assert any("reconnected" in r.getMessage() for r in caplog.records)
    frames = [json.loads(line)["frame"] for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert frames == sorted(frames) and len(set(frames)) == len(frames), "frame indices keep counting across reconnects"


def test_unopenable_camera_fails_clearly_after_retries(model, tmp_path, caplog) -> None:
    opts = SourceOptions(max_retries=2, backoff_s=0.01, max_backoff_s=0.02)
    src = open_source(camera=99, options=opts)
    sink = JsonlSink(tmp_path / "cam.jsonl")
    with caplog.at_level(logging.WARNING, logger="edgeft.serve"), pytest.raises(EdgeftError) as info:
        StreamRunner(model, src.start(), sink, status_every_s=0).run()
    sink.close()
    assert "cannot open camera 99 after 3 attempts" in str(info.value)
    assert info.value.fix and "--camera" in info.value.fix
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "retry 2/2" in retries[-1]

    src = open_source(camera=99, options=SourceOptions(reconnect=False))
    with pytest.raises(EdgeftError, match="after 1 attempt"):
        StreamRunner(model, src.start(), sink, status_every_s=0).run()


class _OpensButNeverStreams:
    """A capture that opens and then fails every read (a camera whose driver hangs)."""

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        return False, None

    def get(self, _prop: int) -> float:
        return 0.0

    def release(self) -> None:
        pass


def test_source_that_opens_but_never_streams_gives_up(model, tmp_path) -> None:
    opens = []
    opts = SourceOptions(
        max_retries=2, backoff_s=0.01, open_capture=lambda t: opens.append(t) or _OpensButNeverStreams()
    )
    src = open_source(source="http://cam.local/mjpeg", options=opts)
    sink = JsonlSink(tmp_path / "dead.jsonl")
    with pytest.raises(EdgeftError, match="opens but delivers no frames"):
        StreamRunner(model, src.start(), sink, status_every_s=0).run()
    sink.close()
    assert len(opens) == 3, "1 attempt + 2 retries, then a clear error instead of a reconnect loop"


def test_cli_serves_a_folder_and_refuses_bad_combinations(bundle, media, tmp_path) -> None:
    from edgeft.cli import app

    runner = CliRunner()
    out, save = tmp_path / "preds.jsonl", tmp_path / "saved"
    args = ["serve", str(bundle), "--source", str(media["dir"]), "--jsonl", str(out), "--save", str(save)]
    result = runner.invoke(app, [*args, "--max-frames", "5", "--backend", "onnxruntime", "--status-every", "0"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 5
    assert sorted(p.name for p in save.iterdir()) == [f"frame_{i:04d}.png" for i in range(5)]
    assert str(out) in result.output and str(save) in result.output

    for bad, message in (
        (["--camera", "0", "--http", "127.0.0.1:0"], "exactly one input mode"),
        ([], "exactly one input mode"),
        (["--http", "127.0.0.1:0", "--jsonl", "x.jsonl"], "only apply to --camera/--source"),
        (["--source", str(media["video"]), "--reconnect"], "--reconnect applies to live sources"),
        (["--source", str(media["dir"]), "--parity-sample", "2"], "--parity-sample must be in [0, 1]"),
    ):
        result = runner.invoke(app, ["serve", str(bundle), *bad])
        assert isinstance(result.exception, EdgeftError), (bad, result.output)
        assert message in str(result.exception)
    result = runner.invoke(app, ["serve", str(bundle), "--source", str(tmp_path / "missing.avi")])
    assert isinstance(result.exception, EdgeftError) and "missing.avi" in str(result.exception)
