"""The frame loop behind `edgeft serve --camera/--source`: read, preprocess, infer, write, report.

`serve_stream` is the whole command as a library call (open the source, the Predictor, the parity monitor
and the outputs; run; close them all); `StreamRunner` is the loop itself. Status lines, reconnects and
parity alerts go to the "edgeft.serve" logger; predictions go to the JSONL sink.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.core.errors import ImageDecodeError
from edgeft.serve.config import ServeConfig
from edgeft.serve.monitor import ParityMonitor, ParitySnapshot, ReferenceFactory, monitor_for
from edgeft.serve.outputs import AnnotatedSaver, HumanLines, JsonlSink, LatencyWindow, NullSink, RateMeter, iso_time
from edgeft.serve.predictor import Predictor, failed_prediction
from edgeft.serve.schema import FrameRecord, Prediction
from edgeft.serve.sources import CaptureFactory, Frame, FrameSource, open_source

log = logging.getLogger("edgeft.serve")


@dataclass
class StreamReport:
    """What a finished (or interrupted) stream did; the CLI prints it and benchmarks read it."""

    frames: int = 0
    errors: int = 0
    dropped: int = 0
    reconnects: int = 0
    elapsed_s: float = 0.0
    fps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    infer_p50_ms: float | None = None
    max_depth: int = 0
    stopped_by: str = "end"
    backend: str = ""
    jsonl: str = ""
    lines: int = 0
    saved: str | None = None
    parity: ParitySnapshot | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class StreamRunner:
    """Runs one source through one Predictor; `status_line()` is the periodic one-liner."""

    def __init__(
        self,
        predictor: Predictor,
        source: FrameSource,
        sink: JsonlSink,
        *,
        saver: AnnotatedSaver | None = None,
        max_frames: int | None = None,
        status_every_s: float = 5.0,
        monitor: ParityMonitor | None = None,
        on_record: Callable[[Frame, FrameRecord], None] | None = None,
        keep_latencies: bool = False,
    ) -> None:
        self.predictor = predictor
        self.backend = predictor.describe()
        self.source = source
        self.sink = sink
        self.saver = saver
        self.max_frames = max_frames if max_frames and max_frames > 0 else None
        self.status_every_s = status_every_s
        self.monitor = monitor
        self.on_record = on_record
        self.keep_latencies = keep_latencies
        self.latency = LatencyWindow()
        self.infer_latency = LatencyWindow(500)
        self.rate = RateMeter()
        self.report = StreamReport(backend=self.backend, jsonl=sink.describe())
        self._stop_requested = False

    def stop(self) -> None:
        """Ask the loop to end after the current batch (callable from on_record or another thread)."""
        self._stop_requested = True

    def status_line(self) -> str:
        s = self.source.stats
        parts = [
            f"{self.source.source_id}",
            f"frames {self.report.frames}",
            f"fps {self.rate.update(self.report.frames):.1f}",
            f"p50 {_fmt_ms(self.latency.percentile(50))} ms",
            f"p99 {_fmt_ms(self.latency.percentile(99))} ms",
            f"infer p50 {_fmt_ms(self.infer_latency.percentile(50))} ms",
            f"dropped {s.dropped}",
            f"queue {self.source.depth}",
        ]
        if s.reconnects:
            parts.append(f"reconnects {s.reconnects}")
        if self.report.errors:
            parts.append(f"errors {self.report.errors}")
        if self.monitor is not None:
            parts.append(self.monitor.snapshot().short())
        return " | ".join(parts)

    def _predict(self, frames: list[Frame]) -> tuple[list[Prediction], float | None]:
        """One Prediction per frame (error frames and undecodable arrays included) and the model time in ms."""
        names = [f.name or f"{f.source_id}#{f.index}" for f in frames]
        preds: list[Prediction | None] = [None] * len(frames)
        tensors: dict[int, np.ndarray] = {}
        for i, f in enumerate(frames):
            if f.image is None:
                preds[i] = Prediction(source=names[i], error=f.error, reason=f.reason)
                continue
            try:
                tensors[i] = self.predictor.prepare(f.image, names[i])
            except ImageDecodeError as exc:
                preds[i] = failed_prediction(names[i], exc)
        if not tensors:
            return [p for p in preds if p is not None], None
        x = np.stack(list(tensors.values()))
        t0 = time.perf_counter()
        logits = self.predictor.infer(x)
        infer_ms = (time.perf_counter() - t0) * 1000.0
        for i, pred in zip(tensors, self.predictor.predictions([names[i] for i in tensors], logits), strict=True):
            preds[i] = pred
        if self.monitor is not None:
            for xi, row in zip(x, logits, strict=True):
                self.monitor.offer(xi, row)
        return [p for p in preds if p is not None], infer_ms

    def _process(self, frames: list[Frame]) -> None:
        preds, infer_ms = self._predict(frames)
        if infer_ms is not None:
            self.infer_latency.add(infer_ms)
        done = time.perf_counter()
        records = []
        for f, pred in zip(frames, preds, strict=True):
            latency = None
            if pred.ok:
                latency = (done - f.t_ready) * 1000.0
                self.latency.add(latency)
                if self.keep_latencies:
                    self.report.latencies_ms.append(latency)
            else:
                self.report.errors += 1
            record = FrameRecord(
                ts=iso_time(f.timestamp),
                stream=f.source_id,
                frame=f.index,
                session=f.session,
                latency_ms=None if latency is None else round(latency, 3),
                infer_ms=None if infer_ms is None or not pred.ok else round(infer_ms, 3),
                backend=self.backend,
                prediction=pred,
            )
            records.append(record)
            if self.saver is not None:
                self.saver.write(f, record)
            if self.on_record is not None:
                self.on_record(f, record)
        self.report.frames += len(frames)
        self.sink.write([r.to_json() for r in records])

    def _loop(self) -> None:
        next_status = time.perf_counter() + self.status_every_s if self.status_every_s > 0 else float("inf")
        while not self._stop_requested:
            want = self.predictor.batch_size
            if self.max_frames is not None:
                want = min(want, self.max_frames - self.report.frames)
                if want <= 0:
                    self.report.stopped_by = "max-frames"
                    return
            frames = self.source.next_frames(want, timeout=0.25)
            self.report.max_depth = max(self.report.max_depth, self.source.depth)
            if frames:
                self._process(frames)
            elif self.source.finished:
                return
            now = time.perf_counter()
            if now >= next_status:
                log.info("%s", self.status_line())
                next_status = now + self.status_every_s
        self.report.stopped_by = "stop"

    def run(self) -> StreamReport:
        """Loop until the source ends, max_frames is reached, stop() or Ctrl-C; outputs are flushed per batch."""
        t_start = time.perf_counter()
        try:
            self._loop()
        except KeyboardInterrupt:
            self.report.stopped_by = "interrupt"
            log.warning("interrupted: stopping after %d frames", self.report.frames)
        except BrokenPipeError:
            self.report.stopped_by = "output-closed"
            log.warning("the JSONL reader went away (broken pipe): stopping after %d frames", self.report.frames)
        except Exception:
            self.report.stopped_by = "error"
            raise
        finally:
            self.source.close()
            self._finish(time.perf_counter() - t_start)
        return self.report

    def _finish(self, elapsed: float) -> None:
        r = self.report
        s = self.source.stats
        r.elapsed_s = elapsed
        r.dropped, r.reconnects = s.dropped, s.reconnects
        r.fps = r.frames / elapsed if elapsed > 0 else None
        r.p50_ms, r.p99_ms = self.latency.percentile(50), self.latency.percentile(99)
        r.infer_p50_ms = self.infer_latency.percentile(50)
        r.lines = self.sink.lines
        r.saved = self.saver.describe() if self.saver is not None else None
        if self.monitor is not None:
            self.monitor.wait_idle(2.0)
            r.parity = self.monitor.snapshot()


def serve_stream(
    bundle_dir: str | Path,
    config: ServeConfig,
    *,
    camera: int | None = None,
    source: str | None = None,
    open_capture: CaptureFactory | None = None,
    reference: ReferenceFactory | None = None,
) -> StreamReport:
    """`edgeft serve --camera/--source` as one call: every object it opens is closed, also on errors and Ctrl-C."""
    src = open_source(camera, source, config.stream, open_capture=open_capture)
    with contextlib.ExitStack() as stack:
        stack.callback(src.close)
        # a live source hands over one (newest) frame at a time: open the engine for batch 1 (OpenVINO LATENCY)
        options = config.model.model_copy(update={"batch_size": 1}) if src.live else config.model
        predictor = stack.enter_context(Predictor.from_options(bundle_dir, options))
        monitor = None
        if config.parity.enabled:
            monitor = monitor_for(predictor, config.parity, reference)
            stack.callback(monitor.close)
        human = HumanLines() if config.stream.human else None
        sink = NullSink() if human is not None and config.stream.jsonl is None else JsonlSink(config.stream.jsonl)
        stack.callback(sink.close)
        saver = None
        if config.stream.save is not None:
            saver = AnnotatedSaver(
                config.stream.save, as_video=src.kind != "images", fps=src.fps, source_id=src.source_id
            )
            stack.callback(saver.close)
        log.info(
            "serving %s (%s) with %s%s",
            src.source_id,
            "live, newest frame" if src.live else "every frame, in order",
            predictor.describe(),
            f", parity sample {config.parity.sample} vs {monitor.reference_name}" if monitor is not None else "",
        )
        runner = StreamRunner(
            predictor,
            src.start(),
            sink,
            saver=saver,
            max_frames=config.stream.max_frames,
            status_every_s=config.status_every_s,
            monitor=monitor,
            on_record=human,
        )
        return runner.run()
