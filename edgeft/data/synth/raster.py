"""Rasterising one fish: the pixels near its outline are mapped into body coordinates, then the layers are
painted back to front (tail, fins, body, pectoral fin, head details, eye) as premultiplied colour + coverage."""

from __future__ import annotations

import math

import numpy as np

from edgeft.data.synth.body import _LUT, _TT, _TU, _Body, _outline_points, _to_body
from edgeft.data.synth.draw import _cover, _over, _sample, _seg_dist, _smooth

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame px


def _fin_shape(x: np.ndarray, shape: str) -> np.ndarray:
    if shape == "spiny":
        return np.minimum(x / 0.25, 1.0) ** 0.8 * np.clip(1.0 - x, 0, 1) ** 0.6 * 1.2
    if shape == "long":
        return np.minimum(x / 0.12, 1.0) * (1.0 - 0.55 * x) * np.clip((1.0 - x) / 0.06, 0.0, 1.0)
    if shape == "round":
        return np.sqrt(np.clip(1.0 - (2.0 * x - 1.0) ** 2, 0.0, 1.0))
    if shape == "back":
        return np.clip(x, 0.0, 1.0)
    return np.maximum(np.sin(np.pi * np.clip(x, 0, 1)), 0.0) ** 0.8 * (1.0 - 0.3 * x)


