"""One specimen's body: outline profiles, jittered geometry and colours, the albedo texture with the species'
markings, and the mapping between canonical and bent body coordinates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgeft.data.synth.draw import _jitter, _noise, _smooth
from edgeft.data.synth.species import Fin, _Look

_TU, _TT = 256, 96  # body texture resolution: along the body (u) x across it (t, 0 = back, 1 = belly)
_LUT = 513  # samples of the body outline profiles over u in [0, 1]


def _profile(u: np.ndarray, a: float, c: float, ped: float) -> np.ndarray:
    """Half-depth of a fish body along u (1 at the deepest point, ped at the tail root)."""
    u = np.clip(u, 0.0, 1.0)
    um = a / (a + c)
    g = u**a * (1.0 - u) ** c / (um**a * (1.0 - um) ** c)
    return (1.0 - ped) * g + ped * u**3


def _shrimp_profile(u: np.ndarray, top: bool) -> np.ndarray:
    """Carapace, then six tapering abdominal segments; the back bulges per segment."""
    head = np.minimum(1.0, u / 0.14) ** 0.55 * (1.0 - 0.15 * _smooth(0.2, 0.36, u))
    abd = 0.85 - 0.45 * np.clip((u - 0.36) / 0.6, 0.0, 1.0)
    w = np.where(u < 0.36, head, abd)
    if top:
        seg = np.clip((u - 0.36) / 0.09, 0.0, 6.0)
        w = w * (1.0 + 0.08 * np.sin(np.pi * np.mod(seg, 1.0)) * (u > 0.36))
    return w


@dataclass
class _Body:
    """One specimen's geometry and colours, sampled from its species template."""

    look: _Look
    length: float  # body length in px, set once the pose is chosen
    kappa: float  # axis curvature, 1/body lengths
    top: np.ndarray  # LUT of the back profile over u in [0, 1]
    bot: np.ndarray
    dtop: np.ndarray  # 1 / sqrt(1 + slope^2), turns vertical distances into normal ones
    dbot: np.ndarray
    tail_len: float
    tail_h: float
    fork: float
    fins: list  # (side, u0, u1, height, shape, index)
    pectoral: tuple | None
    pelvic: tuple | None
    eye: tuple[float, float, float]
    gill_u: float
    dorsal: np.ndarray
    ventral: np.ndarray
    fin: np.ndarray
    iris: np.ndarray
    tex: np.ndarray  # (_TT, _TU, 3) albedo over (t, u)
    spec: float
    scales: float
    scale_size: float
    fin_noise: np.ndarray
    clear_top: float = 0.0  # how far fins, antennae etc. reach beyond the body outline
    clear_bot: float = 0.0


def _normal_scale(profile: np.ndarray) -> np.ndarray:
    """1 / sqrt(1 + slope^2) of a profile LUT: turns vertical distances to the outline into normal ones."""
    return (1.0 / np.sqrt(1.0 + np.gradient(profile, 1.0 / (_LUT - 1)) ** 2)).astype(np.float32)


