"""Raster primitives (smooth steps, value noise, bilinear lookup, compositing, anti-aliased polygons) and the
species-independent photo background."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from edgeft.data.synth.species import RGB


def _smooth(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _cover(s_px: np.ndarray) -> np.ndarray:
    """Coverage of a pixel from its signed distance (px, positive inside): a cheap anti-aliased edge."""
    return np.clip(s_px + 0.5, 0.0, 1.0)


def _jitter(rgb: RGB, rng: np.random.Generator, dh: float = 0.02, ds: float = 0.15, dv: float = 0.08) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    h = (h + rng.normal(0.0, dh)) % 1.0
    s = float(np.clip(s * math.exp(rng.normal(0.0, ds)), 0.0, 1.0))
    v = float(np.clip(v * math.exp(rng.normal(0.0, dv)), 0.0, 1.0))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _noise(rng: np.random.Generator, w: int, h: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] (bicubic upsampling of a coarse random grid)."""
    gw, gh = max(2, int(w / cell) + 2), max(2, int(h / cell) + 2)
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32), "F")
    return np.clip(np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _sample(tex: np.ndarray, x: np.ndarray, y: np.ndarray, wrap: bool = False) -> np.ndarray:
    """Bilinear lookup of tex (rows, cols[, channels]) at float column x / row y (1-D arrays)."""
    border = cv2.BORDER_WRAP if wrap else cv2.BORDER_REPLICATE
    n = x.size
    cols = 512  # remap wants 2-D maps below 32767 on each side
    rows = max(1, -(-n // cols))
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = x.ravel(), y.ravel()
    out = cv2.remap(tex, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=border)
    return out.reshape(rows * cols, *tex.shape[2:])[:n].reshape(x.shape + tex.shape[2:])


def _seg_dist(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    h = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv + 1e-12), 0.0, 1.0)
    return np.hypot(u - p0[0] - h * du, v - p0[1] - h * dv)


def _over(p: np.ndarray, a: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """Composite a layer over premultiplied p / coverage a, in place."""
    p *= (1.0 - alpha)[..., None]
    p += np.asarray(colour, np.float32) * alpha[..., None]
    a *= 1.0 - alpha
    a += alpha


def _poly_ellipse(cx: float, cy: float, rx: float, ry: float, ang: float = 0.0, n: int = 28) -> list:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(ang), math.sin(ang)
    return list(zip((cx + ca * x - sa * y).tolist(), (cy + sa * x + ca * y).tolist(), strict=True))


def _poly_capsule(p0: tuple[float, float], p1: tuple[float, float], r: float, n: int = 12) -> list:
    ang = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    pts = []
    for (px, py), base in ((p1, ang - np.pi / 2), (p0, ang + np.pi / 2)):
        for t in np.linspace(base, base + np.pi, n):
            pts.append((px + r * math.cos(t), py + r * math.sin(t)))
    return pts


def _stamp(img: np.ndarray, occ: np.ndarray, poly: list, colour: np.ndarray, ss: int = 4) -> None:
    """Paint an anti-aliased polygon (frame px) over img and record its coverage in occ."""
    h, w = occ.shape
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0 = max(0, int(min(xs)) - 1), max(0, int(min(ys)) - 1)
    x1, y1 = min(w, int(max(xs)) + 2), min(h, int(max(ys)) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    m = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    ImageDraw.Draw(m).polygon([((x - x0) * ss, (y - y0) * ss) for x, y in poly], fill=255)
    a = np.asarray(m.reduce(ss), np.float32) / 255.0
    _over(img[y0:y1, x0:x1], occ[y0:y1, x0:x1], colour, a)


def _background(rng: np.random.Generator, out_w: int, out_h: int) -> np.ndarray:
    """A supermarket tray, crushed ice, water or a cutting board, all species-independent.

    Drawn at half resolution (pixel constants below are half-resolution pixels) and upsampled: it is smooth.
    """
    kind = int(rng.choice(4, p=[0.4, 0.3, 0.15, 0.15]))
    w, h = (out_w + 1) // 2, (out_h + 1) // 2
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    big = _noise(rng, w, h, max(w, h) / 3.0)[..., None]
    if kind == 0:  # plastic tray, usually bluish or white, sometimes black foam
        base = [(0.62, 0.74, 0.88), (0.88, 0.9, 0.92), (0.45, 0.62, 0.85), (0.8, 0.86, 0.92), (0.16, 0.16, 0.18)]
        col = _jitter(base[int(rng.integers(len(base)))], rng, 0.02, 0.2, 0.06)
        img = col * (0.9 + 0.2 * big) + 0.02 * (_noise(rng, w, h, 1.5)[..., None] - 0.5)
        if rng.random() < 0.4:  # tray rim near the frame edge, the table outside it
            m = rng.uniform(-0.02, 0.06, 4) * np.array([w, h, w, h])
            d = np.minimum(np.minimum(xx - m[0], w - m[2] - xx), np.minimum(yy - m[1], h - m[3] - yy))[..., None]
            table = _jitter((0.55, 0.5, 0.45), rng, 0.05, 0.4, 0.25)
            img = np.where(d < 0, table * (0.9 + 0.2 * big), img * (1.0 - 0.25 * np.exp(-np.maximum(d, 0) / 3.0)))
            img = img + 0.3 * np.exp(-(((d - 1.5) / 1.25) ** 2)) * (1.0 - img)
    elif kind == 1:  # crushed ice: lumps lit from one side, bluish-grey crevices, sparkles
        cell = rng.uniform(4.5, 8.0)
        n = 0.7 * _noise(rng, w, h, cell) + 0.3 * _noise(rng, w, h, cell / 2.5)
        gy, gx = np.gradient(n)
        ang = rng.uniform(0, 2 * np.pi)
        relief = (gx * math.cos(ang) + gy * math.sin(ang)) * cell * 2.0
        lump = _smooth(0.38, 0.55, n)
        sparkle = _smooth(0.88, 0.97, _noise(rng, w, h, 1.2)) * lump
        col = _jitter((0.88, 0.91, 0.94), rng, 0.02, 0.3, 0.04)
        crevice = col * np.array([0.62, 0.66, 0.72], np.float32)
        img = crevice + (col - crevice) * lump[..., None]
        img = img * (0.92 + 0.16 * big) + (0.25 * np.clip(relief, 0, 1) - 0.1 * np.clip(-relief, 0, 1))[..., None]
        img = img + 0.4 * sparkle[..., None]
    elif kind == 2:  # water: blue-green with caustic light lines
        deep = _jitter((0.15, 0.38, 0.5), rng, 0.04, 0.2, 0.15)
        shallow = _jitter((0.45, 0.7, 0.75), rng, 0.04, 0.2, 0.1)
        g = _smooth(-0.2, 1.2, big)
        caustic = np.zeros((h, w), np.float32)
        for _ in range(2):
            n = _noise(rng, w, h, rng.uniform(6.0, 12.0))
            caustic += np.exp(-(((n - 0.5) / 0.035) ** 2))
        img = deep * (1 - g) + shallow * g + 0.18 * caustic[..., None]
    else:  # cutting board: white plastic or wood grain
        if rng.random() < 0.5:
            col = _jitter((0.9, 0.88, 0.84), rng, 0.02, 0.3, 0.05)
            scratches = _smooth(0.9, 1.0, _noise(rng, w, h, 1.0))[..., None]
            img = col * (0.92 + 0.12 * big) - 0.06 * scratches
        else:
            col = _jitter((0.62, 0.45, 0.28), rng, 0.03, 0.2, 0.1)
            ang = rng.uniform(0, np.pi)
            coord = (xx * math.cos(ang) + yy * math.sin(ang))[..., None]
            grain = np.sin(coord * rng.uniform(0.3, 0.8) + 6.0 * big) * 0.5 + 0.5
            img = col * (0.82 + 0.2 * grain)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