class _Canvas:
    """The pixels near the outline as a 1-D selection: body coords u, v, the outline profiles there, and the
    premultiplied colour p / coverage a painted so far."""

    def __init__(
        self, body: _Body, u: np.ndarray, v: np.ndarray, top: np.ndarray, bot: np.ndarray, ui: np.ndarray, vc: float
    ) -> None:
        look = body.look
        self.body, self.L = body, body.length
        self.u, self.v, self.top, self.bot, self.ui = u, v, top, bot, ui
        self.vc = vc  # height of the body axis at the tail root
        self.p = np.zeros((u.size, 3), np.float32)
        self.a = np.zeros(u.size, np.float32)
        self.fin_alpha = 0.85 if look.kind == "fish" else 0.9
        if look.fin_spots:
            self.spots = _smooth(0.72, 0.8, _sample(body.fin_noise, u * 45.0, v * 45.0, wrap=True))
        else:
            self.spots = np.zeros_like(u)
        self.px = 1.0 / self.L  # one pixel in body lengths

    def region(self, u0: float, u1: float, v0: float = -9.0, v1: float = 9.0) -> np.ndarray:
        u, v = self.u, self.v
        return np.flatnonzero((u >= u0) & (u <= u1) & (v >= v0) & (v <= v1))

    def paint(self, i: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
        pp, aa = self.p[i], self.a[i]
        _over(pp, aa, colour, alpha)
        self.p[i], self.a[i] = pp, aa

    def fin_colour(self, i: np.ndarray, mod: np.ndarray | float) -> np.ndarray:
        shade = (0.82 + 0.18 * np.asarray(mod, np.float32)) * (1.0 - 0.85 * self.spots[i])
        return self.body.fin[None, :] * shade[..., None]

    def lines(self, i: np.ndarray, segs: list, width: float, soften: float) -> np.ndarray:
        cov = np.zeros(i.size, np.float32)
        for p0, p1 in segs:
            cov = np.maximum(cov, _cover((width - _seg_dist(self.u[i], self.v[i], p0, p1)) * self.L + soften))
        return cov


def _box(body: _Body, w: int, h: int, cx: float, cy: float, theta: float, mirror: float, uc: float) -> Box:
    """The frame box (clipped to the frame, maybe empty) around the fish with its fins and antennae."""
    L = body.length
    ct, st = math.cos(theta), math.sin(theta)
    px, py = _outline_points(body, True)
    fx, fy = (px - uc) * L * mirror, py * L
    bx, by = cx + ct * fx - st * fy, cy + st * fx + ct * fy
    x0, y0 = max(0, int(bx.min()) - 2), max(0, int(by.min()) - 2)
    x1, y1 = min(w, int(bx.max()) + 3), min(h, int(by.max()) + 3)
    return x0, y0, x1, y1


def _near_outline(
    body: _Body, box: Box, cx: float, cy: float, theta: float, mirror: float, uc: float
) -> tuple[np.ndarray, _Canvas]:
    """The pixels of box that may be painted (a boolean mask over the box) and their canvas."""
    look, L = body.look, body.length
    x0, y0, x1, y1 = box
    ct, st = math.cos(theta), math.sin(theta)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    cu = (ct * dx + st * dy) * (mirror / L) + uc
    cv = (-st * dx + ct * dy) / L
    u, v = _to_body(body, cu, cv)
    grid = np.arange(_LUT, dtype=np.float32)
    ui = np.clip(u, 0.0, 1.0) * (_LUT - 1)
    top, bot = np.interp(ui, grid, body.top), np.interp(ui, grid, body.bot)
    # only pixels near the outline are shaded: everything after this works on that 1-D selection
    tl, th = body.tail_len, body.tail_h
    vc = float(body.bot[-1] - body.top[-1]) / 2.0
    sel = (u > -0.06) & (u < 1.0 + tl + 0.03) & (v > -top - body.clear_top) & (v < bot + body.clear_bot)
    sel |= (u > 0.9) & (u < 1.0 + tl + 0.03) & (np.abs(v - vc) < th + 0.02)
    if look.kind == "shrimp":
        sel |= u < 0.16
    u, v = u[sel].astype(np.float32), v[sel].astype(np.float32)
    top, bot, ui = top[sel].astype(np.float32), bot[sel].astype(np.float32), ui[sel]
    return sel, _Canvas(body, u, v, top, bot, ui, vc)


def _paint_tail(c: _Canvas) -> None:
    """Tail fin (fish) or tail fan (shrimp), behind the body."""
    body, u, v, L, vc = c.body, c.u, c.v, c.L, c.vc
    look, tl, th = body.look, body.tail_len, body.tail_h
    i = c.region(0.94, 1.0 + tl + 2 * c.px)
    ui_, vv = u[i], np.abs(v[i] - vc)
    ph = float(body.top[-1] + body.bot[-1]) / 2.0
    spread = ph + (th - ph) * np.clip((ui_ - 0.97) / tl, 0.0, 1.0) ** 0.7
    q = np.clip(vv / th, 0.0, 1.0)
    if look.tail in ("forked", "emarginate", "truncate"):
        end = 1.0 + tl * (1.0 - body.fork * (1.0 - q))
    else:
        end = 1.0 + tl * (1.0 - 0.4 * q**2)
    tail_a = _cover(np.minimum(np.minimum(spread - vv, end - ui_), ui_ - 0.95) * L) * c.fin_alpha
    ang = np.arctan2(v[i] - vc, ui_ - 0.97)
    tail_col = c.fin_colour(i, 0.5 + 0.5 * np.cos(ang * (26.0 if look.kind == "fish" else 6.0)))
    if look.kind == "fish":  # darker trailing edge
        tail_col *= (1.0 - 0.35 * _smooth(-0.04, 0.0, ui_ - end))[..., None]
    c.paint(i, tail_col, tail_a)


def _paint_fins(c: _Canvas) -> None:
    """Dorsal, anal and adipose fins on the outline, then the pelvic fin below the belly."""
    body, u, v, top, bot, L, px_ = c.body, c.u, c.v, c.top, c.bot, c.L, c.px
    look = body.look
    for side, f0, f1, fh, shape, k in body.fins:
        i = c.region(f0 - px_, f1 + px_)
        x = (u[i] - f0) / (f1 - f0)
        height = fh * _fin_shape(np.clip(x, 0, 1), shape)
        out = (-top[i] - v[i]) if side == "top" else (v[i] - bot[i])
        s = np.minimum(np.minimum(height - out, out + 0.02), np.minimum(x, 1 - x) * (f1 - f0)) * L
        rays = 0.5 + 0.5 * np.cos(u[i] * (2.0 * np.pi / 0.02)) if shape != "round" else 1.0
        col = c.fin_colour(i, rays)
        if k == 0 and side == "top" and "banded_dorsal" in look.marks:
            y = np.clip(out / (height + 1e-6), 0.0, 1.0)[..., None]
            band = 0.7 * np.exp(-(((y - 0.45) / 0.12) ** 2))
            col = col * (1 - band) + np.array([0.25, 0.12, 0.08], np.float32) * band
            tip = 0.5 * (y > 0.7)
            col = col * (1 - tip) + np.array([0.95, 0.8, 0.3], np.float32) * tip
        c.paint(i, col, _cover(s) * c.fin_alpha)

    if body.pelvic is not None:
        f0, f1, fh = body.pelvic
        i = c.region(f0 - px_, f1 + px_, 0.0)
        x = (u[i] - f0) / (f1 - f0)
        out = v[i] - bot[i]
        height = fh * _fin_shape(np.clip(x, 0, 1), "back") + 0.01
        s = np.minimum(np.minimum(height - out, out + 0.02), np.minimum(x, 1 - x) * (f1 - f0)) * L
        c.paint(i, c.fin_colour(i, 0.5 + 0.5 * np.cos(u[i] * (2.0 * np.pi / 0.02))), _cover(s) * c.fin_alpha)


def _paint_legs(c: _Canvas) -> None:
    """A shrimp's walking legs and swimmerets on the belly side."""
    if c.body.look.kind != "shrimp":
        return
    segs = []
    for lu in np.concatenate([np.linspace(0.12, 0.33, 5), np.linspace(0.42, 0.8, 5)]):
        b = float(np.interp(lu, np.linspace(0, 1, _LUT), c.body.bot))
        segs.append(((lu, b * 0.6), (lu + (0.05 if lu > 0.4 else -0.04), b + 0.09)))
    i = c.region(0.06, 0.87, 0.0)
    c.paint(i, c.fin_colour(i, 1.0), c.lines(i, segs, 0.008, 0.4) * 0.9)


def _paint_body(c: _Canvas) -> None:
    """The textured body side: round-body shading, scales, the gill cover edge and a specular sheen."""
    body, u, v, top, bot, L, px_ = c.body, c.u, c.v, c.top, c.bot, c.L, c.px
    grid = np.arange(_LUT, dtype=np.float32)
    ntop, nbot = np.interp(c.ui, grid, body.dtop), np.interp(c.ui, grid, body.dbot)
    i = np.flatnonzero((v > -top - 2 * px_) & (v < bot + 2 * px_) & (u > -2 * px_) & (u < 1.02 + 2 * px_))
    bu, bv, btop, bbot = u[i], v[i], top[i], bot[i]
    t = np.clip((bv + btop) / (btop + bbot + 1e-6), 0.0, 1.0)
    s = np.minimum(np.minimum((bv + btop) * ntop[i], (bbot - bv) * nbot[i]), np.minimum(bu, 1.02 - bu))
    col = _sample(body.tex, np.clip(bu, 0, 1) * (_TU - 1), t * (_TT - 1))
    nz = np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 2, 0.0, 1.0))
    shade = 0.55 + 0.45 * nz**0.6
    if body.scales > 0:
        k = 2.0 * np.pi / body.scale_size
        pat = np.sin(k * (bu + bv)) * np.sin(k * (bu - bv))
        shade *= 1.0 + body.scales * pat * _smooth(body.gill_u - 0.02, body.gill_u + 0.04, bu)
    if body.look.kind == "fish":  # gill cover edge
        rg = 0.28
        arc = np.abs(np.hypot(bu - (body.gill_u - rg), bv - c.vc * 0.5) - rg) * L
        shade *= 1.0 - 0.35 * np.exp(-((arc / 1.1) ** 2)) * (bu < body.gill_u + 0.02)
    spec = (body.spec * np.exp(-(((t - 0.32) / 0.13) ** 2)) * (0.6 + 0.4 * nz))[..., None]
    col *= shade[..., None]
    col += spec * (1.0 - col)
    c.paint(i, col, _cover(s * L))


