"""A tiny but real bundle for the runtime tests: a trained 9-class CNN at 32x32, exported to ONNX FP32,
ONNX Q/DQ INT8 and OpenVINO FP32/FP16/INT8 IR, plus its run dir (model.json, model.safetensors, splits.json).

Built once per test session (about 5 s on 2 cores) and copied by tests that modify it.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeft.data.synth import FISH_SPECIES
from edgeft.manifest import BundleManifest, ModelManifest, PreprocessSpec, sha256_file
from edgeft.runtime.preprocess import preprocess

CLASSES = list(FISH_SPECIES)
SPEC = PreprocessSpec(input_size=32, resize_size=36)
TEST_PER_CLASS = 4


@dataclass(frozen=True)
class TinyBundle:
    bundle_dir: Path
    run_dir: Path
    data_dir: Path  # class-per-folder tree of the test images
    test_images: list[Path]
    test_labels: list[str]


def class_image(k: int, rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A synthetic 'fish' of class k: a distinct colour and stripe frequency, with noise."""
    w, h = size
    palette = np.array(
        [
            [220, 40, 40],
            [40, 200, 60],
            [50, 70, 220],
            [230, 210, 40],
            [200, 60, 210],
            [40, 210, 210],
            [240, 140, 30],
            [120, 120, 120],
            [250, 250, 250],
        ],
        np.float32,
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(xx * (0.2 + 0.15 * k) + rng.uniform(0, 6.28))
    base = palette[k][None, None, :] * (0.55 + 0.45 * stripes[..., None])
    img = base + rng.normal(0, 18, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def tiny_net(num_classes: int = len(CLASSES)):
    """A 3-layer CNN: big enough to learn the synthetic classes, small enough to export in a blink."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def train_tiny(model, steps: int = 150):
    """Fit the tiny CNN on freshly generated class images so predictions are confident (stable under INT8)."""
    import torch

    rng = np.random.default_rng(1)
    xs, ys = [], []
    for k in range(len(CLASSES)):
        for _ in range(16):
            xs.append(preprocess(class_image(k, rng), SPEC))
            ys.append(k)
    x = torch.from_numpy(np.stack(xs))
    y = torch.tensor(ys)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(ys), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export_onnx(model, path: Path) -> None:
    import torch

    with warnings.catch_warnings():  # dynamo=False is deliberate (the export contract); silence its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            torch.zeros(1, 3, SPEC.input_size, SPEC.input_size),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def quantize_int8(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(2)
    calib = [preprocess(class_image(k % len(CLASSES), rng), SPEC)[None] for k in range(36)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b}

    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def save_ir(onnx_path: Path, xml: Path, fp16: bool = False) -> None:
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=fp16)


def artifact_entry(bundle_dir: Path, name: str, fmt: str, precision: str, path: str, info: dict | None = None) -> dict:
    extra = {}
    if fmt == "openvino":
        rel = path[: -len(".xml")] + ".bin"
        extra = {rel: sha256_file(bundle_dir / rel)}
    return {
        "name": name,
        "format": fmt,
        "precision": precision,
        "path": path,
        "sha256": sha256_file(bundle_dir / path),
        "bytes": (bundle_dir / path).stat().st_size,
        "extra_files": extra,
        "info": info or {},
    }


def write_bundle_json(bundle_dir: Path, run_dir: Path, artifacts: list[dict], spec: PreprocessSpec = SPEC) -> None:
    BundleManifest(
        name="tiny-fish",
        classes=list(CLASSES),
        preprocess=spec.to_dict(),
        artifacts=artifacts,
        input={"name": "input", "shape": [-1, 3, spec.input_size, spec.input_size], "dtype": "float32"},
        output={"name": "logits", "shape": [-1, len(CLASSES)], "dtype": "float32"},
        source={"run_dir": str(run_dir), "weights_sha256": sha256_file(run_dir / "model.safetensors")},
    ).save(bundle_dir)


def export_all(model, bundle_dir: Path, run_dir: Path) -> None:
    """The five CPU artifacts of the export contract, and bundle.json."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(model, bundle_dir / "model.fp32.onnx")
    quantize_int8(bundle_dir / "model.fp32.onnx", bundle_dir / "model.int8.onnx")
    save_ir(bundle_dir / "model.fp32.onnx", bundle_dir / "openvino/fp32/model.xml")
    save_ir(bundle_dir / "model.fp32.onnx", bundle_dir / "openvino/fp16/model.xml", fp16=True)
    save_ir(bundle_dir / "model.int8.onnx", bundle_dir / "openvino/int8/model.xml")
    arts = [
        artifact_entry(bundle_dir, "onnx-fp32", "onnx", "fp32", "model.fp32.onnx"),
        artifact_entry(bundle_dir, "onnx-int8", "onnx", "int8", "model.int8.onnx"),
        artifact_entry(bundle_dir, "openvino-fp32", "openvino", "fp32", "openvino/fp32/model.xml"),
        artifact_entry(bundle_dir, "openvino-fp16", "openvino", "fp16", "openvino/fp16/model.xml"),
        artifact_entry(bundle_dir, "openvino-int8", "openvino", "int8", "openvino/int8/model.xml"),
    ]
    write_bundle_json(bundle_dir, run_dir, arts)


def write_run_dir(model, run_dir: Path, data_dir: Path, items: list[dict]) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run_dir / "model.safetensors"))
    ModelManifest(
        task="classify",
        name="tiny",
        backbone={"id": "tiny-cnn", "arch": "tiny-cnn", "feature_dim": 16, "weights_sha256": "", "source": "tests"},
        classes=list(CLASSES),
        preprocess=SPEC.to_dict(),
        head={"hidden": [], "dropout": 0.0},
        weights={"file": "model.safetensors", "sha256": sha256_file(run_dir / "model.safetensors")},
    ).save(run_dir)
    splits = {"seed": 0, "classes": list(CLASSES), "root": str(data_dir), "items": items}
    (run_dir / "splits.json").write_text(json.dumps(splits, indent=1))


