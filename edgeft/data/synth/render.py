"""One photo of one fish: pose, rasterised fish, shadow, occluders and camera effects."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image, ImageFilter

from edgeft.data.synth.body import _from_body, _outline_points, _sample_body
from edgeft.data.synth.draw import _background, _jitter, _poly_capsule, _poly_ellipse, _stamp
from edgeft.data.synth.raster import _rasterise
from edgeft.data.synth.species import _LOOKS, _check_species

_OCCLUDE_P = 0.35  # chance that an object covers part of the fish
_CLUTTER_P = 0.3  # chance of a loose object elsewhere in the frame


def _occluder(rng: np.random.Generator, img: np.ndarray, occ: np.ndarray, at: tuple[float, float], size: float) -> None:
    """A lemon slice, herb leaves, a finger/glove or a price label centred near `at` (frame px)."""
    kind = int(rng.choice(4, p=[0.3, 0.25, 0.3, 0.15]))
    cx, cy = at
    h, w = occ.shape
    if kind == 0:
        r = size * rng.uniform(0.18, 0.3)
        ry = r * rng.uniform(0.75, 1.0)
        ang = rng.uniform(0, np.pi)
        _stamp(img, occ, _poly_ellipse(cx, cy, r, ry, ang, 40), _jitter((0.95, 0.8, 0.15), rng, 0.02, 0.1, 0.05))
        _stamp(img, occ, _poly_ellipse(cx, cy, r * 0.86, ry * 0.86, ang, 40), _jitter((0.98, 0.92, 0.55), rng))
        n = int(rng.integers(7, 11))
        for k in range(n):
            t = ang + 2 * np.pi * k / n
            p1 = (cx + r * 0.84 * math.cos(t), cy + ry * 0.84 * math.sin(t))
            _stamp(img, occ, _poly_capsule((cx, cy), p1, max(0.6, r * 0.025)), np.array([0.99, 0.98, 0.85], np.float32))
    elif kind == 1:
        green = _jitter((0.22, 0.5, 0.15), rng, 0.03, 0.2, 0.15)
        for _ in range(int(rng.integers(3, 7))):
            lx, ly = cx + rng.normal(0, size * 0.08), cy + rng.normal(0, size * 0.08)
            rl = size * rng.uniform(0.06, 0.13)
            col = green * rng.uniform(0.75, 1.15)
            _stamp(img, occ, _poly_ellipse(lx, ly, rl, rl * rng.uniform(0.35, 0.6), rng.uniform(0, np.pi)), col)
    elif kind == 2:
        edges = [(cx, -0.1 * h), (cx, 1.1 * h), (-0.1 * w, cy), (1.1 * w, cy)]
        dist = [cy, h - cy, cx, w - cx]
        e = edges[int(np.argmin(dist))] if rng.random() < 0.7 else edges[int(rng.integers(4))]
        skin = [(0.86, 0.66, 0.54), (0.62, 0.44, 0.33), (0.3, 0.38, 0.8), (0.14, 0.14, 0.16), (0.55, 0.35, 0.65)]
        col = _jitter(skin[int(rng.integers(len(skin)))], rng, 0.02, 0.15, 0.08)
        r = size * rng.uniform(0.05, 0.085)
        tip = (cx + rng.normal(0, r), cy + rng.normal(0, r))
        for k in range(int(rng.integers(1, 3))):
            off = k * 2.1 * r
            nx, ny = tip[1] - e[1], e[0] - tip[0]
            nn = math.hypot(nx, ny) + 1e-6
            p0 = (e[0] + nx / nn * off, e[1] + ny / nn * off)
            p1 = (tip[0] + nx / nn * off, tip[1] + ny / nn * off)
            _stamp(img, occ, _poly_capsule(p0, p1, r), col * 0.8)
            _stamp(img, occ, _poly_capsule(p0, p1, r * 0.7), col)
    else:
        lw, lh = size * rng.uniform(0.2, 0.32), size * rng.uniform(0.12, 0.2)
        ang = rng.uniform(-0.6, 0.6)
        ca, sa = math.cos(ang), math.sin(ang)

        def rect(x0: float, y0: float, x1: float, y1: float) -> list:
            return [(cx + ca * x - sa * y, cy + sa * x + ca * y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]

        _stamp(img, occ, rect(-lw / 2, -lh / 2, lw / 2, lh / 2), _jitter((0.95, 0.95, 0.92), rng, 0.05, 0.5, 0.03))
        for k in range(3):
            y = -lh / 2 + lh * (0.15 + 0.14 * k)
            _stamp(img, occ, rect(-lw * 0.42, y, lw * rng.uniform(0.0, 0.4), y + lh * 0.06), np.array([0.2] * 3))
        for x in np.linspace(-lw * 0.4, lw * 0.4, 14):
            bw = lw * rng.uniform(0.008, 0.025)
            _stamp(img, occ, rect(x, lh * 0.1, x + bw, lh * 0.4), np.array([0.1] * 3, np.float32))


def render_specimen(
    species: str, rng: np.random.Generator, image_size: tuple[int, int] = (320, 240)
) -> tuple[Image.Image, Image.Image]:
    """One synthetic photo of one fish: (RGB image, binary L mask of the visible fish)."""
    _check_species([species])
    w, h = int(image_size[0]), int(image_size[1])
    look = _LOOKS[species]
    img = _background(rng, w, h)
    body = _sample_body(look, rng)

    # pose: mostly lying horizontally, head left or right, sometimes at any angle; kept inside the frame
    theta = rng.normal(0.0, 0.22) if rng.random() < 0.75 else rng.uniform(-np.pi, np.pi)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    uc = (1.0 + body.tail_len - 0.03) / 2.0
    px, py = _outline_points(body, False)
    ct, st = math.cos(theta), math.sin(theta)
    fx, fy = (px - uc) * mirror, py
    rx, ry = ct * fx - st * fy, st * fx + ct * fy
    ref = min(w, h * 4.0 / 3.0)
    length = rng.uniform(*look.length) * ref
    length = min(length, 0.96 * w / float(np.ptp(rx)), 0.96 * h / float(np.ptp(ry)))
    body.length = length
    slack = 0.15 * length if rng.random() < 0.1 else 0.0  # now and then the fish runs out of the frame
    lo_x, hi_x = -rx.min() * length - slack, w - rx.max() * length + slack
    lo_y, hi_y = -ry.min() * length - slack, h - ry.max() * length + slack
    cx = rng.uniform(min(lo_x, hi_x), max(lo_x, hi_x))
    cy = rng.uniform(min(lo_y, hi_y), max(lo_y, hi_y))

    p, a, (x0, y0, x1, y1) = _rasterise(body, w, h, cx, cy, theta, mirror, uc)
    fish_a = np.zeros((h, w), np.float32)
    fish_a[y0:y1, x0:x1] = a
    shadow = Image.fromarray((fish_a * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 6.0)))
    sx, sy = (int(round(v)) for v in rng.normal(0.0, 3.0, 2))
    shadow_a = np.roll(np.asarray(shadow, np.float32) / 255.0, (sy, sx), axis=(0, 1))
    img *= (1.0 - rng.uniform(0.15, 0.4) * shadow_a)[..., None]
    region = img[y0:y1, x0:x1]
    region *= (1.0 - a)[..., None]
    region += p

    occ = np.zeros((h, w), np.float32)
    if rng.random() < _OCCLUDE_P:
        uu = rng.uniform(0.0, 1.1)
        vv = rng.normal(0.0, 0.08)
        ox, oy = _from_body(body, np.array([uu]), np.array([vv]))
        ox, oy = (ox[0] - uc) * length * mirror, oy[0] * length
        at = (cx + ct * ox - st * oy, cy + st * ox + ct * oy)
        _occluder(rng, img, occ, at, length)
    if rng.random() < _CLUTTER_P:
        _occluder(rng, img, occ, (rng.uniform(0, w), rng.uniform(0, h)), length)

    img = _camera(rng, img)
    mask = Image.fromarray(np.where(fish_a * (1.0 - occ) > 0.5, 255, 0).astype(np.uint8), "L")
    return img, mask


def _camera(rng: np.random.Generator, img: np.ndarray) -> Image.Image:
    """Exposure, colour temperature, uneven light, glare, blur, sensor noise and JPEG compression."""
    h, w = img.shape[:2]
    xn = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
    yn = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
    temp = rng.normal(0.0, 0.06)
    gain = math.exp(rng.normal(0.0, 0.15))
    tint = np.array([1 + temp, 1 + rng.normal(0.0, 0.02), 1 - temp], np.float32) * gain
    ang = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(-0.35, 0.35) * (xn * math.cos(ang) + yn * math.sin(ang))
    light = light * (1.0 - rng.uniform(0.0, 0.35) * 2.0 * (xn * xn + yn * yn))
    img = img * (light[..., None] * tint)
    if rng.random() < 0.3:
        gx, gy, gr = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.05, 0.2)
        squash = rng.uniform(1.0, 3.0)
        glare = rng.uniform(0.2, 0.6) * np.exp(-((xn - gx) ** 2 + ((yn - gy) * squash * h / w) ** 2) / gr**2)
        img += glare[..., None] * (1.0 - img)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3))
    sigma = rng.uniform(0.0, 5.0) / 255.0
    img += (rng.random((h, w, 3), dtype=np.float32) - 0.5) * (sigma * 3.46)  # uniform, std = sigma
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    gamma = math.exp(rng.normal(0.0, 0.1))
    lut = np.round(255.0 * np.linspace(0.0, 1.0, 256) ** gamma).astype(np.uint8)
    out = Image.fromarray(lut[img.astype(np.uint8)], "RGB")
    if rng.random() < 0.5:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(55, 93)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out
