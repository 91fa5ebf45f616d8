"""The nine species: their folder names and the look templates every specimen jitters.

Red Mullet / Striped Red Mullet and Gilt-Head / Red Sea Bream share a body template and differ only in
colours and marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgeft.core.errors import EdgeftError

FISH_SPECIES: tuple[str, ...] = (
    "Black Sea Sprat",
    "Gilt-Head Bream",
    "Hourse Mackerel",  # sic: the real dataset's folder name
    "Red Mullet",
    "Red Sea Bream",
    "Sea Bass",
    "Shrimp",
    "Striped Red Mullet",
    "Trout",
)
GENERATOR = "edgeft.synth/1"

RGB = tuple[float, float, float]
Fin = tuple[float, float, float, str]  # (u start, u end, height, shape), in body lengths


@dataclass(frozen=True)
class _Look:
    """Species template; every specimen jitters it. Lengths are in body lengths (snout to tail root)."""

    kind: str = "fish"
    length: tuple[float, float] = (0.5, 0.72)  # body length / frame width
    aspect: float = 0.25  # deepest body depth / body length
    top_share: float = 0.52  # share of the depth above the body axis
    a_top: float = 0.6  # snout bluntness of the back profile (small = steep forehead)
    a_bot: float = 0.6
    c_tail: float = 1.0  # taper towards the tail root
    ped: float = 0.14  # tail-root depth / body depth
    tail: str = "forked"  # forked | emarginate | truncate | rounded | fan
    tail_len: float = 0.22
    tail_h: float = 0.13  # half height of the tail fin
    fork: float = 0.45
    dorsal: tuple[Fin, ...] = ((0.38, 0.62, 0.1, "soft"),)
    anal: tuple[Fin, ...] = ((0.62, 0.8, 0.06, "soft"),)
    pelvic: tuple[float, float, float] | None = (0.34, 0.44, 0.06)
    pectoral: tuple[float, float, float, float] | None = (0.25, 0.16, 0.03, 0.35)  # u, length, half width, angle
    adipose: bool = False
    eye_u: float = 0.11
    eye_v: float = 0.42  # eye height as a share of the back profile at eye_u
    eye_r: float = 0.042
    iris: RGB = (0.82, 0.8, 0.72)
    gill_u: float = 0.25
    dorsal_rgb: RGB = (0.4, 0.45, 0.48)
    ventral_rgb: RGB = (0.88, 0.89, 0.9)
    fin_rgb: RGB = (0.62, 0.64, 0.66)
    shade_line: float = 0.45  # t of the dark-back / light-belly transition
    spec: float = 0.35  # specular sheen (silvery fish are high)
    scales: float = 0.05
    barbels: bool = False
    fin_spots: bool = False
    marks: tuple[str, ...] = ()


_MULLET = _Look(
    length=(0.46, 0.66),
    aspect=0.25,
    top_share=0.56,
    a_top=0.38,
    a_bot=0.75,
    c_tail=1.05,
    ped=0.17,
    tail="forked",
    tail_len=0.2,
    tail_h=0.12,
    fork=0.35,
    dorsal=((0.28, 0.42, 0.12, "spiny"), (0.54, 0.7, 0.08, "soft")),
    anal=((0.58, 0.74, 0.06, "soft"),),
    pelvic=(0.3, 0.4, 0.06),
    pectoral=(0.26, 0.15, 0.03, 0.35),
    eye_u=0.12,
    eye_v=0.62,
    eye_r=0.045,
    iris=(0.9, 0.72, 0.5),
    gill_u=0.25,
    dorsal_rgb=(0.8, 0.36, 0.34),
    ventral_rgb=(0.95, 0.8, 0.76),
    fin_rgb=(0.93, 0.62, 0.55),
    shade_line=0.55,
    spec=0.22,
    scales=0.09,
    barbels=True,
)
_BREAM = _Look(
    length=(0.44, 0.66),
    aspect=0.42,
    top_share=0.55,
    a_top=0.65,
    a_bot=0.8,
    c_tail=1.2,
    ped=0.1,
    tail="forked",
    tail_len=0.24,
    tail_h=0.17,
    fork=0.5,
    dorsal=((0.3, 0.8, 0.1, "long"),),
    anal=((0.6, 0.82, 0.08, "long"),),
    pelvic=(0.34, 0.44, 0.07),
    pectoral=(0.3, 0.22, 0.035, 0.5),
    eye_u=0.13,
    eye_v=0.45,
    eye_r=0.045,
    gill_u=0.28,
    spec=0.35,
    scales=0.05,
)
_LOOKS: dict[str, _Look] = {
    "Black Sea Sprat": _Look(
        length=(0.32, 0.5),
        aspect=0.19,
        top_share=0.46,
        a_top=0.6,
        a_bot=0.5,
        ped=0.2,
        tail="forked",
        tail_len=0.22,
        tail_h=0.11,
        fork=0.6,
        dorsal=((0.42, 0.56, 0.07, "soft"),),
        anal=((0.74, 0.86, 0.035, "soft"),),
        pelvic=(0.42, 0.5, 0.035),
        pectoral=(0.22, 0.1, 0.02, 0.4),
        eye_u=0.1,
        eye_v=0.3,
        eye_r=0.052,
        iris=(0.86, 0.86, 0.86),
        gill_u=0.22,
        dorsal_rgb=(0.22, 0.32, 0.38),
        ventral_rgb=(0.86, 0.88, 0.9),
        fin_rgb=(0.75, 0.77, 0.78),
        shade_line=0.38,
        spec=0.5,
        scales=0.02,
        marks=("silver_band",),
    ),
    "Gilt-Head Bream": replace(
        _BREAM,
        dorsal_rgb=(0.5, 0.54, 0.58),
        ventral_rgb=(0.88, 0.89, 0.9),
        fin_rgb=(0.6, 0.62, 0.66),
        marks=("gold_bar", "gill_spot", "grey_lines"),
    ),
    "Hourse Mackerel": _Look(
        length=(0.5, 0.74),
        aspect=0.22,
        top_share=0.52,
        a_top=0.55,
        a_bot=0.55,
        c_tail=1.05,
        ped=0.08,
        tail="forked",
        tail_len=0.26,
        tail_h=0.14,
        fork=0.6,
        dorsal=((0.3, 0.44, 0.1, "spiny"), (0.47, 0.9, 0.05, "long")),
        anal=((0.55, 0.9, 0.04, "long"),),
        pelvic=(0.3, 0.38, 0.05),
        pectoral=(0.23, 0.22, 0.025, 0.25),
        eye_u=0.1,
        eye_v=0.35,
        eye_r=0.06,
        iris=(0.9, 0.9, 0.85),
        gill_u=0.24,
        dorsal_rgb=(0.32, 0.45, 0.5),
        ventral_rgb=(0.85, 0.86, 0.84),
        fin_rgb=(0.78, 0.76, 0.65),
        spec=0.45,
        scales=0.02,
        marks=("scutes", "gill_spot"),
    ),
    "Red Mullet": _MULLET,
    "Red Sea Bream": replace(
        _BREAM,
        dorsal_rgb=(0.85, 0.45, 0.45),
        ventral_rgb=(0.93, 0.8, 0.8),
        fin_rgb=(0.9, 0.6, 0.6),
        marks=("blue_spots",),
    ),
    "Sea Bass": _Look(
        length=(0.5, 0.74),
        aspect=0.25,
        top_share=0.52,
        tail="emarginate",
        fork=0.18,
        dorsal=((0.33, 0.5, 0.11, "spiny"), (0.56, 0.76, 0.08, "soft")),
        anal=((0.64, 0.8, 0.06, "soft"),),
        pelvic=(0.33, 0.42, 0.06),
        pectoral=(0.27, 0.15, 0.03, 0.35),
        eye_u=0.12,
        eye_v=0.45,
        eye_r=0.038,
        gill_u=0.27,
        marks=("lateral_line", "gill_spot"),
    ),
    "Shrimp": _Look(
        kind="shrimp",
        length=(0.6, 0.85),
        aspect=0.2,
        top_share=0.5,
        tail="fan",
        tail_len=0.14,
        tail_h=0.1,
        ped=0.45,
        dorsal=(),
        anal=(),
        pelvic=None,
        pectoral=None,
        eye_u=0.07,
        eye_v=0.45,
        eye_r=0.03,
        iris=(0.12, 0.1, 0.1),
        gill_u=0.0,
        dorsal_rgb=(0.78, 0.6, 0.56),
        ventral_rgb=(0.9, 0.78, 0.72),
        fin_rgb=(0.85, 0.55, 0.45),
        shade_line=0.5,
        spec=0.35,
        scales=0.0,
        marks=("segments",),
    ),
    "Striped Red Mullet": replace(_MULLET, a_top=0.45, marks=("yellow_stripes", "banded_dorsal")),
    "Trout": _Look(
        length=(0.55, 0.76),
        aspect=0.24,
        top_share=0.52,
        a_top=0.7,
        a_bot=0.65,
        c_tail=0.95,
        ped=0.18,
        tail="truncate",
        tail_len=0.2,
        tail_h=0.13,
        fork=0.08,
        dorsal=((0.4, 0.55, 0.1, "soft"),),
        anal=((0.68, 0.8, 0.06, "soft"),),
        adipose=True,
        pelvic=(0.45, 0.54, 0.05),
        pectoral=(0.23, 0.13, 0.03, 0.4),
        eye_u=0.1,
        eye_v=0.4,
        eye_r=0.035,
        iris=(0.8, 0.75, 0.55),
        gill_u=0.22,
        dorsal_rgb=(0.36, 0.42, 0.3),
        ventral_rgb=(0.88, 0.86, 0.84),
        fin_rgb=(0.55, 0.55, 0.48),
        shade_line=0.5,
        spec=0.3,
        scales=0.02,
        fin_spots=True,
        marks=("pink_band", "black_spots"),
    ),
}


def _check_species(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in _LOOKS]
    if unknown:
        raise EdgeftError(
            f"unknown fish species {unknown}; valid names are {list(FISH_SPECIES)}",
            fix="use the exact folder names of the Large-Scale Fish Dataset (note 'Hourse Mackerel')",
        )
