"""Reliability corpus: bad input and faults through the real CLI (the typer app in-process) and the real HTTP server.

Every case asserts: no traceback (no uncaught exception), the documented exit code or HTTP status, a message
naming the file at fault, and that the runs, bundles and datasets that existed before are byte-identical after.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from imagegen import CLASSES, class_image
from PIL import Image
from typer.testing import CliRunner

from edgeft.cli.app import app

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------------------------
def tree_digest(root: Path) -> str:
    """One hash of every path, link target and file content under root."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = Path(dirpath, name)
            h.update(str(p.relative_to(root)).encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def png(size=(64, 48), k: int = 0, mode: str = "RGB") -> bytes:
    img = class_image(k, np.random.default_rng(k), size)
    buf = io.BytesIO()
    (img if mode == "RGB" else img.convert(mode)).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height: tiny on the wire, huge once decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """Only the header of a 40000x40000 PNG: Pillow's decompression-bomb guard refuses it on open."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))


@dataclass
class Ctx:
    """What a case may use: a private copy of the tiny run (bundle inside) and a scratch dir; both protected."""

    tmp: Path
    run: Path
    tree: Path
    protect: list[Path] = field(default_factory=list)

    @property
    def bundle(self) -> Path:
        return self.run / "bundle"

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def edit_json(self, path: Path, change: Callable[[dict], None]) -> Path:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))
        return path


@dataclass
class Case:
    build: Callable[[Ctx], list]  # -> CLI args (the files it names are made here)
    code: int
    names: tuple[str, ...]  # each formatted with the ctx and expected in the output
    tamper: Callable[[Ctx], object] | None = None  # damages the run copy before its state is recorded
    patch: Callable[[pytest.MonkeyPatch, Ctx], None] | None = None  # a fault injected while the command runs
    kept: tuple[str, ...] = ()  # hidden outputs kept on purpose (a training's checkpoint for --resume)


def _tree(ctx: Ctx, classes: dict[str, list[bytes]]) -> Path:
    root = ctx.tmp / "tree"
    root.mkdir(parents=True, exist_ok=True)
    for cls, files in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(files):
            (root / cls / f"{i}.png").write_bytes(data)
    return root


def _interrupt(target: str) -> Callable[[pytest.MonkeyPatch, Ctx], None]:
    def patch(mp: pytest.MonkeyPatch, _ctx: Ctx) -> None:
        def boom(*_a, **_k):
            raise KeyboardInterrupt

        mp.setattr(target, boom)

    return patch


class _Closed:
    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return False

    def release(self) -> None:
        return None


TRAIN = ["train", "folder", "--backbone", "tinynet", "--epochs", "1", "--out", "{tmp}/runs"]
# --unknown-below 0: these cases are about decoding; tests/serve/test_unknown.py covers the threshold
PREDICT = ["predict", "{bundle}", "--backend", "onnxruntime", "--unknown-below", "0"]
SERVE = ["serve", "{bundle}", "--backend", "onnxruntime", "--status-every", "0"]
BENCH = ["bench", "{bundle}", "--seconds", "0.1", "--batch", "1", "--backends", "onnx-fp32"]

CASES: dict[str, Case] = {
    # broken data trees
    "train-empty-dir": Case(lambda c: [*TRAIN, "--data", _tree(c, {})], 2, ("{tmp}/tree",)),
    "train-one-class": Case(
        lambda c: [*TRAIN, "--data", _tree(c, {"Trout": [png(k=i % 4) for i in range(6)]})],
        2,
        ("{tmp}/tree", "at least 2"),
    ),
    "train-all-corrupt": Case(
        lambda c: [*TRAIN, "--data", _tree(c, {"Trout": [b""] * 4, "Sea Bass": [b"nope"] * 4})], 2, ("{tmp}/tree",)
    ),
    "train-missing-data": Case(lambda c: [*TRAIN, "--data", c.tmp / "absent"], 2, ("{tmp}/absent",)),
    "train-data-is-a-file": Case(lambda c: [*TRAIN, "--data", c.file("x.png", png())], 2, ("{tmp}/inputs/x.png",)),
    "parity-unknown-class": Case(
        lambda c: ["parity", c.bundle, "--data", _tree(c, {"Catfish": [png()] * 3})], 2, ("Catfish",)
    ),
    "inspect-empty-dir": Case(lambda c: ["data", "inspect", _tree(c, {})], 2, ("{tmp}/tree",)),
    # tampered runs
    "eval-model-json-not-json": Case(
        lambda c: ["eval", c.run, "--data", c.tree],
        2,
        ("{run}/model.json",),
        tamper=lambda c: _write(c.run / "model.json"),
    ),
    "eval-model-json-wrong-type": Case(
        lambda c: ["eval", c.run],
        2,
        ("model.json", "classes"),
        tamper=lambda c: c.edit_json(c.run / "model.json", lambda d: d.update(classes=5)),
    ),
    "eval-weights-missing": Case(
        lambda c: ["eval", c.run], 2, ("model.safetensors",), tamper=lambda c: (c.run / "model.safetensors").unlink()
    ),
    "eval-weights-truncated": Case(
        lambda c: ["eval", c.run], 2, ("model.safetensors",), tamper=lambda c: _truncate(c.run / "model.safetensors")
    ),
    "eval-splits-not-json": Case(
        lambda c: ["eval", c.run], 2, ("{run}/splits.json",), tamper=lambda c: _write(c.run / "splits.json")
    ),
    "export-model-json-wrong-type": Case(
        lambda c: ["export", c.run, "--out", c.tmp / "b", "--formats", "onnx"],
        2,
        ("model.json",),
        tamper=lambda c: c.edit_json(c.run / "model.json", lambda d: d.update(preprocess="squash")),
    ),
    "eval-not-a-run": Case(lambda c: ["eval", c.tree], 2, ("{tree}",)),
    "export-nothing-trained": Case(lambda c: ["export"], 2, ("edgeft train",)),
    "serve-nothing-trained": Case(lambda c: ["serve", "--camera"], 2, ("edgeft train",)),
    # tampered bundles
    "predict-bundle-json-not-json": Case(
        lambda c: [*PREDICT, c.file("a.png", png())],
        2,
        ("{bundle}/bundle.json",),
        tamper=lambda c: _write(c.bundle / "bundle.json"),
    ),
    "predict-bundle-json-wrong-type": Case(
        lambda c: [*PREDICT, c.file("a.png", png())],
        2,
        ("bundle.json", "classes"),
        tamper=lambda c: c.edit_json(c.bundle / "bundle.json", lambda d: d.update(classes="Trout")),
    ),
    "predict-artifact-missing": Case(
        lambda c: [*PREDICT, c.file("a.png", png())],
        2,
        ("model.onnx",),
        tamper=lambda c: (c.bundle / "model.onnx").unlink(),
    ),
    "predict-artifact-tampered": Case(
        lambda c: [*PREDICT, c.file("a.png", png())],
        2,
        ("model.onnx", "sha256"),
        tamper=lambda c: _flip_byte(c.bundle / "model.onnx"),
    ),
    "predict-openvino-bin-missing": Case(
        lambda c: ["predict", c.bundle, "--backend", "openvino", c.file("a.png", png())],
        2,
        ("model.fp32.bin",),
        tamper=lambda c: (c.bundle / "openvino" / "model.fp32.bin").unlink(),
    ),
    "parity-bundle-json-not-json": Case(
        lambda c: ["parity", c.bundle], 2, ("{bundle}/bundle.json",), tamper=lambda c: _write(c.bundle / "bundle.json")
    ),
    "serve-bundle-without-classes": Case(
        lambda c: [*SERVE, "--source", c.file("a.png", png())],
        2,
        ("bundle.json",),
        tamper=lambda c: c.edit_json(c.bundle / "bundle.json", lambda d: d.pop("classes")),
    ),
    # destructive options
    "export-force-over-a-dataset": Case(
        lambda c: ["export", c.run, "--out", c.tree, "--force", "--formats", "onnx"], 2, ("{tree}", "not a bundle")
    ),
    "export-force-over-another-run": Case(
        lambda c: ["export", c.run, "--out", _other_run(c), "--force", "--formats", "onnx"], 2, ("{tmp}/other",)
    ),
    "export-into-a-non-empty-dir": Case(
        lambda c: ["export", c.run, "--out", c.file("keep/notes.txt", "mine").parent, "--formats", "onnx"],
        2,
        ("{tmp}/inputs/keep",),
    ),
    "serve-save-over-a-file": Case(
        lambda c: [*SERVE, "--source", c.file("a.png", png()), "--save", c.file("clip.mp4", "mine")],
        2,
        ("{tmp}/inputs/clip.mp4",),
    ),
    "serve-save-into-the-users-images": Case(
        lambda c: [*SERVE, "--source", _mine(c, "a.png").parent, "--save", _mine(c, "b.png").parent],
        2,
        ("{tmp}/mine", "not empty"),
    ),
    "serve-save-unknown-extension": Case(
        lambda c: [*SERVE, "--source", c.file("a.png", png()), "--save", c.tmp / "out.txt"], 2, ("{tmp}/out.txt",)
    ),
    "train-overwrite-a-folder-that-is-no-run": Case(
        lambda c: [
            *TRAIN,
            "--data",
            c.tree,
            "--name",
            "notes",
            "--overwrite",
            "--out",
            _mine(c, "folder/notes/x").parents[2],
        ],
        2,
        ("{tmp}/mine/folder/notes", "not an edgeft run"),
    ),
    "train-name-is-a-path": Case(lambda c: [*TRAIN, "--data", c.tree, "--name", "../escape"], 2, ("--name",)),
    "serve-jsonl-over-model-json": Case(
        lambda c: [*SERVE, "--source", c.file("a.png", png()), "--jsonl", c.run / "model.json"],
        2,
        ("{run}/model.json",),
    ),
    "export-over-a-bundle-holding-the-users-notes": Case(
        lambda c: ["export", c.run, "--formats", "onnx", "--no-int8", "--force", "--out", _with_notes(c.bundle)],
        2,
        ("{bundle}", "NOTES.md"),
    ),
    "synth-over-a-users-dataset": Case(
        lambda c: ["data", "synth", "--out", _users_dataset(c), "--per-class", "2", "--species", "Trout"],
        2,
        ("{tmp}/mine/Fish_Dataset", "did not generate"),
    ),
    "bench-out-over-a-users-file": Case(
        lambda c: [*BENCH, "--out", _mine(c, "notes.txt")], 2, ("{tmp}/mine/notes.txt", "did not write")
    ),
    "bench-out-over-a-users-chart": Case(
        lambda c: [*BENCH, "--out", _mine(c, "accuracy_latency.png").with_name("new.json")],
        2,
        ("{tmp}/mine/accuracy_latency.png",),
    ),
    "bench-out-is-a-folder": Case(lambda c: [*BENCH, "--out", _mine(c, "x").parent], 2, ("{tmp}/mine", "a folder")),
    "parity-out-is-a-file": Case(lambda c: ["parity", c.bundle, "--out", _mine(c, "notes.txt")], 2, ("{tmp}/mine",)),
    "inspect-out-is-a-file": Case(
        lambda c: ["data", "inspect", c.tree, "--out", _mine(c, "notes.txt")], 2, ("{tmp}/mine/notes.txt",)
    ),
    "train-existing-name": Case(lambda c: [*TRAIN, "--data", c.tree, "--name", _existing_run(c)], 2, ("{tmp}/runs",)),
    # interrupted commands
    "export-interrupted": Case(
        lambda c: ["export", c.run, "--formats", "onnx", "--no-int8"],
        130,
        ("interrupted",),
        patch=_interrupt("edgeft.export.bundle._judge_all"),
    ),
    "train-interrupted": Case(
        lambda c: [*TRAIN, "--data", c.tree],
        130,
        ("interrupted", "outputs were discarded", "{tmp}/runs/folder/.exp.resume", "with --resume to continue"),
        patch=_interrupt("edgeft.train.run._write_run"),
        kept=(".exp.resume",),
    ),
    "serve-interrupted": Case(
        lambda c: [*SERVE, "--source", c.file("a.png", png())],
        130,
        ("interrupted", "stopped by interrupt"),
        patch=_interrupt("edgeft.serve.stream.StreamRunner._process"),
    ),
    # bad sources
    "serve-missing-source": Case(lambda c: [*SERVE, "--source", c.tmp / "absent.mp4"], 2, ("{tmp}/absent.mp4",)),
    "serve-text-as-video": Case(
        lambda c: [*SERVE, "--source", c.file("clip.mp4", "not a video")], 2, ("{tmp}/inputs/clip.mp4",)
    ),
    "serve-empty-folder": Case(lambda c: [*SERVE, "--source", _tree(c, {})], 2, ("{tmp}/tree",)),
    "serve-glob-matches-nothing": Case(lambda c: [*SERVE, "--source", f"{c.tmp}/none/*.jpg"], 2, ("{tmp}/none/*.jpg",)),
    "serve-camera-absent": Case(
        lambda c: [*SERVE, "--camera", "3"],
        2,
        ("camera 3",),
        patch=lambda mp, c: mp.setattr("edgeft.serve.sources.live.default_open_capture", lambda _t: _Closed()),
    ),
    "serve-bad-option-value": Case(lambda c: [*SERVE, "--source", c.tree, "--topk", "0"], 2, ("--topk",)),
    "parity-batch-size-zero": Case(lambda c: ["parity", c.bundle, "--batch-size", "0"], 2, ("--batch-size",)),
    "parity-agreement-above-one": Case(lambda c: ["parity", c.bundle, "--min-agreement", "2"], 2, ("--min-agreement",)),
    "bench-unknown-hint": Case(lambda c: [*BENCH, "--hint", "FOO"], 2, ("--hint", "LATENCY")),
}

# odd and broken image files through `edgeft predict`: exit 0, one error line naming the file (or a prediction)
IMAGES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "zero-byte.jpg": (lambda: b"", "empty"),
    "truncated.png": (lambda: png((200, 150))[:400], "truncated"),
    "text.jpg": (lambda: b"hello, I am not an image", "not_an_image"),
    "random.png": (lambda: np.random.default_rng(0).bytes(3000), "not_an_image"),
    "bomb.png": (bomb_png, "decompression_bomb"),
    "png-named.jpg": (png, None),
    "one-pixel.png": (lambda: png((1, 1)), None),
    "sixteen-bit.png": (lambda: _encode(Image.fromarray(np.full((40, 50), 40000, np.uint16)), "PNG"), None),
    "palette.gif": (lambda: _encode(class_image(1, np.random.default_rng(1)).convert("P"), "GIF"), None),
    "cmyk.jpg": (lambda: _encode(class_image(2, np.random.default_rng(2)).convert("CMYK"), "JPEG"), None),
    "tall.png": (lambda: png((3, 900)), None),
}


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, text: str = '{"broken": ') -> None:
    path.write_text(text)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _mine(ctx: Ctx, name: str, data: str = "mine") -> Path:
    """A file of the user's in {tmp}/mine (protected)."""
    path = ctx.tmp / "mine" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    ctx.protect.append(path.parent)
    return path


def _users_dataset(ctx: Ctx) -> Path:
    for n in range(1, 4):
        _mine(ctx, f"Fish_Dataset/Trout/Trout/{n:05d}.png", f"photo {n}")
    ctx.protect.append(ctx.tmp / "mine")
    return ctx.tmp / "mine"


def _with_notes(bundle: Path) -> Path:
    (bundle / "NOTES.md").write_text("what I found")  # inside the run copy, which every case protects
    return bundle


def _other_run(ctx: Ctx) -> Path:
    other = ctx.tmp / "other"
    shutil.copytree(ctx.run, other, ignore=shutil.ignore_patterns("bundle"))
    ctx.protect.append(other)
    return other


def _existing_run(ctx: Ctx) -> str:
    shutil.copytree(ctx.run, ctx.tmp / "runs" / "folder" / "mine", ignore=shutil.ignore_patterns("bundle"))
    ctx.protect.append(ctx.tmp / "runs")
    return "mine"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def ctx(tiny_run, tiny_bundle, colour_tree, tmp_path, monkeypatch):
    """A private run copy, cwd in an empty scratch dir, and the byte-identical check of everything protected."""
    run = tmp_path / "fixtures" / "run"
    shutil.copytree(tiny_run, run)
    scratch = tmp_path / "work"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    c = Ctx(scratch, run, colour_tree, [tiny_run, colour_tree])
    yield c


def _fmt(value, c: Ctx) -> str:
    return str(value).format(tmp=c.tmp, run=c.run, bundle=c.bundle, tree=c.tree)


def no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# -- the CLI cases -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_cli_fault(name, ctx, monkeypatch):
    case = CASES[name]
    if case.tamper is not None:
        case.tamper(ctx)
    args = [_fmt(a, ctx) for a in case.build(ctx)]
    protected = [*ctx.protect, ctx.run]
    before = {p: tree_digest(p) for p in protected}
    if case.patch is not None:
        case.patch(monkeypatch, ctx)
    result = CliRunner().invoke(app, args)
    no_traceback(result)
    assert result.exit_code == case.code, result.output
    flat = result.output.replace("\n", "")
    for expected in case.names:
        assert _fmt(expected, ctx) in flat, f"{expected!r} not named in:\n{result.output}"
    assert {p: tree_digest(p) for p in protected} == before, "pre-existing files changed"
    hidden = [p for root in (ctx.run.parent, ctx.tmp) for p in root.rglob(".*") if not set(p.parts) & set(case.kept)]
    assert not hidden, f"partial outputs left behind: {hidden}"


@pytest.mark.parametrize("name", list(IMAGES))
def test_odd_image_files_through_predict(name, ctx):
    make, reason = IMAGES[name]
    path = ctx.file(name, make())
    good = ctx.file("good.png", png(k=1))
    before = {p: tree_digest(p) for p in (*ctx.protect, ctx.run)}
    result = CliRunner().invoke(app, [*(_fmt(a, ctx) for a in PREDICT), str(path), str(good)])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    bad, ok = (json.loads(line) for line in result.stdout.splitlines())
    assert bad["source"] == str(path) and ok["source"] == str(good) and ok["label"] in CLASSES
    if reason is None:
        assert bad["error"] is None and bad["label"] in CLASSES, bad
    else:
        assert bad["reason"] == reason and bad["label"] is None and bad["error"], bad
    assert {p: tree_digest(p) for p in (*ctx.protect, ctx.run)} == before


def test_a_folder_of_broken_images_streams_error_lines(ctx):
    folder = ctx.tmp / "broken"
    folder.mkdir()
    for name in ("zero-byte.jpg", "text.jpg", "truncated.png"):
        (folder / name).write_bytes(IMAGES[name][0]())
    result = CliRunner().invoke(app, [*(_fmt(a, ctx) for a in SERVE), "--source", str(folder)])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prediction"]["source"] for line in lines] == ["text.jpg", "truncated.png", "zero-byte.jpg"]
    assert all(line["prediction"]["error"] for line in lines) and "errors 3" in result.stderr


def test_sigint_stops_a_real_serve_process_cleanly(ctx, tmp_path):
    """A real Ctrl-C (SIGINT) while `serve --camera` waits for an absent camera: exit 130, one message."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "edgeft.cli.app", *(_fmt(a, ctx) for a in SERVE), "--camera", "97"]
    cmd += ["--jsonl", str(tmp_path / "out.jsonl")]
    before = tree_digest(ctx.run)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ctx.tmp)
    seen = []
    for line in proc.stderr:  # wait until the loop runs
        seen.append(line)
        if "retry 1/" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and "stopped by interrupt" in err
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert tree_digest(ctx.run) == before


def test_sigint_stops_a_real_http_server_with_one_log_format(ctx):
    """`serve --http` stopped by Ctrl-C: exit 130, no "error:", every log line in edgeft's one format."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "edgeft.cli.app", "serve", str(ctx.bundle), "--backend", "onnxruntime"]
    cmd += ["--http", "127.0.0.1:0", "--status-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ctx.tmp)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Application startup complete" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    lines = [ln for ln in ("".join(seen) + err).splitlines() if ln.strip()]
    assert proc.returncode == 130, lines
    assert "Traceback" not in out + err and not any(ln.startswith("error:") for ln in lines)
    logged = [ln for ln in lines if not ln.startswith(("Bundle:", "stopped:"))]
    pattern = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")
    assert logged and all(pattern.match(ln) for ln in logged), logged
    assert lines[-1].startswith("stopped: http requests 0")


# -- the HTTP cases ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_bundle):
    from edgeft.serve.config import ServeConfig
    from edgeft.serve.http import create_app
    from edgeft.serve.server import BackgroundServer

    config = ServeConfig.build(
        model={"backend": "onnxruntime"},
        http={"max_body_mb": 0.5, "max_pixels_mp": 20.0, "read_timeout_s": 0.5},
        status_every_s=0,
    )
    with BackgroundServer(create_app(tiny_bundle, config)) as srv:
        yield srv


def _multipart(*parts: tuple[str, str, bytes, str]) -> tuple[bytes, str]:
    boundary = "edgeftboundary"
    body = b""
    for field_name, filename, data, ctype in parts:
        disp = f'form-data; name="{field_name}"' + (f'; filename="{filename}"' if filename else "")
        body += (
            f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


HTTP_CASES: dict[str, tuple[Callable[[], tuple[str, str, bytes, dict]], int, str, str]] = {
    # name: (request builder -> (method, path, body, headers), status, error code, text the message must hold)
    "huge-pixel-png": (
        lambda: ("POST", "/predict", header_png(9000, 9000), {"content-type": "image/png"}),
        413,
        "too_many_pixels",
        "<body> is 9000x9000",
    ),
    "text-body": (lambda: ("POST", "/predict", b"hello", {"content-type": "text/plain"}), 400, "bad_image", "<body>"),
    "empty-body": (lambda: ("POST", "/predict", b"", {"content-type": "image/png"}), 400, "bad_image", "0 bytes"),
    "json-body": (
        lambda: ("POST", "/predict", b'{"image": "x"}', {"content-type": "application/json"}),
        400,
        "bad_image",
        "<body>",
    ),
    "truncated-png": (
        lambda: ("POST", "/predict", png((300, 200))[:500], {"content-type": "image/png"}),
        400,
        "bad_image",
        "<body>",
    ),
    "oversized-body": (
        lambda: ("POST", "/predict", b"\x00" * 600_000, {"content-type": "image/png"}),
        413,
        "body_too_large",
        "--max-body-mb",
    ),
    "multipart-without-files": (
        lambda: ("POST", "/predict", *_form(("note", "", b"hi", "text/plain"))),
        400,
        "no_images",
        "no file parts",
    ),
    "multipart-one-bad-file": (
        lambda: (
            "POST",
            "/predict",
            *_form(("files", "good.png", png(), "image/png"), ("files", "bad.png", b"junk", "image/png")),
        ),
        400,
        "bad_image",
        "bad.png",
    ),
    "multipart-zero-byte-file": (
        lambda: ("POST", "/predict", *_form(("files", "empty.jpg", b"", "image/jpeg"))),
        400,
        "bad_image",
        "empty.jpg",
    ),
    "multipart-huge-file": (
        lambda: ("POST", "/predict", *_form(("files", "giant.png", header_png(6000, 6000), "image/png"))),
        413,
        "too_many_pixels",
        "giant.png",
    ),
    "multipart-garbage": (
        lambda: ("POST", "/predict", b"--x\r\nnonsense", {"content-type": "multipart/form-data; boundary=x"}),
        400,
        "",
        "",
    ),
    "unknown-path": (lambda: ("GET", "/nope", b"", {}), 404, "not_found", ""),
    "wrong-method": (lambda: ("PUT", "/predict", b"", {}), 405, "method_not_allowed", ""),
    "bad-query": (
        lambda: ("POST", "/predict?logits=maybe", png(), {"content-type": "image/png"}),
        400,
        "bad_request",
        "logits",
    ),
}


def _form(*parts: tuple[str, str, bytes, str]) -> tuple[bytes, dict]:
    body, ctype = _multipart(*parts)
    return body, {"content-type": ctype}


@pytest.mark.parametrize("name", list(HTTP_CASES))
def test_http_fault(name, server, tiny_bundle, caplog):
    build, status, error, text = HTTP_CASES[name]
    method, path, body, headers = build()
    before = tree_digest(tiny_bundle)
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        r = client.request(method, path, content=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        payload = r.json()
        assert payload.get("error") and payload.get("message"), payload
        if error:
            assert payload["error"] == error, payload
        assert text in payload["message"], payload
        assert client.get("/health").status_code == 200, "the server keeps serving"
    assert "Traceback" not in r.text and not [rec for rec in caplog.records if rec.exc_info]
    assert tree_digest(tiny_bundle) == before


@pytest.mark.parametrize(
    "sent", [b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le", b""], ids=["slow-headers", "mute"]
)
def test_slow_http_clients_get_408_and_are_closed(server, sent):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(sent)
        sock.settimeout(5.0)
        t0 = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert time.monotonic() - t0 < 4.0
    assert answer.startswith(b"HTTP/1.1 408") and b"Traceback" not in answer