def _paint_pectoral(c: _Canvas) -> None:
    """The pectoral fin, half transparent, over the body side."""
    if c.body.pectoral is None:
        return
    pu, plen, pw, pang = c.body.pectoral
    pv = float(np.interp(pu, np.linspace(0, 1, _LUT), c.body.bot)) * 0.15
    i = c.region(pu - plen, pu + plen, pv - plen, pv + plen)
    du, dv = c.u[i] - pu, c.v[i] - pv
    along = (du * math.cos(pang) + dv * math.sin(pang)) / plen
    across = -du * math.sin(pang) + dv * math.cos(pang)
    half = pw * np.maximum(np.sin(np.pi * np.clip(along, 0, 1)), 0.0) ** 0.6
    s = np.minimum(half - np.abs(across), np.minimum(along, 1 - along) * plen) * c.L
    c.paint(i, c.fin_colour(i, 0.5 + 0.5 * np.cos(across * (2 * np.pi / 0.01))) * 0.9, _cover(s) * 0.75)


def _paint_head(c: _Canvas) -> None:
    """Barbels (mullets), rostrum and antennae (shrimp) and the mouth (fish)."""
    body = c.body
    look = body.look
    if look.barbels:
        segs = [((0.04 + o, float(body.bot[20]) * 0.7), (0.16 + o, float(body.bot[80]) + 0.015)) for o in (0.0, 0.015)]
        i = c.region(0.02, 0.2, 0.0)
        c.paint(i, np.array([0.95, 0.9, 0.78], np.float32), c.lines(i, segs, 0.006, 0.4) * 0.9)

    if look.kind == "shrimp":  # rostrum and antennae
        rt = float(body.top[60])
        i = c.region(-0.14, 0.14, -rt - 0.05, 0.0)
        c.paint(i, body.fin * 0.8, c.lines(i, [((0.12, -rt), (-0.12, -rt * 0.8))], 0.012, 0.0) * 0.9)
        segs = []
        for spread_k, wave in ((0.45, 0.03), (0.2, 0.05)):
            au = np.linspace(0.02, -0.9, 10)
            av = -0.03 - spread_k * np.maximum(-au, 0.0) ** 1.4 + wave * np.sin(au * 7.0)
            segs += [((au[j], av[j]), (au[j + 1], av[j + 1])) for j in range(len(au) - 1)]
        i = c.region(-0.95, 0.05, -0.6, 0.25)
        c.paint(i, body.fin * 0.8, c.lines(i, segs, 0.0045, 0.35) * 0.9)

    if look.kind == "fish":  # mouth
        mv = float(body.bot[4]) * 0.2
        i = c.region(-0.02, 0.07, mv - 0.02, mv + 0.03)
        c.paint(i, body.dorsal * 0.4, c.lines(i, [((0.0, mv), (0.045, mv + 0.01))], 0.004, 0.3) * 0.7)