def _sample_body(look: _Look, rng: np.random.Generator) -> _Body:
    aspect = look.aspect * math.exp(rng.normal(0.0, 0.07))
    share = float(np.clip(look.top_share + rng.normal(0.0, 0.02), 0.35, 0.7))
    u = np.linspace(0.0, 1.0, _LUT)
    if look.kind == "shrimp":
        top = aspect * share * _shrimp_profile(u, True)
        bot = aspect * (1 - share) * _shrimp_profile(u, False)
        kappa = rng.uniform(1.4, 2.6)
    else:
        a_t = look.a_top * math.exp(rng.normal(0.0, 0.1))
        a_b = look.a_bot * math.exp(rng.normal(0.0, 0.1))
        c = look.c_tail * math.exp(rng.normal(0.0, 0.08))
        ped = look.ped * math.exp(rng.normal(0.0, 0.1))
        top = aspect * share * _profile(u, a_t, c, ped)
        bot = aspect * (1 - share) * _profile(u, a_b, c, ped)
        kappa = rng.normal(0.0, 0.12)

    def fin_jit(f: Fin, side: str, i: int):
        s = rng.normal(0.0, 0.015)
        return (side, f[0] + s, f[1] + s + rng.normal(0.0, 0.01), f[2] * math.exp(rng.normal(0.0, 0.12)), f[3], i)

    fins = [fin_jit(f, "top", i) for i, f in enumerate(look.dorsal)]
    fins += [fin_jit(f, "bot", i) for i, f in enumerate(look.anal)]
    if look.adipose:
        fins.append(("top", 0.79, 0.85, 0.035, "round", 9))
    eye_u = look.eye_u + rng.normal(0.0, 0.006)
    eye_r = look.eye_r * math.exp(rng.normal(0.0, 0.08))
    eye_v = -float(np.interp(eye_u, u, top)) * (look.eye_v + rng.normal(0.0, 0.04))
    dorsal = _jitter(look.dorsal_rgb, rng)
    ventral = _jitter(look.ventral_rgb, rng, 0.015, 0.15, 0.05)
    fin = _jitter(look.fin_rgb, rng)
    body = _Body(
        look=look,
        length=1.0,
        kappa=kappa,
        top=top.astype(np.float32),
        bot=bot.astype(np.float32),
        dtop=_normal_scale(top),
        dbot=_normal_scale(bot),
        tail_len=look.tail_len * math.exp(rng.normal(0.0, 0.08)),
        tail_h=look.tail_h * math.exp(rng.normal(0.0, 0.1)),
        fork=float(np.clip(look.fork + rng.normal(0.0, 0.06), 0.0, 0.8)),
        fins=fins,
        pectoral=look.pectoral,
        pelvic=look.pelvic,
        eye=(eye_u, eye_v, eye_r),
        gill_u=look.gill_u + rng.normal(0.0, 0.01),
        dorsal=dorsal,
        ventral=ventral,
        fin=fin,
        iris=_jitter(look.iris, rng, 0.02, 0.2, 0.05),
        tex=np.zeros((_TT, _TU, 3), np.float32),
        spec=look.spec * math.exp(rng.normal(0.0, 0.2)),
        scales=look.scales * math.exp(rng.normal(0.0, 0.2)),
        scale_size=rng.uniform(0.022, 0.034),
        fin_noise=rng.random((32, 32), dtype=np.float32),
    )
    body.tex = _texture(body, rng)
    heights = [f[3] for f in fins if f[0] == "top"]
    body.clear_top = max(heights, default=0.0) * 1.3 + 0.02
    lows = [f[3] for f in fins if f[0] == "bot"] + [look.pelvic[2] + 0.01 if look.pelvic else 0.0]
    body.clear_bot = max(lows) * 1.3 + 0.04
    if look.kind == "shrimp":
        body.clear_top, body.clear_bot = 0.06, 0.14
    return body


class _TexPainter:
    """Draws marks in (u, t) texture space at 2x, then blends them into the albedo."""

    def __init__(self, body: _Body):
        self.body = body
        self.img = Image.new("L", (_TU * 2, _TT * 2), 0)
        self.draw = ImageDraw.Draw(self.img)

    def _xy(self, u: float, t: float) -> tuple[float, float]:
        return u * (_TU - 1) * 2, t * (_TT - 1) * 2

    def depth(self, u: float) -> float:
        i = int(np.clip(u, 0, 1) * (_LUT - 1))
        return float(self.body.top[i] + self.body.bot[i]) + 1e-3

    def spot(self, u: float, t: float, r: float) -> None:
        """A round spot of radius r body lengths (stretched in t so it stays round on the fish)."""
        x, y = self._xy(u, t)
        rx, ry = r * (_TU - 1) * 2, r / self.depth(u) * (_TT - 1) * 2
        self.draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)

    def line(self, pts: list[tuple[float, float]], width_t: float) -> None:
        self.draw.line([self._xy(u, t) for u, t in pts], fill=255, width=max(1, int(width_t * (_TT - 1) * 2)))

    def poly(self, pts: list[tuple[float, float]]) -> None:
        self.draw.polygon([self._xy(u, t) for u, t in pts], fill=255)

    def apply(self, tex: np.ndarray, colour: np.ndarray, strength: float, blur: float = 0.0) -> None:
        m = self.img.reduce(2)
        if blur > 0:
            m = m.filter(ImageFilter.GaussianBlur(blur))
        a = np.asarray(m, np.float32)[..., None] * (strength / 255.0)
        tex *= 1.0 - a
        tex += a * colour
        self.img.paste(0, (0, 0, *self.img.size))


