"""Training end to end on CPU and small data: run dir contents, eval, determinism, caches, transfer, fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeft.core.errors import EdgeftError
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import ModelManifest, SplitsDoc
from edgeft.core.reports import MetricsDoc
from edgeft.models.backbones import create_backbone, weights_digest
from edgeft.models.classifier import load_run

pytestmark = pytest.mark.slow


def test_run_dir_contents(lite0_run):
    files = {p.name for p in lite0_run.iterdir()}
    assert {
        "model.json",
        "model.safetensors",
        "splits.json",
        "skipped.json",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "predictions.png",
        "reliability.png",
        "args.json",
    } <= files
    m = ModelManifest.load(lite0_run)
    assert m.backbone.id == "efficientnet_lite0" and len(m.classes) == 9
    assert m.weights.sha256 == sha256_file(lite0_run / "model.safetensors")
    assert m.hyperparameters["epochs"] == 30 and m.hyperparameters["seed"] == 0
    metrics = MetricsDoc.load(lite0_run)
    assert np.array(metrics.test.confusion_matrix).sum() == metrics.test.n
    assert metrics.test.accuracy > 0.5  # far above chance (1/9) even on this tiny tree
    splits = SplitsDoc.load(lite0_run)
    roles = metrics.images_per_role
    assert sum(roles[s] for s in ("train", "val", "calib", "test")) == len(splits.items)
    # the data budget: the final head learnt from train + val; calib and test stayed out
    assert roles["head_fit"] == roles["train"] + roles["val"] == metrics.head_selection["refit"]["images"]
    assert {c["kind"] for c in metrics.head_selection["candidates"]} == {"linear", "mlp"}
    assert m.head.kind == metrics.head_selection["chosen"]
    assert metrics.calibration["fitted_on"] == f"calib ({roles['calib']} images)"
    assert m.calibration.temperature == metrics.calibration["temperature"]
    assert splits.report["grouping"]["source"] == "verified-transforms"  # 00001.png: no track keys
    assert splits.report["grouping"]["note"] == "no track or sequence keys in the file names"
    assert set(splits.report["split"]["classes"]) == set(m.classes) and splits.report["kept_out"] == []
    args = json.loads((lite0_run / "args.json").read_text())
    assert args == m.hyperparameters and args["lr"] == 3e-3 and args["fractions"]["val"] == 0.15
    test = {it.path for it in splits.of("test")}
    calib = {it.path for it in splits.of("calib")}
    assert test and calib and not test & calib


def test_partial_run_dirs_are_never_left_behind(lite0_run):
    assert not [p for p in lite0_run.parent.iterdir() if p.name.startswith(".")]


def test_eval_recomputes_test_metrics(lite0_run):
    from edgeft.train.evaluate import evaluate_run

    result, out, run_dir = evaluate_run(lite0_run)
    stored = MetricsDoc.load(lite0_run).test
    assert out == lite0_run / "eval.json" and out.is_file() and run_dir == lite0_run
    assert result.n == stored.n
    assert abs(result.accuracy - stored.accuracy) <= 1.0 / stored.n  # torch path vs cached ORT features


def test_training_is_deterministic_and_cache_is_reused(synth_root, lite0_run, tmp_path):
    from edgeft.train.run import TrainConfig, train

    cfg = TrainConfig(data=synth_root, epochs=30, patience=10, out=tmp_path, name="lite0", seed=0)
    again = train(cfg).run_dir
    assert sha256_file(again / "model.safetensors") == sha256_file(lite0_run / "model.safetensors")
    assert (again / "splits.json").read_text() == (lite0_run / "splits.json").read_text()
    assert MetricsDoc.load(again).phases["head"]["feature_engine"] == "onnxruntime"


def test_feature_cache_keyed_by_weights_and_content(tmp_path):
    from PIL import Image

    from edgeft.train.features import FeatureExtractor

    bb = create_backbone("small_cnn")
    spec = bb.preprocess
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(img)
    fx = FeatureExtractor(bb.module, spec, weights_digest(bb.module), bb.arch, cache_dir=tmp_path / "c", engine="torch")
    f1 = fx.extract([img], ["sha-a"])
    assert (fx.dir / "sh" / "sha-a.npy").is_file()
    with torch.no_grad():
        for p in bb.module.parameters():
            p.add_(0.5)
    fx2 = FeatureExtractor(
        bb.module, spec, weights_digest(bb.module), bb.arch, cache_dir=tmp_path / "c", engine="torch"
    )
    assert fx2.key != fx.key  # changed weights -> a different cache, never the stale one
    assert not np.allclose(fx2.extract([img], ["sha-a"]), f1)
    np.save(fx.dir / "sh" / "sha-a.npy", np.full_like(f1[0], 7.0))
    assert np.all(fx.extract([img], ["sha-a"]) == 7.0)  # entries are found by content hash only


def test_species_transfer(lite0_run, synth_root, tmp_path):
    from edgeft.train.run import TrainConfig, train

    new = ["Hourse Mackerel", "Red Mullet", "Red Sea Bream", "Sea Bass"]
    cfg = TrainConfig(data=synth_root, species=new, init=lite0_run, epochs=20, out=tmp_path, name="transfer")
    run = train(cfg).run_dir
    model, m = load_run(run)
    src, _ = load_run(lite0_run)
    assert m.classes == sorted(new) and m.init_from == str(lite0_run.resolve())
    for (k, a), (_, b) in zip(model.backbone.state_dict().items(), src.backbone.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # the feature extractor is the source run's, frozen
    assert MetricsDoc.load(run).test.accuracy > 0.4


def test_small_cnn_from_scratch(synth_root, tmp_path):
    from edgeft.train.run import TrainConfig, train

    cfg = TrainConfig(
        data=synth_root, species=["Shrimp", "Trout"], backbone="small_cnn", epochs=2, out=tmp_path, name="cnn"
    )
    run = train(cfg).run_dir
    model, m = load_run(run)
    assert m.backbone.pretrained is False and m.preprocess.input_size == 128
    assert model(torch.zeros(2, 3, 128, 128)).shape == (2, 2)


def test_bad_run_dirs(tiny_run, tmp_path):
    with pytest.raises(EdgeftError, match="run dir not found"):
        load_run(tmp_path / "nope")
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.safetensors").write_bytes((tiny_run / "model.safetensors").read_bytes())
    with pytest.raises(EdgeftError, match="model.json not found"):
        load_run(half)
    doc = json.loads((tiny_run / "model.json").read_text())
    doc["classes"] = doc["classes"][:3]
    doc["classes_sha256"] = ""
    (half / "model.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeftError, match="lists 3 classes but the weights have 4 outputs"):
        load_run(half)
    doc = json.loads((tiny_run / "model.json").read_text())
    doc["classes"] = list(reversed(doc["classes"]))
    (half / "model.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeftError, match="classes_sha256 does not match the ordered class list"):
        load_run(half)


def test_existing_run_name_is_refused_and_left_untouched(tiny_run, colour_tree):
    from edgeft.train.run import TrainConfig, train

    before = {p.name: sha256_file(p) for p in tiny_run.iterdir() if p.is_file()}
    cfg = TrainConfig(
        task="folder", data=colour_tree, backbone="tinynet", epochs=1, out=tiny_run.parents[1], name="tiny"
    )
    with pytest.raises(EdgeftError, match="a run with this name already exists"):
        train(cfg)
    assert {p.name: sha256_file(p) for p in tiny_run.iterdir() if p.is_file()} == before


def test_cli_errors_are_one_paragraph(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgeft.cli", "train", "folder", "--data", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert "dataset root does not exist" in r.stderr and "Fix:" in r.stderr


def test_finetune_phase_unfreezes_top_blocks(synth_root, tmp_path):
    from edgeft.train.run import TrainConfig, train

    cfg = TrainConfig(
        data=synth_root,
        species=["Shrimp", "Trout"],
        epochs=5,
        finetune_epochs=1,
        finetune_blocks=1,
        out=tmp_path,
        name="ft",
    )
    run = train(cfg).run_dir
    model, m = load_run(run)
    metrics = MetricsDoc.load(run)
    assert m.finetune == {"epochs": 1, "blocks": 1} and m.backbone.frozen is False
    assert len(metrics.phases["finetune"]["history"]) == 1
    from edgeft.models.backbones import create_backbone as cb

    base = cb().module.state_dict()
    changed = {k.split(".")[0] for k, v in model.backbone.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {"conv_head", "bn2"}  # only the top block moved; BN statistics of frozen blocks kept
