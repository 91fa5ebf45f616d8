"""OpenVINO INT8 through NNCF: with accuracy control it is guarded by the run's val split."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.core.manifests import BundleManifest, ModelManifest, SplitsDoc
from edgeft.data.evalsets import from_splits
from edgeft.engines.openvino import OpenVinoEngine
from edgeft.export.calibration import prepare

pytestmark = pytest.mark.slow


def _accuracy(xml, precision: str, x: np.ndarray, y: np.ndarray) -> float:
    with OpenVinoEngine(xml, precision=precision) as engine:
        return float(np.mean(engine.run(x, 8).argmax(1) == y))


def test_nncf_accuracy_control_keeps_val_accuracy(tiny_run, tiny_bundle, tmp_path):
    nncf = pytest.importorskip("nncf")
    import openvino as ov

    from edgeft.export.quant.nncf import quantize_ir

    manifest, splits = ModelManifest.load(tiny_run), SplitsDoc.load(tiny_run)
    x_val, kept = from_splits(splits, "val", manifest.classes).load(manifest.preprocess)
    y_val = kept.label_indices(manifest.classes)
    cal = prepare(splits, list(manifest.classes), manifest.preprocess, manifest.weights.sha256, 300, "minmax")
    fp32_xml = tiny_bundle / BundleManifest.load(tiny_bundle).artifact("openvino-fp32").path
    quantized, info = quantize_ir(nncf, ov.Core().read_model(str(fp32_xml)), cal.tensors, (x_val, y_val), 1.0)
    assert info["accuracy_control"] is True and info["val_images"] == len(y_val) > 0
    assert info["fake_quantize_ops"] > 0
    int8_xml = tmp_path / "int8.xml"
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)
    drop = 100 * (_accuracy(fp32_xml, "fp32", x_val, y_val) - _accuracy(int8_xml, "int8", x_val, y_val))
    assert drop <= 1.0