def _paint_eye(c: _Canvas) -> None:
    """Iris, pupil and a catch light."""
    u, v, L, px_ = c.u, c.v, c.L, c.px
    eu, ev, er = c.body.eye
    i = c.region(eu - er - 2 * px_, eu + er + 2 * px_, ev - er - 2 * px_, ev + er + 2 * px_)
    d = np.hypot(u[i] - eu, v[i] - ev) * L
    c.paint(i, c.body.iris, _cover(er * L - d))
    c.paint(i, np.array([0.03, 0.03, 0.04], np.float32), _cover(er * 0.58 * L - d))
    dh = np.hypot(u[i] - eu + er * 0.25, v[i] - ev + er * 0.25) * L
    c.paint(i, np.array([0.97, 0.97, 0.97], np.float32), _cover(er * 0.18 * L - dh) * 0.85)


# the layers of a fish, painted back to front
_LAYERS = (_paint_tail, _paint_fins, _paint_legs, _paint_body, _paint_pectoral, _paint_head, _paint_eye)


def _rasterise(
    body: _Body, w: int, h: int, cx: float, cy: float, theta: float, mirror: float, uc: float
) -> tuple[np.ndarray, np.ndarray, Box]:
    """Draw the fish; returns premultiplied colour, coverage and the (x0, y0, x1, y1) box they cover."""
    box = _box(body, w, h, cx, cy, theta, mirror, uc)
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, 3), np.float32), np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    sel, canvas = _near_outline(body, box, cx, cy, theta, mirror, uc)
    for layer in _LAYERS:
        layer(canvas)
    full_p = np.zeros((*sel.shape, 3), np.float32)
    full_a = np.zeros(sel.shape, np.float32)
    full_p[sel], full_a[sel] = canvas.p, canvas.a
    return full_p, full_a, box
