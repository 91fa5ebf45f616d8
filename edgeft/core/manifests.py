"""The typed documents between stages: model.json (run dir), bundle.json (bundle dir), splits.json, calibration.json.

Each is a pydantic model validated on read: a malformed file gives one paragraph naming the file, the field
and the fix, never a traceback and never a silently wrong value (`"classes": "Trout"` is refused).
Everything here is torch-free: an edge device reads bundle.json with pydantic, numpy and the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeft.core.errors import EdgeftError
from edgeft.core.files import read_json, write_json_atomic
from edgeft.core.hashing import classes_sha256, sha256_file
from edgeft.core.preprocess import PreprocessSpec

MODEL_FORMAT = "edgeft.model/1"
BUNDLE_FORMAT = "edgeft.bundle/1"
SPLITS_FORMAT = "edgeft.splits/1"
CALIBRATION_FORMAT = "edgeft.calibration/1"
RESUME_FORMAT = "edgeft.resume/1"
SPLITS = ("train", "val", "calib", "test")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

D = TypeVar("D", bound="Doc")


def describe_validation_error(exc: ValidationError, what: str) -> str:
    """'field classes: Input should be a valid list (got 'Trout')' for the first problem, +N more."""
    errs = exc.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict) else "an object"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    more = f" (+{len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
    return f"{what} field '{loc}': {first['msg']} (got {shown}){more}"


class Doc(BaseModel):
    """Base of every JSON document edgeft writes: unknown keys are refused, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def parse(cls: type[D], data: Any, path: str | Path | None, what: str, fix: str) -> D:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EdgeftError(describe_validation_error(exc, what), path=path, fix=fix) from None

    @classmethod
    def read(cls: type[D], path: str | Path, what: str, fix: str) -> D:
        return cls.parse(read_json(path, what), path, what, fix)

    def write(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.model_dump(mode="json"))


