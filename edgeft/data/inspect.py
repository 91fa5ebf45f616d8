"""`edgeft data inspect`: class distribution, one sample per class, skipped files, near-duplicate groups."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from edgeft.core.files import check_out_dir, write_json_atomic
from edgeft.core.plotting import pyplot
from edgeft.data.layouts import load_dataset


def inspect_dataset(
    root: str | Path,
    out: str | Path | None = None,
    group_regex: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    grouping: str = "auto",
) -> tuple[dict, Path]:
    if out:
        check_out_dir(Path(out), "--out")  # before a long scan
    ds = load_dataset(root, group_regex=group_regex, progress=progress, grouping=grouping)
    out_dir = Path(out) if out else ds.root.parent / f"{ds.root.name}_inspect"
    if not out:
        check_out_dir(out_dir, "the default report folder (pass --out to pick another)")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = ds.counts()
    classes = {}
    for c in ds.classes:
        sizes = Counter(r.group for r in ds.records if r.label == c)
        classes[c] = {"images": counts[c], "groups": len(sizes), "largest_group": max(sizes.values())}
    groups = Counter(r.group for r in ds.records)
    dup_groups = {g: n for g, n in groups.items() if n > 1}
    report = {
        "root": str(ds.root),
        "layout": ds.layout,
        "group_source": ds.group_source,
        "classes": classes,
        "balance": min(counts.values()) / max(counts.values()),
        "skipped": ds.skipped,
        "conflicts": ds.conflicts,
        "grouping": {k: v for k, v in ds.group_report.items() if k != "classes"},
        "duplicate_groups": len(dup_groups),
        "images_in_duplicate_groups": sum(dup_groups.values()),
        "duplicate_group_members": {
            g: [r.path for r in ds.records if r.group == g]
            for g in sorted(dup_groups, key=lambda g: -dup_groups[g])[:50]
        },
    }
    _plots(ds, counts, out_dir)
    _largest_groups(ds, out_dir / "largest_groups.png")
    write_json_atomic(out_dir / "inspect.json", report)
    return report, out_dir


def _plots(ds, counts: dict[str, int], out_dir: Path) -> None:
    plt = pyplot()
    from PIL import Image

    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(counts)), 4))
    ax.bar(range(len(counts)), list(counts.values()), color="steelblue")
    ax.set_xticks(range(len(counts)), list(counts), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("class distribution")
    fig.tight_layout()
    fig.savefig(out_dir / "class_distribution.png", dpi=100)
    plt.close(fig)

    cols = min(5, len(ds.classes))
    rows = (len(ds.classes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.3), squeeze=False)
    for ax in axes.flatten():
        ax.axis("off")
    for ax, c in zip(axes.flatten(), ds.classes, strict=False):
        rec = min((r for r in ds.records if r.label == c), key=lambda r: r.path)
        with Image.open(ds.abspath(rec)) as im:
            im.thumbnail((256, 256))
            ax.imshow(im.convert("RGB"))
        ax.set_title(c, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "samples.png", dpi=100)
    plt.close(fig)


def _largest_groups(ds, path: Path, n_groups: int = 4, per_group: int = 6) -> None:
    """One row per largest group (by share of its class): a few of its members, to check by eye."""
    plt = pyplot()
    from PIL import Image

    counts = ds.counts()
    members: dict[str, list] = {}
    for r in sorted(ds.records, key=lambda r: r.path):
        members.setdefault(r.group, []).append(r)
    top = sorted(members, key=lambda g: (-len(members[g]) / counts[members[g][0].label], g))[:n_groups]
    fig, axes = plt.subplots(len(top), per_group, figsize=(per_group * 2, len(top) * 2.1), squeeze=False)
    for ax in axes.flatten():
        ax.axis("off")
    for row, g in zip(axes, top, strict=False):
        recs = members[g]
        step = max(1, len(recs) // per_group)
        for ax, r in zip(row, recs[::step], strict=False):
            with Image.open(ds.abspath(r)) as im:
                im.thumbnail((192, 192))
                ax.imshow(im.convert("RGB"))
        share = len(recs) / counts[recs[0].label]
        row[0].set_title(f"{recs[0].label}: {len(recs)} images ({share:.0%})", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
