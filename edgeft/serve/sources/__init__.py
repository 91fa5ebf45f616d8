"""Frame sources for `edgeft serve`: cameras, MJPEG/RTSP URLs, video files and image folders, via OpenCV.

Two delivery policies: live sources (`live.py`) keep only the newest frame and reconnect; ordered sources
(`files.py`) deliver every frame in order and end cleanly. `open_source` picks one for --camera/--source.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from edgeft.core.errors import EdgeftError
from edgeft.serve.config import StreamOptions
from edgeft.serve.sources.base import (
    Capture,
    CaptureFactory,
    Frame,
    FrameSource,
    SourceStats,
    default_open_capture,
    is_live_url,
    redact_url,
)
from edgeft.serve.sources.files import (
    IMAGE_EXTENSIONS,
    ImageListSource,
    OrderedSource,
    VideoFileSource,
    glob_files,
    list_images,
)
from edgeft.serve.sources.live import LiveCaptureSource, PacedCapture, ReconnectPolicy


def _from_path(source: str, options: StreamOptions, open_capture: CaptureFactory | None) -> FrameSource:
    path = Path(source).expanduser()
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise EdgeftError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this directory",
                path=path,
                fix="point --source at a folder of images, a video file or a glob like 'frames/*.jpg'",
            )
        return ImageListSource(files, path.name or str(path), root=path, prefetch=options.prefetch)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageListSource([path], path.name, root=path.parent, prefetch=options.prefetch)
        return VideoFileSource(path, open_capture=open_capture, prefetch=options.prefetch)
    if glob.has_magic(source):
        files = glob_files(source)
        if not files:
            raise EdgeftError(
                f"the glob {source!r} matches no files",
                fix="check the pattern; quote it so the shell does not expand it",
            )
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        return ImageListSource(files, source, root=root, prefetch=options.prefetch)
    raise EdgeftError(
        "source not found (not a file, directory, glob or rtsp/http URL)",
        path=path,
        fix="check the path, or use --camera INDEX for a camera",
    )


def open_source(
    camera: int | None = None,
    source: str | None = None,
    options: StreamOptions | None = None,
    *,
    open_capture: CaptureFactory | None = None,
) -> FrameSource:
    """The source for --camera INDEX or --source PATH|URL|GLOB (not started yet).

    open_capture replaces cv2.VideoCapture (tests hand in captures that fail mid-stream).
    """
    opts = options or StreamOptions()
    if (camera is None) == (source is None):
        raise EdgeftError("give exactly one of a camera index or a source", fix="use --camera INDEX or --source PATH")
    policy = ReconnectPolicy(opts.reconnect is not False, opts.max_retries, opts.backoff_s, opts.max_backoff_s)
    if camera is not None:
        if camera < 0:
            raise EdgeftError(f"camera index must be >= 0, got {camera}", fix="e.g. --camera 0")
        return LiveCaptureSource(camera, open_capture=open_capture, reconnect=policy)
    assert source is not None
    if is_live_url(source):
        return LiveCaptureSource(source, open_capture=open_capture, reconnect=policy)
    if opts.reconnect:
        raise EdgeftError(
            "--reconnect applies to live sources (camera, rtsp:// or http(s):// URL), not to files or folders",
            fix="drop --reconnect; a file is read once, in order",
        )
    return _from_path(source, opts, open_capture)


__all__ = [
    "IMAGE_EXTENSIONS",
    "Capture",
    "CaptureFactory",
    "Frame",
    "FrameSource",
    "ImageListSource",
    "LiveCaptureSource",
    "OrderedSource",
    "PacedCapture",
    "ReconnectPolicy",
    "SourceStats",
    "VideoFileSource",
    "default_open_capture",
    "glob_files",
    "is_live_url",
    "list_images",
    "open_source",
    "redact_url",
]
