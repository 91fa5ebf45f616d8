"""The artifact-output cache: what its key depends on, and that a bad entry is recomputed, never trusted."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from edgeft.check.refcache import artifact_key, load_outputs, run_cached
from edgeft.core.preprocess import PreprocessSpec
from edgeft.engines.base import Engine
from edgeft.engines.onnxruntime import OnnxRuntimeEngine
from edgeft.engines.openvino import OpenVinoEngine

SPEC = PreprocessSpec(input_size=32, resize_size=36)
IMAGES = ["a" * 64, "b" * 64, "c" * 64]
SHA = "1" * 64


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFT_CACHE", str(cache))
    return cache


def _key(engine: Engine, **change) -> str:
    args = {"model_sha256": SHA, "extra_sha256": ["2" * 64], "spec": SPEC, "images": IMAGES, "batch_size": 32}
    args.update(change)
    return artifact_key(engine, **args)


def _ov(**options) -> OpenVinoEngine:
    return OpenVinoEngine("m.xml", precision=options.pop("precision", "fp32"), num_outputs=4, **options)


def test_export_and_parity_engines_of_one_artifact_share_a_key():
    # export builds the engine without options; parity through open_artifact with the batch-size defaults
    export = OpenVinoEngine("work/m.xml", precision="fp32", input_shape=(3, 32, 32), num_outputs=4, label="ov")
    parity = OpenVinoEngine(
        "bundle/m.xml", precision="fp32", device="CPU", input_shape=(3, 32, 32), num_outputs=4, hint="THROUGHPUT"
    )
    assert _key(export) == _key(parity)
    ort_export = OnnxRuntimeEngine("work/m.onnx", num_outputs=4)
    ort_parity = OnnxRuntimeEngine("bundle/m.onnx", device="cpu", num_outputs=4, classes_sha256="x")
    assert _key(ort_export) == _key(ort_parity)


def test_openvino_inference_precision_is_part_of_the_key():
    assert _ov().numerics()["INFERENCE_PRECISION_HINT"] == "f32"
    assert _ov(precision="bf16").numerics()["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "INFERENCE_PRECISION_HINT" not in _ov(precision="int8").numerics()  # OpenVINO's own choice
    keys = {_key(_ov(precision=p)) for p in ("fp32", "bf16", "fp16", "int8")}
    assert len(keys) == 4


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "9" * 64},
        {"extra_sha256": ["3" * 64]},
        {"extra_sha256": []},
        {"images": IMAGES[::-1]},
        {"images": IMAGES[:2]},
        {"spec": PreprocessSpec(input_size=32, resize_size=40)},
        {"batch_size": 8},
    ],
)
def test_every_input_of_the_key_changes_it(change):
    assert _key(_ov(), **change) != _key(_ov())


def test_engine_settings_device_and_library_version_change_the_key(monkeypatch):
    base = _key(_ov())
    assert _key(_ov(hint="LATENCY")) != base
    assert _key(_ov(streams=2)) != base
    assert _key(OpenVinoEngine("m.xml", precision="fp32", device="GPU", num_outputs=4)) != base
    assert _key(OnnxRuntimeEngine("m.onnx", num_outputs=4, threads=1)) != _key(
        OnnxRuntimeEngine("m.onnx", num_outputs=4, threads=3)
    )
    monkeypatch.setattr(OpenVinoEngine, "library_version", classmethod(lambda cls: "openvino==0.0.1"))
    assert _key(_ov()) != base


def test_another_pillow_or_opencv_changes_artifact_and_reference_keys(monkeypatch):
    """Decoding and resampling libraries decide the pixels the engines see: a new version is a new key."""
    from edgeft.check import refcache

    base, ref = _key(_ov()), refcache.reference_key("w" * 64, PreprocessSpec(), IMAGES, "torch")
    for package in ("pillow", "opencv-python"):
        real = refcache.package_version
        monkeypatch.setattr(
            refcache, "package_version", lambda p, real=real, package=package: "0" if p == package else real(p)
        )
        assert _key(_ov()) != base
        assert refcache.reference_key("w" * 64, PreprocessSpec(), IMAGES, "torch") != ref
        monkeypatch.undo()


def test_an_artifact_without_a_recorded_sha256_is_never_cached():
    assert _key(_ov(), model_sha256="") == ""


class Counting(Engine):
    """A stand-in engine: logits = the first 4 pixels of each row, counting how often it runs."""

    name = "counting"
    runs = 0

    @classmethod
    def library_version(cls) -> str:
        return "counting==1"

    def _load(self) -> None:
        return None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        Counting.runs += 1
        return batch.reshape(len(batch), -1)[:, :4].copy()


def _x() -> np.ndarray:
    return np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)


def test_run_cached_runs_once_and_no_reuse_runs_again():
    Counting.runs = 0
    engine = Counting("m", num_outputs=4, label="c")
    key = _key(engine)
    first = run_cached(engine, _x(), 2, key)
    assert not first.cached and Counting.runs == 3  # 5 rows in batches of 2
    second = run_cached(engine, _x(), 2, key)
    assert second.cached and Counting.runs == 3
    np.testing.assert_array_equal(second.logits, _x().reshape(5, -1)[:, :4])
    assert second.describe == first.describe == "counting fp32 (c)"
    third = run_cached(engine, _x(), 2, key, reuse=False)
    assert not third.cached and Counting.runs == 6
    assert not run_cached(engine, _x(), 2, "").cached and Counting.runs == 9  # no key: never cached


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        _npy(np.zeros((5, 4), np.float32))[:90],  # torn
        b"not a numpy file",
        _npy(np.zeros((5, 5), np.float32)),  # wrong width
        _npy(np.zeros((4, 4), np.float32)),  # wrong row count
        _npy(np.zeros((5, 4), np.float64)),  # wrong dtype
        _npy(np.array([None] * 20, dtype=object).reshape(5, 4), allow_pickle=True),  # would need pickle
    ],
    ids=["torn", "garbage", "width", "rows", "dtype", "pickle"],
)
def test_a_bad_entry_is_recomputed_and_replaced(private_cache, content):
    Counting.runs = 0
    engine = Counting("m", num_outputs=4)
    key = _key(engine)
    run_cached(engine, _x(), 8, key)
    entry = private_cache / "outputs" / f"{key}.npy"
    assert entry.is_file() and Counting.runs == 1
    entry.write_bytes(content)
    assert load_outputs(key, 5, 4) is None
    again = run_cached(engine, _x(), 8, key)
    assert not again.cached and Counting.runs == 2
    np.testing.assert_array_equal(again.logits, _x().reshape(5, -1)[:, :4])
    assert run_cached(engine, _x(), 8, key).cached and Counting.runs == 2  # the entry was rewritten


def test_a_lost_describe_file_is_not_a_miss(private_cache):
    engine = Counting("m", num_outputs=4, label="c")
    key = _key(engine)
    run_cached(engine, _x(), 8, key)
    (private_cache / "outputs" / f"{key}.describe.npy").write_bytes(b"torn")
    hit = run_cached(engine, _x(), 8, key)
    assert hit.cached and hit.describe == "counting fp32 (c)"


def test_another_engine_class_of_the_same_name_has_its_own_key():
    class Patched(OnnxRuntimeEngine):
        pass

    assert _key(Patched("m.onnx", num_outputs=4)) != _key(OnnxRuntimeEngine("m.onnx", num_outputs=4))
