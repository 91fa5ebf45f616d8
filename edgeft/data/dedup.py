"""Transform-verified duplicate groups: two images share a group only when one is a transform of the other.

Cheap hashes only *propose* candidates; a candidate joins only after a geometric and photometric check:
- candidates: a DCT perceptual hash of all 8 flips/90-degree rotations, and a pHash of the central disc
  turned to its principal axis (survives arbitrary rotations with black corners);
- verification: ORB keypoints (mirror handled by a flipped copy) matched and fitted by RANSAC to one
  similarity transform (rotation, scale, shift: rotations, rescales and crops); the other image, warped by
  it, must then agree pixel by pixel (normalised correlation of the blurred images over their common valid
  area; stricter when few keypoints agree). Images too smooth for keypoints fall back to a tight thumbnail
  correlation under the 8 flips/90-degree rotations.

Groups are star-shaped: every member is verified against its group's first image, and two groups merge
only when their first images verify against each other. Look-alikes never chain A~B~C into one group.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

HASH_SIZE = 8
CANDIDATE_BITS = 16  # of 64: loose on purpose, every candidate is verified
MAX_CHECKS = 12  # verified candidates per image, nearest hashes first
VERIFY_SIZE = 160  # long side of the grey image kept for verification
ORB_FEATURES = 300
MIN_INLIERS = 12
MIN_OVERLAP = 0.25  # of the smaller valid area
MANY_INLIERS = 20
MIN_NCC = 0.80  # blurred warped pixels vs pixels over the common valid area, with MANY_INLIERS
STRICT_NCC = 0.90  # ... with fewer inliers, which must also be FEW_INLIER_RATIO of the keypoints
FEW_INLIER_RATIO = 0.25
THUMB = 64
THUMB_NCC = 0.99  # smooth-image fallback: THUMB x THUMB thumbnails under a flip/90-degree rotation
_LOCAL = threading.local()  # OpenCV's ORB and CLAHE objects are not thread-safe: one pair per scan thread


@dataclass
class Descriptor:
    """What one decode of an image leaves for grouping; a few tens of kilobytes."""

    phash: np.ndarray  # (8,) uint64, dihedral variants, base first
    disc: np.ndarray  # (4,) uint64
    grey: np.ndarray  # (h, w) uint8, long side VERIFY_SIZE
    thumb: np.ndarray  # (THUMB, THUMB) uint8
    kp: tuple[np.ndarray, np.ndarray | None]  # points (K, 2), ORB descriptors (K, 32)
    kp_flip: tuple[np.ndarray, np.ndarray | None]


def _dct_hash(gray32: np.ndarray) -> np.uint64:
    d = cv2.dct(gray32)[:HASH_SIZE, :HASH_SIZE]
    bits = (d > np.median(d)).flatten()
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Variant k of 8: rot90 by k // 2, then a left-right flip when k is odd."""
    r = np.rot90(a, k // 2)
    return np.ascontiguousarray(np.fliplr(r) if k % 2 else r)


def dihedral_hashes(img: Image.Image) -> np.ndarray:
    """Eight 64-bit pHashes, one per flip/rotation of the image (order: base first)."""
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float32)
    return np.array([_dct_hash(_dihedral(g, k)) for k in range(8)], dtype=np.uint64)


def disc_hashes(img: Image.Image) -> np.ndarray:
    """Four pHashes of the central disc after rotating it to its principal axis (0/180 deg, each flipped)."""
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


def _valid(grey: np.ndarray) -> np.ndarray:
    """Pixels that are image content, not the black fill of a rotation (eroded to drop the border edge)."""
    return cv2.erode((grey > 8).astype(np.uint8), np.ones((7, 7), np.uint8))


