"""Track and sequence keys from file names: frames of one fish or one video clip stay in one split.

Rules are tried in order on every file stem; the first rule that explains the dataset is used:
- fish-frame:   `<anything>_fishN_frameK`, `<clip>-frame12`     key = everything before the frame marker
- track-frame:  `<track>_<frame>` (frame all digits, e.g. `VID_20230501_123005_0012`)   key = `<track>`
- frame-number: `frame_000123` (no track in the name)   key = a run of frame numbers with gaps <= FRAME_GAP
- timestamp:    `IMG_20230501_123005` (date + time, no frame)   key = a burst: shots <= TIME_GAP_S apart

A rule explains a dataset when it matches at least MIN_MATCH of the files of every class and gives every
class at least two keys and fewer keys than files; otherwise the names carry no track information (e.g.
`img_0001.png` numbered one after another, or random names) and no rule is used.
A user regex (`--group-regex`) replaces the rules: its first capture group (or whole match) is the key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

MIN_MATCH = 0.9
FRAME_GAP = 5
TIME_GAP_S = 2.0

FISH_FRAME = re.compile(r"^(?P<track>.+?)[_\-. ]?(?:frame|frm)[_\-]?(?P<frame>\d+)$", re.IGNORECASE)
TRACK_FRAME = re.compile(r"^(?P<track>.*[^\d_\-].*?)[_\-](?P<frame>\d+)$")
FRAME_ONLY = re.compile(r"^(?:frame|frm|f)?[_\-]?(?P<frame>\d+)$", re.IGNORECASE)
TIMESTAMP = re.compile(r"(?P<date>(?:19|20)\d{2}[-_]?\d{2}[-_]?\d{2})[T_\- ]?(?P<time>\d{2}[-_:.]?\d{2}[-_:.]?\d{2})")


@dataclass
class TrackKeys:
    """Per-file keys (None: the file matched no rule) and the rule that produced them."""

    rule: str | None
    keys: dict[str, str | None]
    note: str = ""


def _runs(numbers: dict[str, float], gap: float, prefix: str) -> dict[str, str]:
    """Split sorted numbers into runs whose neighbours are at most `gap` apart; key = prefix + first number."""
    out: dict[str, str] = {}
    start, last = None, None
    for path, v in sorted(numbers.items(), key=lambda kv: (kv[1], kv[0])):
        if last is None or v - last > gap:
            start = v
        out[path] = f"{prefix}{start:.0f}"
        last = v
    return out


def _stem(path: str) -> str:
    return PurePosixPath(path).stem


def _fish_frame(paths: Sequence[str]) -> dict[str, str | None]:
    return {p: (m.group("track") if (m := FISH_FRAME.match(_stem(p))) else None) for p in paths}


def _ends_in_timestamp(stem: str) -> bool:
    """`IMG_20230501_123005`: the trailing digits are a time of day, not a frame number (the timestamp rule's)."""
    m = TIMESTAMP.search(stem)
    return m is not None and m.end() == len(stem)


def _track_frame(paths: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in paths:
        stem = _stem(p)
        m = TRACK_FRAME.match(stem)
        out[p] = m.group("track") if m and not FRAME_ONLY.match(stem) and not _ends_in_timestamp(stem) else None
    return out


def _frame_number(paths: Sequence[str]) -> dict[str, str | None]:
    nums = {p: float(m.group("frame")) for p in paths if (m := FRAME_ONLY.match(_stem(p))) and _stem(p)[:1].isalpha()}
    runs = _runs(nums, FRAME_GAP, "frames@")
    return {p: runs.get(p) for p in paths}


def _timestamp(paths: Sequence[str]) -> dict[str, str | None]:
    secs: dict[str, float] = {}
    for p in paths:
        m = TIMESTAMP.search(_stem(p))
        if not m:
            continue
        digits = re.sub(r"\D", "", m.group("date") + m.group("time"))
        try:
            secs[p] = datetime.strptime(digits, "%Y%m%d%H%M%S").timestamp()
        except ValueError:
            continue
    runs = _runs(secs, TIME_GAP_S, "burst@")
    return {p: runs.get(p) for p in paths}


RULES = {
    "fish-frame": _fish_frame,
    "track-frame": _track_frame,
    "frame-number": _frame_number,
    "timestamp": _timestamp,
}


def _explains(keys: dict[str, str | None]) -> bool:
    matched = [k for k in keys.values() if k is not None]
    if len(matched) < MIN_MATCH * len(keys):
        return False
    distinct = len(set(matched))
    return distinct >= 2 and distinct < len(matched)


def regex_keys(by_class: dict[str, list[str]], pattern: re.Pattern) -> TrackKeys:
    """Keys from a user regex searched in each file name: its first capture group, else the whole match."""
    keys: dict[str, str | None] = {}
    for paths in by_class.values():
        for p in paths:
            m = pattern.search(PurePosixPath(p).name)
            keys[p] = (m.group(1) if m.groups() else m.group(0)) if m else None
    return TrackKeys("regex", keys, f"--group-regex {pattern.pattern!r}")


def detect_track_keys(by_class: dict[str, list[str]]) -> TrackKeys:
    """The first rule that explains every class (see the module docstring), or no keys at all."""
    for name, rule in RULES.items():
        per_class = {c: rule(paths) for c, paths in by_class.items()}
        if per_class and all(_explains(k) for k in per_class.values()):
            keys = {p: k for ks in per_class.values() for p, k in ks.items()}
            n = len({(c, k) for c, ks in per_class.items() for k in ks.values() if k is not None})
            return TrackKeys(name, keys, f"file names carry track keys ({name} rule): {n} tracks")
    return TrackKeys(None, {}, "no track or sequence keys in the file names")
