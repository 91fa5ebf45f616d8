"""Online parity monitor: agreement 1.0 against its own FP32 reference, a drop (and one alert) when mismatched."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import tiny_bundle  # noqa: F401 - the shared session fixture
from test_serve_support import synthetic_frames

from edgeft.errors import EdgeftError
from edgeft.runtime.serve.model import open_model, to_tensor
from edgeft.runtime.serve.outputs import JsonlSink
from edgeft.runtime.serve.parity_monitor import ParityMonitor, bundle_reference
from edgeft.runtime.serve.sources import open_source
from edgeft.runtime.serve.stream import StreamRunner

N = 18


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("parity-frames")
    for i, rgb in enumerate(synthetic_frames(N, seed=5)):
        Image.fromarray(rgb).save(root / f"{i:03d}.png")
    return root


def monitored_run(model, folder: Path, tmp_path: Path, monitor: ParityMonitor):
    sink = JsonlSink(tmp_path / "out.jsonl")
    report = StreamRunner(model, open_source(source=str(folder)).start(), sink, parity=monitor, status_every_s=0).run()
    sink.close()
    return report


def test_int8_model_agrees_with_its_fp32_reference(tiny_bundle, folder, tmp_path) -> None:  # noqa: F811
    bundle = tiny_bundle.bundle_dir
    monitor = ParityMonitor(bundle_reference(bundle), sample=1.0, window=50, min_samples=5, queue_size=64)
    with open_model(bundle, "onnxruntime", "int8", batch_size=4) as model, monitor:
        report = monitored_run(model, folder, tmp_path, monitor)
    snap = report.parity
    assert snap is not None and "onnx-fp32" in snap.reference
    assert snap.offered == N and snap.checked + snap.dropped == N and snap.checked > 0
    assert snap.agreement == 1.0 and not snap.alerting


def test_mismatched_model_drops_agreement_and_alerts_once(tiny_bundle, folder, tmp_path, caplog) -> None:  # noqa: F811
    bundle = tiny_bundle.bundle_dir
    with open_model(bundle, "onnxruntime", "fp32", batch_size=4) as real:
        permuted = real.with_infer(lambda x: np.roll(real.infer(x), 1, axis=1), backend="permuted")
        monitor = ParityMonitor(bundle_reference(bundle), sample=1.0, window=10, min_samples=4, queue_size=64)
        with caplog.at_level(logging.INFO, logger="edgeft.serve"), monitor:
            report = monitored_run(permuted, folder, tmp_path, monitor)
            assert monitor.agreement == 0.0
            # recovery: agreeing samples, straight to the monitor, until the window is clean again
            x = to_tensor(synthetic_frames(1, seed=9)[0], real.spec)
            top1 = int(np.argmax(real.infer(x[None])[0]))
            for _ in range(12):
                monitor.offer(x, top1)
                monitor.wait_idle(5.0)
    snap = report.parity
    assert snap is not None and snap.agreement == 0.0 and snap.alerting and snap.disagreements == snap.checked
    alerts = [r for r in caplog.records if "parity alert" in r.getMessage()]
    assert len(alerts) == 1 and alerts[0].levelno == logging.WARNING, "one warning per crossing, not per frame"
    assert any("parity recovered" in r.getMessage() for r in caplog.records)
    assert monitor.agreement == 1.0 and not monitor.alerting


def test_offer_never_blocks_and_counts_drops(tiny_bundle) -> None:  # noqa: F811
    gate = threading.Event()

    def reference():
        def infer(x: np.ndarray) -> np.ndarray:
            gate.wait(10.0)
            return np.zeros((x.shape[0], 9), np.float32)

        return infer, lambda: None, "blocked-reference"

    monitor = ParityMonitor(reference, sample=1.0, queue_size=1, seed=0).start()
    x = np.zeros((3, 32, 32), np.float32)
    queued = sum(monitor.offer(x, 0) for _ in range(10))
    snap = monitor.snapshot()
    assert snap.offered == 10 and queued + snap.dropped == 10 and snap.dropped >= 8
    gate.set()
    monitor.close()
    assert monitor.snapshot().checked == queued


def test_sampling_is_seeded_and_bad_settings_are_refused() -> None:
    def reference():
        return (lambda x: np.zeros((x.shape[0], 2), np.float32)), (lambda: None), "zeros"

    picks = []
    for _ in range(2):
        mon = ParityMonitor(reference, sample=0.3, seed=7, queue_size=1000).start()
        picks.append([mon.offer(np.zeros((3, 8, 8), np.float32), 0) for _ in range(200)])
        mon.close()
    assert picks[0] == picks[1] and 30 < sum(picks[0]) < 90
    with pytest.raises(EdgeftError, match="sample rate"):
        ParityMonitor(reference, sample=0.0)

    def broken():
        raise EdgeftError("no reference here", fix="export it")

    with pytest.raises(EdgeftError, match="cannot load the parity reference: no reference here"):
        ParityMonitor(broken, sample=0.5).start()
