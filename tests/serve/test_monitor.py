"""Online parity monitor: THE comparator and gate on a sampled window; one alert per crossing; never blocks serving."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from servekit import ControlledEngine, class_frames

from edgeft.core.errors import EdgeftError
from edgeft.engines.select import open_bundle
from edgeft.serve.config import ParityOptions
from edgeft.serve.monitor import ParityMonitor, bundle_reference, monitor_for
from edgeft.serve.predictor import Predictor


class FakeReference:
    """A reference 'engine' answering fixed logits; it can hold every call until released."""

    def __init__(self, width: int = 4, gate: threading.Event | None = None) -> None:
        self.width, self.gate = width, gate

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10.0)
        return np.eye(self.width, dtype=np.float32)[np.zeros(x.shape[0], int)]

    def describe(self) -> str:
        return "fake reference"

    def close(self) -> None:
        pass


def options(**kw) -> ParityOptions:
    return ParityOptions(**{"sample": 1.0, "queue_size": 64, **kw})


@pytest.mark.slow
def test_int8_agrees_with_its_fp32_reference(tiny_bundle):
    frames = class_frames(16, seed=5)
    with (
        Predictor(tiny_bundle, "onnxruntime", "int8", batch_size=4) as predictor,
        monitor_for(predictor, options(window=50, min_samples=8)) as monitor,
    ):
        x = np.stack([predictor.prepare(f) for f in frames])
        for xi, row in zip(x, predictor.infer(x), strict=True):
            monitor.offer(xi, row)
        assert monitor.wait_idle(10.0)
        snap = monitor.snapshot()
    assert snap.reference.startswith("onnxruntime:cpu fp32 (onnx-fp32)")
    assert snap.offered == 16 and snap.checked == 16 and snap.dropped == 0
    assert snap.record.passed and snap.record.verdict == "pass" and snap.agreement == 1.0 and not snap.alerting


@pytest.mark.slow
def test_a_mismatched_model_fails_the_gate_alerts_once_and_recovers(tiny_bundle, caplog):
    """A served 'fp32' model whose logits are rotated by one class disagrees on every input."""
    engine = ControlledEngine(
        open_bundle(tiny_bundle, "onnxruntime", "fp32"), transform=lambda z: np.roll(z, 1, axis=1)
    )
    with Predictor.from_engine(engine, tiny_bundle) as bad, Predictor(tiny_bundle, "onnxruntime") as good:
        x = np.stack([good.prepare(f) for f in class_frames(12, seed=7)])
        monitor = ParityMonitor(
            bundle_reference(tiny_bundle),
            classes=good.classes,
            precision="fp32",
            options=options(window=6, min_samples=4),
        )
        with caplog.at_level(logging.INFO, logger="edgeft.serve"), monitor:
            for xi, row in zip(x, bad.infer(x), strict=True):
                monitor.offer(xi, row)
            assert monitor.wait_idle(10.0)
            failed = monitor.snapshot()
            for xi, row in zip(x, good.infer(x), strict=True):  # agreeing samples push the bad ones out
                monitor.offer(xi, row)
            assert monitor.wait_idle(10.0)
            recovered = monitor.snapshot()
    assert failed.alerting and failed.record.verdict == "fail" and failed.agreement == 0.0
    assert failed.disagreements == failed.checked == 12
    assert any("top-1 agreement" in r for r in failed.record.reasons), "the gate's own reasons"
    alerts = [r for r in caplog.records if "parity alert" in r.getMessage()]
    assert len(alerts) == 1 and alerts[0].levelno == logging.WARNING, "one warning per crossing, not per sample"
    assert sum("parity recovered" in r.getMessage() for r in caplog.records) == 1
    assert recovered.record.passed and not recovered.alerting and recovered.agreement == 1.0


def test_no_alert_before_min_samples_and_too_few_never_certifies():
    wrong, right = np.array([0, 9, 0, 0], np.float32), np.array([9, 0, 0, 0], np.float32)  # vs the reference's class 0
    x = np.zeros((3, 8, 8), np.float32)
    monitor = ParityMonitor(FakeReference, classes=list("abcd"), precision="int8", options=options(min_samples=5))
    with monitor:
        verdicts = []
        for _ in range(5):
            monitor.offer(x, wrong)
            assert monitor.wait_idle(10.0)
            verdicts.append((monitor.snapshot().record.verdict, monitor.snapshot().alerting))
    assert verdicts == [("fail", False)] * 4 + [("fail", True)], "the gate fails at once; the alert waits for 5"
    monitor = ParityMonitor(FakeReference, classes=list("abcd"), precision="int8", options=options(min_samples=5))
    with monitor:
        monitor.offer(x, right)
        assert monitor.wait_idle(10.0)
        snap = monitor.snapshot()
    assert snap.record.verdict == "too few images" and not snap.record.passed and not snap.alerting


def test_offer_never_blocks_and_counts_drops():
    gate = threading.Event()
    monitor = ParityMonitor(
        lambda: FakeReference(gate=gate), classes=list("abcd"), precision="int8", options=options(queue_size=1)
    ).start()
    x, row = np.zeros((3, 8, 8), np.float32), np.zeros(4, np.float32)
    queued = sum(monitor.offer(x, row) for _ in range(10))  # the reference is held: the queue fills at once
    snap = monitor.snapshot()
    assert snap.offered == 10 and queued + snap.dropped == 10 and snap.dropped >= 8
    gate.set()
    monitor.close()
    assert monitor.snapshot().checked == queued


def test_sampling_is_seeded():
    picks = []
    for _ in range(2):
        monitor = ParityMonitor(
            FakeReference, classes=list("abcd"), precision="int8", options=options(sample=0.3, seed=7, queue_size=1000)
        )
        with monitor:
            picks.append([monitor.offer(np.zeros((3, 8, 8), np.float32), np.zeros(4, np.float32)) for _ in range(200)])
    assert picks[0] == picks[1] and 30 < sum(picks[0]) < 90


def test_bad_settings_and_a_broken_reference_are_clear_errors():
    with pytest.raises(EdgeftError, match="sample rate"):
        ParityMonitor(FakeReference, classes=["a"], precision="int8", options=ParityOptions(sample=0.0))

    def broken():
        raise EdgeftError("no reference here", fix="export it")

    with pytest.raises(EdgeftError, match="cannot load the parity reference: no reference here"):
        ParityMonitor(broken, classes=["a"], precision="int8", options=options()).start()


def test_only_sampled_rows_are_turned_into_reference_tensors():
    """An image-input engine serves uint8 rows; the monitor normalises just the rows it samples (serving does not
    pay a float pass per image for a 5% sample)."""
    seen: list[tuple] = []

    def to_tensor(row: np.ndarray) -> np.ndarray:
        seen.append((row.shape, row.dtype))
        return np.zeros((3, 8, 8), np.float32)

    monitor = ParityMonitor(
        lambda: FakeReference(),
        classes=list("abcd"),
        precision="int8",
        options=options(sample=0.25, seed=3),
        to_tensor=to_tensor,
    ).start()
    with monitor:
        row = np.eye(4, dtype=np.float32)[0]
        for _ in range(200):
            monitor.offer(np.zeros((8, 8, 3), np.uint8), row)
        assert monitor.wait_idle(10.0)
        snap = monitor.snapshot()
    assert 20 < snap.offered < 80 and len(seen) == snap.offered and snap.errors == 0
    assert set(seen) == {((8, 8, 3), np.dtype(np.uint8))}
