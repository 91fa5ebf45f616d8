"""Near-duplicate detection that survives flips and rotations, so augmented copies stay on one split side.

Two descriptors, both computed from the one decode of each image:
- a DCT perceptual hash of all 8 flips/90-degree rotations (exact-ish copies, any aspect ratio);
- a pHash of the central disc turned to its principal axis: the disc survives arbitrary-angle rotations
  that leave black corners, and the principal axis undoes the angle (up to 180 degrees and a mirror).
Images are linked when either descriptor is close; groups are the connected components.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

HASH_SIZE = 8
PHASH_MAX_BITS = 6  # of 64
DISC_MAX_BITS = 6


def _dct_hash(gray32: np.ndarray) -> np.uint64:
    d = cv2.dct(gray32)[:HASH_SIZE, :HASH_SIZE]
    bits = (d > np.median(d)).flatten()
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def dihedral_hashes(img: Image.Image) -> np.ndarray:
    """Eight 64-bit pHashes, one per flip/rotation of the image (order: base first)."""
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float32)
    out = []
    for k in range(4):
        r = np.rot90(g, k)
        out.append(_dct_hash(np.ascontiguousarray(r)))
        out.append(_dct_hash(np.ascontiguousarray(np.fliplr(r))))
    return np.array(out, dtype=np.uint64)


def disc_hashes(img: Image.Image) -> np.ndarray:
    """Four pHashes of the central disc after rotating it to its principal axis (0/180 deg, each flipped).

    The disc is what survives an arbitrary-angle rotation that leaves black corners; the principal axis of
    its intensity moments undoes the rotation up to 180 degrees and a mirror, which the variants cover.
    """
    g = np.asarray(img.convert("L"), np.float32)
    h, w = g.shape
    scale = 96.0 / min(h, w)
    g = cv2.resize(g, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    h, w = g.shape
    cy, cx, r = (h - 1) / 2.0, (w - 1) / 2.0, 0.48 * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    wgt = np.abs(g - np.median(g[disc])) * disc
    m = wgt.sum() or 1.0
    dx, dy = xx - cx, yy - cy
    mxx, myy, mxy = (wgt * dx * dx).sum() / m, (wgt * dy * dy).sum() / m, (wgt * dx * dy).sum() / m
    angle = 0.5 * np.degrees(np.arctan2(2 * mxy, mxx - myy))
    rot = cv2.warpAffine(g, cv2.getRotationMatrix2D((cx, cy), float(angle), 1.0), (w, h), flags=cv2.INTER_LINEAR)
    half = int(r / np.sqrt(2.0))
    iy, ix = int(round(cy)), int(round(cx))
    crop = cv2.resize(rot[iy - half : iy + half, ix - half : ix + half], (32, 32), interpolation=cv2.INTER_AREA)
    variants = (crop, crop[::-1, ::-1], crop[:, ::-1], crop[::-1, :])
    return np.array([_dct_hash(np.ascontiguousarray(v)) for v in variants], dtype=np.uint64)


def _popcount64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(
    phashes: np.ndarray,
    discs: np.ndarray,
    phash_bits: int = PHASH_MAX_BITS,
    disc_bits: int = DISC_MAX_BITS,
) -> list[int]:
    """Group ids (index of each group's first member) for N images.

    phashes: (N, 8) dihedral hashes; discs: (N, 4) disc hashes, both uint64. O(N^2): call per class.
    """
    n = len(phashes)
    uf = _UnionFind(n)
    if n == 0:
        return []
    base = phashes[:, 0]
    for i in range(n - 1):
        # hamming between image i's base hash and every later image's 8 variants
        ham = _popcount64(np.bitwise_xor(phashes[i + 1 :], base[i])).min(axis=1)
        dham = _popcount64(np.bitwise_xor(discs[i + 1 :], discs[i, 0])).min(axis=1)
        for j in np.nonzero((ham <= phash_bits) | (dham <= disc_bits))[0]:
            uf.union(i, i + 1 + int(j))
    return [uf.find(i) for i in range(n)]
