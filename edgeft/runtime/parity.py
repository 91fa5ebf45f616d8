"""Parity: does every exported backend x precision predict what the reference model predicts?

Images are decoded and preprocessed ONCE with the runtime preprocessing; every backend then gets the
same float32 arrays, so differences come from the engines and quantisation alone. The reference is
the torch FP32 model of the run (when torch and edgeft's training code import) or the ONNX FP32
artifact on onnxruntime:cpu. parity.json records every metric and the gate verdict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.manifest import BundleManifest, ModelManifest, PreprocessSpec, sha256_file, write_json_atomic
from edgeft.runtime.backends import (
    Backend,
    Target,
    create_backend,
    find_artifact,
    has_module,
    plan_targets,
    torch_artifact,
    verify_artifact,
)
from edgeft.runtime.evalset import load_eval_set, preprocess_files, resolve_target
from edgeft.runtime.predictor import softmax, topk_indices

DEFAULT_MIN_AGREEMENT = 0.99
REFERENCES = ("auto", "torch", "onnx")
_REFERENCE_SPECS = {"onnx": "onnxruntime:cpu", "openvino": "openvino:CPU"}


@dataclass(frozen=True)
class Gate:
    """Pass criteria. FP32 must agree on every image and within logit_tol; FP16/INT8 within min_agreement/max_drop."""

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_drop: float = 1.0  # accuracy points
    logit_tol: float = 1e-4

    def check(self, precision: str, m: dict[str, Any]) -> list[str]:
        """The failed criteria for one backend's metrics (empty list = pass)."""
        failures = []
        if precision == "fp32":
            if m["agreement"] < 1.0:
                failures.append(f"fp32 top-1 agreement {m['agreement']:.4f} < 1.0 ({m['n_flipped']} flipped)")
            if m["max_abs_logit_diff"] > self.logit_tol:
                failures.append(f"fp32 max |Δlogit| {m['max_abs_logit_diff']:.3g} > logit_tol {self.logit_tol:.3g}")
        else:
            if m["agreement"] < self.min_agreement:
                failures.append(
                    f"{precision} top-1 agreement {m['agreement']:.4f} < min_agreement {self.min_agreement:.4f}"
                )
            if m["delta_accuracy_pts"] is not None and -m["delta_accuracy_pts"] > self.max_drop:
                failures.append(
                    f"{precision} accuracy drop {-m['delta_accuracy_pts']:.2f} pts > max_drop {self.max_drop:.2f} pts"
                )
        return failures


def compare_logits(
    ref: np.ndarray,
    cand: np.ndarray,
    classes: Sequence[str],
    labels: np.ndarray | None = None,
    sources: Sequence[str] | None = None,
    k: int = 5,
) -> dict[str, Any]:
    """Every parity metric of candidate logits against reference logits on the same images.

    labels: class indices (-1 = unknown); accuracy is computed on the labelled rows only.
    """
    ref = np.asarray(ref, np.float64)
    cand = np.asarray(cand, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise EdgeftError(f"logit shapes differ: reference {ref.shape} vs candidate {cand.shape}", fix="report a bug")
    n, c = ref.shape
    k = min(k, c)
    sources = list(sources) if sources is not None else [f"#{i}" for i in range(n)]
    ref_pred, cand_pred = ref.argmax(1), cand.argmax(1)
    p_ref, p_cand = softmax(ref), softmax(cand)
    top_ref, top_cand = topk_indices(p_ref, k), topk_indices(p_cand, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref.tolist(), top_cand.tolist(), strict=True)]
    diff = np.abs(ref - cand)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(norms > 0, (ref * cand).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)
    flips = np.nonzero(ref_pred != cand_pred)[0]
    flip_matrix: dict[str, dict[str, int]] = {}
    flipped = []
    for i in flips.tolist():
        a, b = classes[ref_pred[i]], classes[cand_pred[i]]
        flip_matrix.setdefault(a, {})
        flip_matrix[a][b] = flip_matrix[a].get(b, 0) + 1
        flipped.append(
            {
                "source": sources[i],
                "label": classes[labels[i]] if labels is not None and labels[i] >= 0 else None,
                "reference": a,
                "candidate": b,
                "reference_prob": round(float(p_ref[i, ref_pred[i]]), 6),
                "candidate_prob": round(float(p_cand[i, cand_pred[i]]), 6),
            }
        )
    acc = ref_acc = delta = None
    if labels is not None and (labels >= 0).any():
        known = labels >= 0
        acc = float((cand_pred[known] == labels[known]).mean())
        ref_acc = float((ref_pred[known] == labels[known]).mean())
        delta = (acc - ref_acc) * 100.0
    return {
        "n": int(n),
        "accuracy": acc,
        "reference_accuracy": ref_acc,
        "delta_accuracy_pts": delta,
        "agreement": float((ref_pred == cand_pred).mean()) if n else 1.0,
        "top5_overlap": float(np.mean(overlap)) if n else 1.0,
        "max_abs_logit_diff": float(diff.max()) if n else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if n else 0.0,
        "cosine": float(cos.mean()) if n else 1.0,
        "n_flipped": len(flipped),
        "flip_matrix": flip_matrix,
        "flipped": flipped,
    }


