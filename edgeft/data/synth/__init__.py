"""Procedural, deterministic synthetic fish photos: the embedded default dataset.

The real "A Large-Scale Fish Dataset" (Ulucan et al. 2020) cannot be downloaded everywhere, so training,
tests and demos fall back to this stand-in. It copies what matters for the pipeline: the nine class names
and the Kaggle folder layout with binary GT masks, classes that differ in body shape, fins, colour and
markings, two genuinely confusable pairs, photo nuisances (tray/ice/water backgrounds, lighting, blur,
noise, occluders), and the real dataset's habit of storing flipped/rotated copies of one photo. Those copies
are recorded as ground-truth groups in synth.json so group-aware splits can be checked.

Every fish is drawn analytically in its own body coordinates (u along the body from snout to tail root,
v across it, both in body lengths), so shapes stay smooth at any size without per-pixel Python loops.

Difficulty is tuned, not accidental: at 150 images/class, seed 0, a frozen ImageNet
EfficientNet-Lite0 plus logistic regression scores about 91-92% on a group-aware split (about 95% when
copies leak across the split); most errors are Red Mullet vs Striped Red Mullet and the silvery fish.
Changing colours, marks or nuisance rates moves that number: re-measure after edits.

Modules, in drawing order: species (names and look templates), draw (raster primitives, background),
body (specimen geometry, texture and markings), raster (the fish's layers), render (pose, shadow, occluders,
camera: one photo), generate (flipped/rotated views, seeds, files on disk).
"""

from __future__ import annotations

import importlib
from typing import Any

# Images per species of `edgeft train fish`'s synthetic default: the 20% test split then holds 1,008 images,
# enough for the gate to certify 99% agreement (it needs 381) and to tell 99.5% from 99%, while the whole
# default run stays within a few minutes on 2 cores.
DEFAULT_PER_CLASS = 560

__all__ = ["DEFAULT_PER_CLASS", "FISH_SPECIES", "GENERATOR", "generate_dataset", "render_specimen"]

# The generator (cv2, numpy, PIL) loads on first use, so `edgeft --help` and the CLI, which only need
# DEFAULT_PER_CLASS, start without it.
_LAZY = {
    "generate_dataset": "edgeft.data.synth.generate",
    "render_specimen": "edgeft.data.synth.render",
    "FISH_SPECIES": "edgeft.data.synth.species",
    "GENERATOR": "edgeft.data.synth.species",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
