"""Real fish: the split report, FP32 test accuracy of the edgeft head next to a logistic regression on the
same frozen features and the same split, ECE before/after temperature scaling, and timings.

    python benchmarks/bench_real.py [--egu PATH] [--lsfd PATH/Fish_Dataset] [--json out.json]

EGU (../shared/real/egu2017) runs the default command (no --group-regex) and checks that no fish
(`..._fishN` before `_frameK`) has frames in two splits. LSFD runs when --lsfd is given. The logistic
regression (scikit-learn, standardised features, C=1) is fitted twice: on the images the edgeft head
learnt from (train+val), and on every non-test image (train+val+calib).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeft.core.manifests import ModelManifest, SplitsDoc
from edgeft.core.progress import Reporter
from edgeft.core.reports import MetricsDoc
from edgeft.models.backbones import create_backbone, weights_digest
from edgeft.train.features import FeatureExtractor
from edgeft.train.run import TrainConfig, train

FISH = re.compile(r"(.*fish\d+)_frame\d+$")


class Timer(Reporter):
    """Wall time of each phase the training reports."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._name, self._t = None, time.perf_counter()

    def task(self, name: str, total: int | None = None) -> None:
        self._close()
        self._name, self._t = name.split(" (")[0], time.perf_counter()

    def _close(self) -> None:
        if self._name:
            self.phases[self._name] = self.phases.get(self._name, 0.0) + time.perf_counter() - self._t

    def finish(self) -> dict[str, float]:
        self._close()
        self._name = None
        return {k: round(v, 1) for k, v in self.phases.items()}


def logistic_baseline(run: Path, doc: SplitsDoc) -> dict[str, float]:
    """Test accuracy of LogisticRegression on the run's own frozen features (from the feature cache)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    man = ModelManifest.load(run)
    bb = create_backbone(man.backbone.id)
    fx = FeatureExtractor(bb.module, man.preprocess, weights_digest(bb.module), bb.arch)  # the run's own rule
    index = {c: i for i, c in enumerate(doc.classes)}
    x, y = {}, {}
    for s in ("train", "val", "calib", "test"):
        items = doc.of(s)
        x[s] = fx.extract([doc.abspath(it) for it in items], [it.sha256 for it in items])
        y[s] = np.array([index[it.label] for it in items])
    out = {}
    for name, roles in (("lr_train_val", ("train", "val")), ("lr_all_non_test", ("train", "val", "calib"))):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        clf.fit(np.concatenate([x[r] for r in roles]), np.concatenate([y[r] for r in roles]))
        out[name] = float((clf.predict(x["test"]) == y["test"]).mean())
    return out


def fish_in_two_splits(doc: SplitsDoc) -> int:
    splits = defaultdict(set)
    for it in doc.items:
        m = FISH.match(Path(it.path).stem)
        if m:
            splits[(it.label, m.group(1))].add(it.split)
    return sum(len(s) > 1 for s in splits.values())


def bench(name: str, data: Path, out: Path, seed: int, group_regex: str | None) -> dict:
    timer = Timer()
    t0 = time.perf_counter()
    cfg = TrainConfig(task="folder", data=data, out=out, name=name, seed=seed, group_regex=group_regex)
    result = train(cfg, timer)
    total = time.perf_counter() - t0
    doc = SplitsDoc.load(result.run_dir)
    metrics = MetricsDoc.load(result.run_dir)
    split = doc.report["split"]["classes"]
    t1 = time.perf_counter()
    lr = logistic_baseline(result.run_dir, doc)
    return {
        "dataset": name,
        "run_dir": str(result.run_dir),
        "images": len(doc.items),
        "kept_out": len(doc.report["kept_out"]),
        "groups": doc.report["grouping"]["groups"],
        "group_source": doc.report["grouping"]["source"],
        "group_note": doc.report["grouping"]["note"],
        "largest_group_fraction": max(c["largest_fraction"] for c in doc.report["grouping"]["classes"].values()),
        "fish_in_two_splits": fish_in_two_splits(doc),
        "per_class": {
            c: {s: (row[s]["images"], row[s]["of_fair_share"]) for s in ("train", "val", "calib", "test")}
            for c, row in split.items()
        },
        "roles": metrics.images_per_role,
        "head": metrics.head_selection.get("chosen"),
        "test_accuracy": metrics.test.accuracy,
        **lr,
        "calibration": metrics.calibration,
        "train_seconds": round(total, 1),
        "phases_seconds": timer.finish(),
        "lr_seconds": round(time.perf_counter() - t1, 1),
    }


def print_report(r: dict) -> None:
    print(f"\n## {r['dataset']}: {r['images']} images, {r['groups']} groups ({r['group_source']})")
    print(f"{r['group_note']}; largest group {r['largest_group_fraction']:.1%} of its class; kept out {r['kept_out']}")
    if r["fish_in_two_splits"] or "egu" in r["dataset"]:
        print(f"fish with frames in two splits: {r['fish_in_two_splits']}")
    print("\n| class | train (x fair) | val (x fair) | calib (x fair) | test (x fair) |\n|---|---|---|---|---|")
    for c, row in r["per_class"].items():
        print(f"| {c} | " + " | ".join(f"{n} ({f:.2f})" for n, f in row.values()) + " |")
    cal = r["calibration"]
    roles = r["roles"]
    print(
        f"\nhead learnt from {roles['head_fit']} images (train {roles['train']} + val {roles['val']}); "
        f"calib {roles['calib']}; test {roles['test']}; chosen head: {r['head']}"
    )
    print("\n| model (same frozen features, same split) | FP32 test accuracy |\n|---|---|")
    print(f"| edgeft head | {r['test_accuracy']:.4f} |")
    print(f"| LogisticRegression on train+val | {r['lr_train_val']:.4f} |")
    print(f"| LogisticRegression on train+val+calib | {r['lr_all_non_test']:.4f} |")
    print(
        f"\nT = {cal['temperature']:.3f}; ECE test {cal['ece_test_before']:.4f} -> {cal['ece_test_after']:.4f} "
        f"(noise floor: a perfectly calibrated model reads {cal.get('ece_test_floor') or 0:.4f} on this many); "
        f"ECE calib {cal['ece_calib_before']:.4f} -> {cal['ece_calib_after']:.4f}; unknown below "
        f"{cal['unknown_threshold']:.3f} (test: {cal['test_unknown_share']:.1%} unknown, "
        f"accuracy of the rest {cal['test_accuracy_of_kept']:.4f})"
    )
    print(f"timings: train {r['train_seconds']} s {r['phases_seconds']}; LR {r['lr_seconds']} s")


def main() -> None:
    here = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser()
    ap.add_argument("--egu", type=Path, default=here / "shared" / "real" / "egu2017")
    ap.add_argument("--lsfd", type=Path, default=None, help="Fish_Dataset root of a local LSFD copy")
    ap.add_argument("--group-regex", default=None, help="EGU only: override the detected track keys")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="runs root (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeft-bench-real-"))
    results = []
    if args.egu and args.egu.is_dir():
        results.append(bench("egu2017", args.egu, out, args.seed, args.group_regex))
        print_report(results[-1])
    if args.lsfd:
        results.append(bench("lsfd", args.lsfd, out, args.seed, None))
        print_report(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
