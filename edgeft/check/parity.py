"""Parity: does every exported backend x precision predict what the reference model predicts?

Images are decoded and preprocessed ONCE with THE preprocessing; every backend then gets the same float32
arrays, so differences come from the engines and quantisation alone. The reference is the torch FP32 model
of the run (when torch and the run are here) or the bundle's ONNX FP32 artifact on onnxruntime:cpu.
Every backend is judged by THE comparator and THE gate; parity.json records it all. Logits that export (or an
earlier parity) computed for the same files, engine settings and images come from the cache (check/refcache.py);
use_cache=False (`--no-cache`) runs the reference and every engine again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.check.comparator import compare
from edgeft.check.gate import Gate, failed_to_run
from edgeft.check.plots import plot_flips
from edgeft.check.refcache import (
    artifact_key,
    load_reference,
    reference_key,
    run_cached,
    save_reference,
)
from edgeft.core.errors import EdgeftError
from edgeft.core.files import check_out_dir
from edgeft.core.hashing import sha256_file
from edgeft.core.locate import locate
from edgeft.core.manifests import BundleManifest, ModelManifest
from edgeft.core.preprocess import PreprocessSpec, normalize
from edgeft.core.progress import Reporter, or_silent
from edgeft.core.reports import BackendResult, ParityReport, parity_file
from edgeft.data.evalsets import eval_set
from edgeft.engines.base import Engine, has_module
from edgeft.engines.select import Target, find_artifact, open_artifact, plan_targets, torch_artifact, verify_artifact

REFERENCES = ("auto", "torch", "onnx")
_REFERENCE_SPECS = {"onnx": "onnxruntime:cpu", "openvino": "openvino:CPU"}


def _torch_reference_problem(run_dir: Path | None) -> str | None:
    """Why the torch reference cannot be used here, or None."""
    if not has_module("torch") or not has_module("safetensors"):
        return "torch is not installed"
    if run_dir is None:
        return "the bundle's source.run_dir is missing or not on this machine"
    if not has_module("edgeft.models.classifier") or not has_module("timm"):
        return "edgeft's training extra (timm, the model code) is not installed"
    return None


def reference_engine(
    bundle: BundleManifest,
    bundle_dir: Path,
    run_dir: Path | None,
    reference: str,
    batch_size: int | None = None,
    known: dict[Path, str] | None = None,
    **options: Any,
) -> tuple[Engine, str]:
    """The reference engine and a note on why it was chosen (options go to the engine, e.g. threads=1).
    known: file digests already computed (`bundle_checks`), so the run's weights are not hashed again.

    The torch engine comes back loaded (a torch model that fails to load falls back to the ONNX reference);
    the bundle's reference artifact comes back constructed and sha256-verified, not loaded yet.
    """
    if reference not in REFERENCES:
        raise EdgeftError(f"unknown reference {reference!r}; use one of {REFERENCES}", fix="e.g. --reference onnx")
    note = ""
    if reference in ("auto", "torch"):
        problem = _torch_reference_problem(run_dir)
        if problem is None:
            art = torch_artifact(bundle, bundle_dir)
            try:
                verify_artifact(bundle, bundle_dir, art, known)
                engine = open_artifact(bundle_dir, bundle, "torch:cpu", art, batch_size, **options)
                return engine.load(), "torch FP32 model of the run"
            except EdgeftError as exc:  # only means: fall back to the ONNX reference
                problem = f"loading the torch model failed: {exc.message}"
        if reference == "torch":
            raise EdgeftError(f"cannot use the torch reference: {problem}", fix="use --reference onnx")
        note = f"torch reference unavailable ({problem}); "
    named = [a for a in bundle.artifacts if a.name == bundle.reference and a.format in _REFERENCE_SPECS]
    art = named[0] if named else find_artifact(bundle, "onnx", "fp32", "cpu")
    if art is None:
        raise EdgeftError(
            "no reference: the bundle has no onnx-fp32 artifact and the torch model is unavailable",
            path=bundle_dir / "bundle.json",
            fix="re-export the bundle with its ONNX FP32 model",
        )
    verify_artifact(bundle, bundle_dir, art)
    spec = _REFERENCE_SPECS[art.format]
    engine = open_artifact(bundle_dir, bundle, spec, art, batch_size, **options)
    return engine, note + f"bundle reference artifact {art.name} on {spec}"


def bundle_gate(bundle: BundleManifest, **overrides: Any) -> Gate:
    """The gate the bundle was exported under (bundle.json records it), with any setting the user overrides."""
    settings = bundle.gate.model_dump() if bundle.gate is not None else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return Gate(**settings)


def bundle_checks(
    bundle: BundleManifest, run_dir: Path | None
) -> tuple[list[str], PreprocessSpec | None, str, dict[Path, str]]:
    """Compare bundle.json with the run's model.json: same weights, classes and preprocessing numbers.

    Returns (problems, the run's preprocessing when it differs from the bundle's, the sha256 of the run's
    weights as they are on disk now or "" without them, that digest by resolved path for `verify_artifact`):
    the weights are hashed here once.
    """
    if run_dir is None or not (run_dir / "model.json").is_file():
        return [], None, "", {}
    try:
        run = ModelManifest.load(run_dir)
    except EdgeftError as exc:
        return [f"cannot read the run's model.json: {exc.message}"], None, "", {}
    checks = []
    want = bundle.source.weights_sha256
    weights = run_dir / run.weights.file
    run_sha = sha256_file(weights) if weights.is_file() else ""
    if want and run_sha and run_sha != want:
        checks.append(f"the run's weights {weights} are not the ones the bundle was exported from (sha256 differs)")
    if list(run.classes) != list(bundle.classes):
        checks.append(f"bundle classes {bundle.classes} differ from the run's model.json classes {run.classes}")
    if run.preprocess != bundle.preprocess:
        mine, theirs = bundle.preprocess.to_dict(), run.preprocess.to_dict()
        diffs = [f"{k}: bundle {v!r} vs run {theirs[k]!r}" for k, v in mine.items() if v != theirs[k]]
        checks.append("bundle preprocessing differs from the run's model.json (" + "; ".join(diffs) + ")")
    known = {weights.resolve(): run_sha} if run_sha else {}
    return checks, (run.preprocess if run.preprocess != bundle.preprocess else None), run_sha, known


def torch_reference_key(
    bundle: BundleManifest,
    run_dir: Path | None,
    reference: str,
    images: Sequence[str],
    spec: PreprocessSpec,
    sha: str,
) -> str:
    """The reference-cache key of the torch reference on these images (their content hashes, in order), or ""
    when torch cannot be the reference here. sha: the run's weights as they are on disk now (`bundle_checks`),
    so a changed run never reuses stale logits."""
    if reference not in ("auto", "torch") or _torch_reference_problem(run_dir) is not None:
        return ""
    if not sha or sha != bundle.source.weights_sha256:
        return ""
    return reference_key(sha, spec, images, "torch-fp32")


def outputs_key(engine: Engine, images: Sequence[str] | None, batch_size: int, spec: PreprocessSpec) -> str:
    """The artifact-cache key of a bundle artifact's engine (open_artifact) on these images, or "" (not cached:
    the torch model, or no image hashes)."""
    art = getattr(engine, "artifact", None)
    if images is None or art is None or art.format == "torch":
        return ""
    return artifact_key(engine, art.sha256, art.extra_files.values(), spec, images, batch_size)


def evaluate_target(
    t: Target,
    bundle: BundleManifest,
    bundle_dir: Path,
    x: np.ndarray,
    ref_logits: np.ndarray,
    labels: np.ndarray,
    sources: list[str],
    gate: Gate,
    batch_size: int,
    judged_on: str,
    advance: Callable[[int], None] | None = None,
    *,
    images: Sequence[str] | None = None,
    reuse: bool = True,
    fast_inputs: bool = False,
    raw: np.ndarray | None = None,
) -> BackendResult:
    """Run one target and judge it; a target that fails to load or run is a failed backend, not a crash.

    images: the content hashes of the images x was preprocessed from (with the bundle's preprocessing): the
    target's logits are then looked up in the artifact cache (unless reuse=False) and stored there.
    raw: the (N, S, S, 3) uint8 images x was normalised from; an engine that can normalise in its graph is
    then opened to take them, as serving's --fast-preprocess runs it.
    """
    try:
        verify_artifact(bundle, bundle_dir, t.artifact)  # before the cache: a tampered file is never judged
        engine = open_artifact(bundle_dir, bundle, t.spec, t.artifact, batch_size, image_input=raw is not None)
        key = outputs_key(engine, images, batch_size, bundle.preprocess)
        inputs = raw if raw is not None and getattr(engine, "takes_images", False) else x
        outputs = run_cached(engine, inputs, batch_size, key, advance, reuse=reuse)
    except EdgeftError as exc:
        return BackendResult(
            backend=t.spec,
            artifact=t.artifact.name,
            precision=t.precision,
            gate=failed_to_run(exc.message, judged_on),
            error=str(exc),
        )
    comparison = compare(ref_logits, outputs.logits, bundle.classes, labels, sources)
    return BackendResult(
        backend=t.spec,
        artifact=t.artifact.name,
        precision=t.precision,
        describe=outputs.describe,
        cached=outputs.cached,
        comparison=comparison,
        gate=gate.judge(t.precision, comparison, judged_on, fast_inputs),
    )


FLIPS_PICTURE = "parity_flips.png"


def flips_picture(fast: bool = False) -> str:
    return "parity_flips.fast.png" if fast else FLIPS_PICTURE


def run_parity(
    target: Path | None = None,
    data: Path | None = None,
    backends: list[str] | None = None,
    gate: Gate | None = None,
    out: Path | None = None,
    *,
    reference: str = "auto",
    batch_size: int = 32,
    use_cache: bool = True,
    gate_overrides: dict[str, float | int | None] | None = None,
    reporter: Reporter | None = None,
    fast_preprocess: bool = False,
) -> ParityReport:
    """Compare every runnable backend x precision of a bundle with the reference; write parity.json
    (parity.fast.json with fast_preprocess).

    target: a bundle dir, a run dir (its bundle is looked up) or None (the latest run under runs/).
    out: directory for parity.json (default: the bundle dir).
    gate: the gate to judge by; without it, the bundle's recorded gate with `gate_overrides` (None values keep
    the recorded setting).
    use_cache: reuse the logits export (or an earlier parity) computed for the same reference, artifact, engine
    settings and images; False runs the reference and every engine again (and refreshes the cache).
    fast_preprocess: feed the backends serving's --fast-preprocess inputs (the reference keeps THE
    preprocessing), so the gate judges the whole fast serving path; those outputs are not cached.
    """
    rep = or_silent(reporter)
    if out is not None:
        check_out_dir(Path(out), "--out")
    where = locate(target, need_bundle=True)
    bundle_dir, run_dir = where.bundle_dir, where.run_dir
    assert bundle_dir is not None
    bundle = BundleManifest.load(bundle_dir)
    gate = gate or bundle_gate(bundle, **(gate_overrides or {}))
    evalset = eval_set(run_dir, data, bundle.classes)
    checks, run_spec, run_sha, known = bundle_checks(bundle, run_dir)
    targets, skipped_backends = plan_targets(bundle, bundle_dir, backends)

    rep.task("preprocess", len(evalset))
    x, kept = evalset.load(bundle.preprocess, rep.advance)
    if not len(kept):
        raise EdgeftError(
            f"none of the {len(evalset)} images could be read", path=data or run_dir, fix="check the images"
        )
    x_ref = x if run_spec is None else kept.load(run_spec)[0]  # the run was trained with other numbers
    raw = None
    if fast_preprocess:  # the uint8 images, for engines that normalise in their graph; x from the same pixels
        rep.task("preprocess (--fast-preprocess)", len(kept))
        raw, again = kept.load(bundle.preprocess, rep.advance, fast=True, raw=True)
        x = np.empty((len(raw), *x.shape[1:]), np.float32)
        for row, image in zip(x, raw, strict=True):
            normalize(image, bundle.preprocess, out=row)
        if len(again) != len(kept):  # the fast path falls back to the reference for anything it cannot decode
            lost = again.skipped[len(kept.skipped) :]
            raise EdgeftError(
                f"{len(lost)} image(s) decoded with THE preprocessing but not with --fast-preprocess, e.g. "
                + "; ".join(f"{s['source']} ({s['error']})" for s in lost[:3]),
                path=data or run_dir,
                fix="run parity without --fast-preprocess, and report these images as an edgeft bug",
            )
    sources = [str(p) for p in kept.paths]
    labels = kept.label_indices(bundle.classes)

    images = kept.shas  # hashed from the bytes load decoded, for the reference key and every artifact key
    ref_key = torch_reference_key(bundle, run_dir, reference, images, run_spec or bundle.preprocess, run_sha)
    ref_logits = load_reference(ref_key, len(kept), len(bundle.classes)) if ref_key and use_cache else None
    if ref_logits is not None:  # export (or an earlier parity) already ran the torch model on these images
        ref_name = "torch:cpu/torch-fp32"
        ref_note = "torch FP32 model of the run (its logits on these images from the cache export or parity filled)"
        rep.task(f"reference {ref_name}", len(kept))
        rep.advance(len(kept))
    else:
        ref_engine, ref_note = reference_engine(bundle, bundle_dir, run_dir, reference, known=known)
        ref_name = f"{ref_engine.spec}/{ref_engine.label}"
        rep.task(f"reference {ref_name}", len(kept))
        if ref_engine.spec.startswith("torch"):
            with ref_engine:
                ref_logits = ref_engine.run(x_ref, batch_size, rep.advance)
            if ref_key:
                save_reference(ref_key, ref_logits)
        else:  # the bundle's ONNX FP32 artifact: export evaluated it on the test split too
            key = outputs_key(ref_engine, images, batch_size, run_spec or bundle.preprocess)
            ref_out = run_cached(ref_engine, x_ref, batch_size, key, rep.advance, reuse=use_cache)
            ref_logits = ref_out.logits
            if ref_out.cached:
                ref_note += " (its logits on these images from the cache export or parity filled)"
    results: dict[str, BackendResult] = {}
    # with --fast-preprocess the reference artifact itself is judged too: on fast inputs against its exact ones
    others = targets if fast_preprocess else [t for t in targets if t.key != ref_name]
    for i, t in enumerate(others, 1):
        rep.task(f"{i}/{len(others)} {t.key}", len(kept))  # one bar per backend: loading and every image show
        results[t.key] = evaluate_target(
            t,
            bundle,
            bundle_dir,
            x,
            ref_logits,
            labels,
            sources,
            gate,
            batch_size,
            kept.origin,
            rep.advance,
            images=None if fast_preprocess else images,
            reuse=use_cache,
            fast_inputs=fast_preprocess,
            raw=raw,
        )
    if not results:
        raise EdgeftError(
            f"no backend to compare with the reference ({ref_name}) can run here"
            + (f" (selected: {backends})" if backends else "")
            + (f"; skipped: {skipped_backends}" if skipped_backends else ""),
            path=bundle_dir,
            fix="install onnxruntime/openvino, or check --backends",
        )
    report = ParityReport(
        bundle_dir=str(bundle_dir),
        run_dir=str(run_dir) if run_dir else None,
        reference=ref_name,
        reference_note=ref_note,
        data=kept.origin,
        preprocess="fast" if fast_preprocess else "reference",
        bundle_sha256=sha256_file(bundle_dir / "bundle.json"),
        n_images=len(kept),
        gate=gate.settings(),
        backends=results,
        skipped_backends=skipped_backends,
        skipped_images=kept.skipped,
        checks=checks,
    )
    report.passed = not report.failures()
    out_dir = Path(out) if out is not None else bundle_dir
    report.write(out_dir / parity_file(fast_preprocess))
    picture = out_dir / flips_picture(fast_preprocess)
    if plot_flips(report.backends, picture) is None:
        picture.unlink(missing_ok=True)  # an earlier run's picture must not describe this one
    return report
