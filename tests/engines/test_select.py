"""Bundle -> engine on the real tiny bundle: what `auto` picks on this CPU, the gate it respects, sha256 refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeft.core.errors import EdgeftError
from edgeft.core.manifests import BundleManifest, GateRecord
from edgeft.engines.base import has_module
from edgeft.engines.select import available_backends, open_bundle, plan_targets, resolve
from edgeft.export.openvino_ir import computes_in

pytestmark = pytest.mark.slow

CPU_ONLY = not any(s in available_backends() for s in ("onnxruntime:cuda", "tensorrt"))
cpu_only = pytest.mark.skipif(not CPU_ONLY, reason="auto prefers the GPU backends on this machine")

# OpenVINO's half-precision IR is named for what this CPU computes it in (bf16 on CPUs with bf16 units)
HALF = "bf16" if has_module("openvino") and computes_in() == "bf16" else "fp16"

FAILED = GateRecord(passed=False, verdict="fail", n=24, agreement=0.5, reasons=["planted by the test"])


def edit(bundle_dir: Path, fail: set[str] = frozenset(), drop: set[str] = frozenset()) -> BundleManifest:
    """Mark artifacts as failed by the gate and/or drop them from a (copied) bundle.json."""
    bundle = BundleManifest.load(bundle_dir)
    for art in bundle.artifacts:
        if art.name in fail:
            art.gate = FAILED
    bundle.artifacts = [a for a in bundle.artifacts if a.name not in drop]
    bundle.save(bundle_dir)
    return BundleManifest.load(bundle_dir)


def picked(bundle_dir: Path, precision: str) -> str:
    bundle = BundleManifest.load(bundle_dir)
    spec, art = resolve(bundle_dir, bundle, "auto", precision)
    return f"{spec}/{art.name}"


@cpu_only
def test_auto_follows_the_measured_cpu_preference(tiny_bundle):
    """On a CPU machine OpenVINO is measured fastest at every precision (engines/select.py CPU_PREFERENCE)."""
    assert picked(tiny_bundle, "fp32") == "openvino:CPU/openvino-fp32"
    assert picked(tiny_bundle, HALF) == f"openvino:CPU/openvino-{HALF}"
    assert picked(tiny_bundle, "int8") == "openvino:CPU/openvino-int8"
    assert picked(tiny_bundle, "auto") == "openvino:CPU/openvino-int8"  # the fastest precision that passed
    with open_bundle(tiny_bundle, "auto", "int8") as engine:
        assert engine.describe().startswith("openvino:CPU int8 (openvino-int8)")


@cpu_only
def test_auto_never_picks_an_artifact_that_failed_its_gate(tiny_bundle, copy_dir):
    bdir = copy_dir(tiny_bundle)
    edit(bdir, fail={"openvino-int8"})
    assert picked(bdir, "int8") == "openvino:CPU/openvino-int8-qdq"  # the other OpenVINO INT8 passed
    edit(bdir, fail={"openvino-int8", "openvino-int8-qdq"})
    assert picked(bdir, "int8") == "onnxruntime:cpu/onnx-int8-cpu"
    edit(bdir, fail={"onnx-int8", "onnx-int8-cpu"})
    with pytest.raises(EdgeftError, match=r"no backend on this machine can run a passing int8 artifact") as err:
        picked(bdir, "int8")
    assert "openvino-int8 (failed its gate)" in str(err.value)
    assert picked(bdir, "auto") == f"openvino:CPU/openvino-{HALF}"  # int8 all failed: the next precision
    with open_bundle(bdir, "openvino", "int8") as engine:  # naming it explicitly still runs it
        assert not engine.artifact.passed


@cpu_only
def test_auto_falls_back_to_onnxruntime_without_openvino_artifacts(tiny_bundle, copy_dir):
    bdir = copy_dir(tiny_bundle)
    edit(bdir, drop={a.name for a in BundleManifest.load(bdir).artifacts if a.format == "openvino"})
    assert picked(bdir, "fp32") == "onnxruntime:cpu/onnx-fp32"
    assert picked(bdir, "int8") == "onnxruntime:cpu/onnx-int8-cpu"  # the device-specific variant first
    with pytest.raises(EdgeftError, match=r"passing fp16 artifact.*onnx-fp32"):
        picked(bdir, "fp16")


@pytest.mark.parametrize(
    ("artifact", "backend", "precision"),
    [("onnx-fp32", "onnxruntime", "fp32"), ("openvino-int8", "openvino", "int8")],
)
def test_tampered_artifact_is_refused_by_sha256(tiny_bundle, copy_dir, artifact, backend, precision):
    bdir = copy_dir(tiny_bundle)
    art = BundleManifest.load(bdir).artifact(artifact)
    target = bdir / (next(iter(art.extra_files)) if art.extra_files else art.path)  # OpenVINO: the weights .bin
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(EdgeftError, match="does not match the sha256 in bundle.json") as err:
        open_bundle(bdir, backend, precision)
    assert err.value.path == str(target) and "re-export" in err.value.fix
    with open_bundle(bdir, "openvino", HALF) as engine:  # the untouched artifacts still open
        assert engine.loaded


@pytest.mark.parametrize(("backend", "precision"), [("onnxruntime", "fp32"), ("openvino", "fp32")])
def test_classes_edited_in_bundle_json_are_refused_at_load(tiny_bundle, copy_dir, backend, precision):
    import json

    bdir = copy_dir(tiny_bundle)
    doc = json.loads((bdir / "bundle.json").read_text())
    doc["classes"] = list(reversed(doc["classes"]))  # hash dropped too: only the model file still knows the truth
    doc["classes_sha256"] = ""
    (bdir / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeftError, match="differs from the one embedded in the model file") as err:
        open_bundle(bdir, backend, precision).load()
    assert "never edit the classes" in err.value.fix


def test_plan_targets_lists_every_runnable_pair_and_names_the_selection(tiny_bundle):
    bundle = BundleManifest.load(tiny_bundle)
    targets, skipped = plan_targets(bundle, tiny_bundle)
    keys = {t.key for t in targets}
    assert {"onnxruntime:cpu/onnx-fp32", "onnxruntime:cpu/onnx-int8", "openvino:CPU/openvino-int8"} <= keys
    assert not any(k.startswith("torch") for k in keys), "torch only when asked for"
    only, _ = plan_targets(bundle, tiny_bundle, ["openvino-int8", "onnx-fp32"])
    assert {t.artifact.name for t in only} == {"openvino-int8", "onnx-fp32"}
    assert {"onnxruntime:cpu/onnx-fp32", "openvino:CPU/openvino-int8"} <= {t.key for t in only}
    assert skipped == {} or all("not available" in why for why in skipped.values())