@dataclass
class ParityReport:
    """Everything parity.json holds; `passed` is the overall gate."""

    bundle_dir: str
    run_dir: str | None
    reference: str
    reference_note: str
    data: str
    n_images: int
    gate: dict
    backends: dict[str, dict]
    skipped_backends: dict[str, str] = field(default_factory=dict)
    skipped_images: list[dict] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # bundle-level failures (e.g. preprocessing mismatch)
    passed: bool = False
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d

    def failures(self) -> list[str]:
        """Every reason the gate failed: bundle-level checks first, then per backend."""
        out = list(self.checks)
        for name, b in self.backends.items():
            out += [f"{name}: {f}" for f in b["failures"]]
        return out


def _batched(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


def run_backend(backend: Backend, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for a preprocessed array, in batches (one engine call per batch)."""
    if x.shape[0] == 0:
        return np.zeros((0, backend.num_classes), np.float32)
    return np.concatenate(backend.infer_many(list(_batched(x, batch_size))))


def _torch_reference_problem(bundle: BundleManifest, run_dir: Path | None) -> str | None:
    """Why the torch reference cannot be used here, or None."""
    if not has_module("torch"):
        return "torch is not installed"
    if run_dir is None:
        return "the bundle's source.run_dir is missing or not on this machine"
    if not has_module("edgeft.train.model"):
        return "edgeft's training code (edgeft.train.model) is not installed"
    return None


def _open_reference(
    bundle: BundleManifest, bundle_dir: Path, run_dir: Path | None, reference: str
) -> tuple[Backend, str]:
    """The loaded reference backend and a note on why it was chosen."""
    if reference not in REFERENCES:
        raise EdgeftError(f"unknown reference {reference!r}; use one of {REFERENCES}", fix="e.g. --reference onnx")
    note = ""
    if reference in ("auto", "torch"):
        problem = _torch_reference_problem(bundle, run_dir)
        if problem is None:
            art = torch_artifact(bundle, bundle_dir)
            be = create_backend(bundle_dir, bundle, "torch:cpu", art)
            try:
                verify_artifact(bundle, bundle_dir, art)
                return be.load(), "torch FP32 model of the run (load_run)"
            except Exception as exc:  # any failure here only means: fall back to the ONNX reference
                why = exc.message if isinstance(exc, EdgeftError) else f"{type(exc).__name__}: {exc}"
                problem = f"loading the torch model failed: {why}"
        if reference == "torch":
            raise EdgeftError(f"cannot use the torch reference: {problem}", fix="use --reference onnx")
        note = f"torch reference unavailable ({problem}); "
    named = [a for a in bundle.artifact_list() if a.name == bundle.reference and a.format in _REFERENCE_SPECS]
    art = named[0] if named else find_artifact(bundle, "onnx", "fp32", "cpu")
    if art is None:
        raise EdgeftError(
            "no reference: the bundle has no onnx-fp32 artifact and the torch model is unavailable",
            path=bundle_dir / "bundle.json",
            fix="re-export the bundle with its ONNX FP32 model",
        )
    verify_artifact(bundle, bundle_dir, art)
    spec = _REFERENCE_SPECS[art.format]
    be = create_backend(bundle_dir, bundle, spec, art).load()
    return be, note + f"bundle reference artifact {art.name} on {spec}"


def _bundle_checks(bundle: BundleManifest, run_dir: Path | None) -> tuple[list[str], PreprocessSpec | None]:
    """Compare bundle.json with the run's model.json: same classes and the same preprocessing numbers."""
    if run_dir is None or not (run_dir / "model.json").is_file():
        return [], None
    try:
        run = ModelManifest.load(run_dir)
    except EdgeftError as exc:
        return [f"cannot read the run's model.json: {exc.message}"], None
    checks = []
    want = bundle.source.get("weights_sha256")
    weights = run_dir / run.weights.get("file", "model.safetensors")
    if want and weights.is_file() and sha256_file(weights) != want:
        checks.append(f"the run's weights {weights} are not the ones the bundle was exported from (sha256 differs)")
    if list(run.classes) != list(bundle.classes):
        checks.append(f"bundle classes {bundle.classes} differ from the run's model.json classes {run.classes}")
    run_spec, spec = run.preprocess_spec, bundle.preprocess_spec
    if run_spec != spec:
        diffs = [
            f"{k}: bundle {v!r} vs run {run_spec.to_dict()[k]!r}"
            for k, v in spec.to_dict().items()
            if v != run_spec.to_dict()[k]
        ]
        checks.append("bundle preprocessing differs from the run's model.json (" + "; ".join(diffs) + ")")
        return checks, run_spec
    return checks, None


@contextlib.contextmanager
def progress_bar(enabled: bool, console: Any = None) -> Iterator[Any]:
    """A transient rich progress bar on stderr (stdout stays clean for tables and JSON), or None."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
    ) as prog:
        yield prog


def run_parity(
    target: Path,
    data: Path | None = None,
    backends: list[str] | None = None,
    min_agreement: float | None = None,
    max_drop: float = 1.0,
    logit_tol: float = 1e-4,
    out: Path | None = None,
    *,
    reference: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> ParityReport:
    """Compare every runnable backend x precision of a bundle with the reference and write parity.json.

    target: a bundle dir, or a run dir (its bundle is found by `evalset.find_bundle_for_run`).
    out: directory for parity.json (default: the bundle dir).
    """
    bundle_dir, run_dir = resolve_target(target)
    bundle = BundleManifest.load(bundle_dir)
    classes = list(bundle.classes)
    spec = bundle.preprocess_spec
    gate = Gate(DEFAULT_MIN_AGREEMENT if min_agreement is None else float(min_agreement), max_drop, logit_tol)
    evalset = load_eval_set(run_dir, data, classes)
    checks, run_spec = _bundle_checks(bundle, run_dir)
    targets, skipped_backends = plan_targets(bundle, bundle_dir, backends)

    with progress_bar(progress) as prog:
        task = prog.add_task("preprocess", total=len(evalset)) if prog else None
        advance = (lambda n: prog.advance(task, n)) if prog else None
        x, ok, failed = preprocess_files(evalset.paths, spec, advance=advance)
        if not ok:
            raise EdgeftError(
                f"none of the {len(evalset)} images could be read", path=data or run_dir, fix="check the image files"
            )
        x_ref = x
        if run_spec is not None:  # the run was trained with other numbers: feed the reference what it expects
            x_ref, _, _ = preprocess_files([evalset.paths[i] for i in ok], run_spec)
        sources = [str(evalset.paths[i]) for i in ok]
        labels = np.array([classes.index(evalset.labels[i]) if evalset.labels[i] else -1 for i in ok])

        ref_backend, ref_note = _open_reference(bundle, bundle_dir, run_dir, reference)
        ref_name = f"{ref_backend.spec}/{ref_backend.artifact.name}"
        with ref_backend:
            ref_logits = run_backend(ref_backend, x_ref, batch_size)
        if prog:
            prog.update(task, description="backends", completed=0, total=len(targets))

        results: dict[str, dict] = {}
        for t in targets:
            if t.key == ref_name:
                continue
            results[t.key] = _evaluate(t, bundle, bundle_dir, x, ref_logits, classes, labels, sources, gate, batch_size)
            if prog:
                prog.advance(task, 1)

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
        data=evalset.origin,
        n_images=len(ok),
        gate=asdict(gate),
        backends=results,
        skipped_backends=skipped_backends,
        skipped_images=evalset.skipped + failed,
        checks=checks,
    )
    report.passed = not report.failures()
    out_dir = Path(out) if out is not None else bundle_dir
    report.path = str(out_dir / "parity.json")
    write_json_atomic(report.path, report.to_dict())
    return report


def _evaluate(
    t: Target,
    bundle: BundleManifest,
    bundle_dir: Path,
    x: np.ndarray,
    ref_logits: np.ndarray,
    classes: list[str],
    labels: np.ndarray,
    sources: list[str],
    gate: Gate,
    batch_size: int,
) -> dict[str, Any]:
    """Run one target and score it; a target that fails to load or run is a failed backend, not a crash."""
    entry: dict[str, Any] = {"backend": t.spec, "artifact": t.artifact.name, "precision": t.precision}
    try:
        verify_artifact(bundle, bundle_dir, t.artifact)
        with create_backend(bundle_dir, bundle, t.spec, t.artifact) as be:
            entry["describe"] = be.describe()
            logits = run_backend(be, x, batch_size)
    except EdgeftError as exc:
        entry.update({"passed": False, "failures": [f"cannot run: {exc.message}"], "error": str(exc)})
        return entry
    metrics = compare_logits(ref_logits, logits, classes, labels, sources)
    failures = gate.check(t.precision, metrics)
    entry.update(metrics)
    entry.update({"passed": not failures, "failures": failures})
    return entry


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def render_report(report: ParityReport, console: Any = None) -> None:
    """The parity table on the terminal (rich)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"parity vs {report.reference} on {report.n_images} images ({report.data})", box=box.SIMPLE_HEAD
    )
    table.add_column("backend/artifact", overflow="fold", min_width=16)
    for col in ("gate", "acc", "Δacc\npts", "agree", "top5", "max|Δ|", "mean|Δ|", "cosine"):
        table.add_column(col, justify="left" if col == "gate" else "right", no_wrap=True)
    for name, b in report.backends.items():
        verdict = "[green]pass[/]" if b["passed"] else "[red]FAIL[/]"
        if "agreement" not in b:
            table.add_row(name, verdict, *["—"] * 7)
            continue
        table.add_row(
            name,
            verdict,
            _fmt(b["accuracy"], ".3f"),
            _fmt(b["delta_accuracy_pts"], "+.2f"),
            _fmt(b["agreement"], ".3f"),
            _fmt(b["top5_overlap"], ".3f"),
            _fmt(b["max_abs_logit_diff"], ".1e"),
            _fmt(b["mean_abs_logit_diff"], ".1e"),
            _fmt(b["cosine"], ".4f"),
        )
    console.print(table)
    if report.reference_note:
        console.print(f"reference: {report.reference_note}", highlight=False)
    for key, why in report.skipped_backends.items():
        console.print(f"[yellow]skipped[/] {key}: {why}", highlight=False)
    if report.skipped_images:
        console.print(f"[yellow]{len(report.skipped_images)} image(s) could not be read[/] (listed in parity.json)")
    for f in report.failures():
        console.print(f"[red]✗[/] {f}", highlight=False)
    console.print(("[green]parity passed[/]" if report.passed else "[red]parity FAILED[/]") + f" — {report.path}")
