"""From a bundle to a loaded Engine: which artifacts run here, which one `auto` picks, sha256 checks.

`auto` only ever picks an artifact whose recorded gate passed (bundle.json `artifacts[].gate`), fastest
first: TensorRT > ONNX Runtime CUDA > the CPU order measured on this project's edge CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import PRECISIONS, Artifact, BundleManifest
from edgeft.engines.base import ENGINES, Engine, engine_class, parse_spec

# CPU preference per precision, measured with `edgeft bench` on a 2-core AMD EPYC Zen 4 (AVX-512 VNNI + BF16),
# EfficientNet-Lite0 + MLP head at 224x224; engine img/s at batch 8:
#   fp32  onnxruntime 185            openvino 201
#   int8  onnxruntime 416 (U8S8 "onnx-int8-cpu"), 137 (S8S8 Q/DQ "onnx-int8")    openvino 568 (NNCF)
#   bf16/fp16  openvino 403 (an "fp16" IR computes in bf16 on this CPU)
CPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    "fp32": ("openvino:CPU", "onnxruntime:cpu"),
    "fp16": ("openvino:CPU", "onnxruntime:cpu"),
    "bf16": ("openvino:CPU", "onnxruntime:cpu"),
    "int8": ("openvino:CPU", "onnxruntime:cpu"),
}
AUTO_PRECISIONS = ("int8", "bf16", "fp16", "fp32")  # fastest first, for precision="auto"
DEVICES_BY_FORMAT = {
    "onnx": ("onnxruntime", ("cpu", "cuda", "tensorrt")),
    "openvino": ("openvino", ("CPU", "GPU", "NPU")),
}


def available_backends() -> list[str]:
    """Backend specs that can run on this machine (installed engine and device)."""
    from edgeft.engines import load_all

    load_all()
    specs = []
    for name in ("tensorrt", "onnxruntime", "openvino", "torch"):
        cls = ENGINES.get(name)
        if cls is None or not cls.is_installed():
            continue
        specs += [f"{name}:{dev}" if dev else name for dev in cls.devices()]
    return specs


def check_precision(precision: str, allow_auto: bool = False) -> None:
    known = (*PRECISIONS, "auto") if allow_auto else PRECISIONS
    if precision not in known:
        raise EdgeftError(f"unknown precision {precision!r}; use one of {known}", fix="e.g. --precision int8")


def _trt_fits(artifact: Artifact) -> bool:
    from edgeft.engines.tensorrt import cuda_compute_capability, tensorrt_version, trt_fingerprint_problems

    return not trt_fingerprint_problems(artifact.info, cuda_compute_capability(), tensorrt_version())


def find_artifact(bundle: BundleManifest, fmt: str, precision: str, device: str | None = None) -> Artifact | None:
    """The bundle's best artifact of a format and precision for a device.

    Preference: passing the gate, then a device-specific variant ("onnx-int8-cpu" for onnxruntime:cpu), then
    the canonical "<format>-<precision>" name, then bundle order. Among TensorRT plans, one that fits wins.
    """
    matches = [a for a in bundle.artifacts if a.format == fmt and a.precision == precision]
    if fmt == "tensorrt" and len(matches) > 1:
        matches = [a for a in matches if _trt_fits(a)] or matches
    canonical = f"{fmt}-{precision}"
    preferred = [f"{canonical}-{device.lower()}"] if device else []
    preferred.append(canonical)

    def rank(a: Artifact) -> tuple[int, int]:
        return (0 if a.passed else 1, preferred.index(a.name) if a.name in preferred else len(preferred))

    return min(matches, key=rank) if matches else None


def auto_candidates(bundle: BundleManifest, precision: str) -> list[tuple[str, Artifact]]:
    """Runnable (backend spec, passing artifact) pairs, best first; precision "auto" ranks int8 > bf16 > fp16 > fp32."""
    check_precision(precision, allow_auto=True)
    runnable = set(available_backends())
    picked = []
    for prec in AUTO_PRECISIONS if precision == "auto" else (precision,):
        for spec in ("tensorrt", "onnxruntime:cuda", *CPU_PREFERENCE[prec]):
            if spec not in runnable:
                continue
            name, device = parse_spec(spec)
            for fmt in engine_class(name).formats:
                art = find_artifact(bundle, fmt, prec, device)
                if art is None or not art.passed or (fmt == "tensorrt" and not _trt_fits(art)):
                    continue
                picked.append((spec, art))
    return picked


def torch_artifact(bundle: BundleManifest, bundle_dir: str | Path) -> Artifact:
    """A pseudo-artifact for the torch reference: the run dir the bundle was exported from."""
    run_dir = bundle.source.run_dir
    if not run_dir:
        raise EdgeftError(
            "bundle.json has no source.run_dir, so there is no torch model to load",
            path=Path(bundle_dir) / "bundle.json",
            fix="use an exported backend (onnxruntime, openvino), or re-export from a run dir",
        )
    run = Path(run_dir)
    if not run.is_absolute():
        run = (Path(bundle_dir) / run).resolve()
    return Artifact(
        name="torch-fp32", format="torch", precision="fp32", path=str(run), sha256=bundle.source.weights_sha256
    )


def resolve(bundle_dir: str | Path, bundle: BundleManifest, backend: str, precision: str) -> tuple[str, Artifact]:
    """Turn ('auto' | spec, precision | 'auto') into the concrete (spec, artifact) that will run."""
    check_precision(precision, allow_auto=True)
    if backend == "auto":
        picked = auto_candidates(bundle, precision)
        if not picked:
            have = [f"{a.name}{'' if a.passed else ' (failed its gate)'}" for a in bundle.artifacts]
            raise EdgeftError(
                f"no backend on this machine can run a passing {precision} artifact of this bundle; "
                f"bundle artifacts: {have}; backends available here: {available_backends()}",
                path=Path(bundle_dir) / "bundle.json",
                fix="pick another --precision, name a --backend explicitly, or install the engine",
            )
        return picked[0]
    name, device = parse_spec(backend)
    cls = engine_class(name)
    dev = cls.normalize_device(device)
    spec = f"{name}:{dev}" if dev else name
    if name == "torch":
        if precision not in ("fp32", "auto"):
            raise EdgeftError("the torch reference backend is fp32 only", fix="use --precision fp32")
        return spec, torch_artifact(bundle, bundle_dir)
    for prec in AUTO_PRECISIONS if precision == "auto" else (precision,):
        for fmt in cls.formats:
            art = find_artifact(bundle, fmt, prec, dev)
            if art is not None and (precision != "auto" or art.passed):
                return spec, art
    raise EdgeftError(
        f"bundle has no {precision} artifact for backend {name!r} (formats {list(cls.formats)}); "
        f"it has {[a.name for a in bundle.artifacts]}",
        path=Path(bundle_dir) / "bundle.json",
        fix="pick another --precision or --backend, or export the missing artifact with `edgeft export`",
    )


def verify_artifact(
    bundle: BundleManifest, bundle_dir: str | Path, artifact: Artifact, known: dict[Path, str] | None = None
) -> None:
    """Refuse files whose sha256 differs from bundle.json (for torch: the run's weights vs source.weights_sha256).

    known: digests the caller has just computed, by resolved path (a file is not hashed twice)."""
    if artifact.format != "torch":
        bundle.verify(bundle_dir, names=[artifact.name])
        return
    weights = Path(artifact.path) / "model.safetensors"
    if not artifact.sha256 or not weights.is_file():
        return
    digest = (known or {}).get(weights.resolve()) or sha256_file(weights)
    if digest != artifact.sha256:
        raise EdgeftError(
            "the run's weights differ from the ones this bundle was exported from (sha256 mismatch)",
            path=weights,
            fix="re-export the bundle from this run, or point at the run the bundle came from",
        )


def takes_image_input(cls: type[Engine], bundle: BundleManifest) -> bool:
    """Whether this engine can take uint8 images for this bundle and normalise them in its graph."""
    spec = bundle.preprocess
    return "image_input" in cls.option_names and spec.layout == "NCHW" and spec.channel_order == "RGB"


def open_artifact(
    bundle_dir: str | Path,
    bundle: BundleManifest,
    spec: str,
    artifact: Artifact,
    batch_size: int | None = None,
    image_input: bool = False,
    **options: Any,
) -> Engine:
    """Construct (not load) the engine for one bundle artifact; it remembers the artifact it runs.

    image_input: where the engine can normalise inside its graph (`takes_image_input`), have it take
    (N, S, S, 3) uint8 RGB images; other engines take the normalised tensors as always."""
    name, device = parse_spec(spec)
    cls = engine_class(name)
    opts = {**(cls.default_options(batch_size) if batch_size else {}), **options}
    if image_input and takes_image_input(cls, bundle):
        opts["image_input"] = (tuple(bundle.preprocess.mean), tuple(bundle.preprocess.std))
    if name == "tensorrt":
        opts.setdefault("fingerprint", artifact.info)
    path = Path(artifact.path) if artifact.format == "torch" else Path(bundle_dir) / artifact.path
    shape = bundle.input.shape
    engine = cls(
        path,
        precision=artifact.precision,
        device=device,
        input_shape=tuple(shape[1:]) if len(shape) > 1 else None,
        input_dtype=bundle.input.dtype,
        num_outputs=len(bundle.classes),
        output_name=bundle.output.name,
        label=artifact.name,
        classes_sha256=bundle.classes_sha256 or None,
        **opts,
    )
    engine.artifact = artifact  # type: ignore[attr-defined]
    return engine


def open_bundle(
    bundle_dir: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    *,
    batch_size: int | None = None,
    verify: bool = True,
    image_input: bool = False,
    **options: Any,
) -> Engine:
    """Pick, sha256-verify and load the engine for a bundle; `auto` takes the fastest passing one here.
    image_input: see `open_artifact`."""
    bundle_dir = Path(bundle_dir)
    bundle = BundleManifest.load(bundle_dir)
    spec, artifact = resolve(bundle_dir, bundle, backend, precision)
    if verify:
        verify_artifact(bundle, bundle_dir, artifact)
    return open_artifact(bundle_dir, bundle, spec, artifact, batch_size, image_input, **options).load()


@dataclass(frozen=True)
class Target:
    """One backend spec running one artifact, e.g. key 'openvino:CPU/openvino-int8'."""

    spec: str
    artifact: Artifact

    @property
    def key(self) -> str:
        return f"{self.spec}/{self.artifact.name}"

    @property
    def precision(self) -> str:
        return self.artifact.precision


def _selected(spec: str, artifact: Artifact, selectors: Sequence[str] | None, explicit_only: bool) -> bool:
    """Does a --backends token list pick this pair? Tokens: spec, engine, artifact name, format or precision."""
    if not selectors:
        return not explicit_only
    names = {spec.lower()}
    if not explicit_only:
        names |= {parse_spec(spec)[0], artifact.name.lower(), artifact.format.lower(), artifact.precision.lower()}
    return any(tok.strip().lower() in names for tok in selectors if tok.strip())


def plan_targets(
    bundle: BundleManifest, bundle_dir: str | Path, selectors: Sequence[str] | None = None
) -> tuple[list[Target], dict[str, str]]:
    """Every (backend, artifact) pair that can run here, plus {key: reason} for the ones that cannot.

    onnxruntime's TensorRT provider and the torch model (bundle.source.run_dir) only run when named in `selectors`.
    """
    runnable = set(available_backends())
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for art in bundle.artifacts:
        if art.format == "tensorrt":
            if not _selected("tensorrt", art, selectors, explicit_only=False):
                continue
            if "tensorrt" in runnable and _trt_fits(art):
                targets.append(Target("tensorrt", art))
            else:
                skipped[f"tensorrt/{art.name}"] = "TensorRT or a GPU matching the plan is not available here"
            continue
        if art.format not in DEVICES_BY_FORMAT:
            skipped[f"?/{art.name}"] = f"no backend runs format {art.format!r}"
            continue
        engine, devices = DEVICES_BY_FORMAT[art.format]
        for dev in devices:
            spec = f"{engine}:{dev}"
            explicit = spec == "onnxruntime:tensorrt"
            if not _selected(spec, art, selectors, explicit_only=explicit):
                continue
            if spec in runnable:
                targets.append(Target(spec, art))
            elif dev in ("cpu", "CPU") or explicit:
                skipped[f"{spec}/{art.name}"] = f"{spec} is not available here (available: {sorted(runnable)})"
    if selectors and any(t.strip().lower() in ("torch", "torch:cpu") for t in selectors):
        if "torch:cpu" not in runnable:
            skipped["torch:cpu/torch-fp32"] = "torch is not installed"
        elif not bundle.source.run_dir:
            skipped["torch:cpu/torch-fp32"] = "bundle.json has no source.run_dir"
        else:
            targets.append(Target("torch:cpu", torch_artifact(bundle, bundle_dir)))
    return targets, skipped