def build_tiny_bundle(root: Path) -> TinyBundle:
    root.mkdir(parents=True, exist_ok=True)
    data_dir, run_dir, bundle_dir = root / "data", root / "run", root / "bundle"
    rng = np.random.default_rng(3)
    items, paths, labels = [], [], []
    for k, name in enumerate(CLASSES):
        (data_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(TEST_PER_CLASS):
            rel = f"{name}/{i:02d}.png"
            class_image(k, rng).save(data_dir / rel)
            items.append(
                {"path": rel, "label": name, "split": "test", "sha256": sha256_file(data_dir / rel), "group": rel}
            )
            paths.append(data_dir / rel)
            labels.append(name)
    model = train_tiny(tiny_net())
    write_run_dir(model, run_dir, data_dir, items)
    export_all(model, bundle_dir, run_dir)
    return TinyBundle(bundle_dir, run_dir, data_dir, paths, labels)


_CACHE: dict[str, TinyBundle] = {}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> TinyBundle:
    """The shared read-only tiny bundle (copy it with `copy_bundle` before modifying anything)."""
    if "base" not in _CACHE:
        _CACHE["base"] = build_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))
    return _CACHE["base"]


def copy_bundle(tb: TinyBundle, dest: Path) -> Path:
    """A private copy of the bundle dir (bundle.json keeps pointing at the shared run dir)."""
    shutil.copytree(tb.bundle_dir, dest)
    return dest


def load_tiny_model(tb: TinyBundle):
    """The trained torch model back from the run dir's safetensors."""
    from safetensors.torch import load_file

    model = tiny_net()
    model.load_state_dict(load_file(str(tb.run_dir / "model.safetensors")))
    return model.eval()


def fake_train_module(tb: TinyBundle) -> types.ModuleType:
    """A stand-in for edgeft.train.model whose load_run returns the tiny torch model (the real one needs timm)."""
    mod = types.ModuleType("edgeft.train.model")

    def load_run(run_dir, verify: bool = True):
        return load_tiny_model(tb), ModelManifest.load(run_dir)

    mod.load_run = load_run
    return mod


def install_fake_train_module(monkeypatch, tb: TinyBundle) -> None:
    monkeypatch.setitem(sys.modules, "edgeft.train.model", fake_train_module(tb))


def replace_artifact(bundle_dir: Path, name: str, model) -> None:
    """Re-export one ONNX/OpenVINO FP32 artifact from another torch model and update its sha256 (a planted bug)."""
    bundle = BundleManifest.load(bundle_dir)
    arts = []
    for a in bundle.artifacts:
        if a["name"] == name:
            tmp = bundle_dir / "planted.onnx"
            export_onnx(model, tmp)
            if a["format"] == "onnx":
                shutil.move(tmp, bundle_dir / a["path"])
            else:
                save_ir(tmp, bundle_dir / a["path"])
                tmp.unlink()
            a = artifact_entry(bundle_dir, a["name"], a["format"], a["precision"], a["path"], a.get("info"))
        arts.append(a)
    write_bundle_json(bundle_dir, Path(bundle.source["run_dir"]), arts, bundle.preprocess_spec)


def swapped_model(tb: TinyBundle, a: int, b: int):
    """The trained model with output classes a and b swapped: a realistic 'label order' export bug."""
    import torch

    model = load_tiny_model(tb)
    head = model[-1]
    with torch.no_grad():
        w, bias = head.weight.clone(), head.bias.clone()
        head.weight[[a, b]] = w[[b, a]]
        head.bias[[a, b]] = bias[[b, a]]
    return model
