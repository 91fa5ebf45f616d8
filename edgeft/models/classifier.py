"""The classifier (frozen backbone + MLP head) and reading/writing it in a run dir."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeft.core.errors import EdgeftError
from edgeft.core.files import atomic_path
from edgeft.core.hashing import sha256_file
from edgeft.core.manifests import ModelManifest
from edgeft.models.backbones import build_architecture

WEIGHTS_FILE = "model.safetensors"


class MLPHead(nn.Module):
    """Dropout -> [Linear -> ReLU -> Dropout]* -> Linear; hidden=() is a plain linear classifier."""

    def __init__(self, in_dim: int, num_classes: int, hidden: tuple[int, ...] = (256,), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers += [nn.Dropout(dropout), nn.Linear(d, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)


class Classifier(nn.Module):
    """backbone (N,3,S,S) -> features (N,D) -> head -> logits (N,C)."""

    def __init__(self, backbone: nn.Module, head: MLPHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def save_weights(model: nn.Module, run_dir: Path) -> str:
    """Write model.safetensors atomically; returns its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "edgeft"})
    return sha256_file(run_dir / WEIGHTS_FILE)


def build_classifier(manifest: ModelManifest) -> Classifier:
    """The architecture described by model.json, with untrained weights."""
    bb = build_architecture(manifest.backbone.arch, manifest.backbone.id)
    hidden = tuple(manifest.head.hidden) if manifest.head.kind == "mlp" else ()
    head = MLPHead(bb.feature_dim, len(manifest.classes), hidden=hidden, dropout=manifest.head.dropout)
    return Classifier(bb.module, head)


def load_run(run_dir: str | Path, verify: bool = True) -> tuple[Classifier, ModelManifest]:
    """Rebuild the eval-mode model of a run dir from model.json + model.safetensors."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgeftError("run dir not found", path=run_dir, fix="pass a run dir written by `edgeft train`")
    manifest = ModelManifest.load(run_dir)
    wfile = run_dir / manifest.weights.file
    if not wfile.is_file():
        raise EdgeftError("weights file is missing (half-written run?)", path=wfile, fix="re-run `edgeft train`")
    if verify and manifest.weights.sha256 and sha256_file(wfile) != manifest.weights.sha256:
        raise EdgeftError(
            "weights do not match the sha256 in model.json", path=wfile, fix="re-run `edgeft train`; never mix runs"
        )
    model = build_classifier(manifest)
    try:
        state = load_file(str(wfile))
    except Exception as exc:
        raise EdgeftError(f"cannot read weights ({exc})", path=wfile, fix="re-run `edgeft train`") from None
    head_w = [k for k in state if k.startswith("head.") and k.endswith(".weight")]
    if head_w:
        n_out = state[sorted(head_w, key=lambda k: int(k.split(".")[2]))[-1]].shape[0]
        if n_out != len(manifest.classes):
            raise EdgeftError(
                f"model.json lists {len(manifest.classes)} classes but the weights have {n_out} outputs",
                path=run_dir / "model.json",
                fix="the class list disagrees with the weights; re-run `edgeft train`",
            )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EdgeftError(
            f"weights do not fit model.json ({str(exc).splitlines()[0]})", path=wfile, fix="re-run `edgeft train`"
        ) from None
    model.eval()
    return model, manifest