def _texture(body: _Body, rng: np.random.Generator) -> np.ndarray:
    """Albedo of the body side over (t, u): back-to-belly countershading plus the species' markings."""
    look = body.look
    t = np.linspace(0.0, 1.0, _TT, dtype=np.float32)[:, None, None]
    line = look.shade_line + rng.normal(0.0, 0.04)
    g = _smooth(line - 0.15, line + 0.15, t)
    tex = body.dorsal * (1 - g) + body.ventral * g
    tex = tex * (1.0 + 0.12 * (_noise(rng, _TU, _TT, 12.0)[..., None] - 0.5))
    tex = np.broadcast_to(tex, (_TT, _TU, 3)).astype(np.float32).copy()
    pen = _TexPainter(body)
    eye_u, eye_v, _ = body.eye
    i_eye = int(eye_u * (_LUT - 1))
    t_eye = float((eye_v + body.top[i_eye]) / (body.top[i_eye] + body.bot[i_eye]))
    for mark in look.marks:
        if mark == "silver_band":
            pen.poly([(0.2, 0.4), (1.0, 0.42), (1.0, 0.5), (0.2, 0.52)])
            pen.apply(tex, _jitter((0.88, 0.86, 0.72), rng), rng.uniform(0.2, 0.45), blur=2.0)
        elif mark == "lateral_line":
            pts = [(float(u), 0.27 + 0.06 * float(u)) for u in np.linspace(body.gill_u, 1.0, 12)]
            pen.line(pts, 0.018)
            pen.apply(tex, body.dorsal * 0.55, rng.uniform(0.35, 0.6), blur=0.6)
        elif mark == "scutes":
            lat = [(float(u), 0.24 + 0.24 * float(_smooth(0.3, 0.6, np.float32(u)))) for u in np.linspace(0.22, 1, 24)]
            pen.line(lat, 0.03)
            for u in np.arange(0.55, 0.99, 0.022):
                tt = 0.24 + 0.24 * float(_smooth(0.3, 0.6, np.float32(u)))
                pen.line([(float(u), tt - 0.05), (float(u) + 0.006, tt + 0.05)], 0.012)
            pen.apply(tex, body.dorsal * 0.5, rng.uniform(0.45, 0.7), blur=0.5)
        elif mark == "gill_spot":
            pen.spot(body.gill_u - 0.01, 0.24 + rng.normal(0, 0.02), 0.022)
            pen.apply(tex, np.array([0.12, 0.12, 0.13], np.float32), rng.uniform(0.4, 0.75), blur=2.0)
        elif mark == "grey_lines":
            for tt in np.linspace(0.15, 0.65, int(rng.integers(5, 8))):
                pen.line([(0.25, float(tt)), (1.0, float(tt) + 0.03)], 0.012)
            pen.apply(tex, body.dorsal * 0.6, rng.uniform(0.1, 0.25), blur=0.8)
        elif mark == "gold_bar":
            pen.spot(eye_u + 0.005, t_eye * 0.45, 0.028)
            pen.poly(
                [(eye_u - 0.02, 0.0), (eye_u + 0.03, 0.0), (eye_u + 0.025, t_eye * 0.7), (eye_u - 0.015, t_eye * 0.7)]
            )
            pen.apply(tex, _jitter((0.92, 0.74, 0.28), rng, 0.02, 0.2, 0.05), rng.uniform(0.45, 0.85), blur=1.5)
        elif mark == "blue_spots":
            for _ in range(int(rng.integers(25, 60))):
                pen.spot(rng.uniform(0.15, 0.9), rng.uniform(0.08, 0.55), rng.uniform(0.005, 0.009))
            pen.apply(tex, _jitter((0.35, 0.6, 0.95), rng, 0.02, 0.2, 0.05), rng.uniform(0.35, 0.75), blur=0.5)
        elif mark == "black_spots":
            for _ in range(int(rng.integers(30, 80))):
                pen.spot(rng.uniform(0.12, 1.0), float(rng.beta(1.2, 2.2)) * 0.75, rng.uniform(0.005, 0.011))
            pen.apply(tex, np.array([0.08, 0.08, 0.07], np.float32), rng.uniform(0.7, 0.95), blur=0.3)
        elif mark == "pink_band":
            pen.poly([(0.15, 0.44), (1.0, 0.42), (1.0, 0.58), (0.15, 0.58)])
            pen.apply(tex, _jitter((0.9, 0.48, 0.55), rng, 0.02, 0.2, 0.05), rng.uniform(0.35, 0.75), blur=3.0)
        elif mark == "yellow_stripes":
            for tt in rng.uniform(-0.02, 0.02) + np.array([0.34, 0.48, 0.62])[: int(rng.integers(2, 4))]:
                pen.line([(0.2, float(tt)), (0.6, float(tt) + 0.02), (0.97, float(tt) + 0.01)], 0.06)
            pen.apply(tex, _jitter((0.97, 0.84, 0.22), rng, 0.02, 0.15, 0.05), rng.uniform(0.55, 0.85), blur=0.8)
        elif mark == "segments":
            for u in np.linspace(0.36, 0.9, 7):
                pen.line([(float(u), 0.0), (float(u) + 0.01, 1.0)], 0.5)
            pen.apply(tex, body.dorsal * 0.55, rng.uniform(0.3, 0.55), blur=0.6)
            pen.line([(0.06, 0.55), (0.2, 0.42), (0.34, 0.4)], 0.03)
            pen.line([(0.36, 0.08), (0.95, 0.08)], 0.05)
            pen.apply(tex, body.dorsal * 0.6, rng.uniform(0.2, 0.4), blur=1.0)
    return np.clip(tex, 0.0, 1.0)


