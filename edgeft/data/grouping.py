"""Groups: the units a split never cuts. Same bytes, verified transforms, and track keys, per class.

Two images of one class share a group when they are byte-identical, when one is verifiably a transform of
the other (`dedup.transform_groups`), or when their file names give the same track key (`tracks`). The
report lists how groups were found and their size distribution, and warns about groups that hold more
than WARN_FRACTION of their class (a sign of over-merging, or of a class with few specimens).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from edgeft.data.dedup import Descriptor, transform_groups
from edgeft.data.tracks import TrackKeys

WARN_FRACTION = 0.05
SIZE_BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 10**9))
GROUPINGS = ("auto", "content", "tracks", "none")


class _UnionFind:
    def __init__(self, items: Sequence[str]):
        self.parent = {i: i for i in items}

    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def class_groups(
    paths: list[str],
    shas: dict[str, str],
    descs: dict[str, Descriptor] | None,
    tracks: TrackKeys | None,
) -> tuple[dict[str, str], int]:
    """path -> group key (the group's first path) for the images of one class, and the number of verified
    transforms found between two different tracks. Those are reported, not merged: a track is the unit
    the names define, and a fish seen again in another clip would otherwise chain tracks together."""
    paths = sorted(paths)
    uf = _UnionFind(paths)
    first: dict[str, str] = {}
    for p in paths:  # same bytes: one image, whatever the name
        uf.union(first.setdefault(shas[p], p), p)
    keys = tracks.keys if tracks is not None else {}
    by_key: dict[str, str] = {}
    for p in paths:
        if keys.get(p) is not None:
            uf.union(by_key.setdefault(keys[p], p), p)
    cross = 0
    if descs is not None:
        unique = [p for p in paths if first[shas[p]] == p]
        comp = transform_groups([descs[p] for p in unique])
        for p, c in zip(unique, comp, strict=True):
            rep = unique[c]
            if keys.get(p) is not None and keys.get(rep) is not None and keys[p] != keys[rep]:
                cross += 1
            else:
                uf.union(rep, p)
    return {p: uf.find(p) for p in paths}, cross


def size_histogram(sizes: Sequence[int]) -> dict[str, int]:
    out = {}
    for lo, hi in SIZE_BINS:
        label = str(lo) if lo == hi else (f">{lo - 1}" if hi >= 10**9 else f"{lo}-{hi}")
        out[label] = sum(lo <= s <= hi for s in sizes)
    return out


def single_track_groups(groups: dict[str, str], tracks: TrackKeys | None) -> set[str]:
    """Groups whose members all carry one track key: one fish or clip by its name, no warning needed."""
    if tracks is None or not tracks.rule:
        return set()
    keys: dict[str, set] = {}
    for p, g in groups.items():
        keys.setdefault(g, set()).add(tracks.keys.get(p))
    return {g for g, k in keys.items() if len(k) == 1 and None not in k}


def group_report(
    groups: dict[str, str],
    labels: dict[str, str],
    source: str,
    note: str,
    cross_track: int = 0,
    expected: set[str] | None = None,
) -> dict:
    """Per class: images, groups, largest group and its share, size histogram; warnings for large groups
    (except `expected` ones, e.g. a single named track)."""
    per_class: dict[str, dict] = {}
    warnings: list[str] = []
    by_class: dict[str, Counter] = {}
    for p, g in groups.items():
        by_class.setdefault(labels[p], Counter())[g] += 1
    for c in sorted(by_class):
        sizes = by_class[c]
        n = total = sum(sizes.values())
        key, largest = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))
        suspect = [
            (n, g) for g, n in sizes.items() if n > 1 and n / total > WARN_FRACTION and g not in (expected or ())
        ]
        per_class[c] = {
            "images": n,
            "groups": len(sizes),
            "largest_group": largest,
            "largest_fraction": round(largest / n, 4),
            "largest_group_first": key,
            "sizes": size_histogram(list(sizes.values())),
        }
        if suspect:
            big, first = max(suspect)
            warnings.append(
                f"class {c!r}: one group holds {big} of {n} images ({big / n:.0%}, first {first}); "
                "check they are one specimen (`edgeft data inspect` shows it)"
            )
    return {
        "source": source,
        "note": note,
        "groups": sum(len(v) for v in by_class.values()),
        "cross_track_matches": cross_track,
        "classes": per_class,
        "warnings": warnings,
    }
