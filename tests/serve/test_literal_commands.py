"""The commands as a user types them: `serve --camera` alone, `--jsonl` alone, `--save FILE.mp4`, terminal lines."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from servekit import class_frames, decode_video, write_video
from typer.testing import CliRunner

from edgeft.cli.app import app, fill_optional_values
from edgeft.serve.config import ServeConfig
from edgeft.serve.outputs import HumanLines
from edgeft.serve.schema import FrameRecord
from edgeft.serve.stream import serve_stream

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--camera"], ["serve", "--camera", "0"]),
        (["serve", "--camera", "2"], ["serve", "--camera", "2"]),
        (["serve", "--camera", "runs/x"], ["serve", "--camera", "0", "runs/x"]),
        (["serve", "--camera", "--max-frames", "3"], ["serve", "--camera", "0", "--max-frames", "3"]),
        (["serve", "--jsonl", "--source", "a"], ["serve", "--jsonl", "-", "--source", "a"]),
        (["serve", "--source", "a", "--jsonl"], ["serve", "--source", "a", "--jsonl", "-"]),
        (["serve", "--jsonl", "out.jsonl"], ["serve", "--jsonl", "out.jsonl"]),
        (["predict", "--camera"], ["predict", "--camera"]),
    ],
)
def test_options_given_without_a_value_get_the_implied_one(args, expected):
    assert fill_optional_values(args) == expected


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    write_video(path, class_frames(6), fps=30.0)
    return path


class ClosedCapture:
    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return False

    def release(self) -> None:
        return None


def test_camera_alone_is_camera_0_and_an_absent_camera_fails_within_seconds(tiny_bundle, monkeypatch):
    opened: list[object] = []

    def fake_open(target):
        opened.append(target)
        return ClosedCapture()

    monkeypatch.setattr("edgeft.serve.sources.live.default_open_capture", fake_open)
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["serve", str(tiny_bundle), "--camera", "--status-every", "0"])
    assert time.monotonic() - t0 < 6.0
    assert result.exit_code == 2, result.output
    assert opened and set(opened) == {0}
    assert "cannot open camera 0 after 3 attempts" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.output


def test_a_real_absent_camera_prints_one_error_and_no_opencv_log(tiny_bundle, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "edgeft.cli.app", "serve", str(tiny_bundle), "--camera", "97", "--status-every", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cannot open camera 97" in done.stderr
    assert "VIDEOIO" not in done.stderr and "WARN:" not in done.stderr, "OpenCV's own log is silenced"
    assert "Traceback" not in done.stderr + done.stdout


def test_save_to_a_video_file_writes_that_file_and_never_overwrites(tiny_bundle, video, tmp_path):
    out = tmp_path / "annotated.mp4"
    args = ["serve", str(tiny_bundle), "--source", str(video), "--save", str(out), "--status-every", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.is_file(), "--save FILE.mp4 is a file, not a directory"
    assert len(decode_video(out)) == 6
    assert not list(tmp_path.glob(".*partial*")), "the hidden partial file was renamed into place"
    records = [FrameRecord.model_validate_json(line) for line in result.stdout.splitlines()]
    assert [r.frame for r in records] == list(range(6)), "piped stdout is pure JSONL; the summary went to stderr"
    assert "annotated" in result.stderr and str(out) in result.stderr.replace("\n", "")

    before = out.read_bytes()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "would overwrite an existing file" in again.stderr
    assert str(out) in again.stderr.replace("\n", "") and "Traceback" not in again.output
    assert out.read_bytes() == before


def test_jsonl_alone_sends_json_lines_to_stdout(tiny_bundle, video):
    result = CliRunner().invoke(
        app, ["serve", str(tiny_bundle), "--source", str(video), "--jsonl", "--max-frames", "2"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == [0, 1]


def test_at_a_terminal_each_frame_is_one_short_human_line(tiny_bundle, video, monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr("edgeft.serve.stream.HumanLines", lambda: HumanLines(captured))
    config = ServeConfig.build(stream={"human": True}, status_every_s=0)
    report = serve_stream(tiny_bundle, config, source=str(video))
    lines = captured.getvalue().splitlines()
    assert report.frames == 6 and report.jsonl == "none" and len(lines) == 6
    labels = set(json.loads((Path(tiny_bundle) / "bundle.json").read_text())["classes"])
    for i, line in enumerate(lines):
        assert line.startswith(f"frame {i}  ") and line.endswith(" ms") and len(line) < 80
        assert line.split("  ")[1] in labels and not line.startswith("{")


def test_an_image_folder_saved_as_video_is_one_file(tiny_bundle, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, rgb in enumerate(class_frames(3)):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "folder.avi"
    config = ServeConfig.build(stream={"save": out, "jsonl": str(tmp_path / "p.jsonl")}, status_every_s=0)
    report = serve_stream(tiny_bundle, config, source=str(folder))
    assert report.frames == 3 and out.is_file() and len(decode_video(out)) == 3


def test_each_command_says_which_run_or_bundle_it_chose(tiny_run, tiny_bundle, video, tmp_path, monkeypatch):
    runs = tmp_path / "runs" / "folder"
    shutil.copytree(tiny_run, runs / "tiny")  # with its bundle/ inside
    monkeypatch.chdir(tmp_path)
    run, bundle = Path("runs/folder/tiny"), Path("runs/folder/tiny/bundle")
    quick_bench = ["--batch", "1", "--backends", "onnx-fp32", "--seconds", "0.02", "--warmup", "0"]
    cases = [
        (["serve", "--source", str(video), "--max-frames", "1"], f"Bundle: {bundle} (of the latest run under runs/)"),
        (["serve", str(run), "--source", str(video), "--max-frames", "1"], f"Bundle: {bundle} (exported from {run})"),
        (["eval"], f"Run: {run} (the latest under runs/)"),
        (["eval", str(bundle)], f"(the run {bundle} was exported from)"),
        (["parity", str(run), "--backends", "onnx-fp32"], f"(exported from {run})"),
        (["bench", *quick_bench], f"Bundle: {bundle} (of the latest run under runs/)"),
        (["bench", str(run), *quick_bench], f"Bundle: {bundle} (exported from {run})"),
    ]
    for args, said in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert said in result.stderr.replace("\n", ""), (args, result.stderr)


def test_jsonl_may_go_to_a_device_but_never_over_a_directory(tiny_bundle, video, tmp_path):
    base = ["serve", str(tiny_bundle), "--source", str(video), "--max-frames", "1", "--status-every", "0"]
    assert CliRunner().invoke(app, [*base, "--jsonl", os.devnull]).exit_code == 0
    refused = CliRunner().invoke(app, [*base, "--jsonl", str(tmp_path)])
    assert refused.exit_code == 2 and "--jsonl would overwrite" in refused.stderr


def test_save_cleans_a_killed_runs_partial_video_and_names_its_own_like_every_partial(tiny_bundle, video, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "annotated.avi"
    stale = tmp_path / f".annotated.avi.partial-{dead.stdout.strip()}-.avi"
    stale.write_bytes(b"a killed run's half video")
    args = ["serve", str(tiny_bundle), "--source", str(video), "--save", str(out), "--status-every", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.is_file() and len(decode_video(out)) == 6
    assert not stale.exists() and not list(tmp_path.glob(".*partial*"))