def _unique_names(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("must list at least one class")
    bad = [c for c in v if not c.strip() or any(ch in c for ch in "\n\r\t")]
    if bad:
        raise ValueError(f"class names must be non-empty single-line text, got {bad[:3]}")
    if len(set(v)) != len(v):
        raise ValueError("class names must be unique")
    return v


def _check_class_hash(doc: Any) -> Any:
    """Fill classes_sha256 on first write; afterwards a mismatch means the class list was edited by hand."""
    want = classes_sha256(doc.classes)
    if not doc.classes_sha256:
        object.__setattr__(doc, "classes_sha256", want)
    elif doc.classes_sha256 != want:
        raise ValueError("classes_sha256 does not match the ordered class list (the list was edited)")
    return doc


class BackboneInfo(Doc):
    id: str
    arch: str
    feature_dim: int = Field(gt=0)
    source: str = ""
    pretrained: bool = True
    weights_sha256: str = ""
    frozen: bool = True


class HeadConfig(Doc):
    kind: Literal["mlp", "linear"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)


class WeightsInfo(Doc):
    file: str = "model.safetensors"
    sha256: str = ""


class Calibrated(Doc):
    """Answer calibration fitted on held-out images: logits / temperature, and the unknown-species threshold."""

    temperature: float = Field(default=1.0, gt=0.0)
    unknown_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    false_reject_rate: float | None = None
    fitted_on: str = ""


class ModelManifest(Doc):
    """model.json of a run dir, written last: its presence marks a complete run."""

    format: Literal["edgeft.model/1"] = MODEL_FORMAT
    task: str
    name: str
    backbone: BackboneInfo
    classes: list[str]
    classes_sha256: str = ""
    preprocess: PreprocessSpec
    head: HeadConfig = Field(default_factory=HeadConfig)
    weights: WeightsInfo
    calibration: Calibrated = Field(default_factory=Calibrated)
    seed: int = 0
    finetune: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    resumed_from: list[dict[str, Any]] = Field(default_factory=list)  # one row per `--resume`: stage, epoch

    _classes = field_validator("classes")(_unique_names)

    _class_hash = model_validator(mode="after")(_check_class_hash)

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return self.preprocess

    @classmethod
    def load(cls, run_dir: str | Path) -> ModelManifest:
        return cls.read(Path(run_dir) / "model.json", "model.json", "re-run `edgeft train`; never edit model.json")

    def save(self, run_dir: str | Path) -> Path:
        return self.write(Path(run_dir) / "model.json")


class GateSettings(Doc):
    """What the gate demands; recorded next to every verdict so a report says what it was judged against."""

    min_agreement: float = 0.99
    confidence: float = 0.95
    # None: the smallest n at which a flawless result's Wilson lower bound reaches min_agreement (see check.gate)
    min_n: int | None = None
    logit_tol: float = 1e-4
    max_drop: float = 1.0


class GateRecord(Doc):
    """The gate's verdict on one artifact, as bundle.json records it."""

    passed: bool
    verdict: str
    n: int = 0
    agreement: float | None = None
    agreement_low: float | None = None
    agreement_high: float | None = None
    max_abs_logit_diff: float | None = None
    delta_accuracy_pts: float | None = None
    reasons: list[str] = Field(default_factory=list)
    judged_on: str = ""


class Artifact(Doc):
    """One model file (or IR pair) of a bundle; paths are relative to the bundle dir."""

    name: str
    format: Literal["onnx", "openvino", "tensorrt", "torch"]
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    path: str
    sha256: str
    bytes: int = 0
    extra_files: dict[str, str] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    gate: GateRecord | None = None

    @property
    def passed(self) -> bool:
        """Ships without a warning: no gate recorded (older bundles) or a passing one."""
        return self.gate is None or self.gate.passed


class TensorSpec(Doc):
    name: str
    shape: list[int]
    dtype: str = "float32"


class BundleSource(Doc):
    run_dir: str | None = None
    weights_sha256: str = ""
    model_json_sha256: str = ""
    backbone: str | None = None


class BundleManifest(Doc):
    """bundle.json of a bundle dir: the only file the runtime reads."""

    format: Literal["edgeft.bundle/1"] = BUNDLE_FORMAT
    name: str
    classes: list[str]
    classes_sha256: str = ""
    preprocess: PreprocessSpec
    calibration: Calibrated = Field(default_factory=Calibrated)
    artifacts: list[Artifact]
    input: TensorSpec = Field(default_factory=lambda: TensorSpec(name="input", shape=[-1, 3, 224, 224]))
    output: TensorSpec = Field(default_factory=lambda: TensorSpec(name="logits", shape=[-1, 0]))
    source: BundleSource = Field(default_factory=BundleSource)
    reference: str = "onnx-fp32"
    versions: dict[str, str] = Field(default_factory=dict)
    created_by: str = "edgeft"
    # what every artifact was judged against, and the artifacts the gate kept out (name -> reason, in rejected/)
    gate: GateSettings | None = None
    rejected: dict[str, str] = Field(default_factory=dict)

    _classes = field_validator("classes")(_unique_names)
    _class_hash = model_validator(mode="after")(_check_class_hash)

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return self.preprocess

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise EdgeftError(
            f"bundle has no artifact {name!r}; it has {[a.name for a in self.artifacts]}",
            fix="export it with `edgeft export` or pick another backend/precision",
        )

    @classmethod
    def load(cls, bundle_dir: str | Path) -> BundleManifest:
        return cls.read(
            Path(bundle_dir) / "bundle.json", "bundle.json", "re-export with `edgeft export`; never edit bundle.json"
        )

    def save(self, bundle_dir: str | Path) -> Path:
        return self.write(Path(bundle_dir) / "bundle.json")

    def verify(self, bundle_dir: str | Path, names: list[str] | None = None) -> None:
        """Refuse a bundle whose files do not match the sha256 recorded in bundle.json."""
        bundle_dir = Path(bundle_dir)
        for a in self.artifacts:
            if names is not None and a.name not in names:
                continue
            for rel, digest in {a.path: a.sha256, **a.extra_files}.items():
                f = bundle_dir / rel
                if not f.is_file():
                    raise EdgeftError(
                        f"artifact {a.name} file is missing", path=f, fix="re-export the bundle with `edgeft export`"
                    )
                if sha256_file(f) != digest:
                    raise EdgeftError(
                        f"artifact {a.name} does not match the sha256 in bundle.json (modified or corrupt)",
                        path=f,
                        fix="re-export the bundle with `edgeft export`; never edit bundle files by hand",
                    )


class SplitItem(Doc):
    path: str
    label: str
    split: Literal["train", "val", "calib", "test"]
    sha256: str = ""
    group: str = ""


class SplitsDoc(Doc):
    """splits.json: every image of a run with its split, content hash and group; paths relative to `root`."""

    format: Literal["edgeft.splits/1"] = SPLITS_FORMAT
    seed: int = 0
    root: str
    layout: str = ""
    classes: list[str]
    group_source: str = ""
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    items: list[SplitItem]
    report: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> SplitsDoc:
        return cls.read(Path(run_dir) / "splits.json", "splits.json", "re-run `edgeft train`; never edit splits.json")

    def save(self, run_dir: str | Path) -> Path:
        return self.write(Path(run_dir) / "splits.json")

    def of(self, split: str) -> list[SplitItem]:
        """Items of one split, sorted by path (a fixed, reproducible order)."""
        return sorted((it for it in self.items if it.split == split), key=lambda it: it.path)

    def abspath(self, item: SplitItem) -> Path:
        p = Path(item.path)
        return p if p.is_absolute() else Path(self.root) / p


class CalibrationImage(Doc):
    path: str
    label: str
    sha256: str


class CalibrationDoc(Doc):
    """calibration.json: which held-out images calibrated INT8, per class, how, and under which cache key."""

    format: Literal["edgeft.calibration/1"] = CALIBRATION_FORMAT
    method: str
    split: str = "calib"
    seed: int = 0
    requested: int
    available: int
    count: int
    per_class: dict[str, int]
    cache_key: str
    notes: list[str] = Field(default_factory=list)
    excluded_duplicates_of_test: list[str] = Field(default_factory=list)
    root: str
    images: list[CalibrationImage]


class ResumeEntry(Doc):
    """One checkpointed step of a training: its JSON state, its tensors file and the RNG states after it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, ser_json_inf_nan="constants")

    seq: int = Field(ge=0)
    meta: dict[str, Any] = Field(default_factory=dict)
    tensors: str | None = None  # file name inside the checkpoint dir (safetensors)
    rng: dict[str, Any] = Field(default_factory=dict)  # Python and NumPy states; torch's live in `tensors`


class ResumeDoc(Doc):
    """state.json of a training checkpoint (`.NAME.resume/`): the options and inputs it was started with,
    and the steps done so far. Floats keep inf/nan (`Infinity`/`NaN`) so a resumed run continues exactly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, ser_json_inf_nan="constants")

    format: Literal["edgeft.resume/1"] = RESUME_FORMAT
    config: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict)
    entries: dict[str, ResumeEntry] = Field(default_factory=dict)
    resumed_from: list[dict[str, Any]] = Field(default_factory=list)
    seq: int = 0
