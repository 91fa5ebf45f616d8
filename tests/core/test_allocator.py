"""glibc malloc thresholds: per-image buffers are reused instead of page-faulted in on every decode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

FAULTS_PER_IMAGE = textwrap.dedent(
    """
    import io, resource
    import numpy as np
    from PIL import Image
    from edgeft.core.allocator import tune_allocator
    from edgeft.core.preprocess import PreprocessSpec, preprocess_file

    spec = PreprocessSpec(input_size=224, resize_size=256, resampler="opencv", interpolation="bilinear")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    tuned = tune_allocator()
    preprocess_file(data, spec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        preprocess_file(data, spec)
    print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
    """
)


def faults(env: dict[str, str]) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_IMAGE], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], float(out[1])


def test_tuned_decoding_reuses_its_buffers():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "EDGEFT_KEEP_MALLOC"}
    tuned, per_image = faults(env)
    assert tuned == "True"
    # a 640x480 decode touches 225 fresh pages when its buffer is not reused; tuned, a handful at most
    assert per_image < 20


def test_the_users_own_malloc_settings_are_kept():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    for key, value in (
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
        ("EDGEFT_KEEP_MALLOC", "1"),
    ):
        assert faults({**clean, key: value})[0] == "False", key
    assert faults({**clean, "EDGEFT_KEEP_MALLOC": "0"})[0] == "True"