def _keypoints(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if not hasattr(_LOCAL, "orb"):
        _LOCAL.orb = cv2.ORB_create(nfeatures=ORB_FEATURES, fastThreshold=7, edgeThreshold=19, patchSize=19)
        _LOCAL.clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    # local contrast equalised: dim, blurry underwater crops still give keypoints
    kps, des = _LOCAL.orb.detectAndCompute(_LOCAL.clahe.apply(grey), _valid(grey))
    return np.float32([k.pt for k in kps]).reshape(-1, 2), des


def describe(img: Image.Image) -> Descriptor:
    """Hashes, a small grey copy and keypoints of one decoded image."""
    grey_full = np.asarray(img.convert("L"))
    h, w = grey_full.shape
    s = VERIFY_SIZE / max(h, w)
    grey = cv2.resize(grey_full, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    return Descriptor(
        phash=dihedral_hashes(img),
        disc=disc_hashes(img),
        grey=grey,
        thumb=cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA),
        kp=_keypoints(grey),
        kp_flip=_keypoints(np.ascontiguousarray(grey[:, ::-1])),
    )


def _popcount64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float32) - a.mean()
    b = b.astype(np.float32) - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _warp_check(a: Descriptor, b_grey: np.ndarray, pts_b: np.ndarray, pts_a: np.ndarray, kp_b: int) -> bool:
    m, inl = cv2.estimateAffinePartial2D(pts_b, pts_a, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if m is None or int(inl.sum()) < MIN_INLIERS:
        return False
    h, w = a.grey.shape
    va, vb = _valid(a.grey), _valid(b_grey)
    warped = cv2.warpAffine(b_grey, m, (w, h), flags=cv2.INTER_LINEAR)
    wvalid = cv2.warpAffine(vb, m, (w, h), flags=cv2.INTER_NEAREST)
    common = (wvalid > 0) & (va > 0)
    smaller = min(int(va.sum()), int(vb.sum()) * abs(np.linalg.det(m[:, :2])))
    if common.sum() < MIN_OVERLAP * max(1.0, smaller):
        return False
    ga = cv2.GaussianBlur(a.grey.astype(np.float32), (5, 5), 1.2)[common]
    gb = cv2.GaussianBlur(warped.astype(np.float32), (5, 5), 1.2)[common]
    ncc = _ncc(ga, gb)  # blurred: sub-pixel misregistration and JPEG noise do not count
    n_in = int(inl.sum())
    if n_in >= MANY_INLIERS:
        return ncc >= MIN_NCC
    return n_in >= FEW_INLIER_RATIO * min(len(a.kp[0]), kp_b) and ncc >= STRICT_NCC


def _matcher():
    """One brute-force Hamming matcher per thread (match() keeps no state between calls)."""
    if not hasattr(_LOCAL, "matcher"):
        _LOCAL.matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    return _LOCAL.matcher


def _thumbs_agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Correlation over the pixels both thumbnails show: black rotation corners alone never match."""
    both = (a > 8) & (b > 8)
    return both.sum() >= 0.5 * both.size and _ncc(a[both], b[both]) >= THUMB_NCC


def _smooth(d: Descriptor) -> bool:
    return min(len(d.kp[0]), len(d.kp_flip[0])) < 2 * MIN_INLIERS


def is_transform(a: Descriptor, b: Descriptor) -> bool:
    """True when b is verifiably a flip/rotation/rescale/crop of a (or the other way round)."""
    pa, da = a.kp
    if _smooth(a) or _smooth(b):  # too few keypoints: only a tight thumbnail match under a flip/rotation
        return any(_thumbs_agree(a.thumb, _dihedral(b.thumb, k)) for k in range(8))
    for (pb, db), grey in ((b.kp, b.grey), (b.kp_flip, np.ascontiguousarray(b.grey[:, ::-1]))):
        matches = _matcher().match(da, db)
        if len(matches) < MIN_INLIERS:
            continue
        src = np.float32([pb[m.trainIdx] for m in matches])
        dst = np.float32([pa[m.queryIdx] for m in matches])
        if _warp_check(a, grey, src, dst, len(pb)):
            return True
    return False


def _distances(descs: list[Descriptor], i: int, reps: list[int]) -> np.ndarray:
    """Smallest hash distance between image i and each representative, over the flip/rotation variants."""
    ph = np.stack([descs[r].phash for r in reps])
    dc = np.stack([descs[r].disc for r in reps])
    d1 = _popcount64(np.bitwise_xor(ph, descs[i].phash[0])).min(axis=1)
    d2 = _popcount64(np.bitwise_xor(dc, descs[i].disc[0])).min(axis=1)
    return np.minimum(d1, d2)


def transform_groups(descs: list[Descriptor]) -> list[int]:
    """Group id (index of the group's first image) per image; see the module docstring. Call per class."""
    group = list(range(len(descs)))
    reps: list[int] = []
    for i in range(len(descs)):
        hits: list[int] = []
        if reps:
            dist = _distances(descs, i, reps)
            near = [reps[k] for k in np.argsort(dist, kind="stable") if dist[k] <= CANDIDATE_BITS][:MAX_CHECKS]
            hits = [r for r in near if is_transform(descs[r], descs[i])]
        if not hits:
            reps.append(i)
            continue
        home = min(hits)
        group[i] = home
        for other in sorted(set(hits) - {home}):
            if is_transform(descs[home], descs[other]):  # the two first images are transforms of each other
                group = [home if g == other else g for g in group]
                reps.remove(other)
    return group
