"""The JSON contracts between stages: preprocessing spec, run dir (model.json) and bundle dir (bundle.json).

Everything here is torch-free: an edge device reads bundle.json with numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError

MODEL_FORMAT = "edgeft.model/1"
BUNDLE_FORMAT = "edgeft.bundle/1"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
CROPS = ("center", "squash")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys: the building block of every cache key."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temp file and rename, so a crash never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeftError(f"{what} not found", path=path, fix=f"point at a directory that holds {path.name}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeftError(
            f"{what} is not valid JSON ({exc})", path=path, fix="re-create it with the command that wrote it"
        ) from None
    if not isinstance(data, dict):
        raise EdgeftError(f"{what} must hold a JSON object", path=path, fix="re-create it")
    return data


def _from_dict(cls, data: dict, path: str | Path | None, what: str):
    """Build a dataclass from a dict, naming any unknown or missing key (no silent **kwargs)."""
    if not isinstance(data, dict):
        raise EdgeftError(f"{what} must be a JSON object", path=path, fix="re-create the file")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EdgeftError(
            f"{what} has unknown key(s) {unknown}; known keys are {sorted(names)}",
            path=path,
            fix="remove the unknown keys or upgrade edgeft",
        )
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise EdgeftError(f"{what} is missing key(s) {missing}", path=path, fix="re-create the file")
    return cls(**data)


@dataclass(frozen=True)
class PreprocessSpec:
    """The one numeric preprocessing definition shared by training, calibration, parity and serving.

    resize_size: the shorter side is resized to this (crop="center"), then a centre square of input_size
    is cut. crop="squash": the image is resized straight to input_size x input_size.
    Pixels are scaled to [0, 1], then (x - mean) / std, channel order RGB, layout NCHW, float32.
    """

    input_size: int = 224
    resize_size: int = 256
    crop: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if self.crop not in CROPS:
            problems.append(f"crop {self.crop!r} is not one of {CROPS}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            problems.append("mean and std need 3 values each, std > 0")
        if self.input_size < 8 or self.resize_size < self.input_size:
            problems.append("need input_size >= 8 and resize_size >= input_size")
        if self.channel_order != "RGB" or self.layout != "NCHW":
            problems.append("only channel_order RGB and layout NCHW are supported")
        if problems:
            raise EdgeftError("invalid preprocessing spec: " + "; ".join(problems), fix="fix the spec")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict, path: str | Path | None = None) -> PreprocessSpec:
        return _from_dict(cls, data, path, "preprocess spec")

    def digest(self) -> str:
        return stable_hash(self.to_dict())


@dataclass(frozen=True)
class ModelManifest:
    """model.json of a run dir."""

    task: str
    name: str
    backbone: dict  # {"id", "arch", "feature_dim", "weights_sha256", "source"}
    classes: list[str]
    preprocess: dict
    head: dict  # {"hidden": [...], "dropout": float}
    weights: dict  # {"file": "model.safetensors", "sha256": ...}
    seed: int = 0
    format: str = MODEL_FORMAT
    finetune: dict = field(default_factory=dict)
    init_from: str | None = None
    versions: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)

    @classmethod
    def load(cls, run_dir: str | Path) -> ModelManifest:
        path = Path(run_dir) / "model.json"
        data = read_json(path, "model.json")
        m = _from_dict(cls, data, path, "model.json")
        if m.format != MODEL_FORMAT:
            raise EdgeftError(f"unsupported model format {m.format!r}", path=path, fix="retrain with this edgeft")
        if not m.classes or len(set(m.classes)) != len(m.classes):
            raise EdgeftError("classes must be a non-empty list of unique names", path=path, fix="retrain")
        PreprocessSpec.from_dict(m.preprocess, path)
        return m

    def save(self, run_dir: str | Path) -> None:
        write_json_atomic(Path(run_dir) / "model.json", asdict(self))


@dataclass(frozen=True)
class Artifact:
    """One file (or IR pair) of a bundle. path is relative to the bundle dir."""

    name: str  # e.g. "onnx-fp32", "onnx-int8", "openvino-int8", "tensorrt-fp16"
    format: str  # onnx | openvino | tensorrt
    precision: str  # fp32 | fp16 | int8
    path: str
    sha256: str
    bytes: int = 0
    extra_files: dict = field(default_factory=dict)  # relative path -> sha256 (e.g. OpenVINO .bin)
    info: dict = field(default_factory=dict)  # e.g. TensorRT fingerprint, quantizer method


@dataclass(frozen=True)
class BundleManifest:
    """bundle.json of a bundle dir: the only thing the runtime reads."""

    name: str
    classes: list[str]
    preprocess: dict
    artifacts: list[dict]
    input: dict = field(default_factory=lambda: {"name": "input", "shape": [-1, 3, 224, 224], "dtype": "float32"})
    output: dict = field(default_factory=lambda: {"name": "logits", "shape": [-1, 0], "dtype": "float32"})
    source: dict = field(default_factory=dict)  # {"run_dir", "weights_sha256", "backbone"}
    reference: str = "onnx-fp32"
    format: str = BUNDLE_FORMAT
    versions: dict = field(default_factory=dict)
    created_by: str = "edgeft"

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)

    def artifact_list(self) -> list[Artifact]:
        return [Artifact(**a) for a in self.artifacts]

    def artifact(self, name: str) -> Artifact:
        for a in self.artifact_list():
            if a.name == name:
                return a
        raise EdgeftError(
            f"bundle has no artifact {name!r}; it has {[a['name'] for a in self.artifacts]}",
            fix="export it with `edgeft export` or pick another backend/precision",
        )

    @classmethod
    def load(cls, bundle_dir: str | Path) -> BundleManifest:
        path = Path(bundle_dir) / "bundle.json"
        data = read_json(path, "bundle.json")
        b = _from_dict(cls, data, path, "bundle.json")
        if b.format != BUNDLE_FORMAT:
            raise EdgeftError(f"unsupported bundle format {b.format!r}", path=path, fix="re-export the bundle")
        PreprocessSpec.from_dict(b.preprocess, path)
        for a in b.artifacts:
            _from_dict(Artifact, a, path, "bundle.json artifact")
        return b

    def save(self, bundle_dir: str | Path) -> None:
        write_json_atomic(Path(bundle_dir) / "bundle.json", asdict(self))

    def verify(self, bundle_dir: str | Path, names: list[str] | None = None) -> None:
        """Refuse a bundle whose files do not match the sha256 recorded in bundle.json."""
        bundle_dir = Path(bundle_dir)
        for a in self.artifact_list():
            if names is not None and a.name not in names:
                continue
            for rel, digest in {a.path: a.sha256, **a.extra_files}.items():
                f = bundle_dir / rel
                if not f.is_file():
                    raise EdgeftError(
                        f"artifact {a.name} file is missing",
                        path=f,
                        fix="re-export the bundle with `edgeft export`",
                    )
                if sha256_file(f) != digest:
                    raise EdgeftError(
                        f"artifact {a.name} does not match the sha256 in bundle.json (modified or corrupt)",
                        path=f,
                        fix="re-export the bundle with `edgeft export`; never edit bundle files by hand",
                    )
