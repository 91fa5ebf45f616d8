"""The HTTP server's metrics: one prometheus_client registry per app, read by /metrics AND by the status line.

There are no side counters: the periodic status line is computed from the same registry samples that
/metrics exposes (request counts, the latency histogram, queue gauges, the parity monitor's snapshot).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgeft.serve.monitor import ParityMonitor

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PREDICT = "/predict"


class _ParityCollector(Collector):
    """The monitor's snapshot at scrape time (the monitor owns these numbers; they are not copied)."""

    def __init__(self, monitor: ParityMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Any]:
        snap = self.monitor.snapshot()
        agreement = math.nan if snap.agreement is None else snap.agreement
        yield GaugeMetricFamily(
            "edgeft_parity_agreement", "Top-1 agreement with the FP32 reference over the window", value=agreement
        )
        yield GaugeMetricFamily("edgeft_parity_window_samples", "Samples in the judged window", value=snap.window)
        yield GaugeMetricFamily("edgeft_parity_alert", "1 while the gate fails on the window", value=int(snap.alerting))
        yield CounterMetricFamily("edgeft_parity_checked", "Samples checked against the reference", value=snap.checked)
        yield CounterMetricFamily(
            "edgeft_parity_disagreements", "Checked samples whose top-1 differed", value=snap.disagreements
        )
        yield CounterMetricFamily(
            "edgeft_parity_dropped", "Samples dropped: the parity queue was full", value=snap.dropped
        )


class ServeMetrics:
    """Every metric of one app, in its own registry (several apps in one process never collide)."""

    def __init__(self, model: dict[str, str], capacity: int, monitor: ParityMonitor | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgeft_http_requests", "HTTP responses by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "edgeft_http_request_duration_seconds",
            "HTTP request latency (receive to response)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("edgeft_http_errors", "Error responses by error code", ["error"], registry=r)
        self.images = Counter("edgeft_images", "Images classified", registry=r)
        self.batch_size = Histogram("edgeft_batch_size", "Images per model call", buckets=BATCH_BUCKETS, registry=r)
        self.infer_seconds = Histogram(
            "edgeft_inference_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inflight = Gauge("edgeft_inflight_images", "Images accepted and not answered yet", registry=r)
        self.queue_depth = Gauge("edgeft_queue_depth", "Images waiting in the batcher queue", registry=r)
        self.capacity = Gauge("edgeft_queue_capacity", "Bound of the batcher queue", registry=r)
        self.capacity.set(capacity)
        Info("edgeft_model", "The served model", registry=r).info(model)
        self.monitor = monitor
        if monitor is not None:
            r.register(_ParityCollector(monitor))
        self._last = (time.perf_counter(), 0.0, self._buckets())
        self._longest = 0.0  # the slowest /predict since the previous status line, in seconds

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered (or abandoned) request and its latency."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if endpoint == PREDICT:
            self._longest = max(self._longest, seconds)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from the batcher at scrape time."""
        self.queue_depth.set_function(depth)

    def timed_infer(self, infer: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Wrap the model call: batch size and model time per batch."""

        def run(batch: Any) -> Any:
            self.batch_size.observe(batch.shape[0])
            with self.infer_seconds.time():
                return infer(batch)

        return run

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- the status line, from the registry ----------------------------------------------------------
    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def _predict_counts(self) -> tuple[float, float]:
        """(answered, failed) /predict requests so far."""
        total = failed = 0.0
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name == "edgeft_http_requests_total" and s.labels.get("endpoint") == PREDICT:
                    total += s.value
                    failed += s.value if int(s.labels["status"]) >= 400 else 0.0
        return total, failed

    def _buckets(self) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) of the /predict latency histogram."""
        out = []
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name == "edgeft_http_request_duration_seconds_bucket" and s.labels.get("endpoint") == PREDICT:
                    out.append((float(s.labels["le"]), s.value))
        return sorted(out)

    def status_line(self) -> str:
        """Request rate and latency percentiles since the previous line, queue, in flight, errors, parity."""
        total, failed = self._predict_counts()
        now, buckets = time.perf_counter(), self._buckets()
        t0, total0, buckets0 = self._last
        self._last = (now, total, buckets)
        before = dict(buckets0)
        window = [(le, n - before.get(le, 0.0)) for le, n in buckets]
        longest, self._longest = self._longest, 0.0

        def quantile(q: float) -> float | None:  # a bucket estimate, never above the slowest request it stands for
            v = histogram_quantile(q, window)
            return None if v is None else min(v, longest)

        p50, p99 = quantile(0.5), quantile(0.99)
        parts = [
            f"http requests {total:.0f} (failed {failed:.0f})",
            f"rps {(total - total0) / max(now - t0, 1e-9):.1f}",
            f"p50 {'-' if p50 is None else f'{p50 * 1000:.1f}'} ms",
            f"p99 {'-' if p99 is None else f'{p99 * 1000:.1f}'} ms",
            f"queue {self.value('edgeft_queue_depth'):.0f}/{self.value('edgeft_queue_capacity'):.0f}",
            f"in flight {self.value('edgeft_inflight_images'):.0f}",
        ]
        if self.monitor is not None:
            parts.append(self.monitor.snapshot().short())
        return " | ".join(parts)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket holding the q-th observation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            inside = count - lower_count
            return lower_bound + (le - lower_bound) * ((rank - lower_count) / inside if inside > 0 else 1.0)
        lower_bound, lower_count = le, count
    return lower_bound
