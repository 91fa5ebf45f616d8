"""The frame loop behind `edgeft serve --camera/--source`: read, preprocess, infer, write, report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeft.runtime.serve.model import ServeModel, to_tensor, topk_rows
from edgeft.runtime.serve.outputs import AnnotatedSaver, JsonlSink, LatencyWindow, RateMeter, iso_time
from edgeft.runtime.serve.parity_monitor import ParityMonitor, ParitySnapshot
from edgeft.runtime.serve.sources import Frame, FrameSource

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
    parity: ParitySnapshot | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    infer_ms: list[float] = field(default_factory=list, repr=False)


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class StreamRunner:
    """Runs one source through one model; `status_line()` is the periodic one-liner."""

    def __init__(
        self,
        model: ServeModel,
        source: FrameSource,
        jsonl: JsonlSink,
        *,
        saver: AnnotatedSaver | None = None,
        batch_size: int = 8,
        topk: int = 5,
        max_frames: int | None = None,
        status_every_s: float = 5.0,
        parity: ParityMonitor | None = None,
        on_record: Callable[[Frame, dict[str, Any]], None] | None = None,
        keep_latencies: bool = False,
    ) -> None:
        self.model = model
        self.source = source
        self.jsonl = jsonl
        self.saver = saver
        self.batch_size = max(1, batch_size)
        self.topk = topk
        self.max_frames = max_frames if max_frames and max_frames > 0 else None
        self.status_every_s = status_every_s
        self.parity = parity
        self.on_record = on_record
        self.keep_latencies = keep_latencies
        self.latency = LatencyWindow()
        self.infer_latency = LatencyWindow(500)
        self.rate = RateMeter()
        self.report = StreamReport()
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
        if self.parity is not None:
            parts.append(self.parity.snapshot().short())
        return " | ".join(parts)

    def _process(self, frames: list[Frame]) -> None:
        good = [f for f in frames if f.image is not None]
        rows: list[dict[str, Any]] = []
        infer_ms = 0.0
        if good:
            x = np.stack([to_tensor(f.image, self.model.spec) for f in good])
            t0 = time.perf_counter()
            logits = self.model.infer(x)
            infer_ms = (time.perf_counter() - t0) * 1000.0
            self.infer_latency.add(infer_ms)
            if self.keep_latencies:
                self.report.infer_ms.append(infer_ms)
            rows = topk_rows(logits, self.model.classes, self.topk)
            if self.parity is not None:
                for xi, row in zip(x, rows, strict=True):
                    self.parity.offer(xi, row["index"])
        done = time.perf_counter()
        it = iter(rows)
        records = []
        for f in frames:
            rec: dict[str, Any] = {"ts": iso_time(f.timestamp), "source": f.source_id, "frame": f.index}
            if f.name is not None:
                rec["name"] = f.name
            if f.image is None:
                rec.update(error=f.error, reason=f.reason)
                self.report.errors += 1
            else:
                row = next(it)
                latency = (done - f.t_ready) * 1000.0
                self.latency.add(latency)
                if self.keep_latencies:
                    self.report.latencies_ms.append(latency)
                rec.update(label=row["label"], prob=row["prob"], topk=row["topk"], latency_ms=round(latency, 3))
                rec["infer_ms"] = round(infer_ms, 3)
            rec["backend"] = self.model.backend
            records.append(rec)
            if self.saver is not None:
                self.saver.write(f, rec)
            if self.on_record is not None:
                self.on_record(f, rec)
        self.report.frames += len(frames)
        self.jsonl.write(records)

    def run(self) -> StreamReport:
        """Loop until the source ends, --max-frames is reached or Ctrl-C; outputs are flushed per batch."""
        t_start = time.perf_counter()
        next_status = t_start + self.status_every_s if self.status_every_s > 0 else float("inf")
        try:
            while not self._stop_requested:
                want = self.batch_size
                if self.max_frames is not None:
                    want = min(want, self.max_frames - self.report.frames)
                    if want <= 0:
                        self.report.stopped_by = "max-frames"
                        break
                frames = self.source.next_frames(want, timeout=0.25)
                self.report.max_depth = max(self.report.max_depth, self.source.depth)
                if frames:
                    self._process(frames)
                elif self.source.finished:
                    break
                now = time.perf_counter()
                if now >= next_status:
                    log.info("%s", self.status_line())
                    next_status = now + self.status_every_s
            if self._stop_requested:
                self.report.stopped_by = "stop"
        except KeyboardInterrupt:
            self.report.stopped_by = "interrupt"
            log.warning("interrupted (Ctrl-C): stopping after %d frames", self.report.frames)
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
        if self.parity is not None:
            self.parity.wait_idle(2.0)
            r.parity = self.parity.snapshot()