def _to_body(body: _Body, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Straight canonical coords (body lengths) -> bent body coords (u, v)."""
    if abs(body.kappa) < 1e-3:
        return x, y
    r = 1.0 / body.kappa
    s = math.copysign(1.0, r)
    phi = np.arctan2(s * (x - 0.5), -s * (y - r))
    return 0.5 + r * phi, r - s * np.hypot(x - 0.5, y - r)


def _from_body(body: _Body, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if abs(body.kappa) < 1e-3:
        return u, v
    r = 1.0 / body.kappa
    phi = (u - 0.5) / r
    return 0.5 + (r - v) * np.sin(phi), r - (r - v) * np.cos(phi)


def _outline_points(body: _Body, extra: bool) -> tuple[np.ndarray, np.ndarray]:
    """Points (canonical, body lengths) that bound the fish; extra adds antennae and fin clearance."""
    u = np.linspace(-0.05, 1.0 + body.tail_len + 0.02, 60)
    i = (np.clip(u, 0, 1) * (_LUT - 1)).astype(int)
    top, bot = body.top[i].astype(np.float64), body.bot[i].astype(np.float64)
    pad = 0.14 if extra else 0.02
    tail = u > 0.97
    top = np.where(tail, np.maximum(top, body.tail_h), top) + pad
    bot = np.where(tail, np.maximum(bot, body.tail_h), bot) + pad
    us, vs = np.concatenate([u, u]), np.concatenate([-top, bot])
    if extra and body.look.kind == "shrimp":
        au = np.linspace(-0.95, 0.0, 20)
        us = np.concatenate([us, au, au])
        vs = np.concatenate([vs, -0.05 - 0.45 * (-au) ** 1.4, 0.2 * (-au)])
    return _from_body(body, us, vs)
