"""EvalSet.load: one read per image serves both the decode and the content hash the cache keys use."""

from __future__ import annotations

from edgeft.core.hashing import sha256_file
from edgeft.core.preprocess import PreprocessSpec
from edgeft.data.evalsets import EvalSet

SPEC = PreprocessSpec(input_size=32, resize_size=32, crop="squash", interpolation="bilinear", resampler="opencv")


def test_load_hashes_the_bytes_it_decoded_and_skips_unreadable_images(colour_tree, tmp_path):
    paths = sorted(colour_tree.rglob("*.png"))[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    es = EvalSet([*paths[:2], broken, *paths[2:]], ["a"] * 6, "test")
    x, kept = es.load(SPEC)
    assert x.shape == (5, 3, 32, 32) and kept.paths == paths
    assert kept.shas == [sha256_file(p) for p in paths]
    assert [s["source"] for s in kept.skipped] == [str(broken)]
