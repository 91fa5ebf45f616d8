"""`edgeft train`: data -> splits -> frozen backbone features -> head (-> optional fine-tune) -> run dir.

The run dir is built in a hidden sibling (core.files.staged_dir) and swapped in only when complete, with
model.json written last: an interrupted training never leaves a half-written run and never damages an
existing one. An existing run name is refused unless `overwrite` is set.

While it trains, a checkpoint (edgeft.train.resume, `.NAME.resume/` next to the run dir) records every
finished stage and the fit in progress; `resume` continues a killed training from it with the same result.

Launched by torchrun, the same function runs on every rank (edgeft.train.distributed): rank 0 scans,
checkpoints and writes the run dir, the feature pass is shared out, the head is fitted on every rank from
the same features, fine-tuning runs under DistributedDataParallel; the other ranks end after fitting.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import edgeft
from edgeft.core.errors import EdgeftError
from edgeft.core.files import staged_dir, write_json_atomic
from edgeft.core.hashing import stable_hash
from edgeft.core.manifests import BackboneInfo, Calibrated, HeadConfig, ModelManifest, SplitsDoc, WeightsInfo
from edgeft.core.numeric import softmax
from edgeft.core.progress import Reporter, or_silent
from edgeft.core.reports import MetricsDoc
from edgeft.data.layouts import Dataset
from edgeft.models.backbones import Backbone, weights_digest
from edgeft.models.classifier import Classifier, save_weights
from edgeft.train.calibrate import calibrate, plot_reliability
from edgeft.train.config import TrainConfig, TrainResult, next_run_dir
from edgeft.train.distributed import Dist, from_env
from edgeft.train.features import FeatureExtractor
from edgeft.train.fit import (
    FitConfig,
    ImageSet,
    evaluate,
    fit,
    image_loaders,
    resolve_device,
    seed_everything,
    unfreeze_top_blocks,
)
from edgeft.train.head import HeadChoice, head_candidates, select_and_refit
from edgeft.train.inputs import Split, backbone_for, scan_and_split, split_of, with_preprocess
from edgeft.train.metrics import classification_metrics, plot_confusion, plot_curves, plot_prediction_grid
from edgeft.train.resume import Checkpoint, resume_dir

ROLES = ("train", "val", "calib", "test")


def _epoch_reporter(rep: Reporter):
    def on_epoch(row: dict) -> None:
        rep.advance(1)

    return on_epoch


def _head_phase(cfg, bb, n_classes, data, fit_cfg, rep, ck: Checkpoint, dist: Dist, weights_sha: str):
    """Phase 1: cached features of the frozen backbone; head candidates chosen on val, refit on train+val.

    weights_sha: `weights_digest` of the frozen backbone (the feature cache's key). (head, choice, phase record,
    features per role)."""
    threads = dist.threads() if dist.active else None
    with dist.cache_writer_first():  # one export of the backbone into the cache per machine
        fx = FeatureExtractor(bb.module, bb.preprocess, weights_sha, bb.arch, device=fit_cfg.device, threads=threads)
    shard = dist if dist.active else None
    feats = {}
    for s in ROLES:
        rep.task(f"features {s} ({fx.engine_name})", len(data[s].paths))
        feats[s] = fx.extract(data[s].paths, data[s].shas, progress=rep.update, shard=shard)
    extra = {}
    if cfg.augment == "hflip":  # mirrored copies of the images the head learns from (never calib or test)
        for s in ("train", "val"):
            rep.task(f"features {s} mirrored ({fx.engine_name})", len(data[s].paths))
            extra[s] = fx.extract(data[s].paths, data[s].shas, progress=rep.update, view="hflip", shard=shard)
    done = ck.get("head")
    if done is not None:  # the head was complete when the training was interrupted
        (meta, state), in_dim = done, feats["train"].shape[1]
        choice = HeadChoice(**{**meta["choice"], "hidden": tuple(meta["choice"]["hidden"])})
        head, record = choice.build(in_dim, n_classes), meta["record"]
        head.load_state_dict(state)
        head.eval()
    else:
        choices = head_candidates(cfg.head, tuple(cfg.hidden), cfg.dropout, cfg.weight_decay)
        rep.task(f"head ({', '.join(c.kind for c in choices)} on val{', refit' if cfg.refit else ''})", None)
        labels = {s: data[s].labels for s in ROLES}
        on_epoch = _epoch_reporter(rep)
        head, choice, record = select_and_refit(
            choices, feats, labels, n_classes, fit_cfg, cfg.refit, on_epoch, extra, checkpoint=ck
        )
        meta = {"choice": dataclasses.asdict(choice), "record": record}
        ck.put("head", meta, head.state_dict(), drop=["head.", "fit.head."])
    chosen = next(c for c in record["candidates"] if c["kind"] == choice.kind)
    phase = {
        "history": chosen["history"] + (record["refit"]["history"] if record["refit"] else []),
        "best_epoch": chosen["best_epoch"],
        "stopped_early": chosen["stopped_early"],
        "feature_engine": fx.engine_name,
        "feature_cache_key": fx.key,
        "selection": {k: v for k, v in record.items() if k != "candidates"}
        | {"candidates": [{k: v for k, v in c.items() if k != "history"} for c in record["candidates"]]},
    }
    return head, choice, phase, feats


def _image_phase(cfg, model, params, data, fit_cfg, rep, name: str, ck: Checkpoint, stage: str, dist: Dist) -> dict:
    """End to end on images: training from scratch, or phase 2 with the top blocks unfrozen; under
    DistributedDataParallel in a multi-process training.

    A stage finished before an interruption is taken from the checkpoint (weights and record)."""
    done = ck.get(stage)
    if done is not None:
        phase, state = done
        model.load_state_dict(state)
        return phase
    paths = {s: data[s].paths for s in ROLES}
    labels = {s: data[s].labels.tolist() for s in ROLES}
    tl, vl = image_loaders(paths, labels, model.spec, fit_cfg.batch_size, cfg.seed, dist.rank, dist.world)
    rep.task(name, fit_cfg.epochs)
    net = dist.parallel(model)
    hist = dist.guarded(
        "fine-tuning",
        lambda: fit(net, tl, vl, params, fit_cfg, on_epoch=_epoch_reporter(rep), resume=ck.slot(f"fit.{stage}")),
    )
    phase = {"history": hist.epochs, "best_epoch": hist.best_epoch, "stopped_early": hist.stopped_early}
    ck.put(stage, phase, model.state_dict(), drop=[f"fit.{stage}"])
    return phase


def _logits(model: Classifier, data: Split, feats: np.ndarray | None) -> np.ndarray:
    """Logits of the final model: from cached features when they still describe the backbone."""
    if feats is not None:
        pairs = list(zip(torch.from_numpy(feats), torch.from_numpy(data.labels), strict=True))
        return evaluate(model.head, DataLoader(pairs, batch_size=512), torch.nn.CrossEntropyLoss(), "cpu")[2]
    loader = DataLoader(ImageSet(data.paths, data.labels.tolist(), model.spec), batch_size=32)
    return evaluate(model, loader, torch.nn.CrossEntropyLoss(), "cpu")[2]


def _fit_model(
    cfg: TrainConfig, bb: Backbone, n_classes: int, data: dict[str, Split], device: str, rep, ck, dist, weights_sha: str
):
    fit_cfg = FitConfig(
        cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.patience, device=device, seed=cfg.seed
    )
    phases: dict[str, dict] = {}
    feats = None
    if bb.pretrained:
        for p in bb.module.parameters():
            p.requires_grad_(False)
        head, choice, phases["head"], feats = _head_phase(cfg, bb, n_classes, data, fit_cfg, rep, ck, dist, weights_sha)
        model = Classifier(bb.module, head)
    else:
        choice = HeadChoice("mlp" if cfg.hidden else "linear", tuple(cfg.hidden), cfg.dropout, cfg.weight_decay)
        model = Classifier(bb.module, choice.build(bb.feature_dim, n_classes))
        model.spec = bb.preprocess  # the scratch phase trains on images through it
        params = list(model.parameters())
        phases["scratch"] = _image_phase(cfg, model, params, data, fit_cfg, rep, "train (scratch)", ck, "scratch", dist)
    model.spec = bb.preprocess
    head = model.head
    if cfg.finetune_epochs > 0 and bb.pretrained:
        if not bb.blocks:
            raise EdgeftError(
                "--finetune-epochs is not available with --init runs", fix="fine-tune the source run instead"
            )
        params = list(head.parameters()) + unfreeze_top_blocks(bb.blocks, cfg.finetune_blocks)
        ft = FitConfig(
            cfg.finetune_epochs,
            cfg.finetune_lr,
            1e-4,
            min(cfg.batch_size, 32),
            cfg.patience,
            device=device,
            seed=cfg.seed,
        )
        name = f"fine-tune top {cfg.finetune_blocks}"
        phases["finetune"] = _image_phase(cfg, model, params, data, ft, rep, name, ck, "finetune", dist)
        phases["finetune"]["blocks"] = cfg.finetune_blocks
        for p in model.parameters():
            p.requires_grad_(False)
        feats = None  # the backbone changed: cached features no longer describe it
    model.eval().cpu()
    return model, phases, feats, choice


def _roles(doc: SplitsDoc, phases: dict) -> dict[str, int]:
    """How many images each role used: the split sizes, and what the final head learnt from."""
    n = {s: len(doc.of(s)) for s in ("train", "val", "calib", "test")}
    refit = phases.get("head", {}).get("selection", {}).get("refit")
    n["head_fit"] = refit["images"] if refit else n["train"]
    n["model_selection"] = n["val"]
    n["calibration"] = n["calib"]
    return n


def _calibration(model, data, feats, test_logits: np.ndarray, false_reject_rate: float) -> dict:
    calib_logits = _logits(model, data["calib"], None if feats is None else feats["calib"])
    return calibrate(calib_logits, data["calib"].labels, test_logits, data["test"].labels, false_reject_rate)


def _write_run(
    cfg, run_dir: Path, work: Path, ds: Dataset, doc: SplitsDoc, fitted, feats, data, bb, init_from, synthetic, ck
) -> MetricsDoc:
    model, phases, choice = fitted
    test_logits = _logits(model, data["test"], None if feats is None else feats["test"])
    y_pred = test_logits.argmax(1)
    refit = bool(phases.get("head", {}).get("selection", {}).get("refit"))
    y_val = None if refit else _logits(model, data["val"], None if feats is None else feats["val"]).argmax(1)
    cal = _calibration(model, data, feats, test_logits, cfg.false_reject_rate)
    metrics = MetricsDoc(
        test=classification_metrics(data["test"].labels, y_pred, ds.classes),
        val=None if y_val is None else classification_metrics(data["val"].labels, y_val, ds.classes),
        phases=phases,
        synthetic_data=synthetic,
        images_per_role=_roles(doc, phases),
        calibration={k: v for k, v in cal.items() if not k.startswith("reliability")},
        head_selection=phases.get("head", {}).get("selection", {"chosen": choice.kind}),
    )
    plot_reliability(
        cal["reliability_test_before"], cal["reliability_test"], work / "reliability.png", title="test split"
    )
    write_json_atomic(work / "args.json", cfg.record())
    doc.save(work)
    write_json_atomic(work / "skipped.json", {"root": str(ds.root), "skipped": ds.skipped})
    sha = save_weights(model, work)
    history = [r for ph in phases.values() for r in ph["history"]]
    plot_curves([{**r, "epoch": i} for i, r in enumerate(history, 1)], work / "curves.png", title=run_dir.name)
    plot_confusion(metrics.test.confusion_matrix, ds.classes, work / "confusion_matrix.png")
    plot_prediction_grid(
        data["test"].paths, data["test"].labels.tolist(), softmax(test_logits), ds.classes, work / "predictions.png"
    )
    metrics.save(work)
    ModelManifest(
        task=cfg.task,
        name=run_dir.name,
        backbone=BackboneInfo(
            id=bb.id,
            arch=bb.arch,
            feature_dim=bb.feature_dim,
            source=bb.source,
            pretrained=bb.pretrained,
            weights_sha256=weights_digest(model.backbone),
            frozen="finetune" not in phases and bb.pretrained,
        ),
        classes=list(ds.classes),
        preprocess=bb.preprocess,
        head=HeadConfig(kind=choice.kind, hidden=list(choice.hidden), dropout=choice.dropout),
        calibration=Calibrated(
            temperature=cal["temperature"],
            unknown_threshold=cal["unknown_threshold"],
            false_reject_rate=cal["false_reject_rate"],
            fitted_on=cal["fitted_on"],
        ),
        weights=WeightsInfo(file="model.safetensors", sha256=sha),
        seed=cfg.seed,
        finetune={"epochs": cfg.finetune_epochs, "blocks": cfg.finetune_blocks} if "finetune" in phases else {},
        init_from=init_from,
        hyperparameters=cfg.record(),
        versions=_versions(),
        data={"root": str(ds.root), "layout": ds.layout, "synthetic": synthetic, "skipped": len(ds.skipped)},
        resumed_from=ck.doc.resumed_from,
    ).save(work)  # written last: its presence marks a complete run dir
    return metrics


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a run and write its run dir; returns where it is and its metrics.

    A killed or failed training keeps its checkpoint (`.NAME.resume/`); `cfg.resume` continues from it.
    Under torchrun every rank calls this; see edgeft.train.distributed.
    """
    dist = from_env()
    try:
        return _train(cfg, or_silent(reporter), dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, rep: Reporter, dist: Dist) -> TrainResult:
    seed_everything(cfg.seed)
    torch.set_num_threads(dist.threads())
    device = dist.agree(lambda: _device(cfg, dist))[0]

    def open_run() -> tuple[Path, Checkpoint]:
        run_dir = next_run_dir(Path(cfg.out), cfg.task, cfg.name, cfg.overwrite, cfg.resume)
        record = {**cfg.record(), "processes": dist.world}  # fine-tuning differs with the process count
        return run_dir, Checkpoint.open(run_dir, record, cfg.resume, cfg.overwrite, rep)

    if not dist.active:
        run_dir, ck = open_run()
    else:  # rank 0 decides and holds the checkpoint; the other ranks get a copy of what it loaded
        opened: list[Checkpoint] = []

        def open_on_main() -> tuple[Path, tuple]:
            run_dir, ck = open_run()
            opened.append(ck)
            return run_dir, ck.replica()

        run_dir, replica = dist.on_main(open_on_main)
        ck = opened[0] if dist.main else Checkpoint.from_replica(resume_dir(run_dir), replica)
    completed = False
    try:
        ds, doc, synthetic = dist.on_main(lambda: scan_and_split(cfg, rep))
        assignment = {it.path: it.split for it in doc.items}
        data = {s: split_of(ds, assignment, s) for s in ROLES}
        bb, init_from = backbone_for(cfg)
        bb = with_preprocess(bb, cfg, ds, rep)
        weights_sha = weights_digest(bb.module)  # once: the resume check and the feature cache's key
        dist.on_main(lambda: ck.check_inputs(_inputs(doc, weights_sha)))
        model, phases, feats, choice = _fit_model(cfg, bb, len(ds.classes), data, device, rep, ck, dist, weights_sha)
        if not dist.main:
            completed = True
            return TrainResult(run_dir, None, synthetic)
        with staged_dir(run_dir) as work:
            fitted = (model, phases, choice)
            metrics = _write_run(cfg, run_dir, work, ds, doc, fitted, feats, data, bb, init_from, synthetic, ck)
        completed = True
    finally:
        if ck.close(completed):
            rep.note(f"the checkpoint was kept in {ck.path}: repeat the command with --resume to continue")
    return TrainResult(run_dir, metrics, synthetic)


def _device(cfg: TrainConfig, dist: Dist) -> str:
    device = resolve_device(cfg.device)
    if dist.active and device != "cpu":
        raise EdgeftError(
            f"multi-process training runs on CPU with gloo, but --device {cfg.device} chose {device}",
            fix="pass --device cpu under torchrun, or train in one process on the GPU",
        )
    return device


def _inputs(doc: SplitsDoc, weights_sha: str) -> dict[str, str]:
    """What a resumed training must find unchanged: the images and their splits, the backbone weights."""
    splits = doc.model_dump(mode="json")
    return {
        "images": stable_hash({k: splits[k] for k in ("classes", "items", "seed")}),
        "backbone weights": weights_sha,
    }


def _versions() -> dict[str, str]:
    out = {
        "edgeft": edgeft.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out
